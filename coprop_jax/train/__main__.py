"""Train the Keyframe Processor (stage 1).

  python -m coprop_jax.train --config configs/keyframe_tiny.py [--workdir DIR] [key=value ...]

All frames: `train.keyframes_only=False`; keyframe fine-tune: `train.keyframes_only=True
train.init_from=<first run's checkpoint dir>` (see configs/keyframe_finetune.py).
Data: `data.name=toy_kpf` uses the in-memory toy clips (coprop_jax.train.toy_data); other names
go through `data_pipelines.input_pipeline.make_iterator(config.data)` (a checkpointable grain
iterator, saved with each checkpoint).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import jax
import numpy as np

from coprop_jax.models import keyframe as kf
from coprop_jax.train import keyframe_task, loop, toy_data
from coprop_jax.train.checkpoint import Checkpointer
from coprop_jax.train.state import make_train_step
from coprop_jax.utils.config import load_config


def make_batches(config):
  d = config.data
  if d.name == "toy_kpf":
    clips = toy_data.make_dataset(d.synthetic.seed, d.synthetic.num_videos, size=d.image_size,
                                  frames=d.num_frames, num_classes=(config.keyframe.num_classes - 1
                                               if config.keyframe.num_classes > 1 else 3),
                                  semantic=config.keyframe.num_classes > 1)
    return toy_data.iterate_batches(clips, d.batch_size, d.shuffle_seed), None
  try:
    from data_pipelines import input_pipeline
  except ImportError as e:
    raise SystemExit(f"data.name={d.name!r} needs data_pipelines.input_pipeline, which is not "
                     f"in this tree ({e}); use data.name=toy_kpf") from e
  it = input_pipeline.make_iterator(config.data, "train", train=True)
  return it, it


def run(config, workdir: str) -> dict:
  tc = config.train
  batches, data_iter = make_batches(config)
  first = next(batches)
  model = kf.from_config(config.keyframe)
  state = keyframe_task.init_state(model, tc, first, config.seed)
  if tc.init_from:
    src = Checkpointer(tc.init_from)
    params = src.restore_params(state)
    src.close()
    state = state.replace(params=params)
    logging.info("initialised params from %s", tc.init_from)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state, data_iter=data_iter)
    logging.info("resumed from step %d", int(state.step))
  step_fn = make_train_step(keyframe_task.make_loss_fn(model, tc, tc.keyframes_only))
  num_steps = tc.num_steps if tc.num_steps > 0 else tc.num_epochs * 1000

  def chain():
    yield first
    yield from batches

  state, history = loop.train_loop(state, step_fn, chain(), num_steps, checkpointer=ckpt,
                                   checkpoint_every=tc.checkpoint_every, data_iter=data_iter,
                                   log_every=tc.log_every, logger=print)
  ckpt.close()
  summary = dict(final_step=int(state.step), history=history,
                 checkpoints=os.path.join(workdir, "checkpoints"))
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, "train_summary.json.tmp")
  with open(tmp, "w") as fh:
    json.dump(summary, fh, indent=1)
  os.replace(tmp, os.path.join(workdir, "train_summary.json"))
  return summary


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--config", required=True, help="path/to/config.py[:config_string]")
  p.add_argument("--workdir", default=None, help="overrides config.workdir")
  p.add_argument("overrides", nargs="*", help="key=value config overrides")
  a = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO)
  config = load_config(a.config, a.overrides)
  workdir = a.workdir or config.workdir
  s = run(config, workdir)
  print(json.dumps({k: v for k, v in s.items() if k != "history"}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
