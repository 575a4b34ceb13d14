"""Synthetic audio-visual segmentation data in AVSBench's own on-disk layouts.

  python -m data_pipelines.synthetic --out DIR --layout {s4,ms3,avss} --num_videos N \
      --size S --frames T --seed K

Each clip shows several moving objects of distinct classes (shape + colour + stripe texture).
Every class has its own sound (a pure tone, a chirp or a band of noise, each in its own
frequency range). At random control points the set of *sounding* objects changes; the GT mask of
a frame marks only the objects sounding during that frame's second of audio. At least one object
is always a silent distractor, so a model that ignores the audio cannot tell which visible
objects to segment.

`make_clip(rng, layout, size, frames)` is the in-memory generator (batch vocabulary, see
DESIGN.md); `write_dataset(out, layout, ...)` writes the AVSBench tree (REFERENCE.md section 5).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image

from coprop_jax import audio as audio_lib

SAMPLE_RATE = 16000
# Synthetic classes: (name, shape, rgb colour, sound kind, (f_lo, f_hi) Hz). Frequencies are spread
# so each class owns a distinct region of the VGGish mel spectrum.
CLASSES = (
    ("dog", "disk", (220, 60, 60), "tone", (300.0, 300.0)),
    ("car", "square", (60, 200, 60), "noise", (3000.0, 4000.0)),
    ("bird", "triangle", (60, 80, 230), "chirp", (1200.0, 2200.0)),
    ("piano", "diamond", (230, 210, 50), "tone", (700.0, 700.0)),
    ("drum", "ring", (200, 60, 210), "noise", (100.0, 200.0)),
    ("bell", "cross", (50, 210, 210), "tone", (5500.0, 5500.0)),
)
CLASS_NAMES = tuple(c[0] for c in CLASSES)
LAYOUTS = ("s4", "ms3", "avss")
# AVSS label space: index 0 is background, then the synthetic classes.
AVSS_LABEL2IDX = {"background": 0, **{n: i + 1 for i, n in enumerate(CLASS_NAMES)}}


def voc_colormap(n: int = 256) -> np.ndarray:
  """PASCAL VOC colour map [n, 3] uint8: bits of i spread over R,G,B from each channel's MSB."""
  cmap = np.zeros((n, 3), np.uint8)
  for i in range(n):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    cmap[i] = (r, g, b)
  return cmap


def _shape_mask(shape: str, size: int, cy: float, cx: float, r: float) -> np.ndarray:
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  dy, dx = yy - cy, xx - cx
  if shape == "disk":
    return dy * dy + dx * dx <= r * r
  if shape == "square":
    return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
  if shape == "triangle":
    return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
  if shape == "diamond":
    return np.abs(dy) + np.abs(dx) <= r
  if shape == "ring":
    d2 = dy * dy + dx * dx
    return (d2 <= r * r) & (d2 >= (0.5 * r) ** 2)
  if shape == "cross":
    return ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r))
  raise ValueError(f"unknown shape {shape!r}")


