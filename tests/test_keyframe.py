"""Keyframe Processor: shapes, input checks, audio dependence, plug-and-play mask files."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coprop_jax.eval import keyframe_masks as km
from coprop_jax.models.keyframe import KeyframeProcessor
from coprop_jax.train.state import FAST_COMPILE


def tiny(num_classes=1, **kw):
  return KeyframeProcessor(backbone="pvt_v2_b0", d_model=32, num_heads=4, num_encoder_layers=1,
                           num_decoder_layers=1, num_queries=2, num_classes=num_classes,
                           backbone_depths=(1, 1, 1, 1), **kw)


@pytest.mark.parametrize("num_classes,hw", [(1, (64, 96)), (71, (96, 64)), (1, (32, 32))])
def test_output_shapes(num_classes, hw):
  m = tiny(num_classes)
  x = jax.ShapeDtypeStruct((3,) + hw + (3,), jnp.float32)
  a = jax.ShapeDtypeStruct((3, 128), jnp.float32)
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), x, a)
  y = jax.eval_shape(m.apply, v, x, a)
  assert y.shape == (3,) + hw + (num_classes,) and y.dtype == jnp.float32


@pytest.mark.slow   # ~20 s of compiles; the default audio-dependence check is in test_train.py
def test_forward_depends_on_audio_and_is_finite():
  m = tiny(1)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  a = jnp.asarray(rng.normal(size=(2, 128)), jnp.float32)
  v = jax.jit(m.init, compiler_options=FAST_COMPILE)(jax.random.PRNGKey(0), x, a)
  f = jax.jit(m.apply, compiler_options=FAST_COMPILE)
  y1, y2 = f(v, x, a), f(v, x, -a)
  assert y1.shape == (2, 32, 32, 1) and bool(jnp.all(jnp.isfinite(y1)))
  assert float(jnp.max(jnp.abs(y1 - y2))) > 1e-4
  # frames are independent: frame 0's output does not depend on frame 1's audio
  a2 = a.at[1].set(0.0)
  np.testing.assert_allclose(np.asarray(f(v, x, a2)[0]), np.asarray(y1[0]), atol=1e-5)


def test_bad_inputs():
  m = tiny(1)
  with pytest.raises(ValueError, match="divisible by 32"):
    jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 48, 64, 3)), jnp.zeros((1, 128)))
  with pytest.raises(ValueError, match="audio_embed"):
    jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64)))
  with pytest.raises(ValueError, match="unknown backbone"):
    KeyframeProcessor(backbone="vit").init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                           jnp.zeros((1, 128)))


def _masks(rng):
  return {("vidA", 0): rng.integers(0, 3, (8, 10)), ("vidA", 3): rng.integers(0, 3, (8, 10)),
          ("v_b", 0): np.zeros((8, 10), int)}


@pytest.mark.parametrize("fmt", ["npz", "png"])
def test_keyframe_mask_files_roundtrip(tmp_path, rng, fmt):
  masks = _masks(rng)
  if fmt == "npz":
    path = str(tmp_path / "pred.npz")
    km.write_npz(path, masks)
  else:
    path = str(tmp_path / "pred")
    km.write_png_dir(path, masks)
  src = km.KeyframeMaskSource(path)
  assert src.keys() == sorted(masks)
  for k, m in masks.items():
    np.testing.assert_array_equal(src.get(*k), m)
  clip, present = src.clip_masks("vidA", [1, 0, 0, 1, 0], (8, 10))
  np.testing.assert_array_equal(present, [1, 0, 0, 1, 0])
  np.testing.assert_array_equal(clip[3], masks[("vidA", 3)])
  assert clip[1].sum() == 0
  big, _ = src.clip_masks("vidA", [1, 0], (16, 20))
  np.testing.assert_array_equal(big[0][::2, ::2], masks[("vidA", 0)])
  assert km.KeyframeMaskSource(path, binary=True).get("vidA", 0).max() <= 1
  with pytest.raises(KeyError, match="vidA.*frame 2"):
    src.clip_masks("vidA", [1, 0, 1], (8, 10))


def test_keyframe_mask_source_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a directory"):
    km.KeyframeMaskSource(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "bad.npz", nokey=np.zeros((2, 2)))
  with pytest.raises(ValueError, match="video_id"):
    km.KeyframeMaskSource(str(tmp_path / "bad.npz"))


def test_resnet50_backbone_shapes_and_frozen_bn_collection():
  m = KeyframeProcessor(backbone="resnet50", d_model=32, num_heads=4, num_encoder_layers=1,
                        num_decoder_layers=1, num_classes=71)
  x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
  a = jax.ShapeDtypeStruct((2, 128), jnp.float32)
  v = jax.eval_shape(m.init, jax.random.PRNGKey(0), x, a)
  assert set(v) == {"params", "batch_stats"}
  assert jax.eval_shape(m.apply, v, x, a).shape == (2, 64, 96, 71)
