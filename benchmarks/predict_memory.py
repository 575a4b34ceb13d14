"""`python -m coprop_jax.predict` on videos of growing length: peak memory and time.

  PYTHONPATH=$PWD python benchmarks/predict_memory.py --lengths 20,200          # runlocal random model
  PYTHONPATH=$PWD python benchmarks/predict_memory.py --checkpoint MODEL_DIR --lengths 60,600

Writes a synthetic mp4 (64x64 frames, one per second, a moving square, a tone that changes every
7 s) per length and runs the real command in a child process; the peak resident memory of that
process (ru_maxrss of that child, os.wait4) shows whether memory stays flat as the video grows (the
propagator's memory is carried between `--chunk_frames` chunks; masks, overlay frames and
timeline pages are written as they come). Without --checkpoint a model directory of the runlocal
config (configs/coprop.py:dataset=ms3,runlocal=True) with freshly initialised params is made
first. Prints one JSON line per length: frames, seconds (wall, compiles included), peak_rss_mib
(the child's ru_maxrss), rss_mib_at (its VmRSS sampled at 25/50/75/100 % of the run: the segment
phase is the second half), chunk_frames, the command's own timings.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import av
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent


def write_video(path, seconds: int, size: int = 64, rate: int = 16000):
  c = av.open(str(path), "w")
  v = c.add_stream("libx264", rate=1)
  v.width = v.height = size
  v.pix_fmt = "yuv420p"
  a = c.add_stream("aac", rate=rate)
  a.layout = "mono"
  for k in range(seconds):
    f = np.full((size, size, 3), 60, np.uint8)
    x = (7 * k) % (size - 16)
    f[20:36, x:x + 16] = (240, 200, 40)
    for p in v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
      c.mux(p)
  for p in v.encode():
    c.mux(p)
  t = np.arange(seconds * rate) / rate
  freq = np.where((t // 7) % 2 == 0, 440.0, 1500.0)
  w = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
  for s in range(0, len(w), 1024):
    fr = av.AudioFrame.from_ndarray(w[None, s:s + 1024], format="fltp", layout="mono")
    fr.sample_rate, fr.pts = rate, s
    for p in a.encode(fr):
      c.mux(p)
  for p in a.encode():
    c.mux(p)
  c.close()


def make_model(out):
  import jax
  from coprop_jax import model_io, pipeline
  from coprop_jax.utils.config import load_config
  cfg = load_config(f"{ROOT}/configs/coprop.py:dataset=ms3,runlocal=True")
  params = pipeline.init_params(cfg, jax.random.PRNGKey(0), cfg.data.image_size)
  return model_io.save_model(out, cfg, params, sources={"keyframe": "init", "propagator": "init"})


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--checkpoint", help="model directory (default: a runlocal model with init params)")
  ap.add_argument("--lengths", default="20,200", help="video lengths in seconds (= frames at 1 fps)")
  ap.add_argument("--chunk_frames", type=int, default=30)
  args = ap.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    model = args.checkpoint or make_model(tmp / "model")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    for n in [int(x) for x in args.lengths.split(",")]:
      video = tmp / f"clip{n}.mp4"
      write_video(video, n)
      log = tmp / f"log{n}.txt"
      t0 = time.perf_counter()
      with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "coprop_jax.predict", "--checkpoint", str(model),
                                 "--video", str(video), "--out", str(tmp / f"out{n}"), "--no_progress",
                                 "--chunk_frames", str(args.chunk_frames)], env=env, stdout=f, stderr=f)
        rss = []   # (seconds since start, VmRSS MiB), sampled every 0.25 s
        while True:
          pid, status, usage = os.wait4(proc.pid, os.WNOHANG)   # this child's own rusage
          if pid:
            break
          try:
            kib = next(int(l.split()[1]) for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmRSS"))
            rss.append((time.perf_counter() - t0, kib / 1024))
          except (OSError, StopIteration):
            pass
          time.sleep(0.25)
        proc.returncode = os.waitstatus_to_exitcode(status)
      wall = time.perf_counter() - t0
      if proc.returncode:
        sys.exit(f"predict failed on {n} frames: {log.read_text().strip()[-2000:]}")
      summary = json.loads((tmp / f"out{n}" / "summary.json").read_text())
      print(json.dumps(dict(what="predict_memory", frames=summary["num_frames"], seconds=round(wall, 1),
                            peak_rss_mib=round(usage.ru_maxrss / 1024, 1),
                            rss_mib_at={f"{q:.0%}": round(rss[int(q * (len(rss) - 1))][1], 1)
                                        for q in (0.25, 0.5, 0.75, 1.0)} if rss else None,
                            chunk_frames=args.chunk_frames, timings_s=summary["timings_s"])), flush=True)


if __name__ == "__main__":
  main()
