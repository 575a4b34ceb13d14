"""In-memory audio-conditioned toy clips for KPF tests and the tiny config.

Each clip shows `num_objects` coloured squares at fixed positions; the audio embedding of frame t
is the (noisy) fixed 128-d code of the object sounding at t. The mask is the sounding object
(binary: 1; semantic: its class id 1..K). The sounding object can switch mid-clip, which makes
that frame a keyframe (control point 1). Without the audio, a model cannot tell which object to
segment: an audio-blind model's J is bounded well below an audio-aware one's.
Clips and batches use the shared vocabulary (frames float32 normalised, masks int32, gt_valid,
frame_valid, audio_embed, control_points); `ClipBatches` is the trainer's checkpointable iterator.
"""
from __future__ import annotations

import numpy as np

from coprop_jax.images import IMAGENET_MEAN, IMAGENET_STD

COLOURS = np.array([[230, 40, 40], [40, 200, 60], [40, 80, 230], [220, 220, 40], [200, 40, 200]],
                   np.float32)


def class_codes(num_classes: int, seed: int = 1234) -> np.ndarray:
  """Fixed audio codes [num_classes, 128] (unit norm x 3)."""
  r = np.random.default_rng(seed).normal(size=(num_classes, 128)).astype(np.float32)
  return 3.0 * r / np.linalg.norm(r, axis=1, keepdims=True)


def make_clip(rng: np.random.Generator, size: int = 64, frames: int = 5, num_objects: int = 2,
              num_classes: int = 3, semantic: bool = False, switch_prob: float = 0.4,
              gt_every_frame: bool = True) -> dict:
  """One clip: frames [T,H,W,3] float32 (ImageNet-normalised), masks [T,H,W] int32, etc."""
  if num_objects > num_classes:
    raise ValueError(f"toy make_clip: num_objects {num_objects} > num_classes {num_classes}")
  codes = class_codes(num_classes)
  cls = rng.choice(num_classes, num_objects, replace=False)
  side = size // 4
  img = np.full((size, size, 3), 110.0, np.float32) + rng.normal(0, 8, (size, size, 3))
  obj_masks = []
  cells = rng.choice(9, num_objects, replace=False)
  for k, cell in enumerate(cells):
    cy, cx = divmod(int(cell), 3)
    y0 = cy * size // 3 + rng.integers(0, max(1, size // 3 - side))
    x0 = cx * size // 3 + rng.integers(0, max(1, size // 3 - side))
    m = np.zeros((size, size), bool)
    m[y0:y0 + side, x0:x0 + side] = True
    img[m] = COLOURS[cls[k] % len(COLOURS)]
    obj_masks.append(m)
  sounding = np.zeros(frames, int)
  sounding[0] = rng.integers(num_objects)
  for t in range(1, frames):
    sounding[t] = rng.integers(num_objects) if rng.random() < switch_prob else sounding[t - 1]
  cp = np.zeros(frames, np.int32)
  cp[0] = 1
  cp[1:] = (sounding[1:] != sounding[:-1])
  mean, std = IMAGENET_MEAN * 255, IMAGENET_STD * 255
  img = (np.clip(img, 0, 255) - mean) / std
  masks = np.stack([obj_masks[s].astype(np.int32) * (int(cls[s]) + 1 if semantic else 1)
                    for s in sounding])
  audio = codes[cls[sounding]] + rng.normal(0, 0.3, (frames, 128)).astype(np.float32)
  gt_valid = np.ones(frames, bool) if gt_every_frame else np.arange(frames) == 0
  return dict(frames=np.repeat(img[None], frames, 0).astype(np.float32), masks=masks,
              gt_valid=gt_valid, frame_valid=np.ones(frames, bool),
              audio_embed=audio.astype(np.float32), control_points=cp)


def make_dataset(seed: int, num_clips: int, **kw) -> list[dict]:
  """A fixed list of clips (a tiny 'training set')."""
  rng = np.random.default_rng(seed)
  return [make_clip(rng, **kw) for _ in range(num_clips)]


class ClipBatches:
  """Endless shuffled batches from a fixed clip list, checkpointable like a grain iterator.

  Each epoch visits the clips in the order of a permutation drawn from (seed, epoch), so the
  position is just (epoch, index): `get_state()` returns it as a JSON-able dict and
  `set_state(state)` jumps back to it, which is what exact resume needs. Batches are dicts of
  numpy arrays [B, ...] (a remainder smaller than a batch is dropped each epoch).
  """

  def __init__(self, clips: list[dict], batch: int, seed: int = 0):
    if batch > len(clips):
      raise ValueError(f"toy data: batch {batch} > {len(clips)} clips")
    self.clips, self.batch, self.seed = clips, batch, seed
    self.epoch, self.index = 0, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.index + self.batch > len(self.clips):
      self.epoch, self.index = self.epoch + 1, 0
    order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.clips))
    sel = [self.clips[j] for j in order[self.index:self.index + self.batch]]
    self.index += self.batch
    return {k: np.stack([c[k] for c in sel]) for k in sel[0]}

  def get_state(self) -> dict:
    return dict(epoch=self.epoch, index=self.index, seed=self.seed, num_clips=len(self.clips),
                batch=self.batch)

  def set_state(self, state: dict) -> None:
    mine = dict(seed=self.seed, num_clips=len(self.clips), batch=self.batch)
    saved = {k: state.get(k) for k in mine}
    if saved != mine:
      raise ValueError(f"toy data iterator state {saved} does not fit this iterator {mine}")
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
