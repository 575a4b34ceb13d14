"""Segment your own video with a Co-Prop model directory.

  python -m coprop_jax.predict --checkpoint MODEL_DIR --video clip.mp4 --out OUT
  python -m coprop_jax.predict --checkpoint MODEL_DIR --frames_dir frames/ --audio clip.wav --out OUT
  python -m coprop_jax.predict ... --control_points cp.jsonl          # RCPG output for this video
  python -m coprop_jax.predict ... --control_points_method qwen --qwen_model /models/Qwen2-Audio-7B-Instruct

What it does (`python -m coprop_jax.predict --help` lists every flag):
1. Reads the video (PyAV; its own audio track unless --audio is given) or a folder of frames plus
   an audio file, sampled as the training data (`coprop_jax.media`: 1 frame per second by default,
   AVSBench's rule; 16 kHz mono audio, one VGGish log-mel patch per frame); frames are resized to
   the model's image size (model.json), masks are written back at the original size.
2. Control points (keyframes): from a precomputed RCPG JSONL file (`python -m coprop_jax.rcpg`,
   matched by video id), or computed on the fly: `cosine` (the default without an audio LLM:
   consecutive VGGish embeddings -- the model's own VGGish -- with cosine similarity below
   `rcpg.cosine_threshold` of the model's config), `first_frame` (propagation only), `every_frame`
   (Keyframe Processor only), or 1step / 3step / rcpg prompting of a local Qwen2-Audio
   (`--control_points_method qwen --qwen_model DIR`: 3step, or rcpg with --rcpg_document; loaded
   with local_files_only; `coprop_jax.rcpg.qwen`).
3. Segments the clip chunk by chunk (`--chunk_frames`, default 30): the Keyframe Processor on the
   chunk's keyframes, the Audio-insert Propagator over its frames, the propagator's memory carried
   into the next chunk (`pipeline.Segmenter.segment_chunk`). Memory stays flat whatever the
   clip's length, and the masks equal one whole-clip pass (tests/test_predict.py checks it).
4. Writes OUT (into a hidden temporary sibling renamed at the end: an interrupted run leaves no
   half-written OUT; an existing OUT is refused unless --force):
     masks/000000.png ...   one mask per frame at the original size (binary 0/255; AVSS: palette
                            PNG of class ids)
     overlay.mp4            masks over the frames, keyframes framed in orange (overlay.gif with
                            --overlay gif, or when PyAV's FFmpeg has no H.264 encoder)
     overlay_grid.png       up to 24 frames (evenly spaced) with their masks, keyframes marked
     timeline.png           audio spectrogram, control points and what is segmented per frame
                            (clips longer than 60 frames: timeline/<first>-<last>.png pages)
     summary.json           frames, timestamps, control points and their source, keyframes,
                            per-frame segmented classes, model dir, config hash, timings

Python (a notebook; `Predictor` keeps the compiled functions for the next clip):
  p = Predictor.load(MODEL_DIR)
  res = p.segment(frames, audio_logmel)           # in-memory clip: uint8 [T,H,W,3], [T,96,64]
  summary = predict(MODEL_DIR, "out/", video="clip.mp4", predictor=p)

Bad input (unreadable or empty video, no audio track and no audio file, a corrupt or silent audio
file, a directory that is not a model directory or a model of another config, a control-points
file without this video, ...) is a one-line `error: ...` naming the file, exit status 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time
import uuid
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from coprop_jax import audio as audio_lib
from coprop_jax import media

FORMAT = "coprop_jax.predict/1"
# not in the paper: the chunk length (the paper segments 5-10 s AVSBench clips whole). 30 frames:
# half a minute at 1 fps, a multiple of QWEN_WINDOW; one executable serves every chunk.
DEFAULT_CHUNK_FRAMES = 30
# not in the paper: Qwen2-Audio is prompted on windows of 10 frames (AVSS's clip length, the
# longest the paper prompts), each after the first preceded by one context frame (its flag is
# dropped), so a switch at a window's first frame is still seen and no keyframe is forced there.
QWEN_WINDOW = 10
# not in the paper: the output files (the paper shows qualitative masks only): mask PNGs at the
# video's own size (nearest upsampling of the model-size masks; binary 0/255, AVSS palette PNGs
# of class ids), an overlay video at most OVERLAY_MAX_SIDE px with keyframes framed in orange, a
# grid of GRID_FRAMES evenly spaced frames, timeline pages of TIMELINE_PAGE frames.
GRID_FRAMES = 24          # frames in overlay_grid.png (evenly spaced over the clip)
TIMELINE_PAGE = 60        # frames per timeline picture
OVERLAY_MAX_SIDE = 720    # the overlay video is scaled down to this longer side
METHODS = ("cosine", "qwen", "first_frame", "every_frame", "1step", "3step", "rcpg")
LLM_METHODS = ("1step", "3step", "rcpg")


class PredictError(ValueError):
  """Bad input for predict (a file, a flag); the message names it and says what was expected."""


# ----------------------------------------------------------------------------- control points


class ControlPoints:
  """Per-chunk control points: `cps(chunk, embeddings [n, 128]) -> int32 [n]` for consecutive
  chunks of one clip (frame 0 of the clip is always 1). `source` names the method, `detail()`
  what the summary records about it."""
  source = ""

  def __call__(self, chunk: media.Chunk, embeddings: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def detail(self) -> dict:
    return {}


class FixedControlPoints(ControlPoints):
  """Flags known for the whole clip (a control-points file, first_frame, every_frame)."""

  def __init__(self, flags: Sequence[int], source: str, detail: Optional[dict] = None):
    self.flags = np.asarray(flags, np.int32)
    self.source, self._detail = source, dict(detail or {})

  def __call__(self, chunk, embeddings):
    n = len(chunk.frames)
    if chunk.start + n > len(self.flags):
      raise PredictError(f"control points ({self.source}): {len(self.flags)} flags, the clip has "
                         f"more than {chunk.start + n - 1} frames")
    return self.flags[chunk.start:chunk.start + n]

  def detail(self):
    return self._detail


class CosineControlPoints(ControlPoints):
  """RCPG's cosine baseline, streamed: frame t >= 1 is a keyframe when cos(e_t, e_{t-1}) <
  threshold (`rcpg.core.cosine_control_points`), e_{t-1} carried across chunks."""
  source = "cosine"

  def __init__(self, threshold: float):
    self.threshold = float(threshold)
    self._prev = None

  def __call__(self, chunk, embeddings):
    from coprop_jax.rcpg import core
    e = np.asarray(embeddings, np.float64)
    if chunk.start == 0:
      self._prev = None
    if self._prev is None:
      flags = core.cosine_control_points(e, self.threshold)
    else:   # the comparison of the chunk's first frame with the previous chunk's last
      flags = core.cosine_control_points(np.concatenate([self._prev[None], e]), self.threshold)[1:]
    self._prev = e[-1]
    return flags.astype(np.int32)

  def detail(self):
    return {"threshold": self.threshold, "embedding": "VGGish of the model (the KPF's)"}


class QwenControlPoints(ControlPoints):
  """Qwen2-Audio prompting (`rcpg.qwen.QwenPrompter`: 1step, 3step or rcpg) on windows of
  `window` frames; every window after the clip's first is preceded by the previous frame's audio
  as context (its flag is dropped). A reply that does not parse falls back to `fallback`
  ("first_frame": no keyframe in the window; "cosine": the cosine rule), as the RCPG runner."""

  def __init__(self, prompter, *, method: str, window: int = QWEN_WINDOW, fps: float = 1.0,
               fallback: str = "first_frame", threshold: float = 0.8, batch_size: int = 8,
               video_id: str = "clip"):
    if fallback not in ("first_frame", "cosine"):
      raise PredictError(f"rcpg.fallback must be 'first_frame' or 'cosine', got {fallback!r}")
    if window < 1:
      raise PredictError(f"--qwen_window must be >= 1, got {window}")
    self.prompter, self.source, self.window, self.fps = prompter, method, int(window), fps
    self.fallback, self.threshold, self.batch_size = fallback, float(threshold), max(1, int(batch_size))
    self.video_id = video_id
    self.windows: list[dict] = []
    self._prev_wave = self._prev_emb = None

  def __call__(self, chunk, embeddings):
    from coprop_jax.rcpg import core
    n = len(chunk.frames)
    s0 = media.num_samples(chunk.start, self.fps)
    bound = lambda k: media.num_samples(chunk.start + k, self.fps) - s0   # chunk-relative samples
    jobs = []
    for a in range(0, n, self.window):
      e = min(a + self.window, n)
      g = chunk.start + a
      wave = chunk.waveform[bound(a):bound(e)]
      ctx = 0
      if g > 0:
        prev = chunk.waveform[bound(a - 1):bound(a)] if a > 0 else self._prev_wave
        wave, ctx = np.concatenate([prev, wave]), 1
      jobs.append(dict(a=a, e=e, g=g, ctx=ctx, video=dict(video_id=f"{self.video_id}@{g}",
                                                          waveform=wave, num_frames=e - a + ctx)))
    replies = []
    for i in range(0, len(jobs), self.batch_size):
      replies += self.prompter.run([j["video"] for j in jobs[i:i + self.batch_size]])
    emb = np.asarray(embeddings, np.float64)
    flags = np.zeros(n, np.int32)
    for j, rep in zip(jobs, replies):
      a, e, g, ctx = j["a"], j["e"], j["g"], j["ctx"]
      rec = dict(first_frame=g, num_frames=e - a, context_frame=bool(ctx), category=rep["category"],
                 raw_replies=rep["raw_replies"], examples=rep["examples"], parse_ok=rep["flags"] is not None,
                 fallback=None)
      if rep["flags"] is not None:
        f = np.asarray(rep["flags"], np.int32)[ctx:]
      else:
        rec["fallback"] = self.fallback
        if self.fallback == "cosine":
          prev = emb[a - 1] if a > 0 else self._prev_emb
          w = emb[a:e] if prev is None else np.concatenate([prev[None], emb[a:e]])
          f = core.cosine_control_points(w, self.threshold)[(0 if prev is None else 1):]
        else:
          f = np.zeros(e - a, np.int32)
      if g == 0:
        f[0] = 1
      flags[a:e] = f
      self.windows.append(rec)
    self._prev_wave = chunk.waveform[bound(n - 1):bound(n)]
    self._prev_emb = emb[-1]
    return flags

  def detail(self):
    return {"model": getattr(self.prompter, "model_name", ""), "window": self.window,
            "fallback": self.fallback, "windows": self.windows,
            "fallbacks": sum(w["fallback"] is not None for w in self.windows)}


def read_control_points(path, video_id: str, num_frames: int) -> FixedControlPoints:
  """The record of `video_id` in an RCPG JSONL file (`python -m coprop_jax.rcpg`), checked
  against the clip's T. Raises PredictError naming the file."""
  from coprop_jax.rcpg import jsonl
  p = pathlib.Path(path).expanduser()
  if not p.is_file():
    raise PredictError(f"control points file {p}: does not exist")
  try:
    records, _ = jsonl.read_records(p)
  except jsonl.RecordsError as e:
    raise PredictError(f"control points file {e}") from e
  hits = [r for r in records if str(r["video_id"]) == video_id]
  if not hits:
    ids = sorted({str(r["video_id"]) for r in records})
    raise PredictError(f"control points file {p}: no record for video {video_id!r} ({len(ids)} "
                       f"video ids, e.g. {ids[:3]}); name the clip's record with --video_id")
  if len(hits) > 1:
    raise PredictError(f"control points file {p}: video {video_id!r} appears {len(hits)} times")
  flags = hits[0]["flags"]
  if (not isinstance(flags, list) or any(isinstance(f, bool) or f not in (0, 1) for f in flags)
      or not flags or flags[0] != 1):
    raise PredictError(f"control points file {p}: video {video_id!r} has flags {str(flags)[:80]}; "
                       "expected a list of 0/1 starting with 1")
  if len(flags) != num_frames:
    raise PredictError(f"control points file {p}: video {video_id!r} has {len(flags)} flags but the "
                       f"clip has {num_frames} frames at this --fps")
  return FixedControlPoints(flags, "file", {"file": str(p), "video_id": video_id,
                                            "method": hits[0].get("method")})


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass
class Segmented:
  """One chunk's result. chunk: the input (frames at the model's size); masks int32 [n, S, S]
  (binary {0,1} or class ids); fg_prob float32 [n, S, S]; control_points int32 [n];
  num_objects int32 [n] (objects of each frame's segment); embeddings float32 [n, 128] (VGGish);
  report: the pipeline's (num_keyframes, classes_dropped, empty_keyframes, ...)."""
  chunk: media.Chunk
  masks: np.ndarray
  fg_prob: np.ndarray
  control_points: np.ndarray
  num_objects: np.ndarray
  embeddings: np.ndarray
  report: dict