def class_sound(cls: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
  """Waveform [seconds*16000] float32 of class `cls`'s sound (amplitude ~0.3)."""
  kind, (lo, hi) = CLASSES[cls][3], CLASSES[cls][4]
  n = int(round(seconds * SAMPLE_RATE))
  t = np.arange(n) / SAMPLE_RATE
  if kind == "tone":
    w = np.sin(2 * np.pi * lo * t)
  elif kind == "chirp":
    period = 0.25  # repeating up-chirps: every analysis window sees the whole band
    tau = np.mod(t, period)
    w = np.sin(2 * np.pi * (lo * tau + 0.5 * (hi - lo) / period * tau * tau))
  else:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spec[(f < lo) | (f > hi)] = 0
    w = np.fft.irfft(spec, n)
    w = w / (np.abs(w).max() + 1e-9)
  return (0.3 * w).astype(np.float32)


def _num_objects(layout: str, rng: np.random.Generator) -> int:
  return int(rng.integers(2, 4)) if layout == "s4" else int(rng.integers(3, 5))


def make_clip(rng: np.random.Generator, layout: str = "ms3", size: int = 64, frames: int = 5,
              video_id: str = "clip") -> dict:
  """One synthetic clip in the batch vocabulary (numpy, unbatched).

  Returns dict: frames uint8 [T,S,S,3]; masks int32 [T,S,S] (s4/ms3: 1 where a sounding object
  is, else 0; avss: class index 1..K of the sounding object, 0 background); gt_valid bool [T]
  (all True; the AVSBench train-split subsampling is applied by the writer); frame_valid bool [T];
  waveform float32 [T*16000]; audio_logmel float32 [T,96,64]; control_points int32 [T] (1 where
  the sounding set changes, frame 0 always 1); sounding bool [T, num_objects];
  object_classes int32 [num_objects]; visible int32 [T,S,S] (union of all objects, 1..);
  category (str, class name of the first sounding object); video_id (str).
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  n_obj = _num_objects(layout, rng)
  classes = rng.choice(len(CLASSES), size=n_obj, replace=False)
  r = size * rng.uniform(0.12, 0.18, size=n_obj)
  pos = rng.uniform(0.2, 0.8, size=(n_obj, 2)) * size
  vel = rng.uniform(-0.06, 0.06, size=(n_obj, 2)) * size
  # Sounding sets: s4 has one sounding object (which may switch); ms3/avss one or more. At least
  # one visible object is always silent (the distractor).
  sounding = np.zeros((frames, n_obj), bool)
  cps = np.zeros(frames, np.int32)
  cps[0] = 1

  def draw_set():
    if layout == "s4":
      s = np.zeros(n_obj, bool)
      s[rng.integers(n_obj)] = True
      return s
    k = int(rng.integers(1, n_obj))  # 1..n_obj-1 sounding, >= 1 silent
    s = np.zeros(n_obj, bool)
    s[rng.choice(n_obj, size=k, replace=False)] = True
    return s

  cur = draw_set()
  for t in range(frames):
    if t > 0 and rng.random() < 0.4:
      new = draw_set()
      if not np.array_equal(new, cur):
        cur = new
        cps[t] = 1
    sounding[t] = cur
  return render_clip(rng, layout, size, classes, sounding, cps, r, pos, vel, video_id)


def render_clip(rng: np.random.Generator, layout: str, size: int, classes: np.ndarray,
                sounding: np.ndarray, control_points: np.ndarray, r: np.ndarray, pos: np.ndarray,
                vel: np.ndarray, video_id: str = "clip", *, scale: np.ndarray | None = None,
                colours: np.ndarray | None = None, gain: np.ndarray | None = None,
                extra_audio: np.ndarray | None = None) -> dict:
  """Draws a clip from its script (the part of `make_clip` after the sounding schedule).

  classes int [N] (indices into CLASSES, distinct); sounding bool [T, N]; control_points int [T];
  r [N] radii, pos [N, 2] start centres (y, x), vel [N, 2] pixels per frame (objects bounce
  between the walls); all in pixels. Optional (default: the plain clip): scale [T, N] per-frame
  radius factors, colours [N, 3] RGB drawn instead of the class colours, gain [T, N] per-frame
  loudness of each sounding object, extra_audio [T * 16000] added to the waveform (off-screen
  sounds). Returns `make_clip`'s dict.
  """
  frames, n_obj = sounding.shape
  cps = np.asarray(control_points, np.int32)
  # Background: low-contrast gradient + noise, fixed per clip.
  base = rng.uniform(40, 110, size=3)
  grad = np.linspace(-15, 15, size)[None, :, None]
  bg = np.clip(base[None, None] + grad + rng.normal(0, 6, (size, size, 3)), 0, 255)
  out_frames = np.zeros((frames, size, size, 3), np.uint8)
  masks = np.zeros((frames, size, size), np.int32)
  visible = np.zeros((frames, size, size), np.int32)
  yy, xx = np.mgrid[0:size, 0:size]
  for t in range(frames):
    img = bg.copy()
    for o in range(n_obj):
      ro = r[o] if scale is None else r[o] * scale[t, o]
      p = pos[o] + vel[o] * t
      p = np.mod(p - ro, 2 * (size - 2 * ro))  # bounce between walls
      p = np.where(p > size - 2 * ro, 2 * (size - 2 * ro) - p, p) + ro
      m = _shape_mask(CLASSES[classes[o]][1], size, p[0], p[1], ro)
      colour = np.array(CLASSES[classes[o]][2] if colours is None else colours[o], np.float32)
      stripes = ((yy + xx + o * 3) // 3) % 2 == 0
      tex = np.where(stripes[..., None], colour, colour * 0.7)
      img[m] = tex[m]
      visible[t][m] = o + 1
      # Later objects occlude earlier ones: clear occluded GT pixels first.
      masks[t][m] = 0
      if sounding[t, o]:
        masks[t][m] = 1 if layout != "avss" else int(classes[o]) + 1
    out_frames[t] = np.clip(img, 0, 255).astype(np.uint8)
  wave = np.zeros(frames * SAMPLE_RATE, np.float32)
  for o in range(n_obj):
    snd = class_sound(int(classes[o]), frames, rng)
    g = sounding[:, o].astype(np.float32) * (1.0 if gain is None else gain[:, o])
    wave += snd * np.repeat(g, SAMPLE_RATE)
  if extra_audio is not None:
    wave += np.asarray(extra_audio, np.float32)
  wave += rng.normal(0, 0.003, wave.shape).astype(np.float32)
  first = int(np.flatnonzero(sounding[0])[0])
  return dict(
      frames=out_frames, masks=masks, gt_valid=np.ones(frames, bool),
      frame_valid=np.ones(frames, bool), waveform=wave.astype(np.float32),
      audio_logmel=audio_lib.waveform_to_frame_patches(wave, frames),
      control_points=cps, sounding=sounding, object_classes=np.asarray(classes, np.int32),
      visible=visible, category=CLASS_NAMES[int(classes[first])], video_id=video_id)


# ----------------------------------------------------------------------------- writers


def _save_png(path: pathlib.Path, img: Image.Image):
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path)


def _save_wav(path: pathlib.Path, wave: np.ndarray):
  import soundfile as sf
  path.parent.mkdir(parents=True, exist_ok=True)
  sf.write(str(path), wave, SAMPLE_RATE, subtype="PCM_16")


def _splits(num_videos: int) -> list[str]:
  """train/val/test assignment: ~60/20/20, every split non-empty when num_videos >= 3."""
  n_val = max(1, num_videos // 5) if num_videos >= 3 else 0
  n_test = n_val
  return ["train"] * (num_videos - n_val - n_test) + ["val"] * n_val + ["test"] * n_test


def write_dataset(out: str | os.PathLike, layout: str, num_videos: int = 12, size: int = 64,
                  frames: int | None = None, seed: int = 0, clip_fn=None) -> pathlib.Path:
  """Writes a synthetic AVSBench tree for `layout` under `out` (atomically: temp dir + rename).

  clip_fn(rng, layout, size, frames, video_id) -> clip dict (`make_clip`'s keys) draws each
  clip; default `make_clip` (e.g. `data_pipelines.moc_synth.make_clip` for switching sources).

  Returns the root path (`out`). Layouts (REFERENCE.md section 5):
    s4:   out/Single-source/s4_meta_data.csv + s4_data/{visual_frames,gt_masks,audio_wav}/...
    ms3:  out/Multi-sources/ms3_meta_data.csv + ms3_data/...
    avss: out/metadata.csv, out/label2idx.json, out/{label}/{uid}/{frames,labels_rgb,audio.wav}
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  out = pathlib.Path(out)
  sub = {"s4": "Single-source", "ms3": "Multi-sources", "avss": "."}[layout]
  final = out / sub if layout != "avss" else out
  if layout == "avss" and (out / "metadata.csv").exists() or layout != "avss" and final.exists():
    raise FileExistsError(f"{final}: a {layout} tree already exists there; remove it first")
  out.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".synthetic_{layout}_", dir=out))
  try:
    rng = np.random.default_rng(seed)
    splits = _splits(num_videos)
    rows = []
    for i, split in enumerate(splits):
      if layout == "avss":
        label = ("v1s", "v1m", "v2")[i % 3]
        t = 10 if label == "v2" else 5
      else:
        label, t = None, 5
      t = frames if (frames and layout != "avss") else t
      name = f"syn{layout}_{i:05d}"
      clip = (clip_fn or make_clip)(rng, layout, size, t, video_id=name)
      if layout == "s4":
        cat = clip["category"]
        rows.append([name, 0, cat, split])
        for j in range(t):
          _save_png(tmp / "s4_data/visual_frames" / split / cat / name / f"{name}_{j + 1}.png",
                    Image.fromarray(clip["frames"][j]))
          if split != "train" or j == 0:
            _save_png(tmp / "s4_data/gt_masks" / split / cat / name / f"{name}_{j + 1}.png",
                      Image.fromarray((clip["masks"][j] > 0).astype(np.uint8) * 255).convert("1"))
        _save_wav(tmp / "s4_data/audio_wav" / split / cat / f"{name}.wav", clip["waveform"])
      elif layout == "ms3":
        rows.append([name, 0, split])
        for j in range(t):
          _save_png(tmp / "ms3_data/visual_frames" / name / f"{name}.mp4_{j + 1}.png",
                    Image.fromarray(clip["frames"][j]))
          m = Image.fromarray((clip["masks"][j] > 0).astype(np.uint8), mode="L").convert("P")
          m.putpalette([0, 0, 0, 255, 255, 255] + [0] * (256 * 3 - 6))
          _save_png(tmp / "ms3_data/gt_masks" / split / name / f"{name}_{j + 1}.png", m)
        _save_wav(tmp / "ms3_data/audio_wav" / split / f"{name}.wav", clip["waveform"])
      else:
        rows.append([name, label, split])
        cmap = voc_colormap()
        vdir = tmp / label / name
        for j in range(t):
          (vdir / "frames").mkdir(parents=True, exist_ok=True)
          Image.fromarray(clip["frames"][j]).save(vdir / "frames" / f"{j}.jpg", quality=95)
          if not (split == "train" and label == "v1s" and j > 0):
            _save_png(vdir / "labels_rgb" / f"{j}.png", Image.fromarray(cmap[clip["masks"][j]]))
        _save_wav(vdir / "audio.wav", clip["waveform"])
    if layout == "s4":
      header, meta = ["name", "video_id", "category", "split"], tmp / "s4_meta_data.csv"
    elif layout == "ms3":
      header, meta = ["video_id", "uid", "split"], tmp / "ms3_meta_data.csv"
    else:
      header, meta = ["uid", "label", "split"], tmp / "metadata.csv"
      (tmp / "label2idx.json").write_text(json.dumps(AVSS_LABEL2IDX, indent=1))
    with open(meta, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(header)
      w.writerows(rows)
    if layout == "avss":
      for p in tmp.iterdir():
        os.replace(p, out / p.name)
      tmp.rmdir()
    else:
      os.replace(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--layout", choices=LAYOUTS, required=True)
  p.add_argument("--num_videos", type=int, default=12)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--frames", type=int, default=None,
                 help="frames per clip (s4/ms3; default 5). AVSS uses 5 (v1) / 10 (v2).")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  root = write_dataset(a.out, a.layout, a.num_videos, a.size, a.frames, a.seed)
  print(f"wrote {a.num_videos} synthetic {a.layout} videos under {root}")


if __name__ == "__main__":
  main()
