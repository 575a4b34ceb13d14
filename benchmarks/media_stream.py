"""Memory and speed of reading a video for predict: chunked (`MediaSource.chunks`) vs whole clip
(`MediaSource.read`); prints one JSON object per line.

  python benchmarks/media_stream.py --seconds 60,600 --fps 25 --frame_size 240x320 --size 224 --chunk 16

For each length it writes an H.264 + AAC (44.1 kHz stereo) mp4 of moving texture with PyAV, then
reads it in a fresh subprocess per mode, so `peak_rss_mb` (ru_maxrss) is that mode's own peak.
Memory flat in the video's length = the chunked peak does not grow with --seconds.
"""
import argparse
import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from _timing import parse_size  # noqa: E402


def write_video(path, seconds, fps, hw):
  import av
  h, w = hw
  rng = np.random.default_rng(0)
  base = rng.integers(0, 256, (h, 2 * w, 3)).astype(np.uint8)
  c = av.open(str(path), "w")
  v = c.add_stream("libx264", rate=fps)
  v.width, v.height, v.pix_fmt = w, h, "yuv420p"
  v.options = {"preset": "ultrafast"}
  a = c.add_stream("aac", rate=44100)
  a.layout = "stereo"
  for i in range(seconds * fps):
    f = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, i % w:i % w + w]), format="rgb24")
    for p in v.encode(f):
      c.mux(p)
  for p in v.encode():
    c.mux(p)
  n = 44100 * seconds
  for s in range(0, n, 44100):
    t = np.arange(s, min(s + 44100, n)) / 44100
    x = (0.3 * np.sin(2 * np.pi * (300 + 50 * (s // 44100 % 10)) * t)).astype(np.float32)
    fr = av.AudioFrame.from_ndarray(np.stack([x, x]), format="fltp", layout="stereo")
    fr.sample_rate, fr.pts = 44100, s
    for p in a.encode(fr):
      c.mux(p)
  for p in a.encode():
    c.mux(p)
  c.close()


def measure(path, mode, size, chunk):
  from coprop_jax import media
  t0 = time.perf_counter()
  src = media.open_media(path, size=size)
  t1 = time.perf_counter()
  n = 0
  if mode == "chunks":
    for ch in src.chunks(chunk):
      n += len(ch.frames)
  else:
    n = len(src.read().frames)
  t2 = time.perf_counter()
  print(json.dumps(dict(mode=mode, video_seconds=src.info.duration, frames=n, size=size, chunk=chunk,
                        open_s=round(t1 - t0, 3), read_s=round(t2 - t1, 2),
                        sampled_frames_per_s=round(n / (t2 - t1), 2),
                        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))))


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--seconds", default="60,600", help="comma-separated video lengths")
  p.add_argument("--fps", type=int, default=25, help="source video frame rate")
  p.add_argument("--frame_size", default="240x320", help="source video HxW")
  p.add_argument("--size", type=int, default=224, help="model input size")
  p.add_argument("--chunk", type=int, default=16)
  p.add_argument("--modes", default="chunks,read")
  p.add_argument("--workdir", default=None)
  p.add_argument("--measure", default=None, help=argparse.SUPPRESS)
  p.add_argument("--mode", default="chunks", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.measure:
    measure(a.measure, a.mode, a.size, a.chunk)
    return
  work = pathlib.Path(a.workdir or tempfile.mkdtemp(prefix="bench_media_"))
  work.mkdir(parents=True, exist_ok=True)
  for secs in (int(s) for s in a.seconds.split(",")):
    path = work / f"v{secs}s_{a.fps}fps.mp4"
    if not path.exists():
      t0 = time.perf_counter()
      write_video(path, secs, a.fps, parse_size(a.frame_size))
      print(json.dumps(dict(wrote=str(path), seconds=secs, write_s=round(time.perf_counter() - t0, 1),
                            mb=round(path.stat().st_size / 2**20, 1))), flush=True)
    for mode in a.modes.split(","):
      subprocess.run([sys.executable, __file__, "--measure", str(path), "--mode", mode,
                      "--size", str(a.size), "--chunk", str(a.chunk)], check=True)


if __name__ == "__main__":
  main()
