"""KPF speed paths at unchanged numerics: scanned vs unrolled layers (and the per-layer
formulation they replace), the per-layer -> stacked parameter layout upgrade, attention through
`jax.nn.dot_product_attention` vs its definition, bfloat16 compute vs float32, and a train step
that makes no host round trips and donates its state."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from coprop_jax.models import keyframe as kf
from coprop_jax.models import layers
from coprop_jax.models import pvt_v2 as pm
from coprop_jax.train.tasks import kpf as keyframe_task
from coprop_jax.train.state import FAST_COMPILE, TrainState, make_optimizer, make_train_step

# LLVM -O0 and XLA:CPU's older loop emitters: ~2.4x less compile CPU time than FAST_COMPILE alone
# (4x less than the default) for the tiny KPF step (benchmarks/RESULTS.md); runs slower.
FAST = dict(FAST_COMPILE, xla_cpu_use_fusion_emitters=False)


def tiny(**kw):
  return kf.KeyframeProcessor(backbone="pvt_v2_b0", d_model=32, num_heads=4,
                              num_encoder_layers=2, num_decoder_layers=2, num_queries=2,
                              backbone_depths=(1, 1, 1, 2), **kw)


def random_params(model, hw=(32, 32), seed=0):
  """Random params of the model's shapes (no init compile); norms' scales near 1."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1,) + hw + (3,), jnp.float32),
                          jax.ShapeDtypeStruct((1, 128), jnp.float32))["params"]
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      return (1.0 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    fan_in = s.shape[-2] if len(s.shape) >= 2 else 1
    if "kernel" in name and len(s.shape) >= 4:   # conv [(L,) kh, kw, cin, cout]
      fan_in = math.prod(s.shape[-4:-1])
    return (rng.standard_normal(s.shape) / math.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


# ---- transformer layers: scan == unrolled == the per-layer loop they replace ----

def test_scanned_and_unrolled_layers_equal_per_layer_loop(rng):
  n, l, d, nl = 2, 6, 16, 3
  x = jnp.asarray(rng.normal(size=(n, l, d)), jnp.float32)
  pos = jnp.asarray(rng.normal(size=(n, l, d)), jnp.float32)
  q = jnp.asarray(rng.normal(size=(n, 2, d)), jnp.float32)
  qpos = jnp.asarray(rng.normal(size=(n, 2, d)), jnp.float32)

  class Stack(nn.Module):
    scan: bool

    @nn.compact
    def __call__(self, x, pos, q, qpos):
      x = layers.scan_layers(kf.EncoderLayer(4, name="enc"), x, pos, length=nl, scan=self.scan)
      q = layers.scan_layers(kf.DecoderLayer(4, name="dec"), q, qpos, x, pos, length=nl,
                             scan=self.scan)
      return x, q

  jit = lambda f: jax.jit(f, compiler_options=FAST)
  params = jax.eval_shape(Stack(True).init, jax.random.PRNGKey(0), x, pos, q, qpos)["params"]
  assert params["enc"]["mlp"]["fc1"]["kernel"].shape == (nl, d, 4 * d)
  params = jax.tree.map(lambda p: jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype)
                        + (1.0 if p.ndim == 2 else 0.0), params)   # random weights, norms ~1
  # reference: the per-layer modules of the previous formulation, applied one by one
  enc, dec = jit(kf.EncoderLayer(4).apply), jit(kf.DecoderLayer(4).apply)
  ref_x, ref_q = x, q
  for j in range(nl):
    ref_x = enc({"params": jax.tree.map(lambda p: p[j], params["enc"])}, ref_x, pos)
  for j in range(nl):
    ref_q = dec({"params": jax.tree.map(lambda p: p[j], params["dec"])}, ref_q, qpos, ref_x, pos)
  for scan in (True, False):
    got_x, got_q = jit(Stack(scan).apply)({"params": params}, x, pos, q, qpos)
    np.testing.assert_allclose(np.asarray(got_x), np.asarray(ref_x), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_q), np.asarray(ref_q), atol=1e-5)


