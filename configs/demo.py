"""Demo: synthetic AVSBench-layout MS3 data and tiny models, runs on a laptop CPU in minutes.

  python -m data_pipelines.demo --workdir /tmp/coprop_demo    # builds + loads the synthetic set
  python -m coprop_jax.train --config configs/demo.py --workdir /tmp/coprop_demo   # trains the KPF

The model sizes are the small-run variant's (configs/base.py:apply_runlocal: PVT-v2-b0 with one
block per stage, width 32; 1-layer, width-64 propagator); the demo uses more and larger clips
(24 videos, 64x64) and trains longer. Data go to `<workdir>/data/{synthetic,tfds}`.
"""
from configs import coprop


def get_config(arg=None):
  del arg
  c = coprop.get_config("dataset=ms3,runlocal=True")
  c.data.image_size = 64
  c.data.batch_size = 4
  c.data.synthetic.num_videos = 24
  c.train.num_steps = 200
  c.train.log_every = 20
  c.train.checkpoint_every = 100
  c.eval.every_steps = 100
  c.rcpg.method = "gt"
  return c
