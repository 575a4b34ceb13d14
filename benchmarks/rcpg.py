"""RCPG: agreement of the GT control-point rule with the synthetic generator's sounding-set changes.

  PYTHONPATH=$PWD python benchmarks/rcpg.py --clips 40 --frames 10 --thresholds 0.2,0.3,0.4,0.5

Prints one JSON object per (layout, threshold): keyframe precision/recall/F1 and exact match.
"""
import argparse
import json

import numpy as np

from coprop_jax.rcpg import core, inputs
from data_pipelines.synthetic import make_clip


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--clips", type=int, default=40)
  p.add_argument("--frames", type=int, default=10)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--thresholds", default="0.2,0.3,0.4,0.5")
  p.add_argument("--layouts", default="s4,ms3,avss")
  a = p.parse_args(argv)
  for lay in a.layouts.split(","):
    rng = np.random.default_rng(0)
    clips = [make_clip(rng, lay, size=a.size, frames=a.frames, video_id=str(i)) for i in range(a.clips)]
    gt = {c["video_id"]: c["control_points"].tolist() for c in clips}
    for th in [float(x) for x in a.thresholds.split(",")]:
      pred = {c["video_id"]: core.gt_control_points(
          c["masks"], binary=inputs.is_binary_layout(lay), iou_threshold=th).tolist() for c in clips}
      print(json.dumps({"layout": lay, "iou_threshold": th, **core.evaluate(pred, gt)}))


if __name__ == "__main__":
  main()
