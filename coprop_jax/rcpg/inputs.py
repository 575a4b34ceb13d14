"""Video sources for RCPG (AVSBench trees via data_pipelines.avsbench.readers, or a WAV directory),
the retrieval document D built from an AVSS tree, and per-frame audio embeddings for the cosine
baseline.

A *source item* is a lightweight handle {"video_id", "category", "load"}; `load()` returns the
clip dict: waveform float32 [T*16000], num_frames T (real frames, padding dropped), audio_logmel
[T,96,64], and for AVSBench trees masks [T,H,W] / gt_valid [T] and `categories` (AVSS: the class
names in the GT masks; S4: the category folder; MS3: none) / `frame_categories` (AVSS: per frame).
"""
from __future__ import annotations

import functools
import logging
import pathlib
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from coprop_jax import audio as audio_lib

LAYOUTS = ("wavdir", "s4", "ms3", "avss")
log = logging.getLogger(__name__)


def is_binary_layout(layout: str) -> bool:
  """s4/ms3 masks are 0/1 (no object ids); avss masks hold class ids."""
  return layout in ("s4", "ms3")


def _load_wav(path: pathlib.Path, num_frames: int) -> Dict:
  from data_pipelines.avsbench import readers
  wave, _ = audio_lib.read_wav(path)
  t = num_frames if num_frames > 0 else max(1, int(round(len(wave) / audio_lib.SAMPLE_RATE)))
  wave = readers.fit_audio(wave, t * audio_lib.SAMPLE_RATE, path).astype(np.float32)
  return {"waveform": wave, "num_frames": t,
          "audio_logmel": audio_lib.waveform_to_frame_patches(wave, t).astype(np.float32)}


def avss_class_names(root) -> Tuple[Dict[int, str], int]:
  """AVSS label2idx.json -> ({index: class name} without background, background index)."""
  from data_pipelines.avsbench import readers
  l2i = readers.load_label2idx(root)
  bg = l2i.get("background", 0)
  return {i: n for n, i in l2i.items() if i != bg}, bg


def frame_categories(masks: np.ndarray, gt_valid: np.ndarray, names: Dict[int, str]) -> List:
  """Per frame: sorted class names present in the GT mask ([] for background only), or None for
  frames without GT. masks [T,H,W] class ids; names {index: name} (background left out)."""
  out = []
  for m, v in zip(masks, gt_valid):
    out.append(sorted(names[int(i)] for i in np.unique(m) if int(i) in names) if v else None)
  return out


def _load_avsbench(rec, names: Optional[Dict[int, str]] = None,
                   num_classes: Optional[int] = None) -> Dict:
  from data_pipelines.avsbench import readers
  clip = readers.read_video(rec, num_classes=num_classes)
  t = int(np.sum(clip["frame_valid"]))
  out = {"waveform": clip["waveform"][:t * audio_lib.SAMPLE_RATE], "num_frames": t,
         "audio_logmel": clip["audio_logmel"][:t], "masks": clip["masks"][:t],
         "gt_valid": clip["gt_valid"][:t], "category": clip["category"]}
  if names is not None:   # avss: the classes in the masks, not the subset name (v1s/v1m/v2)
    fc = frame_categories(out["masks"], out["gt_valid"], names)
    out["frame_categories"] = fc
    out["categories"] = sorted({c for f in fc if f for c in f})
    out["category"] = ", ".join(out["categories"])
  else:
    out["categories"] = [clip["category"]] if clip["category"] else []
  return out


