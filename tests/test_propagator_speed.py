"""The fast stage-2 step against the formulation it replaced: same loss and gradients.

Old: `make_train_forward(formulation="per_frame")` (encoder inside the frame scan, `lax.cond` on
padding frames, XLA convolutions) with every parameter differentiated. New: the default
"batched" forward (encoder once on all frames, `propagation.propagate_train`), the "shift"
convolution forms, and frozen parameters outside the differentiated tree."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_base_config
from coprop_jax.models import propagator as P
from coprop_jax.train import propagator_losses as PLS
from coprop_jax.train.state import FAST_COMPILE, value_and_trained_grad


def tiny_config(conv_impl, encoder="mobilenet_v2"):
  cfg = get_base_config()
  p = cfg.propagator
  p.num_layers, p.d_model, p.num_heads, p.ffn_dim, p.local_max_dis, p.memory_slots = 1, 32, 4, 64, 1, 2
  p.num_audio_tokens, p.max_objects, p.encoder, p.conv_impl = 2, 3, encoder, conv_impl
  cfg.keyframe.num_classes = 1
  cfg.train.num_steps = 10
  return cfg


def clips(b=2, t=4, size=32, seed=0, pad_last=True):
  rng = np.random.default_rng(seed)
  fv = np.ones((b, t), bool)
  if pad_last:
    fv[:, -1] = False                     # a length-bucket padding frame (old: lax.cond skips it)
  gt = np.ones((b, t), bool)
  gt[0, 2] = False                        # a frame without GT: no teacher there
  cps = np.zeros((b, t), np.int32)
  cps[:, 0] = 1
  return dict(frames=rng.normal(size=(b, t, size, size, 3)).astype(np.float32),
              masks=(rng.random((b, t, size, size)) > 0.6).astype(np.int32),
              gt_valid=gt, frame_valid=fv, control_points=cps,
              audio_embed=rng.normal(size=(b, t, 128)).astype(np.float32))


def _max_rel(a, b):
  """Largest per-leaf max |a - b| / max |b|, a leaf's scale floored at 1e-3 of the largest
  leaf's (gradients that are exactly zero in theory, e.g. an attention key's bias, are float
  noise in both)."""
  top = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))
  return max(float(jnp.max(jnp.abs(x - y))) / max(float(jnp.max(jnp.abs(y))), 1e-3 * top, 1e-30)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("step", [0, 7])   # teacher forcing / sequential training (ID bank frozen)
def test_fast_step_matches_the_old_formulation(step):
  from propagator_helpers import fake_encode, propagator_shapes, random_like
  old_cfg, new_cfg = tiny_config("xla"), tiny_config("shift")
  new_cfg.propagator.remat = True          # remat changes no number
  params = {"propagator": random_like(propagator_shapes(P.from_config(old_cfg.propagator), 32, 32),
                                      seed=1), "encoder": {}}
  batch = clips()
  old = PLS.make_loss_fn(old_cfg, encode=fake_encode, formulation="per_frame")
  new = PLS.make_loss_fn(new_cfg, encode=fake_encode)
  args = ({"encoder": {}}, batch, jax.random.PRNGKey(3), jnp.int32(step))
  (l0, a0), g0 = jax.jit(jax.value_and_grad(old, has_aux=True), compiler_options=FAST_COMPILE)(params, *args)
  (l1, a1), g1 = jax.jit(jax.value_and_grad(new, has_aux=True), compiler_options=FAST_COMPILE)(params, *args)
  assert float(a0["num_frames"]) == float(a1["num_frames"]) == 3.0
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  for k in ("ce", "jaccard"):
    np.testing.assert_allclose(float(a1[k]), float(a0[k]), rtol=1e-5)
  assert _max_rel(g1, g0) < 1e-4, _max_rel(g1, g0)
  bank = g1["propagator"]["patch_wise_id_bank"]["kernel"]
  assert (float(jnp.abs(bank).max()) == 0.0) == (step >= old.switch_step)


@pytest.mark.slow  # ~1-2 min: two BPTT compiles with the real MobileNetV2
def test_fast_step_matches_with_the_real_encoder_and_frozen_stages():
  """MobileNetV2 encoder: its frozen stages are not differentiated by the new step; the trained
  leaves' gradients equal those of differentiating everything."""
  from coprop_jax.train.tasks.propagator import PropagatorTask, split_train_params
  from coprop_jax import pipeline
  old_cfg, new_cfg = tiny_config("xla"), tiny_config("shift")
  params, extra = split_train_params(pipeline.init_params(old_cfg, jax.random.PRNGKey(0), 32,
                                                          audio_logmel=False))
  task = PropagatorTask(new_cfg)
  trainable = task.trainable(params)
  assert 0 < sum(r == 0 for r in jax.tree.leaves(trainable)) < len(jax.tree.leaves(trainable))
  batch = clips()
  old = PLS.make_loss_fn(old_cfg, formulation="per_frame")
  new = PLS.make_loss_fn(new_cfg)
  args = (extra, batch, jax.random.PRNGKey(3), jnp.int32(0))
  (l0, _), g0 = jax.jit(jax.value_and_grad(old, has_aux=True), compiler_options=FAST_COMPILE)(params, *args)
  (l1, _), g1 = jax.jit(lambda p, *a: value_and_trained_grad(new, p, trainable, *a),
                        compiler_options=FAST_COMPILE)(params, *args)
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  for r, a, b in zip(jax.tree.leaves(trainable), jax.tree.leaves(g1), jax.tree.leaves(g0)):
    if r == 0:
      assert float(jnp.abs(a).max()) == 0.0
    else:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3,
                                 atol=1e-5 * float(jnp.abs(b).max()) + 1e-9)


@pytest.mark.parametrize("kernel,stride,pad,groups,cin,features,hw", [
    (1, 1, 0, 1, 5, 8, 9), (3, 1, 1, 1, 5, 8, 9), (5, 1, 2, 6, 6, 6, 9), (1, 1, 0, 3, 6, 12, 7),
    (17, 16, 8, 1, 3, 8, 64), (17, 16, 8, 1, 3, 8, 50)])
def test_conv_forms_match_nn_conv(kernel, stride, pad, groups, cin, features, hw):
  """Every `ConvP` form has nn.Conv's parameters (names, shapes, initial values) and its
  outputs and gradients (the ID bank's 17x17/16 patch matmul included)."""
  import flax.linen as nn
  x = jax.random.normal(jax.random.PRNGKey(0), (2, hw, hw, cin))
  ref = nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad,
                feature_group_count=groups)
  v = ref.init(jax.random.PRNGKey(1), x)
  loss = lambda m: (lambda vv: jnp.sum(jnp.sin(m.apply(vv, x))))
  y0, g0 = ref.apply(v, x), jax.grad(loss(ref))(v)
  for impl in P.CONV_IMPLS:
    m = P.ConvP(features, kernel, stride, pad, groups, impl=impl)
    v1 = m.init(jax.random.PRNGKey(1), x)
    assert jax.tree.structure(v1) == jax.tree.structure(v)
    assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(v1), jax.tree.leaves(v)))
    np.testing.assert_allclose(np.asarray(m.apply(v, x)), np.asarray(y0), atol=2e-5, rtol=1e-5)
    assert _max_rel(jax.grad(loss(m))(v), g0) < 1e-5


def test_conv_impl_default_follows_the_backend():
  assert P.resolve_conv_impl("auto") == ("shift" if jax.default_backend() == "cpu" else "xla")
  assert P.resolve_conv_impl("xla") == "xla"
  with pytest.raises(ValueError, match="conv_impl"):
    P.resolve_conv_impl("cudnn")
