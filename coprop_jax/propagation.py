"""The propagator's scan over frames: `Memory` carry, control-point resets, one compiled call.

`propagate` runs ONE `lax.scan` over all frames of a batch of clips. At a frame where
`is_keyframe[b, t]` is True, example b's memory is reset and that keyframe's mask becomes the
new reference (AOT's add_reference_frame: the reference frame's LSTT pass attends to itself
fused with its ID embedding; the memory step counter restarts). Elsewhere the frame is
propagated from the memory. The reset is a per-example select inside the step, so clips with
different control-point patterns share one executable. Each step is one encoder call plus ONE
`Propagator.frame` apply.

Long-term memory: the segment's reference pinned in slot 0 plus a ring of `memory_slots`
frames, one written every `mem_gap` propagated frames. It equals AOT (which appends without
bound) exactly while the writes since the reference are <= memory_slots; once the ring drops its
oldest entry the logits drift (measured against AOT on a 40-frame clip: ~1e-2 relative, argmax
96-99% of pixels, from the first frame after the drop; task metrics in benchmarks/RESULTS.md,
"Long-term memory ring"). Raise `propagator.memory_slots` to keep more.

Compiled memory is flat in T: inputs are read with a dynamic index inside the step and outputs
written into preallocated buffers in the carry (no time-major copies); a frame invalid for the
whole batch (length-bucket padding) is skipped by `lax.cond` (no network runs).

Streaming (any length, flat memory): `propagate(..., memory=m, return_memory=True)` starts from
the carry `m` of the previous call and returns the carry after the last frame, so a long video
cut into consecutive chunks gives the frames of one whole-clip call (`make_propagate_fn`'s
`run(..., memory=..., return_memory=True)`; `pipeline.Segmenter.segment_chunk`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from coprop_jax.models.propagator import Propagator

Array = jax.Array
Encode = Callable[[Any, Array], list]


@flax.struct.dataclass
class Memory:
  """The scan carry (per example, nothing T-sized). S = 1 + memory_slots, N = tokens at 1/16.

  long_k / long_v: per LSTT layer [B, S, N, C]; slot 0 = the segment's reference (keyframe)
    fused with its ids, slots 1.. = the ring of memory frames fused with their predicted ids.
  valid: [B, S] bool, which slots hold a frame of the current segment.
  short_k / short_v: per layer [B, N, C], the previous valid frame (short-term memory).
  step: [B] int32, valid frames propagated since the reference (AOT's frame_step - last ref).
  written: [B] int32, ring writes since the reference (next slot = 1 + written % memory_slots).
  num_objects: [B] int32, objects of the current segment (ids 1..num_objects allowed).
  """
  long_k: tuple
  long_v: tuple
  valid: Array
  short_k: tuple
  short_v: tuple
  step: Array
  written: Array
  num_objects: Array

  @classmethod
  def empty(cls, num_layers: int, batch: int, slots: int, tokens: int, channels: int,
            dtype=jnp.float32) -> "Memory":
    """An all-invalid memory of `slots` ring slots (+ the reference slot)."""
    z = lambda *s: tuple(jnp.zeros(s, dtype) for _ in range(num_layers))
    return cls(long_k=z(batch, slots + 1, tokens, channels), long_v=z(batch, slots + 1, tokens, channels),
               valid=jnp.zeros((batch, slots + 1), bool), short_k=z(batch, tokens, channels),
               short_v=z(batch, tokens, channels), step=jnp.zeros((batch,), jnp.int32),
               written=jnp.zeros((batch,), jnp.int32), num_objects=jnp.zeros((batch,), jnp.int32))

  def layers(self) -> list:
    """Per-layer tuples (long_k, long_v, valid, short_k, short_v) for `Propagator.frame`."""
    return [(lk, lv, self.valid, sk, sv) for lk, lv, sk, sv in
            zip(self.long_k, self.long_v, self.short_k, self.short_v)]

  def update(self, ref_kv, pred_kv, is_ref: Array, frame_valid: Array, ref_objects: Array,
             mem_gap: int) -> "Memory":
    """Memory after one frame. is_ref [B]: reset to this frame as reference (slot 0 = ref_kv,
    other slots invalid, short = ref_kv, counters 0, num_objects = ref_objects); otherwise, for a
    valid frame: short = pred_kv and, every `mem_gap` frames, pred_kv written to the ring slot.
    Invalid frames leave the memory unchanged."""
    s = self.valid.shape[1]
    prop = frame_valid & ~is_ref
    step = jnp.where(is_ref, 0, self.step + prop.astype(jnp.int32))
    write = prop & (step % mem_gap == 0)
    slot = 1 + self.written % (s - 1)
    sel = (jnp.arange(s)[None, :] == slot[:, None]) & write[:, None]  # [B, S]
    slot0 = (jnp.arange(s)[None, :] == 0) & is_ref[:, None]

    def long(old, ref, new):
      ref, new = ref.astype(old.dtype)[:, None], new.astype(old.dtype)[:, None]
      return jnp.where(slot0[:, :, None, None], ref, jnp.where(sel[:, :, None, None], new, old))

    def short(old, ref, new):
      return jnp.where(is_ref[:, None, None], ref.astype(old.dtype),
                       jnp.where(prop[:, None, None], new.astype(old.dtype), old))

    return Memory(
        long_k=tuple(long(o, r[0], p[0]) for o, r, p in zip(self.long_k, ref_kv, pred_kv)),
        long_v=tuple(long(o, r[1], p[1]) for o, r, p in zip(self.long_v, ref_kv, pred_kv)),
        valid=jnp.where(is_ref[:, None], jnp.arange(s)[None, :] == 0, self.valid | sel),
        short_k=tuple(short(o, r[0], p[0]) for o, r, p in zip(self.short_k, ref_kv, pred_kv)),
        short_v=tuple(short(o, r[1], p[1]) for o, r, p in zip(self.short_v, ref_kv, pred_kv)),
        step=step, written=jnp.where(is_ref, 0, self.written + write.astype(jnp.int32)),
        num_objects=jnp.where(is_ref, ref_objects, self.num_objects))


def _at(x: Array, t) -> Array:
  """x[:, t] for a traced t, without copying x (no time-major transpose of the inputs)."""
  return jax.lax.dynamic_index_in_dim(x, t, axis=1, keepdims=False)


def frame_audio(t, audio_embed: Optional[Array], audio_logmel: Optional[Array], vggish_params,
                dtype=jnp.float32) -> Array:
  """Frame t's audio embedding [B, 128]: `audio_embed[:, t]`, or VGGish (frozen: no gradient)
  on `audio_logmel[:, t]` [B, 96, 64]."""
  if audio_embed is not None:
    return _at(audio_embed, t)
  from coprop_jax.models.vggish import VGGish
  return jax.lax.stop_gradient(VGGish(dtype=dtype).apply({"params": vggish_params}, _at(audio_logmel, t)))


def empty_memory(model: Propagator, encode: Encode, encoder_vars, frames_shape, frames_dtype,
                 memory_slots: int) -> Memory:
  """The all-invalid carry for frames [B, H, W, 3] (`frames_shape` = (B, T, H, W, 3) or
  (B, H, W, 3)); token count from the encoder's 1/16 map (shape-only evaluation)."""
  b, hh, ww = frames_shape[0], frames_shape[-3], frames_shape[-2]
  f16 = jax.eval_shape(lambda x: encode(encoder_vars, x), jax.ShapeDtypeStruct((b, hh, ww, 3), frames_dtype))[3]
  return Memory.empty(model.num_layers, b, memory_slots, f16.shape[1] * f16.shape[2], model.d_model,
                      model.dtype)


def propagate(model: Propagator, params, frames: Array, keyframe_masks: Array, is_keyframe: Array,
              num_objects: Array, *, encode: Encode, audio_embed: Optional[Array] = None,
              audio_logmel: Optional[Array] = None, vggish_params=None,
              frame_valid: Optional[Array] = None, memory_slots: int = 4, mem_gap: int = 5,
              train: bool = False, rng=None, remat: bool = False,
              teacher_masks: Optional[Array] = None, teacher_valid: Optional[Array] = None,
              teacher_forcing=False, freeze_id=None,
              id_perm: Optional[Array] = None, return_logits: bool = False,
              memory: Optional[Memory] = None, return_memory: bool = False):
  """Segments every frame of a batch of clips by propagation from their keyframes (traceable).

  params: {"propagator": Propagator params, "encoder": encoder variables for `encode`}.
  frames: [B, T, H, W, 3] (uint8 or ImageNet-normalised; `encode(params["encoder"], [B,H,W,3])`
    -> the 4 encoder maps).
  keyframe_masks: [B, T, H, W] int object ids in [0, max_objects], read where is_keyframe.
  is_keyframe: [B, T] bool: reset + new reference (a control point); the first valid frame of
    each clip must be one (the host-level `make_propagate_fn` checks it).
  num_objects: [B, T] int32, objects of the segment starting at each keyframe (read there).
  Audio: exactly one of audio_embed [B, T, 128] or audio_logmel [B, T, 96, 64] (+ vggish_params:
    VGGish runs per frame inside the step, frozen).
  frame_valid: [B, T] bool; invalid frames (padding) leave the memory unchanged and output 0.
  train: drop-path on (needs `rng`); remat: rematerialise each frame in BPTT.
  Training only: teacher_masks [B, T, H, W] object ids (255 pixels count as background) feed
    the short-term memory instead of the prediction where `teacher_forcing` (traced bool) and
    teacher_valid [B, T] (the frame has GT); freeze_id (traced bool) stops the ID bank's
    gradient; id_perm [B, ids] AOT's id shuffle (see `Propagator.frame`).
  memory: the carry to start from (default: empty, `empty_memory`): the `Memory` returned by the
    call on the previous frames of the same clips (streaming). A clip whose memory holds a segment
    may start with a non-keyframe; it continues that segment.
  Returns {"ids": [B, T, H, W] int32 (keyframes: their mask), "fg_prob": [B, T, H, W] float32
    (1 - softmax background over the allowed ids; keyframes: mask > 0)} and with return_logits
    "logits": [B, T, H, W, ids] float32 (keyframes: +-10 one-hot of their mask); with
    return_memory, the tuple (that dict, the `Memory` after the last frame).
  """
  b, t_len, hh, ww = frames.shape[:4]
  n_ids = model.max_objects + 1
  if frame_valid is None:
    frame_valid = jnp.ones((b, t_len), bool)
  if (audio_embed is None) == (audio_logmel is None):
    raise ValueError("propagate: give exactly one of audio_embed [B, T, 128] or audio_logmel "
                     "[B, T, 96, 64]")
  if audio_logmel is not None and vggish_params is None:
    raise ValueError("propagate: audio_logmel needs vggish_params (the frozen VGGish)")
  if train and rng is None:
    raise ValueError("propagate: train=True needs a dropout `rng`")
  if (teacher_masks is None) != (teacher_valid is None):
    raise ValueError("propagate: teacher_masks [B, T, H, W] and teacher_valid [B, T] go together")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  apply = functools.partial(model.apply, {"params": params["propagator"]})
  enc_vars = params.get("encoder")

  mem0 = memory if memory is not None else empty_memory(model, encode, enc_vars, frames.shape,
                                                        frames.dtype, memory_slots)
  outs0 = dict(ids=jnp.zeros((b, t_len, hh, ww), jnp.int32),
               fg_prob=jnp.zeros((b, t_len, hh, ww), jnp.float32))
  if return_logits:
    outs0["logits"] = jnp.zeros((b, t_len, hh, ww, n_ids), jnp.float32)

  def frame_step(mem: Memory, t):
    """One frame: (memory, t) -> (memory', per-frame outputs). Never sees the output buffers."""
    fv = _at(frame_valid, t)
    ref = _at(is_keyframe, t) & fv
    kf = _at(keyframe_masks, t).astype(jnp.int32)
    kf_onehot = jax.nn.one_hot(kf, n_ids, dtype=jnp.float32)
    nobj = jnp.where(ref, _at(num_objects, t), mem.num_objects)
    a = frame_audio(t, audio_embed, audio_logmel, vggish_params, model.dtype)
    feats = encode(enc_vars, _at(frames, t))
    kw = dict(freeze_id=freeze_id, id_perm=id_perm, deterministic=not train)
    if teacher_masks is not None:
      tm = _at(teacher_masks, t)
      kw.update(short_onehot=jax.nn.one_hot(jnp.where(tm == 255, 0, tm), n_ids, dtype=jnp.float32),
                use_short_onehot=jnp.asarray(teacher_forcing) & fv & _at(teacher_valid, t))
    logits, ref_kv, pred_kv = apply(feats, a, mem.layers(), kf_onehot, ref, nobj, method=Propagator.frame,
                                    rngs={"dropout": jax.random.fold_in(rng, t)} if train else {}, **kw)
    mem = mem.update(ref_kv, pred_kv, ref, fv, _at(num_objects, t), mem_gap)
    r3 = ref[:, None, None]
    out = dict(ids=jnp.where(r3, kf, jnp.argmax(logits, -1).astype(jnp.int32)),
               fg_prob=jnp.where(r3, (kf > 0).astype(jnp.float32), 1.0 - jax.nn.softmax(logits, -1)[..., 0]))
    if return_logits:
      out["logits"] = jnp.where(ref[:, None, None, None], jnp.where(kf_onehot > 0, 10.0, -10.0), logits)
    return mem, {k: jnp.where(fv.reshape((b,) + (1,) * (v.ndim - 1)), v, 0).astype(outs0[k].dtype)
                 for k, v in out.items()}

  if remat:
    frame_step = jax.checkpoint(frame_step)

  def skip(mem, t):
    """A frame invalid for the whole batch (e.g. length-bucket padding): no network, memory kept."""
    return mem, {k: jnp.zeros((b,) + v.shape[2:], v.dtype) for k, v in outs0.items()}

  def step(carry, t):
    mem, outs = carry
    mem, out = jax.lax.cond(jnp.any(_at(frame_valid, t)), frame_step, skip, mem, t)
    outs = {k: jax.lax.dynamic_update_index_in_dim(outs[k], out[k], t, 1) for k in outs}
    return (mem, outs), None

  (mem, outs), _ = jax.lax.scan(step, (mem0, outs0), jnp.arange(t_len, dtype=jnp.int32))
  return (outs, mem) if return_memory else outs


def propagate_train(model: Propagator, prop_params, feats: list, audio: Array, keyframe_masks: Array,
                    is_keyframe: Array, num_objects: Array, *, frame_valid: Array, rng,
                    teacher_masks: Array, teacher_valid: Array, teacher_forcing, freeze_id=None,
                    id_perm: Optional[Array] = None, memory_slots: int = 4, mem_gap: int = 5,
                    remat: bool = False, deterministic: bool = False) -> Array:
  """The training scan (BPTT): the logits `propagate(..., train=True, return_logits=True,
  teacher_masks=...)` gives, from encoder maps computed beforehand.

  prop_params: Propagator params. feats: the 4 encoder maps of every frame, TIME-MAJOR
  [T, B, h, w, C] (the encoder runs once on all T*B frames outside the scan, as AOT's trainer
  does: frames are known in advance); audio: [T, B, Ca] per-frame embeddings (time-major).
  keyframe_masks / teacher_masks [B, T, H, W], is_keyframe / frame_valid / teacher_valid /
  num_objects [B, T]; rng: drop-path key (folded with t, as `propagate`); the other arguments as
  `propagate`. Only what depends on the previous frame runs inside the scan: one
  `Propagator.frame` apply and the memory update. No `lax.cond`: a frame invalid for the whole
  batch runs the network and is masked by selects (outputs 0, memory unchanged, zero gradient),
  which is what `propagate` computes by skipping it.
  remat: `jax.checkpoint` on the scan body with policy `nothing_saveable`: the backward pass
  keeps only the carry (Memory) per frame and recomputes each frame's activations.
  Returns logits [B, T, H, W, ids] float32 (keyframes: +-10 one-hot of their mask; invalid
  frames: 0).
  """
  t_len, b = feats[0].shape[:2]
  hh, ww = keyframe_masks.shape[2:4]
  n_ids = model.max_objects + 1
  h16, w16 = feats[3].shape[2:4]
  mem0 = Memory.empty(model.num_layers, b, memory_slots, h16 * w16, model.d_model, model.dtype)
  apply = functools.partial(model.apply, {"params": prop_params})

  def body(mem: Memory, xs):
    t, f, a = xs
    fv = _at(frame_valid, t)
    ref = _at(is_keyframe, t) & fv
    kf = _at(keyframe_masks, t).astype(jnp.int32)
    kf_onehot = jax.nn.one_hot(kf, n_ids, dtype=jnp.float32)
    nobj = jnp.where(ref, _at(num_objects, t), mem.num_objects)
    tm = _at(teacher_masks, t)
    logits, ref_kv, pred_kv = apply(
        list(f), a, mem.layers(), kf_onehot, ref, nobj, method=Propagator.frame,
        rngs={} if deterministic else {"dropout": jax.random.fold_in(rng, t)},
        short_onehot=jax.nn.one_hot(jnp.where(tm == 255, 0, tm), n_ids, dtype=jnp.float32),
        use_short_onehot=jnp.asarray(teacher_forcing) & fv & _at(teacher_valid, t),
        freeze_id=freeze_id, id_perm=id_perm, deterministic=deterministic)
    mem = mem.update(ref_kv, pred_kv, ref, fv, _at(num_objects, t), mem_gap)
    out = jnp.where(ref[:, None, None, None], jnp.where(kf_onehot > 0, 10.0, -10.0), logits)
    return mem, jnp.where(fv[:, None, None, None], out, 0.0).astype(jnp.float32)

  if remat:
    body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)
  _, logits = jax.lax.scan(body, mem0, (jnp.arange(t_len, dtype=jnp.int32), tuple(feats), audio))
  return jnp.swapaxes(logits, 0, 1)


