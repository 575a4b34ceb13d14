"""Video sources for RCPG (AVSBench trees via data_pipelines.avsbench.readers, or a WAV directory)
and per-frame audio embeddings for the cosine baseline.

A *source item* is a lightweight handle {"video_id", "category", "load"}; `load()` returns the
clip dict: waveform float32 [T*16000], num_frames T (real frames, padding dropped), audio_logmel
[T,96,64], and for AVSBench trees masks [T,H,W] / gt_valid [T].
"""
from __future__ import annotations

import functools
import pathlib
from typing import Callable, Dict, List

import numpy as np

from coprop_jax import audio as audio_lib

LAYOUTS = ("wavdir", "s4", "ms3", "avss")


def is_binary_layout(layout: str) -> bool:
  """s4/ms3 masks are 0/1 (no object ids); avss masks hold class ids."""
  return layout in ("s4", "ms3")


def _load_wav(path: pathlib.Path, num_frames: int) -> Dict:
  wave, _ = audio_lib.read_wav(path)
  t = num_frames if num_frames > 0 else max(1, int(round(len(wave) / audio_lib.SAMPLE_RATE)))
  n = t * audio_lib.SAMPLE_RATE
  wave = np.pad(wave[:n], (0, max(0, n - len(wave)))).astype(np.float32)
  return {"waveform": wave, "num_frames": t,
          "audio_logmel": audio_lib.waveform_to_frame_patches(wave, t).astype(np.float32)}


def _load_avsbench(rec) -> Dict:
  from data_pipelines.avsbench import readers
  clip = readers.read_video(rec)
  t = int(np.sum(clip["frame_valid"]))
  return {"waveform": clip["waveform"][:t * audio_lib.SAMPLE_RATE], "num_frames": t,
          "audio_logmel": clip["audio_logmel"][:t], "masks": clip["masks"][:t],
          "gt_valid": clip["gt_valid"][:t], "category": clip["category"]}


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
    items = [{"video_id": r.video_id, "category": r.category,
              "load": functools.partial(_load_avsbench, r)} for r in recs]
  ids = [i["video_id"] for i in items]
  if len(set(ids)) != len(ids):
    dup = sorted({i for i in ids if ids.count(i) > 1})
    raise ValueError(f"rcpg data_dir {root}: duplicate video ids {dup[:5]}")
  return sorted(items, key=lambda i: i["video_id"])


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
