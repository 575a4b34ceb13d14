"""Propagator tests (CPU, tiny configs)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coprop_jax.convert import aot as aot_convert
from coprop_jax.models import propagator as P

B, H, W = 1, 64, 64
ENC = (8, 8, 8, 16)  # channels of the fake encoder levels (1/4, 1/8, 1/16, 1/16)


def tiny(**kw):
  args = dict(num_layers=2, d_model=32, num_heads=4, ffn_dim=64, max_objects=1, local_max_dis=2,
              drop_path=0.1)
  args.update(kw)
  return P.Propagator(**args)


def feats(t, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  shp = [(16, 16), (8, 8), (4, 4), (4, 4)]
  return [jax.random.normal(k, (B, t) + s + (c,)) for k, s, c in zip(ks, shp, ENC)]


def make(model, t=4, seed=0):
  fs = feats(t, seed)
  mask = jnp.zeros((B, H, W), jnp.int32).at[:, 10:30, 12:40].set(1)
  if model.max_objects > 1:
    mask = mask.at[:, 40:60, 30:60].set(model.max_objects)
  audio = jax.random.normal(jax.random.PRNGKey(seed + 7), (B, t, 128))
  params = P.init_params(model, jax.random.PRNGKey(1), [f[:, 0] for f in fs], audio[:, 0, None],
                         jax.nn.one_hot(mask, model.max_objects + 1))
  return params, mask, fs, audio


@pytest.mark.parametrize("max_objects", [1, 3])
def test_shapes(max_objects):
  m = tiny(max_objects=max_objects)
  params, mask, fs, audio = make(m, t=3)
  out = jax.jit(lambda p, mk, f, a: P.propagate_features(m, p, mk, f, a, memory_slots=2, mem_gap=1))(
      params, mask, fs, audio)
  assert out.shape == (B, 3, H, W, max_objects + 1)
  assert bool(jnp.isfinite(out).all())
  np.testing.assert_array_equal(np.argmax(out[:, 0], -1), np.asarray(mask))


def test_local_attention_equals_bruteforce():
  rng = np.random.default_rng(0)
  b, h, w, nh, d, md = 2, 5, 6, 2, 3, 2
  win = 2 * md + 1
  q, k, v = (rng.standard_normal((b, h, w, nh, d)).astype(np.float32) for _ in range(3))
  rel_k = rng.standard_normal((b, h, w, nh, win * win)).astype(np.float32)
  rel_v = rng.standard_normal((nh, d, win * win)).astype(np.float32)
  got = np.asarray(P.local_attention(*map(jnp.asarray, (q, k, v, rel_k, rel_v)), md))
  want = np.zeros_like(got)
  for bi in range(b):
    for y in range(h):
      for x in range(w):
        for n in range(nh):
          logits, vals, idx = [], [], []
          for yy in range(h):
            for xx in range(w):
              dy, dx = yy - y, xx - x
              if abs(dy) <= md and abs(dx) <= md:
                j = (dy + md) * win + (dx + md)
                logits.append(q[bi, y, x, n] @ k[bi, yy, xx, n] + rel_k[bi, y, x, n, j])
                vals.append(v[bi, yy, xx, n] + rel_v[n, :, j])
          a = np.exp(np.array(logits) - max(logits))
          a /= a.sum()
          want[bi, y, x, n] = (a[:, None] * np.array(vals)).sum(0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_scan_is_causal_step_by_step():
  """Frame t of a T-frame scan equals the last frame of the scan over frames[:t+1]
  (each step only sees the carry of earlier steps), with memory writes every frame."""
  m = tiny()
  params, mask, fs, audio = make(m, t=4)
  run = lambda f, a: P.propagate_features(m, params, mask, f, a, memory_slots=2, mem_gap=1)
  full = run(fs, audio)
  for t in (2, 3):
    part = run([f[:, :t] for f in fs], audio[:, :t])
    np.testing.assert_allclose(np.asarray(full[:, t - 1]), np.asarray(part[:, -1]), rtol=1e-4, atol=1e-4)


def test_frame_valid_freezes_memory():
  m = tiny()
  params, mask, fs, audio = make(m, t=4)
  fv = jnp.array([[True, False, True, True]])
  out = P.propagate_features(m, params, mask, fs, audio, frame_valid=fv, memory_slots=2, mem_gap=1)
  # Dropping frame 1 entirely gives the same frames 2, 3.
  sel = lambda x: jnp.concatenate([x[:, :1], x[:, 2:]], 1)
  ref = P.propagate_features(m, params, mask, [sel(f) for f in fs], sel(audio), memory_slots=2, mem_gap=1)
  np.testing.assert_allclose(np.asarray(out[:, 2:]), np.asarray(ref[:, 1:]), rtol=1e-4, atol=1e-4)


def aot_state_dict(layers=2, d=32, heads=4, ffn=64, ids=2, md=2, enc=ENC, seed=0):
  """Synthetic aot-benchmark state dict: AOT's key names and torch shapes."""
  rng = np.random.default_rng(seed)
  r = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)
  w2 = (2 * md + 1) ** 2
  sd = {"encoder_projector.weight": r(d, enc[3], 1, 1), "encoder_projector.bias": r(d),
        "patch_wise_id_bank.weight": r(d, ids, 17, 17), "patch_wise_id_bank.bias": r(d)}
  for l in range(layers):
    k = f"LSTT.layers.{l}."
    for n in ("norm1", "norm2", "norm3"):
      sd[k + n + ".weight"], sd[k + n + ".bias"] = 1 + r(d), r(d)
    for n in ("linear_Q", "linear_V", "self_attn.linear_Q", "self_attn.linear_K", "self_attn.linear_V",
              "self_attn.projection", "long_term_attn.projection", "short_term_attn.projection"):
      sd[k + n + ".weight"], sd[k + n + ".bias"] = r(d, d), r(d)
    sd[k + "linear1.weight"], sd[k + "linear1.bias"] = r(ffn, d), r(ffn)
    sd[k + "linear2.weight"], sd[k + "linear2.bias"] = r(d, ffn), r(d)
    sd[k + "short_term_attn.relative_emb_k.weight"] = r(heads * w2, d // heads, 1, 1)
    sd[k + "short_term_attn.relative_emb_k.bias"] = r(heads * w2)
    sd[k + "short_term_attn.relative_emb_v"] = r(heads, d // heads, w2)
    sd[k + "activation.gn.weight"], sd[k + "activation.gn.bias"] = 1 + r(ffn), r(ffn)
    sd[k + "activation.conv.weight"] = r(ffn, 1, 5, 5)
    sd[f"LSTT.decoder_norms.{l}.weight"], sd[f"LSTT.decoder_norms.{l}.bias"] = 1 + r(d), r(d)
  dec_in = {"conv_in": (d, d * (layers + 1), 1), "conv_16x": (d, d, 3), "conv_8x": (d // 2, d, 3),
            "conv_4x": (d // 2, d // 2, 3)}
  for n, (o, i, kk) in dec_in.items():
    sd[f"decoder.{n}.conv.weight"] = r(o, i, kk, kk)
    sd[f"decoder.{n}.gn.weight"], sd[f"decoder.{n}.gn.bias"] = 1 + r(o), r(o)
  for n, (o, i) in {"adapter_16x": (d, enc[2]), "adapter_8x": (d, enc[1]), "adapter_4x": (d // 2, enc[0]),
                    "conv_out": (ids, d // 2)}.items():
    sd[f"decoder.{n}.weight"], sd[f"decoder.{n}.bias"] = r(o, i, 1, 1), r(o)
  sd["encoder.features.0.0.weight"] = r(4, 3, 3, 3)  # stands in for the encoder family
  return {"state_dict": {"module." + k: v for k, v in sd.items()}}


def test_aot_conversion_and_zero_effect_audio_insert():
  sd = aot_state_dict()
  m_av = tiny(audio_insert_levels=(0, 1, 2, 3), identity_from_audio=True)
  m_v = tiny(audio_insert_levels=(), identity_from_audio=False)
  p_av0, mask, fs, audio = make(m_av)
  p_v0, *_ = make(m_v)
  p_av = aot_convert.from_torch_state_dict(sd, p_av0, 2, encoder=None)["propagator"]
  p_v = aot_convert.from_torch_state_dict(sd, p_v0, 2, encoder=None)["propagator"]
  np.testing.assert_array_equal(p_v["layers_1"]["linear1"]["kernel"],
                                sd["state_dict"]["module.LSTT.layers.1.linear1.weight"].T)
  o_av = P.propagate_features(m_av, p_av, mask, fs, audio, memory_slots=2, mem_gap=2)
  o_v = P.propagate_features(m_v, p_v, mask, fs, audio, memory_slots=2, mem_gap=2)
  np.testing.assert_allclose(np.asarray(o_av), np.asarray(o_v), rtol=1e-5, atol=1e-5)
  # A stray key or a missing one is reported.
  bad = {"state_dict": dict(sd["state_dict"], **{"module.LSTT.extra": np.zeros(1, np.float32)})}
  with pytest.raises(aot_convert.CheckpointError, match="LSTT.extra"):
    aot_convert.from_torch_state_dict(bad, p_v0, 2, encoder=None)
  short = {"state_dict": {k: v for k, v in sd["state_dict"].items() if "conv_out.bias" not in k}}
  with pytest.raises(aot_convert.CheckpointError, match="conv_out.bias"):
    aot_convert.from_torch_state_dict(short, p_v0, 2, encoder=None)


@pytest.mark.slow  # ~2 min on the shared 2-core box (BPTT + remat compile)
def test_gradients_reach_every_parameter():
  m = tiny(audio_insert_levels=(0, 3), identity_from_audio=True)
  params, mask, fs, audio = make(m, t=3)
  # Zero-init outputs block gradients to the parameters behind them at init; perturb them so
  # every parameter is reachable (at the exact zero-init only the projections themselves get grads).
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 if any(getattr(k, "key", "") in ("projection", "id_audio", "relative_emb_v")
                                      for k in path) else x, params)
  target = jax.nn.one_hot(jnp.broadcast_to(mask[:, None], (B, 3, H, W)), 2)
  # Two audio tokens per frame: with a single token the audio softmax is constant 1, so the audio
  # query/key projections get exactly zero gradient (expected, not a bug).
  audio = jnp.stack([audio, 0.5 * audio + 1.0], axis=2)

  def loss(p):
    lg = P.propagate_features(m, p, mask, fs, audio, memory_slots=2, mem_gap=1, train=True,
                              rng=jax.random.PRNGKey(3), remat=True)
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(lg[:, 1:]) * target[:, 1:], -1))

  g = jax.grad(loss)(params)
  flat = jax.tree_util.tree_flatten_with_path(g)[0]
  zero = [jax.tree_util.keystr(k) for k, v in flat if not np.any(np.asarray(v))]
  assert not zero, zero


def test_jit_compiles_once_per_clip_length():
  m = tiny(num_layers=1)
  fn = jax.jit(lambda p, mk, f, a: P.propagate_features(m, p, mk, f, a, memory_slots=2, mem_gap=2))
  params, mask, fs, audio = make(m, t=3)
  fn(params, mask, fs, audio)
  _, _, fs2, audio2 = make(m, t=3, seed=5)
  fn(params, mask, fs2, audio2)
  assert fn._cache_size() == 1
  _, _, fs3, audio3 = make(m, t=5)
  fn(params, mask, fs3, audio3)
  assert fn._cache_size() == 2