def test_kpf_layout_upgrade():
  """An old per-layer KPF tree (encoder{j}, decoder{j}, backbone/stage{i}_block{j}) stacks into
  the current layout; the current layout passes unchanged; bad trees are named."""
  model = tiny()
  params = random_params(model)
  assert params["encoder_layers"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 128)
  assert params["backbone"]["stage3_blocks"]["norm1"]["scale"].shape == (2, 256)
  old = {k: v for k, v in params.items() if k not in ("encoder_layers", "decoder_layers")}
  old["backbone"] = pm.per_block_layout(params["backbone"])
  for kind in ("encoder", "decoder"):
    for j in range(2):
      old[f"{kind}{j}"] = jax.tree.map(lambda a: a[j], params[f"{kind}_layers"])
  assert "stage3_block1" in old["backbone"] and "encoder1" in old
  new = kf.upgrade_layout(old)
  assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
  jax.tree.map(np.testing.assert_array_equal, new, params)
  jax.tree.map(np.testing.assert_array_equal, kf.upgrade_layout(params), params)
  gap = dict(old)
  gap["encoder3"] = gap.pop("encoder1")
  with pytest.raises(ValueError, match="encoder layers numbered"):
    kf.upgrade_layout(gap)


# ---- attention through jax.nn.dot_product_attention vs the definition ----