class Predictor:
  """A loaded model directory with its compiled functions (one VGGish, one propagation
  executable for every chunk, the KPF per power-of-two keyframe bucket).

  config / params: as `model_io.load_model`; image_size: model.json's; chunk_frames: frames per
  propagation call (the memory carried between calls).
  """

  def __init__(self, config, params, *, image_size: int, model_dir: str = "",
               chunk_frames: int = DEFAULT_CHUNK_FRAMES, keyframe_batch: int = 8,
               compiler_options: Optional[dict] = None):
    import jax
    import jax.numpy as jnp
    from coprop_jax import pipeline
    from coprop_jax.models import vggish
    if not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 1:
      raise PredictError(f"--chunk_frames must be a positive integer, got {chunk_frames!r}")
    self.config, self.image_size, self.model_dir = config, int(image_size), str(model_dir)
    self.chunk_frames = int(chunk_frames)
    self.params = jax.tree_util.tree_map(jnp.asarray, params)
    self.semantic = int(config.keyframe.num_classes) > 1
    from coprop_jax import model_io
    # A model trained on a weight-free embedding (`data.audio_embed`, e.g. the demo's
    # "logmel_stats") hears through that same embedding; otherwise through its own VGGish.
    self._embed_kind = str(config.data.audio_embed) if model_io.uses_audio_embed(config) else ""
    vgg = self.params.get("keyframe", {}).get("params", {}).get("vggish")
    if vgg is None and not self._embed_kind:
      raise PredictError(f"model {model_dir}: its Keyframe Processor holds no VGGish params and "
                         "its config names no data.audio_embed, so it cannot hear raw audio")
    self._vggish = vgg
    self.segmenter = pipeline.make_segmenter(config, keyframe_batch=keyframe_batch,
                                             compiler_options=compiler_options)
    dtype = jnp.dtype(config.keyframe.dtype)
    self._embed = jax.jit(lambda p, x: vggish.embed_frames(p, x[None], dtype)[0],
                          compiler_options=compiler_options)

  @classmethod
  def load(cls, model_dir, *, expect=None, **kw) -> "Predictor":
    """Reads a model directory (`model_io.load_model`; `expect`: refuse a model whose networks
    were built from other settings than this config)."""
    from coprop_jax import model_io
    config, params = model_io.load_model(model_dir, expect=expect)
    _, meta = model_io.read_model_info(model_dir)
    return cls(config, params, image_size=int(meta["image_size"]),
               model_dir=str(pathlib.Path(model_dir).expanduser().resolve()), **kw)

  def embed(self, audio_logmel: np.ndarray) -> np.ndarray:
    """float32 [n, 96, 64] -> [n, 128] VGGish embeddings (the model's frozen VGGish), at most
    chunk_frames at a time, padded to a power of two (VGGish compiles in well under a second and
    its run time grows with the padding)."""
    lm = np.asarray(audio_logmel, np.float32)
    if self._embed_kind:
      if not len(lm):
        return np.zeros((0, 128), np.float32)
      return audio_lib.frame_embeddings(lm, self._embed_kind).astype(np.float32)
    c, out = self.chunk_frames, []
    for a in range(0, len(lm), c):
      x = lm[a:a + c]
      pad = np.zeros((min(c, 1 << (len(x) - 1).bit_length()),) + lm.shape[1:], np.float32)
      pad[:len(x)] = x
      out.append(np.asarray(self._embed(self._vggish, pad))[:len(x)])
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)

  def stream(self, chunks: Iterable[media.Chunk], control_points: ControlPoints, *,
             video_id: str = "clip") -> Iterator[Segmented]:
    """Segments consecutive chunks of one clip (frames uint8 [n, S, S, 3] at image_size, n <=
    chunk_frames; audio_logmel [n, 96, 64]), yielding one `Segmented` per chunk."""
    c, s = self.chunk_frames, self.image_size
    state, nxt = None, 0
    for chunk in chunks:
      n = len(chunk.frames)
      if chunk.start != nxt or not 1 <= n <= c:
        raise ValueError(f"stream: chunk at frame {chunk.start} with {n} frames; expected frame "
                         f"{nxt} and 1..{c} frames")
      if chunk.frames.shape[1:] != (s, s, 3) or chunk.frames.dtype != np.uint8:
        raise ValueError(f"stream: frames must be uint8 [n, {s}, {s}, 3] (the model's size), got "
                         f"{chunk.frames.dtype} {chunk.frames.shape}")
      nxt += n
      emb = self.embed(chunk.audio_logmel)
      flags = np.asarray(control_points(chunk, emb), np.int32)
      if chunk.start == 0:
        flags[0] = 1
      pad = lambda x: np.concatenate([x, np.zeros((c - n,) + x.shape[1:], x.dtype)])[None]
      batch = dict(frames=pad(chunk.frames), audio_embed=pad(emb.astype(np.float32)),
                   control_points=pad(flags), frame_valid=pad(np.ones(n, bool)),
                   video_id=np.array([video_id]))
      out, state = self.segmenter.segment_chunk(self.params, batch, state)
      yield Segmented(chunk=chunk, masks=out["masks"][0, :n], fg_prob=out["fg_prob"][0, :n],
                      control_points=flags, num_objects=out["num_objects"][0, :n], embeddings=emb,
                      report=out["report"])

  def segment(self, frames: np.ndarray, audio_logmel: np.ndarray, control_points: Any = "cosine", *,
              waveform: Optional[np.ndarray] = None, fps: float = 1.0, video_id: str = "clip",
              chunk: Optional[int] = None) -> dict:
    """A clip in memory: frames uint8 [T, H, W, 3] (resized to image_size), audio_logmel
    [T, 96, 64]; control_points: "cosine", "first_frame", "every_frame", flags [T] or a
    `ControlPoints`; waveform: 16 kHz mono (needed by Qwen control points only); chunk: frames
    per call (default and at most chunk_frames; shorter calls are padded: same executable).
    Returns numpy: masks [T, S, S] int32, fg_prob [T, S, S], control_points [T] int32,
    num_objects [T], embeddings [T, 128], frames [T, S, S, 3] uint8 (what the model saw), report."""
    frames = media.resize_frames(np.asarray(frames, np.uint8), self.image_size)
    lm = np.asarray(audio_logmel, np.float32)
    t_len = len(frames)
    if lm.shape != (t_len, 96, 64):
      raise ValueError(f"audio_logmel: expected [{t_len}, 96, 64], got {lm.shape}")
    cps = self.control_points(control_points, t_len)
    wave = np.zeros(media.num_samples(t_len, fps), np.float32) if waveform is None else np.asarray(waveform)

    step = self.chunk_frames if chunk is None else int(chunk)
    if not 1 <= step <= self.chunk_frames:
      raise ValueError(f"chunk: expected 1..{self.chunk_frames} frames, got {chunk}")

    def chunks():
      for a in range(0, t_len, step):
        b = min(a + step, t_len)
        yield media.Chunk(start=a, frames=frames[a:b], timestamps=np.asarray(media.sample_times(b, fps)[a:], float),
                          audio_logmel=lm[a:b],
                          waveform=wave[media.num_samples(a, fps):media.num_samples(b, fps)])
    res = list(self.stream(chunks(), cps, video_id=video_id))
    cat = lambda k: np.concatenate([getattr(r, k) for r in res])
    report = {k: sum(r.report[k] for r in res) for k in ("num_keyframes", "classes_dropped", "empty_keyframes")}
    return dict(masks=cat("masks"), fg_prob=cat("fg_prob"), control_points=cat("control_points"),
                num_objects=cat("num_objects"), embeddings=cat("embeddings"), frames=frames,
                report=report)

  def control_points(self, spec: Any, num_frames: int) -> ControlPoints:
    """A ControlPoints from "cosine" (threshold: the model config's rcpg.cosine_threshold),
    "first_frame", "every_frame", flags [T] or a ControlPoints (returned as is)."""
    if isinstance(spec, ControlPoints):
      return spec
    if isinstance(spec, str):
      if spec == "cosine":
        return CosineControlPoints(self.config.rcpg.cosine_threshold)
      if spec == "first_frame":
        return FixedControlPoints([1] + [0] * (num_frames - 1), "first_frame")
      if spec == "every_frame":
        return FixedControlPoints([1] * num_frames, "every_frame")
      raise PredictError(f"control points {spec!r}: expected one of cosine, first_frame, every_frame "
                         "(the LLM methods need --qwen_model)")
    flags = np.asarray(spec)
    if flags.shape != (num_frames,) or not np.isin(flags, (0, 1)).all() or flags[0] != 1:
      raise PredictError(f"control points: expected {num_frames} flags of 0/1 starting with 1, got "
                         f"shape {flags.shape}")
    return FixedControlPoints(flags, "given")


