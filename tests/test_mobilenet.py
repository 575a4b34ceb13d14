"""MobileNetV2 as AOT uses it, vs transformers' PyTorch MobileNetV2Model of the same layout.

`MobileNetV2Config(output_stride=16, tf_padding=False, layer_norm_eps=1e-5)` builds exactly
AOT's `MobileNetV2(16, FrozenBatchNorm2d)` (aot-benchmark networks/encoders/mobilenetv2.py):
same convs, strides, dilations (features 15-17 dilated x2), symmetric padding, BN eps 1e-5,
ReLU6. Checked once by loading the same weights into both (max abs difference 0.0 at 224x224);
the test below uses only the pip-installed transformers model. HF keys are renamed to the
torchvision/AOT `features.*` naming so that the converter sees what an AOT checkpoint holds.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_helpers import randomise_batchnorm

from coprop_jax.convert import mobilenet_v2 as conv_mnv2
from coprop_jax.convert.checkpoint_io import CheckpointError
from coprop_jax.models.layers import count_params
from coprop_jax.models.mobilenet_v2 import MobileNetV2, block_specs


def hf_to_torchvision(sd):
  """HF MobileNetV2Model keys -> torchvision / AOT `features.*` keys (the converter's utility)."""
  out = conv_mnv2.hf_to_torchvision_names(sd)
  assert len(out) == len(sd), "every HF key renamed"
  return out


def hf_config():
  from transformers import MobileNetV2Config
  return MobileNetV2Config(output_stride=16, tf_padding=False, layer_norm_eps=1e-5)


@pytest.fixture(scope="module")
def hf_model():
  from transformers import MobileNetV2Model
  torch.manual_seed(0)
  m = MobileNetV2Model(hf_config(), add_pooling_layer=False).eval()
  randomise_batchnorm(m)
  return m


def _hf_levels(m, x):
  """AOT's taps: features[:4], [4:7], [7:14], [14:] = HF layer 1, 4, 11 and conv_1x1."""
  with torch.no_grad():
    o = m(torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True)
  return [t.permute(0, 2, 3, 1).numpy() for t in
          (o.hidden_states[1], o.hidden_states[4], o.hidden_states[11], o.last_hidden_state)]


def test_parity_vs_transformers(hf_model):
  tv = {k: v.numpy() for k, v in hf_to_torchvision(hf_model.state_dict()).items()}
  variables = conv_mnv2.from_torch_state_dict({"encoder." + k: v for k, v in tv.items()})
  # a torchvision checkpoint (no prefix, classifier ignored) gives the same variables
  plain = conv_mnv2.from_torch_state_dict(dict(tv, **{"classifier.1.weight": np.zeros((1000, 1280)),
                                                      "classifier.1.bias": np.zeros(1000)}))
  jax.tree_util.tree_map(np.testing.assert_array_equal, plain, variables)
  x = np.random.default_rng(0).standard_normal((1, 80, 48, 3)).astype(np.float32)
  refs = _hf_levels(hf_model, x)
  outs = jax.jit(MobileNetV2().apply)(variables, jnp.asarray(x))
  assert [o.shape for o in outs] == [(1, 20, 12, 24), (1, 10, 6, 32), (1, 5, 3, 96),
                                     (1, 5, 3, 1280)]
  for o, r in zip(outs, refs):
    assert o.shape == r.shape
    np.testing.assert_allclose(np.asarray(o), r, atol=1e-4, rtol=0)


def test_param_count_and_layout():
  from transformers import MobileNetV2Model
  with torch.device("meta"):
    ref = MobileNetV2Model(hf_config(), add_pooling_layer=False)
  x = jnp.zeros((1, 224, 224, 3))
  v = jax.eval_shape(MobileNetV2().init, jax.random.PRNGKey(0), x)
  assert count_params(v["params"]) == sum(p.numel() for p in ref.parameters()) == 2223872
  outs = jax.eval_shape(MobileNetV2().apply, v, x)
  assert [o.shape for o in outs] == [(1, 56, 56, 24), (1, 28, 28, 32), (1, 14, 14, 96),
                                     (1, 14, 14, 1280)]
  # AOT's output-stride-16 rule: features 7 is the last stride-2 block; the depthwise convs of
  # features 15-17 are dilated x2 (features 14, first of the 160-channel stage, is not).
  specs = block_specs(16)
  assert [i for i, sp in enumerate(specs, 1) if sp[2] == 2] == [2, 4, 7]
  assert [i for i, sp in enumerate(specs, 1) if sp[3] == 2] == [15, 16, 17]


def test_wrong_checkpoints(hf_model):
  sd = {"encoder." + k: v.numpy() for k, v in hf_to_torchvision(hf_model.state_dict()).items()}
  bad = dict(sd, **{"encoder.features.99.weight": np.zeros(3, np.float32)})
  with pytest.raises(CheckpointError, match=r"unexpected in the checkpoint \(1\): "
                     r"encoder.features.99.weight"):
    conv_mnv2.from_torch_state_dict(bad)
  bad = dict(sd)
  bad.pop("encoder.features.18.1.running_var")
  with pytest.raises(CheckpointError, match="missing from the checkpoint.*features.18.1.running_var"):
    conv_mnv2.from_torch_state_dict(bad)
  # a width-multiplier 0.5 network: same keys, wrong shapes
  half = {k: v[: max(1, v.shape[0] // 2)] if v.ndim else v for k, v in sd.items()}
  with pytest.raises(CheckpointError, match="shape mismatches"):
    conv_mnv2.from_torch_state_dict(half)
  # a ResNet-like dict
  resnet_like = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
                 "bn1.weight": np.ones(64, np.float32),
                 "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32)}
  with pytest.raises(CheckpointError, match="not a torchvision/AOT MobileNetV2 checkpoint"):
    conv_mnv2.from_torch_state_dict(resnet_like)


def test_bad_images():
  m = MobileNetV2()
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="MobileNetV2 images: expected a rank-4"):
    m.apply(v, jnp.zeros((32, 32, 3)))
  with pytest.raises(ValueError, match="expected 3 channels"):
    m.apply(v, jnp.zeros((1, 32, 32, 1)))


@pytest.mark.parametrize("stride,dilation,hw", [(1, 1, (9, 7)), (2, 1, (9, 8)), (2, 1, (8, 8)),
                                                (1, 2, (7, 10))])
def test_depthwise_shift_equals_grouped_conv(stride, dilation, hw):
  from coprop_jax.models.layers import depthwise_shift
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2,) + hw + (5,)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 1, 5)), jnp.float32)
  want = jax.lax.conv_general_dilated(x, k, (stride, stride), ((dilation, dilation),) * 2,
                                      rhs_dilation=(dilation, dilation),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=5)
  got = depthwise_shift(x, k, stride, dilation, dilation)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_depthwise_impls_share_params():
  x = jnp.zeros((1, 32, 32, 3))
  a = jax.eval_shape(MobileNetV2(depthwise_impl="shift").init, jax.random.PRNGKey(0), x)
  b = jax.eval_shape(MobileNetV2(depthwise_impl="conv").init, jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  assert [l.shape for l in jax.tree_util.tree_leaves(a)] == [l.shape for l in
                                                             jax.tree_util.tree_leaves(b)]
  with pytest.raises(ValueError, match="depthwise_impl must be"):
    jax.eval_shape(MobileNetV2(depthwise_impl="fft").init, jax.random.PRNGKey(0), x)


def test_aot_frozen_mask():
  from coprop_jax.models.mobilenet_v2 import aot_frozen_mask
  v = jax.eval_shape(MobileNetV2().init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  m = aot_frozen_mask(v["params"], freeze_at=2)
  assert m["features_3"]["project"]["conv"]["kernel"] and m["features_0"]["conv"]["kernel"]
  assert not m["features_4"]["expand"]["conv"]["kernel"]
  assert m["features_4"]["expand"]["bn"]["scale"]  # frozen BN affine
  m = aot_frozen_mask(v["params"], freeze_at=0, frozen_bn=False)
  assert not any(jax.tree_util.tree_leaves(m))
  m = aot_frozen_mask(v["params"], freeze_at=1, frozen_bn=False)
  assert m["features_0"]["conv"]["kernel"] and not m["features_1"]["depthwise"]["conv"]["kernel"]
