"""Shared by the propagator / pipeline tests: a stand-in encoder, random params without compiling,
and the frame-by-frame AOT reference loop written from the definition (Python lists, no scan)."""
import jax
import jax.numpy as jnp
import numpy as np

from coprop_jax.models import propagator as P

ENC = (8, 8, 8, 16)  # channels of the fake encoder levels (1/4, 1/8, 1/16, 1/16)
PROJ = [np.random.default_rng(i).standard_normal((3, c)).astype(np.float32) for i, c in enumerate(ENC)]


def fake_encode(_, x):
  """images [N, H, W, 3] -> 4 maps at 1/4, 1/8, 1/16, 1/16 (avg-pool + fixed projection)."""
  x = x.astype(jnp.float32)
  pool = lambda s: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, s, s, 1), (1, s, s, 1), "VALID") / (s * s)
  return [jnp.tanh(pool(s) @ p) for s, p in zip((4, 8, 16, 16), PROJ)]


def random_like(shapes, seed=0, scale=1.0):
  """Random variables shaped like a `jax.eval_shape(init)` tree, without compiling the init:
  kernels ~ N(0, scale / fan_in), LayerNorm/GroupNorm/BN scales ~ 1, biases and other params
  small, BatchNorm statistics (mean 0, var 1)."""
  rng = np.random.default_rng(seed)

  def one(path, s):
    name = getattr(path[-1], "key", "")
    if name == "var":
      return np.ones(s.shape, np.float32)
    if name == "mean":
      return np.zeros(s.shape, np.float32)
    if name == "scale":
      return (1 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    if name == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return (scale * rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)
    return (0.05 * rng.standard_normal(s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(one, shapes)


def propagator_shapes(model, h, w):
  feats = [jax.ShapeDtypeStruct((1, h // s, w // s, c), jnp.float32) for s, c in zip((4, 8, 16, 16), ENC)]
  return jax.eval_shape(lambda f: P.init_params(model, jax.random.PRNGKey(0), f, jnp.zeros((1, 128)),
                                                jnp.zeros((1, h, w, model.max_objects + 1))), feats)


def loop_reference(m, params, frames, audio, kf_masks, is_kf, num_objects, memory_slots, mem_gap,
                   frame_valid=None):
  """Un-jitted AOT engine, one clip at a time. At a keyframe: reference pass (the frame attends
  to itself fused with its mask's ids), long-term memory = [reference], short-term = reference,
  step counter 0. Other valid frames: long-term attention over reference + the last
  `memory_slots` memory frames (None: all of them, as AOT), short-term = previous frame re-fused
  with its predicted ids (ids above the segment's num_objects masked), a memory frame every
  `mem_gap` frames. Returns (ids [B,T,H,W], logits [B,T,H,W,ids]; keyframes: mask / 0)."""
  b_len, t_len, h, w = np.shape(frames)[:4]
  # Each network piece jitted on its own (tiny compiles, far faster than op-by-op on CPU); the
  # memory logic is this plain Python loop.
  jit = lambda f: jax.jit(f, compiler_options={"xla_backend_optimization_level": 0})
  enc = jit(lambda x, a: m.apply({"params": params}, fake_encode(None, x), a, method=P.Propagator.embed))
  idemb = jit(lambda oh, a: m.apply({"params": params}, oh, a, method=P.Propagator.id_embed))
  ref_kvs = jit(lambda f3, e: m.apply({"params": params}, f3, None, e, method=P.Propagator.lstt)[1])
  mem_pass = jit(lambda f3, mem: m.apply({"params": params}, f3, mem, method=P.Propagator.lstt)[:2])
  decode = jit(lambda outs, feats: m.apply({"params": params}, outs, feats, (h, w), method=P.Propagator.decode))
  fuse = jit(lambda kvs, e: m.apply({"params": params}, kvs, e, method=P.Propagator.fuse))
  n_ids = m.max_objects + 1
  fv = np.ones((b_len, t_len), bool) if frame_valid is None else np.asarray(frame_valid)
  ids = np.zeros((b_len, t_len, h, w), np.int32)
  logits_out = np.zeros((b_len, t_len, h, w, n_ids), np.float32)
  for b in range(b_len):
    ref = short = mems = n = step = None
    for t in range(t_len):
      if not fv[b, t]:
        continue
      x, a = jnp.asarray(frames[b:b + 1, t]), jnp.asarray(audio[b:b + 1, t])
      feats = enc(x, a)
      if is_kf[b, t]:
        mask = jnp.asarray(kf_masks[b:b + 1, t])
        id0 = idemb(jax.nn.one_hot(mask, n_ids), a)
        ref = short = fuse(ref_kvs(feats[3], id0), id0)
        mems, n, step = [], int(num_objects[b, t]), 0
        ids[b, t] = np.asarray(mask[0])
        continue
      long = [ref] + (mems if memory_slots is None else mems[max(0, len(mems) - memory_slots):])
      # The list, padded to T entries with masked (never attended) zeros: one compile serves all.
      pad = [jax.tree_util.tree_map(jnp.zeros_like, ref)] * (t_len - len(long))
      valid = jnp.asarray([[True] * len(long) + [False] * len(pad)])
      memory = [(jnp.stack([fr[i][0] for fr in long + pad], 1), jnp.stack([fr[i][1] for fr in long + pad], 1),
                 valid, short[i][0], short[i][1]) for i in range(m.num_layers)]
      outs, kvs = mem_pass(feats[3], memory)
      lg = decode(outs, feats)
      lg = jnp.where(jnp.arange(n_ids) <= n, lg, -1e9)
      pred = jax.nn.one_hot(jnp.argmax(lg, -1), n_ids)
      short = fuse(kvs, idemb(pred, a))
      step += 1
      if step % mem_gap == 0:
        mems.append(short)
      logits_out[b, t] = np.asarray(lg[0])
      ids[b, t] = np.asarray(jnp.argmax(lg[0], -1))
  return ids, logits_out
