"""MOC-like synthetic clips: the sounding object switches inside the clip (paper's MOC subset).

  python -m data_pipelines.moc_synth --out DIR [--layout ms3] [--num_videos N] [--size S] [--seed K]

Builds on `data_pipelines.synthetic` (same classes, shapes, sounds, renderer and AVSBench
writers); only the script of each clip differs. Every clip shows `NUM_OBJECTS` objects of
distinct classes, each in its own quadrant of the frame (drifting slowly, never overlapping), and
exactly one of them sounds at a time: the others are visible silent distractors. In a fraction
`MOC_FRACTION` of the clips the sounding object switches once or twice (at random frames >= 1;
each new source differs from the previous one), so a model must follow the audio frame by frame;
the other clips keep one source throughout. Control points are the frames where the sounding set
changes (frame 0 always), as the GT rule of `coprop_jax.rcpg.core.gt_control_points` recovers them
from the masks. Every class has its own sound in its own frequency band, and a frame's audio is
exactly its source's sound, so consecutive-frame audio embeddings change exactly at the control
points (the cosine method of `coprop_jax.rcpg` finds them).

Used through the data config: `data.name = "synthetic_ms3"`, `data.synthetic.generator = "moc"`
(`data_pipelines.prepare` then writes this tree); `make_clip(rng, layout, size, frames, video_id)`
has `synthetic.make_clip`'s signature and return keys.
"""
from __future__ import annotations

import argparse
import os
import pathlib

import numpy as np

from data_pipelines import synthetic

# not in the paper: the MOC-like script (3 objects, one source at a time, 75% switching clips,
# 1-2 switches) is ours; the paper's MOC set is the 17 MS3 test videos whose sources change.
NUM_OBJECTS = 3
MOC_FRACTION = 0.75
TWO_SWITCH_FRACTION = 0.3   # of the switching clips: two switches instead of one (T >= 3)
DRIFT = 0.01                # maximum drift per frame, as a fraction of the image size


def sounding_schedule(rng: np.random.Generator, num_objects: int, frames: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """-> (sounding bool [T, N]: one source per frame, control_points int32 [T]).

  With probability MOC_FRACTION the source switches at 1 or 2 distinct random frames in 1..T-1
  (a new source each time, never the previous one); otherwise one source for the whole clip."""
  switches: list[int] = []
  if frames >= 2 and rng.random() < MOC_FRACTION:
    k = 2 if frames >= 3 and rng.random() < TWO_SWITCH_FRACTION else 1
    switches = sorted(rng.choice(np.arange(1, frames), size=k, replace=False).tolist())
  src = int(rng.integers(num_objects))
  sounding = np.zeros((frames, num_objects), bool)
  cps = np.zeros(frames, np.int32)
  cps[0] = 1
  for t in range(frames):
    if t in switches:
      src = int(rng.choice([o for o in range(num_objects) if o != src]))
      cps[t] = 1
    sounding[t, src] = True
  return sounding, cps


def make_clip(rng: np.random.Generator, layout: str = "ms3", size: int = 64, frames: int = 5,
              video_id: str = "clip") -> dict:
  """One MOC-like clip; same keys and shapes as `synthetic.make_clip` (frames uint8 [T,S,S,3],
  masks int32 [T,S,S], audio_logmel [T,96,64], control_points [T], sounding [T,N], visible
  [T,S,S] object ids 1..N, ...)."""
  if layout not in synthetic.LAYOUTS:
    raise ValueError(f"layout must be one of {synthetic.LAYOUTS}, got {layout!r}")
  n = NUM_OBJECTS
  classes = rng.choice(len(synthetic.CLASSES), size=n, replace=False)
  cells = rng.choice(4, size=n, replace=False)            # quadrants: no two objects overlap
  r = size * rng.uniform(0.16, 0.19, size=n)   # centres stay >= 0.38*size apart
  centre = np.stack([(cells // 2) * 0.5 + 0.25, (cells % 2) * 0.5 + 0.25], -1) * size
  pos = centre + rng.uniform(-0.02, 0.02, size=(n, 2)) * size
  vel = rng.uniform(-DRIFT, DRIFT, size=(n, 2)) * size
  sounding, cps = sounding_schedule(rng, n, frames)
  return synthetic.render_clip(rng, layout, size, classes, sounding, cps, r, pos, vel, video_id)


def clip_stream(layout: str, num_videos: int, size: int, seed: int, frames: int = 5,
                clip_fn=None):
  """Yields (split, clip) in the order and with the random stream of `write_dataset` (clip_fn:
  default this module's `make_clip`; `synthetic.make_clip` for the random trees), so the clips
  of a written tree (e.g. their `visible` object maps, not stored in AVSBench's layout) can be
  drawn again in memory. AVSS clip lengths follow `synthetic.write_dataset` (v2: 10)."""
  clip_fn = clip_fn or make_clip
  rng = np.random.default_rng(seed)
  for i, split in enumerate(synthetic._splits(num_videos)):
    t = frames
    if layout == "avss":
      t = 10 if ("v1s", "v1m", "v2")[i % 3] == "v2" else 5
    yield split, clip_fn(rng, layout, size, t, video_id=f"syn{layout}_{i:05d}")


def write_dataset(out: str | os.PathLike, layout: str = "ms3", num_videos: int = 12,
                  size: int = 64, frames: int | None = None, seed: int = 0) -> pathlib.Path:
  """`synthetic.write_dataset` with MOC-like clips (same tree, same video ids and splits)."""
  return synthetic.write_dataset(out, layout, num_videos, size, frames, seed, clip_fn=make_clip)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--layout", choices=synthetic.LAYOUTS, default="ms3")
  p.add_argument("--num_videos", type=int, default=12)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  root = write_dataset(a.out, a.layout, a.num_videos, a.size, None, a.seed)
  print(f"wrote {a.num_videos} MOC-like synthetic {a.layout} videos under {root}")


if __name__ == "__main__":
  main()
