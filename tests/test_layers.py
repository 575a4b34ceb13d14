"""Shared building blocks vs their PyTorch / reference definitions."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from coprop_jax.models import layers


def test_group_norm_matches_torch(rng):
  x = rng.normal(size=(2, 5, 7, 32)).astype(np.float32)
  ref = torch.nn.GroupNorm(8, 32, eps=1e-5)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(rng.normal(size=32).astype(np.float32)))
    ref.bias.copy_(torch.from_numpy(rng.normal(size=32).astype(np.float32)))
  want = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  params = {"scale": ref.weight.detach().numpy(), "bias": ref.bias.detach().numpy()}
  got = layers.GroupNorm(8).apply({"params": params}, x)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_layer_norm_matches_torch_and_keeps_float32_stats(rng):
  x = (rng.normal(size=(3, 10, 48)) * 50 + 100).astype(np.float32)
  want = torch.nn.functional.layer_norm(torch.from_numpy(x), (48,), eps=1e-6).numpy()
  params = {"scale": np.ones(48, np.float32), "bias": np.zeros(48, np.float32)}
  np.testing.assert_allclose(layers.LayerNorm(1e-6).apply({"params": params}, x), want, atol=1e-4)
  out = layers.LayerNorm(1e-6, dtype=jnp.bfloat16).apply({"params": params}, x.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=0.05)


def test_frozen_batch_norm_matches_torch_eval(rng):
  bn = torch.nn.BatchNorm2d(6).eval()
  with torch.no_grad():
    for t in (bn.weight, bn.bias, bn.running_mean):
      t.copy_(torch.from_numpy(rng.normal(size=6).astype(np.float32)))
    bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, size=6).astype(np.float32)))
  x = rng.normal(size=(2, 4, 4, 6)).astype(np.float32)
  want = bn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  variables = {"params": {"scale": bn.weight.detach().numpy(), "bias": bn.bias.detach().numpy()},
               "batch_stats": {"mean": bn.running_mean.numpy(), "var": bn.running_var.numpy()}}
  np.testing.assert_allclose(layers.FrozenBatchNorm().apply(variables, x), want, atol=1e-5)


def test_multi_head_attention_matches_torch(rng):
  d, h = 16, 4
  ref = torch.nn.MultiheadAttention(d, h, batch_first=True)
  q = rng.normal(size=(2, 5, d)).astype(np.float32)
  kv = rng.normal(size=(2, 7, d)).astype(np.float32)
  want = ref(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv))[0].detach().numpy()
  w, b = ref.in_proj_weight.detach().numpy(), ref.in_proj_bias.detach().numpy()
  params = {name: {"kernel": w[i * d:(i + 1) * d].T, "bias": b[i * d:(i + 1) * d]}
            for i, name in enumerate(("query", "key", "value"))}
  params["out"] = {"kernel": ref.out_proj.weight.detach().numpy().T,
                   "bias": ref.out_proj.bias.detach().numpy()}
  got = layers.MultiHeadAttention(num_heads=h).apply({"params": params}, q, kv)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_attention_mask_excludes_keys(rng):
  q = jnp.asarray(rng.normal(size=(1, 3, 2, 4)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 5, 2, 4)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(1, 5, 2, 4)), jnp.float32)
  mask = jnp.array([True, True, False, False, False])[None, None, None, :]
  full = layers.dot_product_attention(q, k[:, :2], v[:, :2])
  np.testing.assert_allclose(layers.dot_product_attention(q, k, v, mask=mask), full, atol=1e-6)


def test_sine_position_embedding_follows_detr_formula():
  h, w, f = 3, 5, 8
  pos = np.asarray(layers.sine_position_embedding_2d(h, w, num_pos_feats=f))
  assert pos.shape == (h, w, 2 * f)
  # DETR (all-ones mask): y = (i+1)/(H+eps)*2pi; dim_t = 10000^(2*(k//2)/F); even k sin, odd k cos.
  i, j, k = 1, 4, 3
  y = (i + 1) / (h + 1e-6) * 2 * math.pi
  x = (j + 1) / (w + 1e-6) * 2 * math.pi
  dim_t = 10000 ** (2 * (k // 2) / f)
  assert pos[i, j, k] == pytest.approx(math.cos(y / dim_t), abs=1e-6)
  assert pos[i, j, f + k] == pytest.approx(math.cos(x / dim_t), abs=1e-6)
  assert pos[i, j, 2] == pytest.approx(math.sin(y / 10000 ** (2 / f)), abs=1e-6)


def test_drop_path_drops_whole_examples():
  x = jnp.ones((64, 3, 3))
  out = layers.DropPath(0.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  per_example = np.asarray(out).reshape(64, -1)
  assert set(np.unique(per_example)) <= {0.0, 2.0}
  assert np.all(per_example.min(1) == per_example.max(1))
  assert 10 < (per_example[:, 0] == 0).sum() < 54
  np.testing.assert_array_equal(layers.DropPath(0.5).apply({}, x), x)


@pytest.mark.parametrize("shape,match", [((2, 8, 8), "rank-4"), ((2, 8, 8, 1), "3 channels")])
def test_check_image_errors(shape, match):
  with pytest.raises(ValueError, match=match):
    layers.check_image(jnp.zeros(shape))
