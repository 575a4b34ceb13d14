"""ResNet-50 parity vs transformers' ResNetModel (random init, BN eval with random stats)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_helpers import randomise_batchnorm

from coprop_jax.convert import resnet as conv_resnet
from coprop_jax.convert.checkpoint_io import CheckpointError
from coprop_jax.models.layers import count_params
from coprop_jax.models.resnet import ResNet50


@pytest.fixture(scope="module")
def hf_model():
  from transformers import ResNetConfig, ResNetModel
  torch.manual_seed(0)
  m = ResNetModel(ResNetConfig()).eval()
  randomise_batchnorm(m)
  return m


def _sd(m):
  return {k: v.numpy() for k, v in m.state_dict().items()}


def _hf_to_torchvision(sd):
  out = {}
  for k, v in sd.items():
    k2 = k.replace("embedder.embedder.convolution", "conv1").replace(
        "embedder.embedder.normalization", "bn1")
    if k2.startswith("encoder.stages."):
      parts = k2.split(".")
      i, j, rest = int(parts[2]), parts[4], ".".join(parts[5:])
      rest = (rest.replace("layer.0.convolution", "conv1").replace("layer.0.normalization", "bn1")
              .replace("layer.1.convolution", "conv2").replace("layer.1.normalization", "bn2")
              .replace("layer.2.convolution", "conv3").replace("layer.2.normalization", "bn3")
              .replace("shortcut.convolution", "downsample.0")
              .replace("shortcut.normalization", "downsample.1"))
      k2 = f"layer{i + 1}.{j}.{rest}"
    out[k2] = v
  out["fc.weight"] = np.zeros((1000, 2048), np.float32)
  return out


def test_torchvision_naming_gives_same_variables(hf_model):
  a = conv_resnet.from_torch_state_dict(_sd(hf_model))
  b = conv_resnet.from_torch_state_dict(_hf_to_torchvision(_sd(hf_model)))
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_parity_hf(hf_model):
  variables = conv_resnet.from_torch_state_dict(_sd(hf_model))
  x = np.random.default_rng(0).standard_normal((2, 64, 48, 3)).astype(np.float32)
  with torch.no_grad():
    ref = hf_model(torch.from_numpy(x).permute(0, 3, 1, 2),
                   output_hidden_states=True).hidden_states[1:]
  outs = ResNet50().apply(variables, jnp.asarray(x))
  for o, r in zip(outs, ref):
    r = r.permute(0, 2, 3, 1).numpy()
    assert o.shape == r.shape
    np.testing.assert_allclose(np.asarray(o), r, atol=1e-4, rtol=0)


def _dilate_layer4(m):
  """HF ResNetModel -> torchvision `replace_stride_with_dilation=[False, False, True]` in place:
  layer4 stride 1; its first block keeps dilation 1, the others get dilation 2 (padding 2)."""
  stage = m.encoder.stages[3]
  stage.layers[0].layer[1].convolution.stride = (1, 1)
  stage.layers[0].shortcut.convolution.stride = (1, 1)
  for blk in stage.layers[1:]:
    blk.layer[1].convolution.dilation = (2, 2)
    blk.layer[1].convolution.padding = (2, 2)
  return m


def test_parity_output_stride_16(hf_model):
  import copy
  ref = _dilate_layer4(copy.deepcopy(hf_model))
  variables = conv_resnet.from_torch_state_dict(_sd(hf_model))
  x = np.random.default_rng(1).standard_normal((1, 96, 64, 3)).astype(np.float32)
  with torch.no_grad():
    r = ref(torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True).hidden_states[-1]
  r = r.permute(0, 2, 3, 1).numpy()
  o = jax.jit(ResNet50(output_stride=16).apply)(variables, jnp.asarray(x))[-1]
  assert o.shape == r.shape == (1, 6, 4, 2048)
  np.testing.assert_allclose(np.asarray(o), r, atol=1e-4, rtol=0)


def test_aot_three_stage_layout():
  """AOT's R50 encoder builds no layer4 and returns layer3's map twice."""
  from transformers import ResNetConfig, ResNetModel
  with torch.device("meta"):
    ref = ResNetModel(ResNetConfig())
  n_ref = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("encoder.stages.3"))
  x = jnp.zeros((1, 64, 64, 3))
  m = ResNet50(output_stride=16, stages=3)
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), x)
  assert count_params(v["params"]) == n_ref
  assert not any(k.startswith("layer4") for k in v["params"])
  outs = jax.eval_shape(m.apply, v, x)
  assert [o.shape for o in outs] == [(1, 16, 16, 256), (1, 8, 8, 512), (1, 4, 4, 1024),
                                     (1, 4, 4, 1024)]


def test_param_count_and_os16():
  from transformers import ResNetConfig, ResNetModel
  with torch.device("meta"):
    ref = ResNetModel(ResNetConfig())
  n_ref = sum(p.numel() for p in ref.parameters())
  x = jnp.zeros((1, 64, 64, 3))
  v = jax.eval_shape(ResNet50(output_stride=16).init, jax.random.PRNGKey(0), x)
  assert count_params(v["params"]) == n_ref
  outs = jax.eval_shape(ResNet50(output_stride=16).apply, v, x)
  assert [o.shape for o in outs] == [(1, 16, 16, 256), (1, 8, 8, 512), (1, 4, 4, 1024),
                                     (1, 4, 4, 2048)]


@pytest.mark.slow
def test_trainable_bn_updates_stats():
  m = ResNet50(frozen_bn=False, depths=(1, 1, 1, 1))
  x = jnp.ones((2, 32, 32, 3))
  v = jax.jit(m.init)(jax.random.PRNGKey(0), x)
  _, upd = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
  assert not np.allclose(upd["batch_stats"]["bn1"]["bn"]["mean"], v["batch_stats"]["bn1"]["bn"]["mean"])


def test_bad_inputs(hf_model):
  sd = _sd(hf_model)
  sd.pop("encoder.stages.3.layers.2.layer.2.convolution.weight")
  with pytest.raises(CheckpointError, match="missing"):
    conv_resnet.from_torch_state_dict(sd)
  v = jax.eval_shape(ResNet50().init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="channels"):
    ResNet50().apply(v, jnp.zeros((1, 32, 32, 4)))
  with pytest.raises(ValueError, match="rank"):
    ResNet50().apply(v, jnp.zeros((32, 32, 3)))


def test_aot_frozen_mask():
  from coprop_jax.models.resnet import aot_frozen_mask
  v = jax.eval_shape(ResNet50(stages=3).init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  m = aot_frozen_mask(v["params"], freeze_at=2)
  assert m["conv1"]["kernel"] and m["layer1_2"]["conv3"]["kernel"]
  assert not m["layer2_0"]["conv1"]["kernel"] and m["layer2_0"]["bn1"]["bn"]["scale"]
  assert m["layer3_0"]["downsample_bn"]["bn"]["bias"]
  m = aot_frozen_mask(v["params"], freeze_at=0, frozen_bn=False)
  assert not any(jax.tree_util.tree_leaves(m))
  m = aot_frozen_mask(v["params"], freeze_at=4, frozen_bn=False)
  assert all(jax.tree_util.tree_leaves(m))
