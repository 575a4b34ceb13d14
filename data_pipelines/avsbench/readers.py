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
import pathlib

import numpy as np
from PIL import Image

from coprop_jax import audio as audio_lib

LAYOUTS = ("s4", "ms3", "avss")
SPLITS = ("train", "val", "test")
AVSS_LABELS = ("v1s", "v1m", "v2")
AVSS_MAX_FRAMES = 10


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


def list_videos(manual_dir, layout: str, split: str, categories=None) -> list[VideoRecord]:
  """Parses the layout's metadata CSV; rows of `split` only. Raises DataError on malformed rows.

  `categories` (s4): the allowed category names; a row with another category is an error.
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
      if categories is not None and cat not in categories:
        raise DataError(f"{meta}: row {n}: unknown category {cat!r} (known: {sorted(categories)})")
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


def read_video(rec: VideoRecord, num_classes: int | None = None, pad_to: int | None = None) -> dict:
  """Loads one clip (see module docstring). AVSS clips are padded to `pad_to` (default 10)."""
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
    m = _open_image(p, "mask")
    if m.size != (w, h):
      raise DataError(f"mask {p}: size {m.size[0]}x{m.size[1]}, expected {w}x{h} (the frame size)")
    if rec.layout == "s4":
      if m.mode not in ("1", "L", "P"):
        raise DataError(f"mask {p}: mode {m.mode!r}, expected a binary mask ('1', 'L' or 'P')")
      masks[i] = np.asarray(m.convert("1"), bool)
    elif rec.layout == "ms3":
      if m.mode not in ("P", "L", "1"):
        raise DataError(f"mask {p}: mode {m.mode!r}, expected a palette ('P') mask")
      masks[i] = (np.asarray(m) != 0)
    else:
      if m.mode not in ("RGB", "RGBA", "P"):
        raise DataError(f"mask {p}: mode {m.mode!r}, expected an RGB VOC-colour class mask")
      masks[i] = _decode_voc(np.asarray(m.convert("RGB")), num_classes or 256)
    gt_valid[i] = True
  wp = wav_path(rec)
  try:
    wave, _ = audio_lib.read_wav(wp)
  except audio_lib.AudioError as e:
    raise DataError(str(e)) from e
  logmel = audio_lib.waveform_to_frame_patches(wave, t)
  frame_valid = np.ones(t, bool)
  wave = _fit(wave, t * audio_lib.SAMPLE_RATE)
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


def _fit(wave: np.ndarray, n: int) -> np.ndarray:
  return np.pad(wave, (0, max(0, n - wave.shape[0])))[:n]


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
