"""Plug-and-play keyframe masks: read another AVS model's predictions instead of running the KPF.

Two formats, both keyed by video id and 0-based frame index:
- a directory: `<root>/<video_id>/<frame_index>.png` (palette/grey PNG; value = object/class id,
  binary masks may use 255 for the object, mapped to 1 when `binary=True`);
- an `.npz` file whose keys are `"<video_id>/<frame_index>"` and values [H, W] integer masks.

`KeyframeMaskSource(path).get(video_id, t)` returns an int32 [H, W] mask (resized with nearest
neighbour to `size` when given) or raises KeyError naming the missing video/frame.
`write_npz` / `write_png_dir` write predictions in these formats (atomically: temp + rename).
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Iterable, Optional

import numpy as np
from PIL import Image

_KEY = re.compile(r"^(?P<vid>.+)/(?P<t>\d+)$")


class KeyframeMaskSource:
  """Keyframe masks from a PNG directory or an .npz file (see module docstring)."""

  def __init__(self, path: str, binary: bool = False, size: Optional[tuple[int, int]] = None):
    self.path = os.path.expanduser(path)
    self.binary, self.size = binary, size
    if os.path.isdir(self.path):
      self.kind = "png"
      self._npz = None
    elif os.path.isfile(self.path) and self.path.endswith(".npz"):
      self.kind = "npz"
      self._npz = np.load(self.path, allow_pickle=False)
      for k in self._npz.files:
        if not _KEY.match(k):
          raise ValueError(f"keyframe masks {self.path}: key {k!r} is not '<video_id>/<frame_index>'")
    else:
      raise FileNotFoundError(f"keyframe masks: {self.path} is neither a directory of PNG masks "
                              "nor an .npz file")

  def keys(self) -> list[tuple[str, int]]:
    if self.kind == "npz":
      return sorted((m["vid"], int(m["t"])) for m in map(_KEY.match, self._npz.files))
    out = []
    for vid in sorted(os.listdir(self.path)):
      d = os.path.join(self.path, vid)
      if os.path.isdir(d):
        out += [(vid, int(f[:-4])) for f in os.listdir(d) if f.endswith(".png") and f[:-4].isdigit()]
    return sorted(out)

  def has(self, video_id: str, t: int) -> bool:
    if self.kind == "npz":
      return f"{video_id}/{t}" in self._npz.files
    return os.path.isfile(os.path.join(self.path, video_id, f"{t}.png"))

  def get(self, video_id: str, t: int) -> np.ndarray:
    if not self.has(video_id, t):
      raise KeyError(f"keyframe masks {self.path}: no mask for video {video_id!r} frame {t}")
    if self.kind == "npz":
      m = np.asarray(self._npz[f"{video_id}/{t}"])
    else:
      m = np.asarray(Image.open(os.path.join(self.path, video_id, f"{t}.png")))
    if m.ndim != 2:
      raise ValueError(f"keyframe masks {self.path}: mask of {video_id!r} frame {t} has shape "
                       f"{m.shape}, expected [H, W] (palette or grey image)")
    m = m.astype(np.int32)
    if self.binary:
      m = (m > 0).astype(np.int32)
    if self.size is not None and m.shape != tuple(self.size):
      m = np.asarray(Image.fromarray(m.astype(np.uint8)).resize(
          (self.size[1], self.size[0]), Image.NEAREST)).astype(np.int32)
    return m

  def clip_masks(self, video_id: str, control_points: Iterable[int], shape: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Masks for the keyframes of one clip: ([T, H, W] int32 with zeros elsewhere, [T] bool
    'present'). Raises KeyError if a keyframe (control point 1) has no mask in the source."""
    cp = np.asarray(list(control_points))
    out = np.zeros((len(cp),) + tuple(shape), np.int32)
    for t in np.nonzero(cp == 1)[0]:
      m = self.get(video_id, int(t))
      if m.shape != tuple(shape):
        m = np.asarray(Image.fromarray(m.astype(np.uint8)).resize(
            (shape[1], shape[0]), Image.NEAREST)).astype(np.int32)
      out[t] = m
    return out, cp == 1


def write_npz(path: str, masks: dict[tuple[str, int], np.ndarray]) -> None:
  """Write {(video_id, t): [H, W] int mask} to `path` (.npz) atomically."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".npz", dir=d)
  os.close(fd)
  try:
    np.savez_compressed(tmp, **{f"{v}/{t}": np.asarray(m, np.uint8 if m.max() < 256 else np.int32)
                                for (v, t), m in masks.items()})
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_png_dir(root: str, masks: dict[tuple[str, int], np.ndarray]) -> None:
  """Write {(video_id, t): mask} as `<root>/<video_id>/<t>.png` (each file via temp + rename)."""
  for (vid, t), m in masks.items():
    d = os.path.join(root, vid)
    os.makedirs(d, exist_ok=True)
    m = np.asarray(m)
    if m.min() < 0 or m.max() > 255:
      raise ValueError(f"write_png_dir: mask {vid}/{t} values outside 0..255")
    tmp = os.path.join(d, f".{t}.png.tmp")
    Image.fromarray(m.astype(np.uint8)).save(tmp, format="PNG")
    os.replace(tmp, os.path.join(d, f"{t}.png"))
