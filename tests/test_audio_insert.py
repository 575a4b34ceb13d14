"""The audio insert against paper eq. 6 written from the equation: with one head and an identity
output projection, AudioInsert(x, a) - x = softmax(Q K^T / sqrt(d)) V, Q = x W_q + b_q,
K = a W_k + b_k, V = a W_v + b_v (numpy, float64)."""
import jax
import jax.numpy as jnp
import numpy as np

from coprop_jax.models.propagator import AudioInsert


def test_single_head_identity_projection_is_equation_6():
  rng = np.random.default_rng(0)
  b, h, w, c, na, ca = 2, 3, 4, 8, 5, 6
  x = rng.normal(size=(b, h, w, c)).astype(np.float32)
  a = rng.normal(size=(b, na, ca)).astype(np.float32)
  m = AudioInsert(num_heads=1, dim=c)
  params = m.init(jax.random.PRNGKey(0), jnp.asarray(x), jnp.asarray(a))["params"]
  # zero-initialised projection: the identity at init
  np.testing.assert_array_equal(np.asarray(m.apply({"params": params}, x, a)), x)
  params = jax.tree.map(np.asarray, params)
  params["projection"] = dict(kernel=np.eye(c, dtype=np.float32), bias=np.zeros(c, np.float32))
  out = np.asarray(m.apply({"params": params}, x, a), np.float64)
  P = lambda n, v: v.astype(np.float64) @ params[n]["kernel"].astype(np.float64) + params[n]["bias"]
  for i in range(b):
    q = P("query", x[i].reshape(h * w, c))
    k, v = P("key", a[i]), P("value", a[i])
    logits = q @ k.T / np.sqrt(c)
    e = np.exp(logits - logits.max(1, keepdims=True))
    att = e / e.sum(1, keepdims=True)
    want = att @ v
    np.testing.assert_allclose(out[i].reshape(h * w, c) - x[i].reshape(h * w, c), want,
                               rtol=1e-4, atol=1e-5)
  # with several heads the output differs from the one-head equation (heads are ours)
  m8 = AudioInsert(num_heads=2, dim=c)
  p8 = dict(params)
  out8 = np.asarray(m8.apply({"params": p8}, x, a))
  assert np.abs(out8 - out).max() > 1e-4
