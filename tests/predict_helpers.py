"""Shared by test_predict / test_notebooks: a tiny Co-Prop model directory and media files.

The model directory is the runlocal experiment (`configs/coprop.py:dataset=ms3,runlocal=True`:
PVT-v2-b0 KPF of width 32, one-layer width-64 propagator, 32x32 frames) with RANDOM params
(`propagator_helpers.random_like`: fan-in scaled kernels, so activations stay finite), saved with
`model_io.save_model`. It is built once per test session (per xdist worker) under the session's
base temp dir: saving writes the KPF's 72M VGGish weights.
"""
import os
import pathlib

import av
import numpy as np
import soundfile as sf
from PIL import Image

from coprop_jax import model_io
from coprop_jax.utils.config import load_config
from propagator_helpers import random_like

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = f"{ROOT}/configs/coprop.py:dataset=ms3,runlocal=True"


def tiny_config(*overrides):
  return load_config(CONFIG, list(overrides))


def tiny_model_dir(tmp_path_factory, name="tiny_coprop_model", seed=0) -> pathlib.Path:
  """The runlocal model directory with random params (built on first use in the session)."""
  out = tmp_path_factory.getbasetemp() / name
  if not model_io.is_model_dir(out):
    cfg = tiny_config()
    params = random_like(model_io.expected_shapes(cfg, cfg.data.image_size), seed)
    model_io.save_model(out, cfg, params, sources={"keyframe": "random (tests)",
                                                   "propagator": "random (tests)"})
  return out


def resize(frames: np.ndarray, hw) -> np.ndarray:
  """uint8 [T, h, w, 3] -> [T, H, W, 3] (PIL bilinear)."""
  return np.stack([np.asarray(Image.fromarray(f).resize((hw[1], hw[0]), Image.BILINEAR)) for f in frames])


def write_mp4(path, frames: np.ndarray, waveform=None, *, src_fps=4, rate=16000):
  """frames uint8 [T, H, W, 3] shown 1 s each (src_fps copies) + a 16 kHz mono waveform as AAC,
  muxed into an mp4 with PyAV (no audio stream when waveform is None)."""
  c = av.open(str(path), "w")
  v = c.add_stream("libx264", rate=src_fps)
  v.height, v.width = frames.shape[1:3]
  v.pix_fmt = "yuv420p"
  a = None
  if waveform is not None:
    a = c.add_stream("aac", rate=rate)
    a.layout = "mono"
  for f in frames:
    for _ in range(src_fps):
      for p in v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
        c.mux(p)
  for p in v.encode():
    c.mux(p)
  if a is not None:
    w = np.asarray(waveform, np.float32)
    for s in range(0, len(w), 1024):
      fr = av.AudioFrame.from_ndarray(w[None, s:s + 1024], format="fltp", layout="mono")
      fr.sample_rate, fr.pts = rate, s
      for p in a.encode(fr):
        c.mux(p)
    for p in a.encode():
      c.mux(p)
  c.close()
  return pathlib.Path(path)


def write_frames_dir(d, frames: np.ndarray) -> pathlib.Path:
  d = pathlib.Path(d)
  d.mkdir(parents=True, exist_ok=True)
  for i, f in enumerate(frames):
    Image.fromarray(f).save(d / f"{i:03d}.png")
  return d


def write_wav(path, x, rate=16000) -> pathlib.Path:
  sf.write(str(path), np.asarray(x, np.float32), rate, subtype="PCM_16")
  return pathlib.Path(path)


def subprocess_env(**extra) -> dict:
  """Environment for `python -m coprop_jax...` children: this checkout first on the path, CPU."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.update({k: str(v) for k, v in extra.items()})
  return env