# not in the paper: a notebook / server calling predict again with the same model reuses the
# loaded weights and compiled functions (one model kept).
_LOADED: dict = {}


def _memo_key(model_dir, chunk_frames: int) -> tuple:
  p = pathlib.Path(model_dir).expanduser().resolve()
  return (str(p), (p / "model.json").stat().st_mtime_ns, int(chunk_frames))


def _predictor_for(model_dir, chunk_frames: int) -> Predictor:
  key = _memo_key(model_dir, chunk_frames)
  p = key[0]
  if key not in _LOADED:
    _LOADED.clear()
    _LOADED[key] = Predictor.load(p, chunk_frames=chunk_frames)
  return _LOADED[key]


# ----------------------------------------------------------------------------- outputs


def _config_hash(config) -> str:
  text = json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()


def _resize_rgb(frames: np.ndarray, hw) -> np.ndarray:
  from PIL import Image
  if frames.shape[1:3] == tuple(hw):
    return frames
  return np.stack([np.asarray(Image.fromarray(f).resize((hw[1], hw[0]), Image.BILINEAR)) for f in frames])


def _key_border(images: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """Orange frame (the pictures' keyframe colour) around the keyframes of uint8 [n, H, W, 3]."""
  from coprop_jax.eval import visualize
  col = np.array([int(visualize.KEY_COLOR[i:i + 2], 16) for i in (1, 3, 5)], np.uint8)
  out = images.copy()
  w = max(2, min(images.shape[1:3]) // 60)
  for i in np.flatnonzero(keys):
    out[i, :w], out[i, -w:], out[i, :, :w], out[i, :, -w:] = col, col, col, col
  return out


class _Outputs:
  """Writes a clip's results chunk by chunk into `root` (flat memory: a grid sample of frames and
  one timeline page are kept, everything else is written as it comes)."""

  def __init__(self, root: pathlib.Path, info: media.MediaInfo, *, semantic: bool,
               overlay: str = "mp4"):
    self.root, self.info, self.semantic = root, info, semantic
    t_len = info.num_frames
    h, w = info.original_size
    scale = min(1.0, OVERLAY_MAX_SIDE / max(h, w))
    self.disp_hw = (max(2, round(h * scale)), max(2, round(w * scale)))
    self.video = media.OverlayVideoWriter(root / f"overlay.{overlay}", fps=info.fps)
    self.grid_idx = np.unique(np.round(np.linspace(0, t_len - 1, min(t_len, GRID_FRAMES))).astype(int))
    self.grid = []            # (index, frame, mask, keyframe, timestamp)
    self.page = []            # (logmel, mask, keyframe) of the current timeline page
    self.page_start = 0
    self.timelines: list[str] = []
    self.frames: list[dict] = []

  def add(self, seg: Segmented, original_frames: np.ndarray):
    ch, n = seg.chunk, len(seg.masks)
    mode = "palette" if self.semantic else "binary"
    media.write_mask_pngs(self.root / "masks", seg.masks, start=ch.start, mode=mode,
                          size=self.info.original_size)
    disp = _resize_rgb(np.asarray(original_frames, np.uint8), self.disp_hw)
    over = media.overlay_masks(disp, media.resize_masks(seg.masks, self.disp_hw))
    self.video.write(_key_border(over, seg.control_points))
    area = seg.masks.shape[1] * seg.masks.shape[2]
    for k in range(n):
      t = ch.start + k
      m = seg.masks[k]
      rec = {"index": t, "time": round(float(ch.timestamps[k]), 4), "keyframe": bool(seg.control_points[k]),
             "foreground": round(float(np.count_nonzero(m)) / area, 5), "num_objects": int(seg.num_objects[k]),
             "mask": f"masks/{t:06d}.png"}
      if self.semantic:
        rec["classes"] = sorted(int(c) for c in np.unique(m) if c != 0)
      else:
        rec["segmented"] = bool(m.any())
      self.frames.append(rec)
      if t in self.grid_idx:
        self.grid.append((t, ch.frames[k], m, bool(seg.control_points[k]), float(ch.timestamps[k])))
      self.page.append((ch.audio_logmel[k], m, bool(seg.control_points[k])))
      if len(self.page) == TIMELINE_PAGE:
        self._flush_page()

  def _flush_page(self):
    from coprop_jax.eval import visualize
    if not self.page:
      return
    lm, masks, keys = (np.stack(x) for x in zip(*self.page))
    a, b = self.page_start, self.page_start + len(self.page) - 1
    whole = a == 0 and b == self.info.num_frames - 1
    name = "timeline.png" if whole else f"timeline/{a:06d}-{b:06d}.png"
    (self.root / name).parent.mkdir(parents=True, exist_ok=True)
    title = f"{pathlib.Path(self.info.path).name}" + ("" if whole else f": frames {a}-{b}")
    visualize.save_timeline(self.root / name, lm, control_points=keys, pred_masks=masks,
                            fps=self.info.fps, title=title, first_frame=a)
    self.timelines.append(name)
    self.page, self.page_start = [], b + 1

  def close(self) -> dict:
    from coprop_jax.eval import visualize
    self._flush_page()
    video = self.video.close()
    idx, frames, masks, keys, ts = zip(*self.grid)
    visualize.save_overlay_grid(self.root / "overlay_grid.png", np.stack(frames), np.stack(masks),
                                control_points=np.array(keys), timestamps=np.array(ts),
                                indices=list(idx), title=pathlib.Path(self.info.path).name)
    return {"masks": "masks/", "overlay_video": video.name, "overlay_grid": "overlay_grid.png",
            "timeline": self.timelines, "summary": "summary.json"}


# ----------------------------------------------------------------------------- predict


def _check_out(out: pathlib.Path, force: bool):
  if not out.exists():
    return
  if not force:
    raise FileExistsError(f"output {out}: already exists; pass --force to replace it")
  if not out.is_dir():
    raise FileExistsError(f"output {out}: exists and is not a directory; refusing to replace it")
  if any(out.iterdir()) and not (out / "summary.json").is_file():
    raise FileExistsError(f"output {out}: exists and is not a predict output (no summary.json); "
                          "refusing to replace it even with --force (choose another --out)")


def resolve_method(method: Optional[str], *, control_points_file=None, qwen_model=None,
                   rcpg_document=None) -> str:
  """The control-point method: "file" with a file; else `method`, defaulting to cosine without
  an audio LLM; "qwen" (and the default with --qwen_model) is rcpg with a retrieval document,
  else 3step (the paper's step-by-step prompting, no retrieval)."""
  if control_points_file:
    if method:
      raise PredictError("give either --control_points FILE or --control_points_method, not both")
    return "file"
  if method is None:
    method = "qwen" if qwen_model else "cosine"
  if method not in METHODS:
    raise PredictError(f"--control_points_method must be one of {', '.join(METHODS)}, got {method!r}")
  if method == "qwen":   # not in the paper: what "qwen" means (rcpg needs the document D; else 3step)
    method = "rcpg" if rcpg_document else "3step"
  return method


def _make_prompter(config, method: str, qwen_model: str, rcpg_document):
  from coprop_jax.rcpg import qwen as qwen_lib
  from coprop_jax.rcpg import runner
  cfg = config.rcpg.copy_and_resolve_references()
  q = pathlib.Path(qwen_model).expanduser()
  if not q.is_dir():
    raise PredictError(f"--qwen_model {q}: not a directory (a local Qwen2-Audio model: config.json, "
                       "weights, processor files)")
  cfg.model_name_or_path = str(q)
  doc = ()
  if method == "rcpg":
    if not rcpg_document:
      raise PredictError("--control_points_method rcpg needs --rcpg_document FILE (JSONL of video_id, "
                         "categories, flags: the retrieval document D)")
    cfg.document_file = str(pathlib.Path(rcpg_document).expanduser())
    try:
      doc, _ = runner.load_document(cfg, "", "wavdir")
    except ValueError as e:   # RecordsError included
      raise PredictError(f"--rcpg_document: {e}") from e
  try:
    qwen_lib.resolve_device(cfg.device)
    return qwen_lib.QwenPrompter.from_config(cfg, method, doc)
  except (ValueError, OSError) as e:
    raise PredictError(f"--qwen_model {q}: {e}") from e


def predict(checkpoint, out, *, video=None, frames_dir=None, audio=None, fps: float = 1.0,
            control_points=None, video_id: Optional[str] = None,
            control_points_method: Optional[str] = None, cosine_threshold: Optional[float] = None,
            qwen_model=None, rcpg_document=None,
            qwen_window: int = QWEN_WINDOW, expect=None, chunk_frames: int = DEFAULT_CHUNK_FRAMES,
            overlay: str = "mp4", force: bool = False, allow_silence: bool = False,
            progress: bool = True,
            predictor: Optional[Predictor] = None, prompter=None) -> dict:
  """Segments a video file (`video`) or a frames folder (`frames_dir` + `audio`) into `out`;
  returns the summary (also written as out/summary.json). See the module docstring; arguments
  mirror the CLI flags (control_points = --control_points FILE, expect = the config of
  --config). predictor: a loaded `Predictor` of this model directory to reuse; prompter: a
  `QwenPrompter` to use instead of loading --qwen_model."""
  from coprop_jax import model_io
  t0 = time.perf_counter()
  out = pathlib.Path(out).expanduser().absolute()
  _check_out(out, force)
  model_dir = pathlib.Path(checkpoint).expanduser()
  config, meta = model_io.read_model_info(model_dir)   # not a model directory -> CheckpointError
  if expect is not None:
    changes = model_io.architecture_changes(config, expect)
    if changes:
      from coprop_jax.convert.checkpoint_io import CheckpointError
      raise CheckpointError(f"model {model_dir} was made with another config; fields that differ "
                            f"(model -> yours): {'; '.join(changes)}")
  # not in the paper: silent audio is refused unless allow_silence (the audio drives both networks
  # and the control points; a muted video would silently give audio-blind masks).
  if overlay not in ("mp4", "gif"):
    raise PredictError(f"--overlay must be mp4 or gif, got {overlay!r}")
  if (video is None) == (frames_dir is None):
    raise PredictError("give exactly one input: --video FILE or --frames_dir DIR (with --audio FILE)")
  if frames_dir is not None and audio is None:
    raise PredictError(f"frames folder {frames_dir}: needs --audio FILE (a WAV) for its sound")
  method = resolve_method(control_points_method, control_points_file=control_points,
                          qwen_model=qwen_model or prompter, rcpg_document=rcpg_document)
  if method in LLM_METHODS and qwen_model is None and prompter is None:
    raise PredictError(f"--control_points_method {method} prompts an audio LLM: give --qwen_model "
                       "DIR (a local Qwen2-Audio model directory)")
  src = media.open_media(video if video is not None else frames_dir, audio, size=None, fps=fps,
                         allow_silence=allow_silence)
  info = src.info
  vid = video_id or info.video_id
  threshold = float(config.rcpg.cosine_threshold if cosine_threshold is None else cosine_threshold)
  if method == "file":
    cps = read_control_points(control_points, vid, info.num_frames)
  elif method == "cosine":
    cps = CosineControlPoints(threshold)
  elif method == "first_frame":
    cps = FixedControlPoints([1] + [0] * (info.num_frames - 1), "first_frame")
  elif method == "every_frame":
    cps = FixedControlPoints([1] * info.num_frames, "every_frame")
  else:
    if prompter is None:
      prompter = _make_prompter(config, method, qwen_model, rcpg_document)
    cps = QwenControlPoints(prompter, method=method, window=qwen_window, fps=info.fps,
                            fallback=config.rcpg.fallback, threshold=threshold,
                            batch_size=config.rcpg.batch_size, video_id=vid)
  t_open = time.perf_counter()
  if predictor is None:
    predictor = _predictor_for(model_dir, chunk_frames)
  elif pathlib.Path(predictor.model_dir).resolve() != model_dir.resolve():
    raise PredictError(f"predictor was loaded from {predictor.model_dir}, not {model_dir}")
  t_load = time.perf_counter()
  size = predictor.image_size
  timings = dict(open_inputs=t_open - t0, load_model=t_load - t_open, segment=0.0, write=0.0)
  totals = dict(num_keyframes=0, classes_dropped=0, empty_keyframes=0)
  flags = []
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=info.num_frames, unit="frame", desc="predict", dynamic_ncols=True, file=sys.stderr)
  originals = {}

  def model_chunks():
    for ch in src.chunks(predictor.chunk_frames):
      originals["frames"] = ch.frames
      yield dataclasses.replace(ch, frames=media.resize_frames(ch.frames, size))

  old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    with media.atomic_output(out) as tmp:
      tmp.mkdir()
      writer = _Outputs(tmp, info, semantic=predictor.semantic, overlay=overlay)
      try:
        t = time.perf_counter()
        for seg in predictor.stream(model_chunks(), cps, video_id=vid):
          t1 = time.perf_counter()
          timings["segment"] += t1 - t
          writer.add(seg, originals.pop("frames"))
          flags.append(seg.control_points)
          for k in totals:
            totals[k] += int(seg.report[k])
          if bar is not None:
            bar.update(len(seg.masks))
          t = time.perf_counter()
          timings["write"] += t - t1
        t1 = time.perf_counter()
        files = writer.close()
        timings["write"] += time.perf_counter() - t1
      except BaseException as e:
        writer.video.__exit__(type(e), e, e.__traceback__)   # closes the encoder, drops its file
        raise
      flags = np.concatenate(flags)
      timings["total"] = time.perf_counter() - t0
      summary = dict(
          format=FORMAT, video_id=vid,
          input=dict(dataclasses.asdict(info), original_size=list(info.original_size), size=[size, size]),
          model=dict(dir=str(model_dir.resolve()), image_size=size, config_sha256=_config_hash(config),
                     sources=meta.get("sources", {}),
                     kind="semantic" if predictor.semantic else "binary",
                     num_classes=int(config.keyframe.num_classes)),
          num_frames=info.num_frames, fps=info.fps,
          timestamps=[f["time"] for f in writer.frames],
          control_points=dict(source=cps.source, flags=flags.tolist(), **cps.detail()),
          keyframes=np.flatnonzero(flags).tolist(), chunk_frames=predictor.chunk_frames,
          pipeline=totals, frames=writer.frames, files=files,
          timings_s={k: round(v, 3) for k, v in timings.items()})
      (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
      if out.exists():   # --force: the old output steps aside at the last moment
        os.replace(out, old)
  finally:
    if bar is not None:
      bar.close()
  if old.exists():
    shutil.rmtree(old, ignore_errors=True)
  return summary


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m coprop_jax.predict", allow_abbrev=False,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Segment the sounding objects of your own video with a Co-Prop model directory "
                  "(written by training or coprop_jax.model_io.save_model).",
      epilog="""examples:
  python -m coprop_jax.predict --checkpoint /tmp/coprop_demo/model --video clip.mp4 --out seg/
  python -m coprop_jax.predict --checkpoint MODEL --frames_dir frames/ --audio clip.wav --out seg/
  python -m coprop_jax.predict --checkpoint MODEL --video clip.mp4 --out seg/ \\
      --control_points cp.jsonl            # from: python -m coprop_jax.rcpg --method rcpg ...

OUT holds masks/NNNNNN.png (original size), overlay.mp4 (or .gif), overlay_grid.png,
timeline.png and summary.json. Errors print one line 'error: ...' and exit with status 1.""")
  g = p.add_argument_group("input")
  g.add_argument("--checkpoint", required=True, metavar="MODEL_DIR",
                 help="Co-Prop model directory (config.json, model.json, params/)")
  g.add_argument("--video", metavar="FILE", help="video file (mp4, mkv, webm, avi, mov, ...)")
  g.add_argument("--frames_dir", metavar="DIR",
                 help="folder of frames (one image per 1/fps s, natural order), with --audio")
  g.add_argument("--audio", metavar="FILE",
                 help="audio file (WAV, FLAC, ...); default: the video's own audio track")
  g.add_argument("--fps", type=float, default=1.0,
                 help="frames sampled per second (default 1, as AVSBench and the training data)")
  g.add_argument("--allow_silence", action="store_true",
                 help="run on silent audio (refused by default: the audio drives the model)")
  c = p.add_argument_group("control points (keyframes)")
  c.add_argument("--control_points", metavar="FILE",
                 help="RCPG JSONL (python -m coprop_jax.rcpg) with a record for this video")
  c.add_argument("--video_id", help="the clip's id in --control_points (default: the file or "
                 "folder name without extension)")
  c.add_argument("--control_points_method", choices=METHODS, default=None,
                 help="computed on the fly: cosine (default without --qwen_model), qwen (default "
                 "with --qwen_model: 3step prompting, rcpg with --rcpg_document), first_frame "
                 "(propagation only), every_frame (Keyframe Processor only), or 1step/3step/rcpg")
  c.add_argument("--cosine_threshold", type=float, default=None,
                 help="cosine method: keyframe where consecutive VGGish embeddings have cosine "
                 "similarity below this (default: the model config's rcpg.cosine_threshold)")
  c.add_argument("--qwen_model", metavar="DIR",
                 help="local Qwen2-Audio model directory (never downloaded)")
  c.add_argument("--rcpg_document", metavar="FILE",
                 help="rcpg method: retrieval document D (JSONL of video_id, categories, flags)")
  c.add_argument("--qwen_window", type=int, default=QWEN_WINDOW,
                 help=f"frames per Qwen prompt (default {QWEN_WINDOW})")
  o = p.add_argument_group("output and run")
  o.add_argument("--out", required=True, metavar="OUT", help="output directory (must not exist)")
  o.add_argument("--overlay", choices=("mp4", "gif"), default="mp4",
                 help="overlay video format (mp4: H.264, GIF when PyAV's FFmpeg has no H.264 "
                 "encoder; gif: an animated GIF, held in memory until the end: short clips)")
  o.add_argument("--force", action="store_true", help="replace an existing OUT written by predict")
  o.add_argument("--config", metavar="CONFIG",
                 help="refuse a model whose networks were not built from this config "
                 "(e.g. configs/coprop.py:dataset=ms3)")
  o.add_argument("--chunk_frames", type=int, default=DEFAULT_CHUNK_FRAMES,
                 help=f"frames per propagation call; memory is carried between calls (default "
                 f"{DEFAULT_CHUNK_FRAMES})")
  o.add_argument("--no_progress", action="store_true", help="no progress bar")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  from coprop_jax.convert.checkpoint_io import CheckpointError
  from coprop_jax.rcpg.jsonl import RecordsError
  from coprop_jax.utils.config import ConfigError
  try:
    expect = None
    if args.config:
      from coprop_jax.utils.config import load_config
      expect = load_config(args.config)
    summary = predict(args.checkpoint, args.out, video=args.video, frames_dir=args.frames_dir,
                      audio=args.audio, fps=args.fps, control_points=args.control_points,
                      video_id=args.video_id, control_points_method=args.control_points_method,
                      cosine_threshold=args.cosine_threshold, qwen_model=args.qwen_model,
                      rcpg_document=args.rcpg_document, qwen_window=args.qwen_window, expect=expect,
                      chunk_frames=args.chunk_frames, overlay=args.overlay, force=args.force,
                      allow_silence=args.allow_silence, progress=not args.no_progress)
  except (media.MediaError, CheckpointError, RecordsError, ConfigError, PredictError,
          FileExistsError, FileNotFoundError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1
  out = pathlib.Path(args.out)
  print(f"{summary['num_frames']} frames, {len(summary['keyframes'])} keyframes "
        f"({summary['control_points']['source']}), {summary['timings_s']['total']:.1f} s")
  for name in ("masks", "overlay_video", "overlay_grid"):
    print(f"  {name:14s} {out / summary['files'][name]}")
  for name in summary["files"]["timeline"]:
    print(f"  {'timeline':14s} {out / name}")
  print(f"  {'summary':14s} {out / 'summary.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
