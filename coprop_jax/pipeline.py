"""Co-Prop end to end: control points -> Keyframe Processor on keyframes -> Audio-insert Propagator.

    seg = make_segmenter(config)                      # reads config.keyframe / config.propagator
    params = init_params(config, rng, image_size=224) # {"keyframe", "propagator", "encoder"}
    out = seg.segment(params, batch, keyframes="kpf") # or "gt" (oracle) or a KeyframeMaskSource

Control points are known before the compiled calls (RCPG is preprocessing). `segment` gathers the
keyframes of the whole batch (control point 1 on a valid frame), runs the KPF ONCE, batched over
them (padded to a power-of-two bucket, at most `keyframe_batch` per call), turns its outputs into
object-id masks on the device, then runs ONE `jax.jit` + `lax.scan` over all frames
(`coprop_jax.propagation.propagate`) in which each keyframe resets its clip's memory and becomes
the new reference. Clips with different control points share one executable. KPF-only (every
frame a keyframe) and propagation-only (a control point at frame 0 only) are the same call with
other control points. `segment_chunk` does the same for consecutive chunks of long clips,
carrying the propagator's memory (and the open segment's identity) from one chunk to the next:
any length in flat memory, the same frames as one whole-clip call (`coprop_jax.predict`).

Identity (keyframe mask -> propagator object ids):
  * binary (config.keyframe.num_classes == 1, S4/MS3): KPF probability > 0.5 -> object 1
    (num_objects = 1 for every clip, whatever the ID bank's size);
  * semantic (AVSS): each keyframe's classes -> ids 1..max_objects, largest area first (ties:
    lower class id first); classes beyond max_objects are dropped (background in the reference)
    and counted in the report; propagated ids map back to the segment's classes.
Keyframe masks from GT ("gt", oracle) or a `KeyframeMaskSource` (plug-and-play) go through the
same identity step (binary masks must be {0, 1}; semantic masks are class ids).

Audio: the batch's `audio_embed` [B, T, 128] if present (no VGGish runs), else `audio_logmel`
[B, T, 96, 64] through the frozen VGGish whose weights are the KPF's own
(`params["keyframe"]["params"]["vggish"]`, one copy for both networks; VGGish is never trained).

Inference only: stage-2 training (oracle keyframes, teacher forcing, BPTT) is
`coprop_jax.train.tasks.propagator.make_train_forward`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from coprop_jax import propagation
from coprop_jax.images import normalize_uint8
from coprop_jax.models import keyframe as kf_lib
from coprop_jax.models import propagator as prop_lib

Array = jax.Array
IGNORE = 255  # target id of pixels without a usable label (AOT's ignore index)


# ----------------------------------------------------------------------------- identity
def classes_to_object_ids(class_masks: Array, num_classes: int, max_objects: int) -> dict:
  """Semantic keyframe masks -> object ids, largest class first.

  class_masks: [N, H, W] int class ids in [0, num_classes) (0 = background). Returns
  ids [N, H, W] int32 (dropped classes -> 0), id_to_class [N, max_objects+1] int32 (entry 0 = 0;
  unused ids 0), class_to_id [N, num_classes] int32 (0 for background, absent or dropped
  classes), num_objects [N] (classes kept), dropped [N] (present classes without an id).
  Ranking: pixel area descending, ties by lower class id.
  """
  n = class_masks.shape[0]
  cm = class_masks.astype(jnp.int32)
  flat = (cm + num_classes * jnp.arange(n, dtype=jnp.int32)[:, None, None]).reshape(-1)
  areas = jax.ops.segment_sum(jnp.ones_like(flat), flat, n * num_classes).reshape(n, num_classes)
  areas = areas.at[:, 0].set(0)  # background is id 0, never ranked
  order = jnp.argsort(-areas, axis=1, stable=True)  # [N, C] classes by area desc, class asc
  rank = jnp.argsort(order, axis=1, stable=True)    # rank of each class
  present = areas > 0
  keep = present & (rank < max_objects)
  class_to_id = jnp.where(keep, rank + 1, 0).astype(jnp.int32)
  top = order[:, :max_objects]
  top_ok = jnp.take_along_axis(keep, top, axis=1)
  id_to_class = jnp.concatenate([jnp.zeros((n, 1), jnp.int32), jnp.where(top_ok, top, 0).astype(jnp.int32)], 1)
  ids = jnp.take_along_axis(class_to_id, cm.reshape(n, -1), axis=1).reshape(cm.shape)
  n_present = present.sum(1).astype(jnp.int32)
  n_kept = keep.sum(1).astype(jnp.int32)
  return dict(ids=ids, id_to_class=id_to_class, class_to_id=class_to_id, num_objects=n_kept,
              dropped=n_present - n_kept)


def segment_starts(is_keyframe: np.ndarray) -> np.ndarray:
  """[B, T] bool -> [B, T] int: index of the latest keyframe <= t (-1 before the first)."""
  t = np.arange(is_keyframe.shape[1])[None]
  return np.maximum.accumulate(np.where(is_keyframe, t, -1), axis=1)


# ----------------------------------------------------------------------------- params
def init_params(config, rng, image_size: int, *, audio_logmel: bool = True) -> dict:
  """{"keyframe": KPF variables, "propagator": params, "encoder": {"params", "batch_stats"}}.

  audio_logmel: initialise the KPF with log-mel input, so it owns the VGGish params that the
  propagator's audio also uses (False: precomputed `audio_embed` batches, no VGGish).
  With `config.propagator.aot_weights` set, the propagator and its encoder are loaded from that
  converted AOT checkpoint (`load_aot_weights`)."""
  kpf = kf_lib.from_config(config.keyframe)
  r_kpf, r_prop = jax.random.split(rng)
  img = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  audio = dict(audio_logmel=jnp.zeros((1, 96, 64))) if audio_logmel else dict(audio_embed=jnp.zeros((1, 128)))
  kvars = jax.jit(lambda r: kpf.init(r, img, **audio))(r_kpf)
  prop = jax.jit(lambda r: prop_lib.init(config.propagator, r, (image_size, image_size)))(r_prop)
  params = {"keyframe": kvars, "propagator": prop["propagator"], "encoder": prop["encoder"]}
  if config.propagator.aot_weights:
    from coprop_jax.convert.checkpoint_io import restore_params
    params = load_aot_weights(config, params, restore_params(config.propagator.aot_weights))
  return params


def load_aot_weights(config, params: dict, aot: dict) -> dict:
  """`params` with the propagator and encoder taken from a converted AOT checkpoint
  (`python -m coprop_jax.convert aot`: {"propagator", "encoder"}).

  Every AOT parameter (ID bank included: its max_objects + 1 entries are kept) replaces the
  initial value; the audio parameters (absent from AOT, or converted for another insert variant)
  keep `params`' values, whose zero output projections make the model compute what AOT computes.
  Shapes are checked: a checkpoint whose ID bank does not have `propagator.max_objects + 1`
  entries (AOT-L: 11, max_objects=10) is an error naming both."""
  from coprop_jax.convert.checkpoint_io import CheckpointError, check_params_match
  mine, theirs = params["propagator"], aot.get("propagator", {})
  bank = np.shape(theirs.get("patch_wise_id_bank", {}).get("kernel", np.zeros((0,))))
  want = np.shape(mine["patch_wise_id_bank"]["kernel"])
  if bank != want:
    raise CheckpointError(f"propagator.aot_weights: ID bank kernel {bank} (max_objects "
                          f"{bank[2] - 1 if len(bank) == 4 else '?'}) does not fit the config's {want} "
                          f"(propagator.max_objects={config.propagator.max_objects}); AOT-L has 11 ids: "
                          "set propagator.max_objects=10")
  audio = lambda k: k.startswith("audio_") or k == "id_audio"
  aot_keys = {k for k in mine if not audio(k)}
  check_params_match({k: theirs.get(k) for k in aot_keys if k in theirs}, {k: mine[k] for k in aot_keys},
                     "propagator.aot_weights (AOT propagator)")
  check_params_match(aot["encoder"], jax.device_get(params["encoder"]),
                     f"propagator.aot_weights (encoder {config.propagator.encoder})")
  new = dict(mine, **{k: jax.tree_util.tree_map(jnp.asarray, theirs[k]) for k in aot_keys})
  return dict(params, propagator=new, encoder=jax.tree_util.tree_map(jnp.asarray, aot["encoder"]))


def _next_pow2(n: int) -> int:
  return 1 << max(0, int(n - 1).bit_length())


# ----------------------------------------------------------------------------- inference
class Segmenter:
  """Whole-video segmentation for `config` (see the module docstring); build with `make_segmenter`.

  Attributes: `kpf` (jitted KPF + identity), `ids_from_classes` (jitted identity for semantic
  GT/source masks), `propagate` (host-level propagation, `propagate.jitted` its executable).
  """

  def __init__(self, config, *, encode: Optional[Callable] = None, keyframe_batch: int = 16,
               compiler_options: Optional[dict] = None):
    pc, kc = config.propagator, config.keyframe
    self.num_classes = int(kc.num_classes)
    self.semantic = self.num_classes > 1
    self.model = prop_lib.from_config(pc)
    self.max_objects = self.model.max_objects
    self.kpf_model = kf_lib.from_config(kc)
    self.keyframe_batch = int(keyframe_batch)
    if encode is None:
      _, encode = prop_lib.build_encoder(pc)
    self.propagate = propagation.make_propagate_fn(
        self.model, encode, memory_slots=pc.memory_slots, mem_gap=pc.mem_gap,
        length_bucket=pc.length_bucket, compiler_options=compiler_options)
    nc, mo, semantic = self.num_classes, self.max_objects, self.semantic

    def kpf(variables, frames, audio):
      logits = self.kpf_model.apply(variables, frames, **audio)
      if semantic:
        out = classes_to_object_ids(jnp.argmax(logits, -1), nc, mo)
        out["prob"] = 1.0 - jax.nn.softmax(logits, -1)[..., 0]
      else:
        prob = jax.nn.sigmoid(logits[..., 0])
        out = _binary_identity((prob > 0.5).astype(jnp.int32), mo)
        out["prob"] = prob
      return out
    self.kpf = jax.jit(kpf, compiler_options=compiler_options)
    self.ids_from_classes = jax.jit(lambda m: classes_to_object_ids(m, nc, mo),
                                    compiler_options=compiler_options)

  # --------------------------------------------------------------------------- keyframes
  def _chunks(self, fn, arrays: dict, k: int) -> dict:
    """fn over the first axis of `arrays` (length k) in power-of-two padded chunks."""
    outs, i = [], 0
    while i < k:
      size = min(self.keyframe_batch, _next_pow2(k - i))
      take = np.minimum(np.arange(i, i + size), k - 1)  # pad by repeating the last keyframe
      res = fn({n: a[take] for n, a in arrays.items()})
      outs.append({n: np.asarray(v)[:min(size, k - i)] for n, v in res.items()})
      i += size
    return {n: np.concatenate([o[n] for o in outs]) for n in outs[0]}

  def _from_masks(self, masks: np.ndarray, where: list) -> dict:
    """Keyframe masks [K, H, W] (binary {0,1} or class ids) -> identity dict (as the KPF's)."""
    masks = np.asarray(masks).astype(np.int64)
    hi = 1 if not self.semantic else self.num_classes - 1
    for j, m in enumerate(masks):
      if m.min() < 0 or m.max() > hi:
        bad = int(m.max()) if m.max() > hi else int(m.min())
        raise ValueError(f"keyframe mask of {where[j]}: value {bad} outside 0..{hi} "
                         + ("(binary data: masks must be {0, 1})" if not self.semantic else
                            f"(class ids of config.keyframe.num_classes={self.num_classes})"))
    masks = masks.astype(np.int32)
    if self.semantic:
      out = self._chunks(lambda a: self.ids_from_classes(a["m"]), {"m": masks}, len(masks))
    else:
      out = {k: np.asarray(v) for k, v in _binary_identity(masks, self.max_objects).items()}
    out["prob"] = (masks > 0).astype(np.float32)
    return out

  def _keyframes(self, params, batch, keyframes, idx, names) -> tuple[dict, str]:
    b, t = np.shape(batch["frames"])[:2]
    hw = tuple(np.shape(batch["frames"])[2:4])
    if isinstance(keyframes, str) and keyframes == "kpf":
      frames = np.asarray(batch["frames"])[idx[:, 0], idx[:, 1]]
      if frames.dtype == np.uint8:
        frames = normalize_uint8(frames)
      if "audio_embed" in batch:
        audio = {"audio_embed": np.asarray(batch["audio_embed"], np.float32)[idx[:, 0], idx[:, 1]]}
      elif "audio_logmel" in batch:
        audio = {"audio_logmel": np.asarray(batch["audio_logmel"], np.float32)[idx[:, 0], idx[:, 1]]}
      else:
        raise ValueError("batch: needs 'audio_embed' [B, T, 128] or 'audio_logmel' [B, T, 96, 64]")
      variables = params["keyframe"]
      out = self._chunks(lambda a: self.kpf(variables, a["frames"], {k: a[k] for k in audio}),
                         dict(frames=frames, **audio), len(idx))
      return out, "kpf"
    if isinstance(keyframes, str) and keyframes == "gt":
      if "masks" not in batch:
        raise ValueError("keyframes='gt': the batch has no 'masks' [B, T, H, W]")
      gv = np.asarray(batch.get("gt_valid", np.ones((b, t), bool))).astype(bool)
      missing = [names[j] for j, (i, tt) in enumerate(idx) if not gv[i, tt]]
      if missing:
        raise ValueError(f"keyframes='gt': no GT mask (gt_valid False) at keyframe(s) {missing[:5]}")
      return self._from_masks(np.asarray(batch["masks"])[idx[:, 0], idx[:, 1]], names), "gt"
    if hasattr(keyframes, "clip_masks"):  # coprop_jax.eval.keyframe_masks.KeyframeMaskSource
      if "video_id" not in batch:
        raise ValueError("keyframes from a KeyframeMaskSource need the batch's 'video_id' [B]")
      kfm = np.zeros((b, t) + hw, np.int64)
      for i in sorted(set(idx[:, 0].tolist())):
        vid = _video_name(batch["video_id"][i])
        want = [int(tt) for tt in idx[idx[:, 0] == i, 1]]
        for tt in want:
          if not keyframes.has(vid, tt):
            raise KeyError(f"keyframe masks {getattr(keyframes, 'path', '')}: no mask for video "
                           f"{vid!r} frame {tt} (a keyframe: control point 1)")
        sel = np.zeros(t, np.int32)
        sel[want] = 1  # the clip's valid keyframes
        kfm[i], _ = keyframes.clip_masks(vid, sel, hw)
      return self._from_masks(kfm[idx[:, 0], idx[:, 1]], names), f"masks:{getattr(keyframes, 'path', '?')}"
    raise ValueError(f"keyframes: expected 'kpf', 'gt' or a KeyframeMaskSource, got {keyframes!r}")

  # --------------------------------------------------------------------------- segment
  def segment(self, params, batch: dict, *, keyframes: Union[str, Any] = "kpf") -> dict:
    """Segments every frame of a host batch (see DESIGN.md's vocabulary).

    batch: frames [B, T, H, W, 3] (uint8 or ImageNet-normalised float32), control_points [B, T]
      (1 = keyframe; each clip's first valid frame must be 1), frame_valid [B, T] (optional),
      audio_embed [B, T, 128] and/or audio_logmel [B, T, 96, 64], masks + gt_valid (keyframes
      "gt"), video_id [B] (a KeyframeMaskSource; also named in errors).
    params: {"keyframe": KPF variables (VGGish inside when audio is log-mel), "propagator",
      "encoder"}.
    keyframes: "kpf" (the Keyframe Processor), "gt" (oracle: GT masks) or a KeyframeMaskSource.
    Returns numpy arrays: masks [B, T, H, W] int32 (binary {0, 1}; semantic class ids),
    object_ids [B, T, H, W] int32, fg_prob [B, T, H, W] float32 (KPF probability at KPF
    keyframes, 1 - softmax background over the allowed ids elsewhere), is_keyframe [B, T] bool,
    num_objects [B, T] int32 (objects of each frame's segment), report (dict: keyframes source,
    num_keyframes, classes_dropped, classes_dropped_per_clip, empty_keyframes). Invalid frames
    are 0 everywhere.
    """
    return self._segment(params, batch, keyframes, None)[0]

  def segment_chunk(self, params, batch: dict, state: Optional["StreamState"] = None, *,
                    keyframes: Union[str, Any] = "kpf") -> tuple[dict, "StreamState"]:
    """`segment` for consecutive chunks of the same clips (any length, flat memory).

    Call with state=None for the first chunk, then with the returned state for each next chunk
    (same B, H, W; every chunk the same T so one executable serves all; pad the last with
    frame_valid False). The propagator's memory, the current segment's object -> class table and
    its object count are carried, so a clip's first frame in a chunk need not be a keyframe (it
    continues the segment of the previous chunk); the outputs over all chunks equal one
    `segment` call on the whole clips up to float rounding. Returns (outputs as `segment` for this
    chunk, new state)."""
    return self._segment(params, batch, keyframes, state, streaming=True)

  def _segment(self, params, batch, keyframes, state, streaming=False):
    frames = batch.get("frames")
    if frames is None or np.ndim(frames) != 5 or np.shape(frames)[-1] != 3:
      raise ValueError(f"batch['frames']: expected [B, T, H, W, 3], got shape {np.shape(frames)}")
    b, t, h, w = np.shape(frames)[:4]
    if "control_points" not in batch:
      raise ValueError("batch: needs 'control_points' [B, T] (1 = keyframe)")
    cp = np.asarray(batch["control_points"])
    if cp.shape != (b, t) or not np.isin(cp, (0, 1)).all():
      raise ValueError(f"batch['control_points']: expected [B, T] = {(b, t)} of 0/1, got shape "
                       f"{cp.shape} values {np.unique(cp)[:5]}")
    fv = np.asarray(batch.get("frame_valid", np.ones((b, t), bool))).astype(bool)
    if fv.shape != (b, t):
      raise ValueError(f"batch['frame_valid']: expected [B, T] = {(b, t)}, got {fv.shape}")
    if state is not None and state.started.shape != (b,):
      raise ValueError(f"segment_chunk: the state is for {state.started.shape[0]} clips, the batch "
                       f"has {b}")
    started = np.zeros(b, bool) if state is None else state.started
    vids = [_video_name(v) for v in batch["video_id"]] if "video_id" in batch else None
    is_kf = (cp == 1) & fv
    idx = np.argwhere(is_kf)
    clip = lambda i: f"clip {i}" if vids is None else f"video {vids[i]!r}"
    names = [f"{clip(i)} frame {tt}" for i, tt in idx]
    for i in range(b):
      valid_t = np.flatnonzero(fv[i])
      if valid_t.size and not is_kf[i, valid_t[0]] and not started[i]:
        raise ValueError(f"{clip(i)}: control_points at its first valid frame {valid_t[0]} is 0; "
                         "the first frame is always a keyframe")
    if not len(idx) and not (started & fv.any(1)).any():  # nothing to run
      z = np.zeros((b, t, h, w), np.int32)
      return dict(masks=z, object_ids=z.copy(), fg_prob=z.astype(np.float32), is_keyframe=is_kf,
                  num_objects=np.zeros((b, t), np.int32),
                  report=dict(keyframes=str(keyframes) if isinstance(keyframes, str) else "masks",
                              num_keyframes=0, classes_dropped=0, classes_dropped_per_clip=[0] * b,
                              empty_keyframes=0)), state
    if len(idx):
      kf, source = self._keyframes(params, batch, keyframes, idx, names)
    else:   # streaming: every clip continues its segment through this chunk
      kf = dict(ids=np.zeros((0, h, w), np.int32), num_objects=np.zeros(0, np.int32),
                id_to_class=np.zeros((0, state.id_to_class.shape[1]), np.int32),
                dropped=np.zeros(0, np.int32), prob=np.zeros((0, h, w), np.float32))
      source = keyframes if isinstance(keyframes, str) else f"masks:{getattr(keyframes, 'path', '?')}"

    def scatter(v, fill=0):
      v = np.asarray(v)
      out = np.full((b, t) + v.shape[1:], fill, v.dtype)
      out[idx[:, 0], idx[:, 1]] = v
      return out
    kf_ids, kf_n = scatter(kf["ids"]), scatter(kf["num_objects"])
    audio = {}
    if "audio_embed" in batch:
      audio["audio_embed"] = np.asarray(batch["audio_embed"], np.float32)
    elif "audio_logmel" in batch:
      vgg = params.get("keyframe", {}).get("params", {}).get("vggish")
      if vgg is None:
        raise ValueError("batch has audio_logmel but params['keyframe']['params'] holds no 'vggish' "
                         "(the KPF was built for audio_embed): give audio_embed [B, T, 128]")
      audio.update(audio_logmel=np.asarray(batch["audio_logmel"], np.float32), vggish_params=vgg)
    else:
      raise ValueError("batch: needs 'audio_embed' [B, T, 128] or 'audio_logmel' [B, T, 96, 64]")
    stream = dict(memory=None if state is None else state.memory, return_memory=True) if streaming else {}
    out = self.propagate({"propagator": params["propagator"], "encoder": params.get("encoder")},
                         frames, kf_ids, is_kf, kf_n, frame_valid=fv, video_ids=vids, **audio, **stream)
    out, memory = out if streaming else (out, None)
    ids = np.asarray(out["ids"])
    fg = np.array(out["fg_prob"])
    fg[idx[:, 0], idx[:, 1]] = kf["prob"]
    start = segment_starts(is_kf)
    seg = np.maximum(start, 0)
    bi = np.arange(b)[:, None]
    carried = (start < 0) & started[:, None]   # frames continuing the previous chunk's segment
    prev_n = np.zeros(b, np.int32) if state is None else state.num_objects
    nobj = np.where(carried, prev_n[:, None], kf_n[bi, seg])
    if self.semantic:
      table = scatter(kf["id_to_class"])[bi, seg]                      # [B, T, ids]
      if state is not None:
        table = np.where(carried[..., None], state.id_to_class[:, None], table)
      masks = np.take_along_axis(table, ids.reshape(b, t, -1), axis=2).reshape(ids.shape)
    else:
      masks = ids.copy()
    valid = fv & ((start >= 0) | started[:, None])
    masks = np.where(valid[..., None, None], masks, 0).astype(np.int32)
    dropped = np.zeros(b, np.int64)
    np.add.at(dropped, idx[:, 0], np.asarray(kf["dropped"], np.int64))
    report = dict(keyframes=source, num_keyframes=int(len(idx)), classes_dropped=int(dropped.sum()),
                  classes_dropped_per_clip=dropped.tolist(),
                  empty_keyframes=int(np.sum(np.asarray(kf["num_objects"]) == 0)
                                      if self.semantic else np.sum(~np.asarray(kf["ids"]).any((1, 2)))))
    result = dict(masks=masks, object_ids=np.where(valid[..., None, None], ids, 0).astype(np.int32),
                  fg_prob=np.where(valid[..., None, None], fg, 0).astype(np.float32), is_keyframe=is_kf,
                  num_objects=(nobj * valid).astype(np.int32), report=report)
    new_state = None
    if streaming:
      last = start[:, -1]                                   # latest keyframe of each clip, -1: none
      table_now = scatter(kf["id_to_class"])[np.arange(b), np.maximum(last, 0)]
      has = last >= 0
      prev_table = np.zeros_like(table_now) if state is None else state.id_to_class
      new_state = StreamState(memory=memory, started=started | has,
                              id_to_class=np.where(has[:, None], table_now, prev_table).astype(np.int32),
                              num_objects=np.where(has, kf_n[np.arange(b), np.maximum(last, 0)],
                                                   prev_n).astype(np.int32))
    return result, new_state


@dataclasses.dataclass
class StreamState:
  """What `Segmenter.segment_chunk` carries from one chunk to the next (nothing T-sized).

  memory: the propagator's `propagation.Memory` (device arrays) after the chunk's last frame.
  started: [B] bool, the clip has had a keyframe (a segment is open).
  id_to_class: [B, max_objects + 1] int32, the open segment's object id -> class table (semantic).
  num_objects: [B] int32, the open segment's object count.
  """
  memory: Any
  started: np.ndarray
  id_to_class: np.ndarray
  num_objects: np.ndarray


def _binary_identity(ids, max_objects: int) -> dict:
  """Binary keyframe masks {0, 1} [N, H, W] (jax or numpy) -> identity dict: object 1 = the
  mask, one object per keyframe."""
  n = ids.shape[0]
  if isinstance(ids, jax.Array):
    return dict(ids=ids, id_to_class=jnp.zeros((n, max_objects + 1), jnp.int32).at[:, 1].set(1),
                num_objects=jnp.ones((n,), jnp.int32), dropped=jnp.zeros((n,), jnp.int32))
  table = np.zeros((n, max_objects + 1), np.int32)
  table[:, 1] = 1
  return dict(ids=ids, id_to_class=table, num_objects=np.ones(n, np.int32), dropped=np.zeros(n, np.int32))


def _video_name(v) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


def make_segmenter(config, **kw) -> Segmenter:
  """`Segmenter(config, **kw)`: encode (propagator encoder override, e.g. a stand-in in tests),
  keyframe_batch (max keyframes per KPF call, default 16), compiler_options."""
  return Segmenter(config, **kw)


# ----------------------------------------------------------------------------- targets
def segment_targets(masks: Array, is_ref: Array, num_classes: int, max_objects: int):
  """Semantic GT class masks [B, T, H, W] -> (object-id targets [B, T, H, W] through each frame's
  segment mapping (the latest reference's classes, largest first; other classes -> IGNORE),
  num_objects [B, T] of the segment starting at each reference)."""
  b, t = masks.shape[:2]
  ident = classes_to_object_ids(masks.reshape((b * t,) + masks.shape[2:]), num_classes, max_objects)
  c2i = ident["class_to_id"].reshape(b, t, num_classes)
  nobj = ident["num_objects"].reshape(b, t)
  start = jax.lax.cummax(jnp.where(is_ref, jnp.arange(t)[None], -1), axis=1)
  seg_c2i = jnp.take_along_axis(c2i, jnp.maximum(start, 0)[..., None], axis=1)  # [B, T, C]
  tgt = jnp.take_along_axis(seg_c2i, masks.reshape(b, t, -1).astype(jnp.int32), axis=2).reshape(masks.shape)
  known = (tgt > 0) | (masks == 0)
  tgt = jnp.where(known & (start >= 0)[..., None, None], tgt, IGNORE)
  return tgt.astype(jnp.int32), nobj
