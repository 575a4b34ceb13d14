"""Demo: generate the synthetic set (configs/demo.py), build it with TFDS, read batches via grain.

  python -m data_pipelines.demo [--workdir /tmp/coprop_demo] [--batches 3]

Prints the build time, each batch's shapes/dtypes/flags, and the grain examples/s.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import time

import numpy as np


def main(argv=None):
  from configs.demo import get_config
  from data_pipelines import input_pipeline, prepare

  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="/tmp/coprop_demo",
                 help="the synthetic tree and TFDS build go to WORKDIR/data (configs/demo.py)")
  p.add_argument("--batches", type=int, default=12, help="batches to read (first 3 printed)")
  a = p.parse_args(argv)
  from coprop_jax.utils.config import resolve_path
  cfg = get_config()
  d = cfg.data
  d.manual_dir = resolve_path(d.manual_dir, a.workdir)
  d.data_dir = resolve_path(d.data_dir, a.workdir)
  manual = pathlib.Path(d.manual_dir)
  for p_ in (manual, pathlib.Path(d.data_dir)):  # the demo always starts from scratch
    shutil.rmtree(p_, ignore_errors=True)
  t1 = time.perf_counter()
  b = prepare.prepare_dataset(d)
  t2 = time.perf_counter()
  print(f"generated {d.synthetic.num_videos} synthetic videos in {manual} and built TFDS "
        f"{b.name}/{b.builder_config.name} (ArrayRecord) in {d.data_dir} ({t2 - t1:.1f} s): "
        + ", ".join(f"{k}={v.num_examples}" for k, v in b.info.splits.items()))
  it = input_pipeline.make_iterator(d, "train", True, builder=b)
  t3 = time.perf_counter()
  n = 0
  for i in range(a.batches):
    batch = next(it)
    n += batch["frames"].shape[0]
    if i >= 3:
      continue
    print(f"batch {i}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in batch.items()
                                     if k != "video_id"))
    print(f"  video_id={list(batch['video_id'])} gt_valid={batch['gt_valid'].astype(int).tolist()}"
          f" control_points={batch['control_points'].tolist()}"
          f" mask_fg={np.round((batch['masks'] > 0).mean(axis=(2, 3)), 2).tolist()}")
  t4 = time.perf_counter()
  print(f"grain train pipeline: {n} examples in {t4 - t3:.2f} s = {n / max(t4 - t3, 1e-9):.1f} examples/s")
  print("OK")


if __name__ == "__main__":
  main()