def list_sources(data_dir: str, layout: str, split: str = "test", num_frames: int = 0) -> List[Dict]:
  """Source items sorted by video id. Raises ValueError/FileNotFoundError on bad input."""
  if layout not in LAYOUTS:
    raise ValueError(f"rcpg layout must be one of {LAYOUTS}, got {layout!r}")
  root = pathlib.Path(data_dir)
  if not root.is_dir():
    raise FileNotFoundError(f"rcpg data_dir {root}: not a directory")
  if layout == "wavdir":
    wavs = sorted(root.glob("*.wav"))
    if not wavs:
      raise FileNotFoundError(f"rcpg data_dir {root}: no *.wav files")
    items = [{"video_id": p.stem, "category": "",
              "load": functools.partial(_load_wav, p, num_frames)} for p in wavs]
  else:
    from data_pipelines.avsbench import readers
    recs = readers.list_videos(root, layout, split)
    names, nc = None, None
    if layout == "avss":
      names, _ = avss_class_names(readers.layout_root(root, "avss"))
      nc = len(readers.load_label2idx(readers.layout_root(root, "avss")))
    items = [{"video_id": r.video_id, "category": r.category if layout == "s4" else "",
              "load": functools.partial(_load_avsbench, r, names, nc)} for r in recs]
  ids = [i["video_id"] for i in items]
  if len(set(ids)) != len(ids):
    dup = sorted({i for i in ids if ids.count(i) > 1})
    raise ValueError(f"rcpg data_dir {root}: duplicate video ids {dup[:5]}")
  return sorted(items, key=lambda i: i["video_id"])


def avss_document(root, iou_threshold: float, split: str = "train") -> Tuple[List[Dict], Dict]:
  """Retrieval document D from an AVSS tree's `split`: every video (v1s/v1m re-label
  AVSBench-object's S4/MS3 videos, v2 is new) with the classes of its GT masks per frame and the
  GT control points (core.gt_control_points on class ids). Reads masks only.
  -> (D, counts) as core.build_document."""
  from coprop_jax.rcpg import core
  from data_pipelines.avsbench import readers
  root = readers.layout_root(root, "avss")
  names, _ = avss_class_names(root)
  nc = len(readers.load_label2idx(root))

  def videos():
    for rec in readers.list_videos(root, "avss", split):
      m = readers.read_masks(rec, nc)
      yield {"video_id": rec.video_id, "masks": m["masks"], "gt_valid": m["gt_valid"],
             "frame_categories": frame_categories(m["masks"], m["gt_valid"], names)}

  return core.build_document(videos(), binary=False, iou_threshold=iou_threshold)


def shard(items: List[Dict], shard_index: int, num_shards: int) -> List[Dict]:
  """Round-robin over the id-sorted list: deterministic and balanced."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"need 0 <= shard_index < num_shards, got {shard_index}/{num_shards}")
  return items[shard_index::num_shards]


def logmel_mean_embedding(audio_logmel: np.ndarray) -> np.ndarray:
  """audio_logmel [T,96,64] -> [T,64]: each frame's mean log-mel spectrum (shifted to be >= 0
  so cosine similarity reflects the spectral shape)."""
  x = np.asarray(audio_logmel, np.float64).mean(axis=1)
  return x - x.min() + 1e-3


def make_embed_fn(cfg) -> Callable[[str, np.ndarray], np.ndarray]:
  """-> embed(video_id, audio_logmel [T,96,64]) -> [T,D] per config `rcpg.embedding`."""
  kind = cfg.embedding
  if kind == "logmel_mean":
    return lambda vid, logmel: logmel_mean_embedding(logmel)
  if kind == "precomputed":
    d = pathlib.Path(cfg.embeddings_dir)
    if not d.is_dir():
      raise FileNotFoundError(f"rcpg.embeddings_dir {d}: not a directory (embedding='precomputed')")

    def load(vid, logmel):
      p = d / f"{vid}.npy"
      if not p.exists():
        raise FileNotFoundError(f"precomputed embedding {p}: missing for video {vid!r}")
      e = np.load(p)
      if e.ndim != 2 or e.shape[0] < len(logmel):
        raise ValueError(f"precomputed embedding {p}: shape {e.shape}, expected [>= {len(logmel)}, D]")
      return e[:len(logmel)]
    return load
  if kind == "vggish":
    from coprop_jax.models import vggish
    if not cfg.vggish_params:
      raise ValueError("rcpg.vggish_params: empty; give the Orbax dir written by "
                       "`python -m coprop_jax.convert vggish --src vggish.pth --out DIR`")
    from coprop_jax.convert import checkpoint_io
    params = checkpoint_io.restore_params(cfg.vggish_params)
    params = params.get("params", params)
    return lambda vid, logmel: np.asarray(vggish.embed_frames(params, np.asarray(logmel)[None]))[0]
  raise ValueError(f"rcpg.embedding must be vggish/precomputed/logmel_mean, got {kind!r}")
