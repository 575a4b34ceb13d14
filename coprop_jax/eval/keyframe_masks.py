"""Plug-and-play keyframe masks: read another AVS model's predictions instead of running the KPF.

Two formats, both keyed by video id and 0-based frame index:
- a directory: `<root>/<video_id>/<frame_index>.png` (palette/grey PNG; value = object/class id,
  binary masks may use 255 for the object, mapped to 1 when `binary=True`);
- an `.npz` file whose keys are `"<video_id>/<frame_index>"` and values [H, W] integer masks.

`KeyframeMaskSource(path).get(video_id, t)` returns an int32 [H, W] mask (resized with nearest
neighbour to `size` when given; ids are kept exactly, including ids above 255) or raises KeyError
naming the missing video/frame. Negative ids, unreadable files and truncated archives raise
ValueError naming the path.
`write_npz` / `write_png_dir` write predictions in these formats (atomically: temp + rename):
uint8 where every id fits, else int32 (npz) / 16-bit PNG; a negative id is an error.
"""
from __future__ import annotations

import os
import re
import tempfile
import zipfile
import zlib
from typing import Iterable, Optional

import numpy as np
from PIL import Image

_KEY = re.compile(r"^(?P<vid>.+)/(?P<t>\d+)$")
_NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, KeyError)


def resize_nearest(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """[H, W] integer mask -> [shape] int32 by nearest neighbour, exact for any int32 id (PIL's
  32-bit integer mode; an 8-bit round trip would wrap ids above 255)."""
  m = np.asarray(m)
  if m.shape == tuple(shape):
    return m.astype(np.int32)
  return np.asarray(Image.fromarray(m.astype(np.int32), mode="I").resize(
      (shape[1], shape[0]), Image.NEAREST)).astype(np.int32)


def _check_ids(m: np.ndarray, where: str) -> np.ndarray:
  if not (np.issubdtype(m.dtype, np.integer) or m.dtype == bool):
    raise ValueError(f"{where}: mask dtype {m.dtype}, expected integer object/class ids")
  if m.size and m.min() < 0:
    raise ValueError(f"{where}: negative id {int(m.min())}; ids must be >= 0 (0 = background)")
  if m.size and m.max() > np.iinfo(np.int32).max:
    raise ValueError(f"{where}: id {int(m.max())} does not fit int32")
  return m


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
      try:
        self._npz = np.load(self.path, allow_pickle=False)
        files = self._npz.files
      except _NPZ_ERRORS as e:
        raise ValueError(f"keyframe masks {self.path}: not a readable .npz archive, truncated or "
                         f"damaged? ({type(e).__name__}: {e})") from e
      for k in files:
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
      try:
        m = np.asarray(self._npz[f"{video_id}/{t}"])
      except _NPZ_ERRORS as e:
        raise ValueError(f"keyframe masks {self.path}: entry {video_id}/{t} unreadable, truncated "
                         f"or damaged archive? ({type(e).__name__}: {e})") from e
    else:
      p = os.path.join(self.path, video_id, f"{t}.png")
      try:
        m = np.asarray(Image.open(p))
      except OSError as e:
        raise ValueError(f"keyframe masks {p}: unreadable image ({e})") from e
    if m.ndim != 2:
      raise ValueError(f"keyframe masks {self.path}: mask of {video_id!r} frame {t} has shape "
                       f"{m.shape}, expected [H, W] (palette or grey image)")
    m = _check_ids(m, f"keyframe masks {self.path}: video {video_id!r} frame {t}").astype(np.int32)
    if self.binary:
      m = (m > 0).astype(np.int32)
    if self.size is not None:
      m = resize_nearest(m, self.size)
    return m

  def clip_masks(self, video_id: str, control_points: Iterable[int], shape: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Masks for the keyframes of one clip: ([T, H, W] int32 with zeros elsewhere, [T] bool
    'present'). Raises KeyError if a keyframe (control point 1) has no mask in the source."""
    cp = np.asarray(list(control_points))
    out = np.zeros((len(cp),) + tuple(shape), np.int32)
    for t in np.nonzero(cp == 1)[0]:
      out[t] = resize_nearest(self.get(video_id, int(t)), shape)
    return out, cp == 1


def write_npz(path: str, masks: dict[tuple[str, int], np.ndarray]) -> None:
  """Write {(video_id, t): [H, W] int mask} to `path` (.npz) atomically: uint8 when every id of a
  mask is <= 255, else int32 (never wrapped); a negative id raises naming the mask."""
  arrays = {}
  for (v, t), m in masks.items():
    m = _check_ids(np.asarray(m), f"write_npz {path}: mask {v}/{t}")
    arrays[f"{v}/{t}"] = m.astype(np.uint8 if m.size == 0 or m.max() <= 255 else np.int32)
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".npz", dir=d)
  os.close(fd)
  try:
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_png_dir(root: str, masks: dict[tuple[str, int], np.ndarray]) -> None:
  """Write {(video_id, t): mask} as `<root>/<video_id>/<t>.png` (each file via temp + rename):
  8-bit grey when every id is <= 255, 16-bit grey up to 65535; other ids raise (before writing)."""
  checked = {}
  for (vid, t), m in masks.items():
    m = _check_ids(np.asarray(m), f"write_png_dir {root}: mask {vid}/{t}")
    if m.size and m.max() > 65535:
      raise ValueError(f"write_png_dir {root}: mask {vid}/{t} has id {int(m.max())} > 65535 "
                       "(16-bit PNG); use write_npz")
    checked[(vid, t)] = m
  for (vid, t), m in checked.items():
    d = os.path.join(root, vid)
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{t}.png.tmp")
    img = m.astype(np.uint8 if m.size == 0 or m.max() <= 255 else np.uint16)
    Image.fromarray(img).save(tmp, format="PNG")
    os.replace(tmp, os.path.join(d, f"{t}.png"))
