"""grain input-pipeline throughput on the synthetic set; prints one JSON object per line.

  python benchmarks/input_pipeline.py --layout ms3 --num_videos 48 --size 224 --image_size 224 \
      --batch_size 8 --steps 20 --workers 0

Measures: synthetic generation time, TFDS (ArrayRecord) build time, and train/eval grain
examples/s (after one warm-up batch).
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--layout", default="ms3", choices=["s4", "ms3", "avss"])
  p.add_argument("--num_videos", type=int, default=48)
  p.add_argument("--size", type=int, default=64, help="synthetic frame size on disk")
  p.add_argument("--image_size", type=int, default=64, help="pipeline output size")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--workers", type=int, default=0)
  p.add_argument("--workdir", default=None)
  a = p.parse_args(argv)
  from configs.parts.data import get_data_config
  from data_pipelines import input_pipeline, synthetic
  from data_pipelines.avsbench import builders

  work = pathlib.Path(a.workdir or tempfile.mkdtemp(prefix="bench_input_"))
  shutil.rmtree(work / "src", ignore_errors=True)
  shutil.rmtree(work / "tfds", ignore_errors=True)
  t0 = time.perf_counter()
  synthetic.write_dataset(work / "src", a.layout, a.num_videos, a.size, None, 0)
  t1 = time.perf_counter()
  b = builders.build(a.layout, work / "src", work / "tfds", synthetic=True)
  t2 = time.perf_counter()
  common = dict(layout=a.layout, num_videos=a.num_videos, size=a.size, cpu_count=os.cpu_count())
  print(json.dumps(dict(metric="synthetic_generate_s", value=round(t1 - t0, 3), **common)))
  print(json.dumps(dict(metric="tfds_build_s", value=round(t2 - t1, 3), **common)))
  c = get_data_config()
  c.name, c.data_dir, c.image_size, c.batch_size, c.eval_batch_size, c.num_workers = (
      f"synthetic_{a.layout}", str(work / "tfds"), a.image_size, a.batch_size, a.batch_size, a.workers)
  for mode in ("train", "eval"):
    if mode == "train":
      it = input_pipeline.make_iterator(c, "train", True, builder=b)
    else:
      it = iter(input_pipeline.make_dataset(c, "train", False, builder=b, batch_size=a.batch_size)
                .repeat().to_iter_dataset())
    next(it)
    t = time.perf_counter()
    n = 0
    for _ in range(a.steps):
      n += next(it)["frames"].shape[0]
    dt = time.perf_counter() - t
    print(json.dumps(dict(metric=f"grain_{mode}_examples_per_s", value=round(n / dt, 1),
                          image_size=a.image_size, batch_size=a.batch_size, workers=a.workers,
                          **common)))
  if not a.workdir:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
