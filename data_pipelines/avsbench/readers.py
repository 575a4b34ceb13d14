"""Readers for AVSBench's on-disk layouts (REFERENCE.md section 5); real and synthetic trees alike.

`list_videos(root, layout, split)` parses the metadata CSV into `VideoRecord`s;
`read_video(rec)` loads one clip into the batch vocabulary (numpy, unbatched):
  frames uint8 [T,H,W,3]; masks int32 [T,H,W] (s4/ms3: 0/1, avss: class index);
  gt_valid bool [T]; frame_valid bool [T]; waveform float32 [N] (16 kHz);
  audio_logmel float32 [T,96,64]; category/label str; video_id str.
Every problem raises `DataError` naming the file and what is wrong.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
import pathlib
import wave as wave_lib

import numpy as np
from PIL import Image

from coprop_jax import audio as audio_lib

LAYOUTS = ("s4", "ms3", "avss")
SPLITS = ("train", "val", "test")
AVSS_LABELS = ("v1s", "v1m", "v2")
AVSS_MAX_FRAMES = 10
# A WAV shorter than its clip's T seconds by at most this is zero-padded quietly (AVSBench's own
# clips are often a few hundredths of a second short); past it, a warning names the file.
SHORT_AUDIO_TOLERANCE_S = 0.1

log = logging.getLogger(__name__)


class DataError(ValueError):
  """A problem with one input file (the message names the file)."""


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  layout: str
  root: pathlib.Path        # the layout's root (Single-source/, Multi-sources/ or the AVSS root)
  video_id: str
  split: str
  category: str             # s4: category folder; ms3: ""; avss: label (v1s/v1m/v2)
  num_frames: int           # frames on disk (s4/ms3: 5; avss v1: 5, v2: 10)


def layout_root(manual_dir, layout: str) -> pathlib.Path:
  d = pathlib.Path(manual_dir).expanduser()
  if layout == "s4":
    return d / "Single-source" if (d / "Single-source").exists() else d
  if layout == "ms3":
    return d / "Multi-sources" if (d / "Multi-sources").exists() else d
  if layout == "avss":
    return d
  raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _meta_path(root: pathlib.Path, layout: str) -> pathlib.Path:
  return root / {"s4": "s4_meta_data.csv", "ms3": "ms3_meta_data.csv", "avss": "metadata.csv"}[layout]


def load_label2idx(root) -> dict[str, int]:
  p = pathlib.Path(root) / "label2idx.json"
  if not p.exists():
    raise DataError(f"{p}: missing (AVSS needs label2idx.json mapping class names to indices)")
  try:
    d = json.loads(p.read_text())
  except Exception as e:
    raise DataError(f"{p}: not valid JSON ({e})") from e
  if not isinstance(d, dict) or not all(isinstance(v, int) for v in d.values()):
    raise DataError(f"{p}: expected a JSON object of class name -> integer index")
  return d


def list_videos(manual_dir, layout: str, split: str, categories=None,
                bad_rows: list | None = None) -> list[VideoRecord]:
  """Parses the layout's metadata CSV; rows of `split` only. Raises DataError on malformed rows.

  `categories` (s4): the allowed category names; without it, the category folders present under
  `s4_data/visual_frames/<split>/`. A row with another category is an error naming the CSV row
  (not a missing frame folder later). `bad_rows`: when a list, such rows are appended to it as
  (video_id, message) and skipped instead (the builders' skip_bad).
  """
  root = layout_root(manual_dir, layout)
  meta = _meta_path(root, layout)
  if not meta.exists():
    raise DataError(f"{meta}: metadata CSV missing (is {manual_dir} an AVSBench {layout} tree?)")
  with open(meta, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise DataError(f"{meta}: empty CSV")
  header = [h.strip() for h in rows[0]]
  if "split" not in header:
    raise DataError(f"{meta}: header {header} has no 'split' column")
  si = header.index("split")
  if layout == "avss":
    for col in ("uid", "label"):
      if col not in header:
        raise DataError(f"{meta}: header {header} has no {col!r} column")
    ui, li = header.index("uid"), header.index("label")
  need = max(si, 2 if layout == "s4" else 0, *( (ui, li) if layout == "avss" else ()))
  out = []
  on_disk = None  # s4: category folders of the split, listed once
  for n, row in enumerate(rows[1:], start=2):
    if not row or all(not c.strip() for c in row):
      continue
    if len(row) <= need:
      raise DataError(f"{meta}: row {n} has {len(row)} columns, expected at least {need + 1}: {row}")
    sp = row[si].strip()
    if sp not in SPLITS:
      raise DataError(f"{meta}: row {n} has split {sp!r}, expected one of {SPLITS}")
    if sp != split:
      continue
    if layout == "s4":
      vid, cat = row[0].strip(), row[2].strip()   # AVSBench reads columns 0 and 2 by position
      known = categories
      if known is None:
        cat_dir = root / "s4_data" / "visual_frames" / sp
        if on_disk is None:
          on_disk = {p.name for p in cat_dir.iterdir() if p.is_dir()} if cat_dir.is_dir() else set()
        known, where = on_disk, f"no folder {cat_dir / cat}"
      else:
        where = "not an AVSBench S4 category"
      if cat not in known:
        msg = (f"{meta}: row {n}: video {vid!r} has unknown category {cat!r} ({where}; "
               f"known: {sorted(known)})")
        if bad_rows is None:
          raise DataError(msg)
        bad_rows.append((vid, msg))
        continue
      t = 5
    elif layout == "ms3":
      vid, cat, t = row[0].strip(), "", 5
    else:
      vid, cat = row[ui].strip(), row[li].strip()
      if cat not in AVSS_LABELS:
        raise DataError(f"{meta}: row {n}: unknown label {cat!r}, expected one of {AVSS_LABELS}")
      t = 10 if cat == "v2" else 5
    if not vid:
      raise DataError(f"{meta}: row {n}: empty video name")
    out.append(VideoRecord(layout, root, vid, sp, cat, t))
  return out


def frame_paths(rec: VideoRecord) -> list[pathlib.Path]:
  r, v = rec.root, rec.video_id
  if rec.layout == "s4":
    return [r / "s4_data/visual_frames" / rec.split / rec.category / v / f"{v}_{i}.png"
            for i in range(1, rec.num_frames + 1)]
  if rec.layout == "ms3":
    return [r / "ms3_data/visual_frames" / v / f"{v}.mp4_{i}.png" for i in range(1, rec.num_frames + 1)]
  return [r / rec.category / v / "frames" / f"{i}.jpg" for i in range(rec.num_frames)]


def mask_paths(rec: VideoRecord) -> list[pathlib.Path | None]:
  """Mask path per frame, None where AVSBench provides no GT (S4 train: only frame 1; AVSS v1s train: only 0)."""
  r, v = rec.root, rec.video_id
  if rec.layout == "s4":
    ps = [r / "s4_data/gt_masks" / rec.split / rec.category / v / f"{v}_{i}.png"
          for i in range(1, rec.num_frames + 1)]
    only_first = rec.split == "train"
  elif rec.layout == "ms3":
    ps = [r / "ms3_data/gt_masks" / rec.split / v / f"{v}_{i}.png" for i in range(1, rec.num_frames + 1)]
    only_first = False
  else:
    ps = [r / rec.category / v / "labels_rgb" / f"{i}.png" for i in range(rec.num_frames)]
    only_first = rec.split == "train" and rec.category == "v1s"
  return [p if (not only_first or i == 0) else None for i, p in enumerate(ps)]


def wav_path(rec: VideoRecord) -> pathlib.Path:
  r, v = rec.root, rec.video_id
  if rec.layout == "s4":
    return r / "s4_data/audio_wav" / rec.split / rec.category / f"{v}.wav"
  if rec.layout == "ms3":
    return r / "ms3_data/audio_wav" / rec.split / f"{v}.wav"
  return r / rec.category / v / "audio.wav"


def _open_image(p: pathlib.Path, what: str) -> Image.Image:
  if not p.exists():
    raise DataError(f"{what} {p}: does not exist")
  try:
    img = Image.open(p)
    img.load()
  except Exception as e:
    raise DataError(f"{what} {p}: unreadable image ({e})") from e
  return img


def _decode_voc(rgb: np.ndarray, num_classes: int) -> np.ndarray:
  from data_pipelines.synthetic import voc_colormap
  cmap = voc_colormap(num_classes).astype(np.int64)
  code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
  keys = (cmap[:, 0] << 16) | (cmap[:, 1] << 8) | cmap[:, 2]
  out = np.zeros(code.shape, np.int32)
  for i in range(1, num_classes):  # a colour matching no class stays background
    out[code == keys[i]] = i
  return out


def read_masks(rec: VideoRecord, num_classes: int | None = None) -> dict:
  """Only the GT of one clip (no frames, no audio): masks int32 [T,H,W], gt_valid bool [T]
  (T = frames on disk, no padding), for building RCPG documents cheaply."""
  h = w = None
  ps = mask_paths(rec)
  first = next((p for p in ps if p is not None), None)
  if first is not None:
    w, h = _open_image(first, "mask").size
  masks = np.zeros((len(ps), h or 1, w or 1), np.int32)
  gt_valid = np.zeros(len(ps), bool)
  for i, p in enumerate(ps):
    if p is not None:
      masks[i] = _read_mask(rec, p, (w, h), num_classes)
      gt_valid[i] = True
  return dict(masks=masks, gt_valid=gt_valid, video_id=rec.video_id, category=rec.category)


def _read_mask(rec: VideoRecord, p: pathlib.Path, size: tuple[int, int], num_classes) -> np.ndarray:
  m = _open_image(p, "mask")
  w, h = size
  if m.size != (w, h):
    raise DataError(f"mask {p}: size {m.size[0]}x{m.size[1]}, expected {w}x{h} (the frame size)")
  if rec.layout == "s4":
    if m.mode not in ("1", "L", "P"):
      raise DataError(f"mask {p}: mode {m.mode!r}, expected a binary mask ('1', 'L' or 'P')")
    return np.asarray(m.convert("1"), bool).astype(np.int32)
  if rec.layout == "ms3":
    if m.mode not in ("P", "L", "1"):
      raise DataError(f"mask {p}: mode {m.mode!r}, expected a palette ('P') mask")
    return (np.asarray(m) != 0).astype(np.int32)
  if m.mode not in ("RGB", "RGBA", "P"):
    raise DataError(f"mask {p}: mode {m.mode!r}, expected an RGB VOC-colour class mask")
  return _decode_voc(np.asarray(m.convert("RGB")), num_classes or 256)


def _wav_header_frames(path: pathlib.Path) -> int | None:
  """Sample count the WAV header declares (PCM WAVs; None when the header cannot say)."""
  try:
    with wave_lib.open(str(path), "rb") as f:
      return f.getnframes()
  except Exception:
    return None


def fit_audio(wave: np.ndarray, num_samples: int, path, tolerance_s: float = SHORT_AUDIO_TOLERANCE_S,
              warnings: list | None = None) -> np.ndarray:
  """Cuts or zero-pads `wave` to `num_samples`. Padding of at most `tolerance_s` is quiet; more
  logs a warning naming the file and both lengths (and appends it to `warnings` if given)."""
  short = num_samples - wave.shape[0]
  if short > tolerance_s * audio_lib.SAMPLE_RATE:
    sr = audio_lib.SAMPLE_RATE
    declared = _wav_header_frames(pathlib.Path(path))
    trunc = (f"; its header declares {declared} samples, so the file is truncated"
             if declared is not None and declared > wave.shape[0] else "")
    msg = (f"audio file {path}: {wave.shape[0]} samples ({wave.shape[0] / sr:.3f} s), the clip's "
           f"frames need {num_samples} ({num_samples / sr:.3f} s){trunc}; zero-padding "
           f"{short / sr:.3f} s (more than data.short_audio_tolerance_s={tolerance_s})")
    log.warning(msg)
    if warnings is not None:
      warnings.append(msg)
  return np.pad(wave, (0, max(0, short)))[:num_samples]


def read_video(rec: VideoRecord, num_classes: int | None = None, pad_to: int | None = None,
               short_audio_tolerance_s: float = SHORT_AUDIO_TOLERANCE_S,
               warnings: list | None = None) -> dict:
  """Loads one clip (see module docstring). AVSS clips are padded to `pad_to` (default 10).

  A WAV shorter than T seconds is zero-padded (see `fit_audio`: quiet up to
  `short_audio_tolerance_s`, a warning past it, appended to `warnings` when given).
  """
  check_frame_count(rec)
  frames = []
  for p in frame_paths(rec):
    img = _open_image(p, "frame")
    if img.mode not in ("RGB", "RGBA", "L", "P"):
      raise DataError(f"frame {p}: unsupported image mode {img.mode!r}")
    frames.append(np.asarray(img.convert("RGB"), np.uint8))
  h, w = frames[0].shape[:2]
  for p, f in zip(frame_paths(rec), frames):
    if f.shape[:2] != (h, w):
      raise DataError(f"frame {p}: size {f.shape[1]}x{f.shape[0]}, expected {w}x{h} like frame 1")
  t = len(frames)
  masks = np.zeros((t, h, w), np.int32)
  gt_valid = np.zeros(t, bool)
  for i, p in enumerate(mask_paths(rec)):
    if p is None:
      continue
    masks[i] = _read_mask(rec, p, (w, h), num_classes)
    gt_valid[i] = True
  wp = wav_path(rec)
  try:
    wave, _ = audio_lib.read_wav(wp)
  except audio_lib.AudioError as e:
    raise DataError(str(e)) from e
  wave = fit_audio(wave, t * audio_lib.SAMPLE_RATE, wp, short_audio_tolerance_s, warnings)
  logmel = audio_lib.waveform_to_frame_patches(wave, t)
  frame_valid = np.ones(t, bool)
  frames = np.stack(frames)
  if rec.layout == "avss":
    n = pad_to or AVSS_MAX_FRAMES
    if t > n:
      raise DataError(f"{frame_paths(rec)[0].parent}: {t} frames, more than pad_to={n}")
    pad = n - t
    frames = np.pad(frames, ((0, pad), (0, 0), (0, 0), (0, 0)))
    masks = np.pad(masks, ((0, pad), (0, 0), (0, 0)))
    gt_valid = np.pad(gt_valid, (0, pad))
    frame_valid = np.pad(frame_valid, (0, pad))
    logmel = np.pad(logmel, ((0, pad), (0, 0), (0, 0)))
    wave = np.pad(wave, (0, pad * audio_lib.SAMPLE_RATE))
  return dict(frames=frames, masks=masks, gt_valid=gt_valid, frame_valid=frame_valid,
              waveform=wave.astype(np.float32), audio_logmel=logmel.astype(np.float32),
              category=rec.category, video_id=rec.video_id)


def check_frame_count(rec: VideoRecord):
  """Raises DataError when the frame folder holds a different number of frames than expected."""
  d = frame_paths(rec)[0].parent
  if not d.exists():
    raise DataError(f"frame folder {d}: does not exist")
  ext = ".jpg" if rec.layout == "avss" else ".png"
  if rec.layout == "ms3":
    n = len([p for p in d.glob(f"{rec.video_id}.mp4_*{ext}")])
  else:
    n = len(list(d.glob(f"*{ext}")))
  if n != rec.num_frames:
    raise DataError(f"frame folder {d}: {n} frames, expected {rec.num_frames}")
