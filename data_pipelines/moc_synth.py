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

Two more scripts (`GENERATORS`, selected by `data.synthetic.generator`):

  "moc_ambiguous"  (`make_clip_ambiguous`, the demo's default) the same sounding schedule, with
      what makes per-frame audio-visual segmentation hard in AVSBench: within a segment the
      source's loudness varies from frame to frame and some frames (not control points) are
      unreliable, the source faint and masked by a louder off-screen sound (a class that is not
      in the clip) or by broadband noise, so that frame's audio alone points at the wrong object
      or none, while every object stays visible; objects move several pixels per frame and grow
      or shrink (copying the previous mask is not enough); objects are drawn in colours that do
      not tell their class (often one colour for all three), so the image alone does not tell
      which object sounds. The control points stay the frames where the sounding set changes.
  "tracking"  (`make_clip_tracking`) clips for the propagator's tracking prior: the same moving,
      resizing objects, one target object masked on every frame (control point: frame 0 only),
      as a video-object-segmentation set would give; its audio is not used (the plain
      propagator that trains on it has no audio input).
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


# not in the paper: the "moc_ambiguous" and "tracking" scripts and every number below are ours,
# chosen to resemble AVSBench's hard cases (faint or masked sources, off-screen sounds, moving
# objects, look-alike distractors), not fitted to any result.
FAST_DRIFT = 0.05           # maximum speed per frame, fraction of the image size
SCALE_RANGE = (0.7, 1.3)    # each object's radius factor at the first and last frame
LOUDNESS_RANGE = (0.5, 1.0) # the source's gain on an ordinary frame
UNRELIABLE_FRACTION = 0.35  # of the frames that are not control points: faint and masked
FAINT_GAIN = (0.05, 0.15)   # the source's gain on an unreliable frame
OFFSCREEN_FRACTION = 0.7    # of the unreliable frames: masked by an off-screen class's sound
OFFSCREEN_GAIN = (0.8, 1.2) # (else by broadband noise of this relative level x 0.3)
SHARED_COLOUR_FRACTION = 0.5  # clips whose objects all have one colour (else random colours)


def _hard_scene(rng: np.random.Generator, size: int, frames: int, n: int):
  """Classes, radii, start positions, velocities, per-frame scales and colours of a clip whose
  objects move fast, change size and do not show their class by colour."""
  classes = rng.choice(len(synthetic.CLASSES), size=n, replace=False)
  cells = rng.choice(4, size=n, replace=False)
  r = size * rng.uniform(0.13, 0.17, size=n)
  centre = np.stack([(cells // 2) * 0.5 + 0.25, (cells % 2) * 0.5 + 0.25], -1) * size
  pos = centre + rng.uniform(-0.03, 0.03, size=(n, 2)) * size
  speed = rng.uniform(0.5, 1.0, size=(n, 1)) * FAST_DRIFT * size
  angle = rng.uniform(0, 2 * np.pi, size=n)
  vel = speed * np.stack([np.sin(angle), np.cos(angle)], -1)
  s0, s1 = rng.uniform(*SCALE_RANGE, size=(2, n))
  w = np.linspace(0.0, 1.0, frames)[:, None]
  scale = s0[None] * (1 - w) + s1[None] * w
  palette = np.array([c[2] for c in synthetic.CLASSES], np.float32)
  if rng.random() < SHARED_COLOUR_FRACTION:
    colours = np.repeat(palette[rng.integers(len(palette))][None], n, 0)
  else:
    colours = palette[rng.integers(len(palette), size=n)]
  return classes, r, pos, vel, scale, colours


def unreliable_audio(rng: np.random.Generator, classes: np.ndarray, cps: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """-> (gain [T, N] of each object's sound, unreliable bool [T], extra waveform [T * 16000]).
  Control-point frames are never unreliable (a source's onset is heard)."""
  frames, n = len(cps), len(classes)
  gain = rng.uniform(*LOUDNESS_RANGE, size=(frames, 1)) * np.ones((1, n))
  bad = (rng.random(frames) < UNRELIABLE_FRACTION) & (np.asarray(cps) == 0)
  extra = np.zeros(frames * synthetic.SAMPLE_RATE, np.float32)
  sr = synthetic.SAMPLE_RATE
  off = [c for c in range(len(synthetic.CLASSES)) if c not in set(classes.tolist())]
  for t in np.flatnonzero(bad):
    gain[t] = rng.uniform(*FAINT_GAIN)
    if rng.random() < OFFSCREEN_FRACTION:
      snd = synthetic.class_sound(int(rng.choice(off)), 1, rng) * rng.uniform(*OFFSCREEN_GAIN)
    else:
      snd = 0.3 * rng.uniform(*OFFSCREEN_GAIN) * rng.standard_normal(sr).astype(np.float32)
    extra[t * sr:(t + 1) * sr] = snd
  return gain, bad, extra


def make_clip_ambiguous(rng: np.random.Generator, layout: str = "ms3", size: int = 64,
                        frames: int = 5, video_id: str = "clip") -> dict:
  """One "moc_ambiguous" clip (module docstring); `make_clip`'s keys plus `unreliable` bool [T]
  (frames whose audio is faint and masked)."""
  if layout not in synthetic.LAYOUTS:
    raise ValueError(f"layout must be one of {synthetic.LAYOUTS}, got {layout!r}")
  classes, r, pos, vel, scale, colours = _hard_scene(rng, size, frames, NUM_OBJECTS)
  sounding, cps = sounding_schedule(rng, NUM_OBJECTS, frames)
  gain, bad, extra = unreliable_audio(rng, classes, cps)
  clip = synthetic.render_clip(rng, layout, size, classes, sounding, cps, r, pos, vel, video_id,
                               scale=scale, colours=colours, gain=gain, extra_audio=extra)
  clip["unreliable"] = bad
  return clip


def make_clip_tracking(rng: np.random.Generator, layout: str = "ms3", size: int = 64,
                       frames: int = 5, video_id: str = "clip") -> dict:
  """One "tracking" clip (module docstring): the target object masked on every frame."""
  if layout not in synthetic.LAYOUTS:
    raise ValueError(f"layout must be one of {synthetic.LAYOUTS}, got {layout!r}")
  classes, r, pos, vel, scale, colours = _hard_scene(rng, size, frames, NUM_OBJECTS)
  sounding = np.zeros((frames, NUM_OBJECTS), bool)
  sounding[:, int(rng.integers(NUM_OBJECTS))] = True
  cps = np.zeros(frames, np.int32)
  cps[0] = 1
  return synthetic.render_clip(rng, layout, size, classes, sounding, cps, r, pos, vel, video_id,
                               scale=scale, colours=colours)


# data.synthetic.generator -> the function drawing each clip ("random": synthetic.make_clip).
GENERATORS = {"random": synthetic.make_clip, "moc": make_clip,
              "moc_ambiguous": make_clip_ambiguous, "tracking": make_clip_tracking}


def clip_fn_of(generator: str):
  """The clip function of `data.synthetic.generator` (a ValueError names the choices)."""
  if generator not in GENERATORS:
    raise ValueError(f"data.synthetic.generator: expected one of {sorted(GENERATORS)}, got "
                     f"{generator!r}")
  return GENERATORS[generator]


def true_control_points(layout: str, num_videos: int, size: int, seed: int, generator: str,
                        split: str | None = None) -> dict[str, dict]:
  """The generator's own control points of every clip (of `split`, or all) of a tree written
  with these settings: {video_id: {"flags": [0/1], "categories": [class names that sound]}}.
  These are exact (the script's switches), unlike the binary GT rule on masks."""
  out = {}
  for s, clip in clip_stream(layout, num_videos, size, seed, clip_fn=clip_fn_of(generator)):
    if split is None or s == split:
      names = sorted({synthetic.CLASS_NAMES[int(clip["object_classes"][o])]
                      for o in np.flatnonzero(clip["sounding"].any(0))})
      out[clip["video_id"]] = dict(flags=[int(f) for f in clip["control_points"]],
                                   categories=names, split=s)
  return out


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
  p.add_argument("--generator", choices=sorted(GENERATORS), default="moc")
  a = p.parse_args(argv)
  root = synthetic.write_dataset(a.out, a.layout, a.num_videos, a.size, None, a.seed,
                                 clip_fn=clip_fn_of(a.generator))
  print(f"wrote {a.num_videos} {a.generator} synthetic {a.layout} videos under {root}")


if __name__ == "__main__":
  main()
