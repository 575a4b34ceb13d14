"""Host cost of the evaluation report (coprop_jax.eval.report) per video, on random predictions.

  PYTHONPATH=$PWD python benchmarks/eval_report.py [--videos 20] [--size 224]

Prints one JSON line per task: binary (S4/MS3: 5 frames, foreground probabilities, 255 F
thresholds) and semantic (AVSS: 10 frames, 71 classes): seconds per video to add it (metrics,
alignment, MOC rule) and to summarise the whole set, and the extrapolated time for the AVSBench
test splits (S4 740 videos, MS3 64; AVSS per 1000 videos).
"""
import argparse
import json
import time

import numpy as np

from coprop_jax.eval import report


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--videos", type=int, default=20)
  p.add_argument("--size", type=int, default=224)
  a = p.parse_args(argv)
  rng = np.random.default_rng(0)
  s = a.size
  for task, t, c, split_videos in (("binary", 5, 2, {"s4_test": 740, "ms3_test": 64}),
                                    ("semantic", 10, 71, {"avss_per_1000_videos": 1000})):
    rep = report.EvalReport(task, num_classes=None if task == "binary" else c)
    vids = []
    for i in range(a.videos):
      gt = np.zeros((t, s, s), np.int32)
      gt[:, s // 4: s // 2, s // 4: s // 2] = rng.integers(1, c)
      vid = dict(gt=gt, gt_valid=np.ones(t, bool), frame_valid=np.ones(t, bool),
                 is_keyframe=np.arange(t) % 3 == 0)
      if task == "binary":
        vid["probs"] = rng.random((t, s, s), dtype=np.float32)
      else:
        vid["pred"] = np.where(rng.random((t, s, s)) < 0.9, gt, rng.integers(0, c, (t, s, s)))
      vids.append(vid)
    t0 = time.perf_counter()
    for i, v in enumerate(vids):
      rep.add_video(f"v{i}", **v)
    t1 = time.perf_counter()
    rep.summary("bench")
    t2 = time.perf_counter()
    per = (t1 - t0) / a.videos
    print(json.dumps({"task": task, "frames": t, "size": s, "classes": c, "videos": a.videos,
                      "add_s_per_video": round(per, 4), "summary_s": round(t2 - t1, 4),
                      **{f"{k}_est_s": round(per * n, 1) for k, n in split_videos.items()}}))


if __name__ == "__main__":
  main()