def reference_attention(q, k, v, mask=None, bias=None):
  """softmax(q k^T / sqrt(D) + bias, masked) v, per head, in float64 numpy."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  if mask is not None:
    logits = np.where(np.broadcast_to(mask, logits.shape), logits, -np.inf)
  logits = logits - logits.max(-1, keepdims=True)
  w = np.exp(logits)
  w = w / w.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


def test_attention_matches_definition(rng):
  q = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
  k = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
  v = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
  bias = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)
  mask = rng.random((2, 1, 5, 7)) > 0.3
  mask[..., 0] = True    # every query sees at least one key
  key_mask = np.array([True, True, False, True, False, False, True])   # broadcasts (fewer dims)
  f = jax.jit(layers.dot_product_attention)
  for kw in (dict(), dict(bias=bias), dict(mask=mask), dict(mask=key_mask)):
    np.testing.assert_allclose(f(q, k, v, **kw), reference_attention(q, k, v, **kw), atol=2e-6)
  xla = jax.jit(functools.partial(layers.dot_product_attention, implementation="xla"))
  np.testing.assert_allclose(xla(q, k, v, bias=bias), reference_attention(q, k, v, bias=bias),
                             atol=2e-6)
  with pytest.raises(ValueError, match="implementation"):
    layers.dot_product_attention(q, k, v, implementation="flash")
  # bfloat16 inputs: float32 softmax, output in bfloat16, close to the float64 definition
  out = jax.jit(layers.dot_product_attention)(*(jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), reference_attention(q, k, v), atol=0.05)


# ---- the KPF train step: bfloat16 vs float32; no host round trips; donated state ----

def _batch(n_clips=2, t=1, hw=32, seed=0):
  r = np.random.default_rng(seed)
  return dict(frames=r.normal(size=(n_clips, t, hw, hw, 3)).astype(np.float32),
              masks=(r.random((n_clips, t, hw, hw)) > 0.5).astype(np.int32),
              gt_valid=np.ones((n_clips, t), bool), frame_valid=np.ones((n_clips, t), bool),
              audio_embed=r.normal(size=(n_clips, t, 128)).astype(np.float32),
              control_points=np.ones((n_clips, t), np.int32))


TC = ml_collections.ConfigDict(dict(optimizer="adam", lr=1e-3, weight_decay=0.0, grad_clip=0.0,
                                    loss=dict(bce_weight=1.0, iou_weight=1.0)))


def tiny_step_model(**kw):
  """The smallest KPF (1 block per stage, 1 encoder and 1 decoder layer) for train steps."""
  return kf.KeyframeProcessor(backbone="pvt_v2_b0", d_model=32, num_heads=4,
                              num_encoder_layers=1, num_decoder_layers=1, num_queries=2,
                              backbone_depths=(1, 1, 1, 1), **kw)


def test_bfloat16_forward_close_to_float32():
  """Same float32 params, compute in bfloat16: logits [N, H, W, 1] within 0.05 * max|logit|
  (bf16 keeps ~3 significant digits; norms, softmax and logits stay float32) and the same
  sign on >= 97% of pixels away from the decision boundary."""
  x = jnp.asarray(_batch()["frames"][:, 0])
  a = jnp.asarray(_batch()["audio_embed"][:, 0])
  params = random_params(tiny_step_model())
  out = {}
  for dt in ("float32", "bfloat16"):
    model = tiny_step_model(dtype=jnp.dtype(dt))
    out[dt] = np.asarray(jax.jit(model.apply, compiler_options=FAST)({"params": params}, x, a))
  f32, bf16 = out["float32"], out["bfloat16"]
  assert bf16.dtype == np.float32 and np.all(np.isfinite(bf16))
  scale = float(np.max(np.abs(f32)))
  assert float(np.max(np.abs(bf16 - f32))) <= 0.05 * scale, (np.max(np.abs(bf16 - f32)), scale)
  clear = np.abs(f32) > 0.05 * scale
  assert np.mean(np.sign(bf16[clear]) == np.sign(f32[clear])) >= 0.97


@pytest.mark.slow
def test_bfloat16_gradients_close_to_float32():
  """Loss within 2% and per-module gradient cosine similarity >= 0.99 (modules with a gradient
  norm > 1e-3) of the float32 computation, same float32 params."""
  batch = jax.device_put(_batch())
  params = random_params(tiny())
  out = {}
  for dt in ("float32", "bfloat16"):
    model = tiny(dtype=jnp.dtype(dt))
    loss_fn = keyframe_task.make_loss_fn(model, TC, keyframes_only=False)
    grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), compiler_options=FAST)
    (loss, _), g = grad(params, {}, batch, jax.random.PRNGKey(0), 0)
    out[dt] = (float(loss), g)
  (l32, g32), (l16, g16) = out["float32"], out["bfloat16"]
  assert np.isfinite(l16) and abs(l16 - l32) <= 0.02 * abs(l32), (l16, l32)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g16))   # params stay float32
  checked = 0
  for name in g32:
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32[name])])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16[name])])
    if np.linalg.norm(a) > 1e-3:
      cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
      assert cos >= 0.99, (name, cos)
      checked += 1
  assert checked >= 10


@pytest.mark.slow   # ~40 s: a train-step compile (the default suite compiles one in test_train.py)
def test_train_step_no_host_transfers_and_donates_state():
  """The KPF train step (bfloat16 compute, float32 params) runs twice inside
  jax.transfer_guard("disallow") on device-resident inputs and donates the old state."""
  model = tiny_step_model(dtype=jnp.bfloat16)
  step = make_train_step(keyframe_task.make_loss_fn(model, TC, keyframes_only=False),
                         compiler_options=FAST)
  state = jax.device_put(TrainState.create(random_params(model), make_optimizer(TC)))
  batch = jax.device_put(_batch())
  old_leaves = jax.tree.leaves(state.params)
  with jax.transfer_guard("disallow"):
    new, metrics = step(state, batch)
    new, metrics = step(new, batch)
  assert all(x.is_deleted() for x in old_leaves)          # donated: buffers reused
  assert int(new.step) == 2 and np.isfinite(float(metrics["loss"]))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.params))
  # the guard is live: a host -> device transfer inside it raises
  with pytest.raises(Exception, match="[Dd]isallowed"):
    with jax.transfer_guard("disallow"):
      step(new, _batch())


# ---- convolutions with a written-out backward pass vs PyTorch autograd ----

def _torch_conv_and_grads(x, w, dy, groups=1, stride=1, dilation=1, pad=None):
  """PyTorch reference: conv2d forward and (dx, dw) for cotangent dy, NHWC / HWIO layouts."""
  import torch
  k = w.shape[0]
  pad = dilation * (k // 2) if pad is None else pad
  tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
  y = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad, dilation=dilation,
                                 groups=groups)
  y.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
  return (y.detach().numpy().transpose(0, 2, 3, 1), tx.grad.numpy().transpose(0, 2, 3, 1),
          tw.grad.numpy().transpose(2, 3, 1, 0))


def _fwd_bwd(f):
  """jit(x, w, dy -> (f(x, w), dx, dw))."""
  def run(x, w, dy):
    y, vjp = jax.vjp(f, x, w)
    return (y,) + vjp(dy)
  return jax.jit(run, compiler_options=FAST)


@pytest.mark.parametrize("k", [1, 3])
def test_conv_same_and_its_gradients_match_torch(rng, k):
  x = rng.normal(size=(2, 7, 9, 5)).astype(np.float32)
  w = rng.normal(size=(k, k, 5, 6)).astype(np.float32)
  dy = rng.normal(size=(2, 7, 9, 6)).astype(np.float32)
  y, dx, dw = _fwd_bwd(layers.conv_same)(x, w, dy)
  ry, rdx, rdw = _torch_conv_and_grads(x, w, dy)
  for got, want in ((y, ry), (dx, rdx), (dw, rdw)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
  # the module: nn.Conv's parameters, same output
  conv = layers.Conv(6, k)
  variables = conv.init(jax.random.PRNGKey(0), x)
  ref = nn.Conv(6, (k, k), padding="SAME")
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, ref.init(jax.random.PRNGKey(0), x))
  np.testing.assert_allclose(np.asarray(jax.jit(conv.apply)(variables, x)),
                             np.asarray(jax.jit(ref.apply)(variables, x)), atol=1e-5)
  with pytest.raises(ValueError, match="odd square"):
    layers.conv_same(x, np.zeros((2, 2, 5, 6), np.float32))


@pytest.mark.parametrize("dilation,stride,pad", [(1, 1, 1), (2, 1, 2), (1, 2, 1)])
def test_depthwise_shift_gradients_match_torch(rng, dilation, stride, pad):
  """Stride 1 "same" uses the written-out backward pass; the strided case autodiff."""
  c = 6
  x = rng.normal(size=(2, 9, 8, c)).astype(np.float32)
  w = rng.normal(size=(3, 3, 1, c)).astype(np.float32)
  bias = rng.normal(size=(c,)).astype(np.float32)
  f = lambda x, w: layers.depthwise_shift(x, w, stride, dilation, pad, bias=jnp.asarray(bias))
  ho, wo = (9 + 2 * pad - 2 * dilation - 1) // stride + 1, (8 + 2 * pad - 2 * dilation - 1) // stride + 1
  dy = rng.normal(size=(2, ho, wo, c)).astype(np.float32)
  y, dx, dw = _fwd_bwd(f)(x, w, dy)
  ry, rdx, rdw = _torch_conv_and_grads(x, w, dy, groups=c, stride=stride, dilation=dilation,
                                       pad=pad)
  for got, want in ((y, ry + bias), (dx, rdx), (dw, rdw)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)


def test_config_fields_reach_the_model():
  from configs.parts.keyframe import get_keyframe_config
  c = get_keyframe_config()
  m = kf.from_config(c)
  assert (m.scan_layers, m.remat, m.attention_impl, m.dtype) == (True, False, "auto", jnp.float32)
  c.scan_layers, c.remat, c.attention_impl, c.dtype = False, True, "xla", "bfloat16"
  m = kf.from_config(c)
  assert (m.scan_layers, m.remat, m.attention_impl, m.dtype) == (False, True, "xla", jnp.bfloat16)
  c.attention_impl = "flash"
  with pytest.raises(ValueError, match="keyframe.attention_impl"):
    kf.from_config(c)
  c.attention_impl, c.dtype = "auto", "float16"
  with pytest.raises(ValueError, match="keyframe.dtype"):
    kf.from_config(c)