# ----------------------------------------------------------------------------- host-level entry
def bucket_length(t: int, length_bucket: int) -> int:
  """Clip length padded up to a multiple of `length_bucket` (0 or 1: unchanged)."""
  if length_bucket <= 1:
    return t
  return -(-t // length_bucket) * length_bucket


def pad_time(x: np.ndarray, t_pad: int, value=0) -> np.ndarray:
  """[B, T, ...] -> [B, t_pad, ...], padded with `value` at the end of the time axis."""
  x = np.asarray(x)
  return np.pad(x, [(0, 0), (0, t_pad - x.shape[1])] + [(0, 0)] * (x.ndim - 2), constant_values=value)


def check_inputs(frames, keyframe_masks, is_keyframe, num_objects, frame_valid, max_objects: int,
                 video_ids=None, continuing=None) -> np.ndarray:
  """Host-side checks of `propagate`'s inputs (shapes, ids, first keyframe) with clear errors.

  continuing: [B] bool, clips whose memory already holds a segment (streaming): their first
  valid frame need not be a keyframe.
  Returns num_objects as [B, T] int32. An object id above the segment's `num_objects` (or above
  `max_objects`) is an error: jax's one_hot would silently turn it into background."""
  name = lambda i: f"clip {i}" + ("" if video_ids is None else f" (video {video_ids[i]!r})")
  if np.ndim(frames) != 5 or np.shape(frames)[-1] != 3:
    raise ValueError(f"frames: expected [B, T, H, W, 3], got shape {np.shape(frames)}")
  b, t, h, w = np.shape(frames)[:4]
  km, isk = np.asarray(keyframe_masks), np.asarray(is_keyframe).astype(bool)
  if km.shape != (b, t, h, w):
    raise ValueError(f"keyframe_masks: expected [B, T, H, W] = {(b, t, h, w)}, got {km.shape}")
  if isk.shape != (b, t):
    raise ValueError(f"is_keyframe: expected [B, T] = {(b, t)}, got {isk.shape}")
  fv = np.ones((b, t), bool) if frame_valid is None else np.asarray(frame_valid).astype(bool)
  if fv.shape != (b, t):
    raise ValueError(f"frame_valid: expected [B, T] = {(b, t)}, got {fv.shape}")
  n = np.asarray(num_objects, np.int32)
  if n.shape == (b,):
    n = np.repeat(n[:, None], t, 1)
  if n.shape != (b, t):
    raise ValueError(f"num_objects: expected [B] or [B, T] = {(b, t)}, got {n.shape}")
  cont = np.zeros(b, bool) if continuing is None else np.asarray(continuing, bool)
  for i in range(b):
    valid_t = np.flatnonzero(fv[i])
    if valid_t.size and not isk[i, valid_t[0]] and not cont[i]:
      raise ValueError(f"{name(i)}: its first valid frame {valid_t[0]} is not a keyframe "
                       "(control point 1): there is no reference to propagate from")
    for tt in np.flatnonzero(isk[i] & fv[i]):
      if not 0 <= n[i, tt] <= max_objects:
        raise ValueError(f"{name(i)} frame {tt}: num_objects {n[i, tt]} outside 0..max_objects "
                         f"({max_objects})")
      lo, hi = int(km[i, tt].min()), int(km[i, tt].max())
      if lo < 0 or hi > n[i, tt]:
        raise ValueError(f"{name(i)} frame {tt}: keyframe mask has object id {hi if hi > n[i, tt] else lo}"
                         f", outside 0..num_objects ({n[i, tt]}; max_objects {max_objects})")
  return n


def make_propagate_fn(model: Propagator, encode: Encode, *, memory_slots: int = 4, mem_gap: int = 5,
                      length_bucket: int = 0, remat: bool = False, return_logits: bool = False,
                      compiler_options: Optional[dict] = None):
  """Host-level propagation: run(params, frames, keyframe_masks, is_keyframe, num_objects, *,
  audio_embed=None, audio_logmel=None, vggish_params=None, frame_valid=None, video_ids=None,
  memory=None, return_memory=False) -> dict of [B, T, ...] jax arrays (see `propagate`), or with
  return_memory the tuple (dict, Memory after the last frame).

  Inputs are checked on the host (`check_inputs`); with `length_bucket` > 1 the clip is padded to
  the next multiple of it (frame_valid False on the padding) so every length in a bucket reuses
  one executable (`run.jitted`), and outputs are cut back to T. Streaming: pass the previous
  call's Memory as `memory`; a clip whose memory holds a segment (`memory.valid[:, 0]`) may
  start with a non-keyframe. Without `memory` an empty one is built on the host, so whole clips
  and the chunks of a stream of the same [B, T] share one executable.
  """
  def fn(params, frames, keyframe_masks, is_keyframe, num_objects, audio_embed, audio_logmel,
         vggish_params, frame_valid, memory):
    return propagate(model, params, frames, keyframe_masks, is_keyframe, num_objects, encode=encode,
                     audio_embed=audio_embed, audio_logmel=audio_logmel, vggish_params=vggish_params,
                     frame_valid=frame_valid, memory_slots=memory_slots, mem_gap=mem_gap, remat=remat,
                     return_logits=return_logits, memory=memory, return_memory=True)
  jitted = jax.jit(fn, compiler_options=compiler_options)
  shapes = {}   # (B, H, W, dtype) -> the empty memory's shapes (tracing the encoder takes a while)

  def run(params, frames, keyframe_masks, is_keyframe, num_objects, *, audio_embed=None,
          audio_logmel=None, vggish_params=None, frame_valid=None, video_ids=None, memory=None,
          return_memory=False):
    b, t = np.shape(frames)[:2]
    if memory is None:
      key = (b,) + tuple(np.shape(frames)[2:4]) + (str(np.asarray(frames).dtype),)
      if key not in shapes:
        shapes[key] = jax.eval_shape(lambda: empty_memory(model, encode, params.get("encoder"),
                                                          np.shape(frames), np.asarray(frames).dtype,
                                                          memory_slots))
      memory = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), shapes[key])
      continuing = None
    else:
      continuing = np.asarray(memory.valid[:, 0])
    n = check_inputs(frames, keyframe_masks, is_keyframe, num_objects, frame_valid, model.max_objects,
                     video_ids, continuing)
    fv = np.ones((b, t), bool) if frame_valid is None else np.asarray(frame_valid, bool)
    for key, a, want in (("audio_embed", audio_embed, 3), ("audio_logmel", audio_logmel, 4)):
      if a is not None and (np.ndim(a) != want or np.shape(a)[:2] != (b, t)):
        raise ValueError(f"{key}: expected [B, T, ...] with B, T = {(b, t)} and rank {want}, "
                         f"got shape {np.shape(a)}")
    tp = bucket_length(t, length_bucket)
    pad = lambda x, v=0: None if x is None else (pad_time(x, tp, v) if tp != t else x)
    out, mem = jitted(params, pad(frames), pad(np.asarray(keyframe_masks, np.int32)),
                      pad(np.asarray(is_keyframe, bool), False), pad(n), pad(audio_embed),
                      pad(audio_logmel), vggish_params, pad(fv, False), memory)
    out = {k: v[:, :t] for k, v in out.items()} if tp != t else out
    return (out, mem) if return_memory else out
  run.jitted = jitted
  return run
