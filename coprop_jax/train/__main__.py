"""Train the Keyframe Processor (stage 1).

  python -m coprop_jax.train --config configs/keyframe_tiny.py [--workdir DIR] [key=value ...]

All frames: `train.keyframes_only=False`; keyframe fine-tune: `train.keyframes_only=True
train.init_from=<first run's checkpoint dir>` (the configs' `finetune=True` string sets the first),
with control points from the built dataset or, when `data.control_points_file` is set (an RCPG
JSON-lines file, {"video_id": ..., "flags": [...]} per line), joined from that file by video id.
Data: `data.name=toy_kpf` uses the in-memory toy clips (coprop_jax.train.toy_data);
`synthetic_{s4,ms3,avss}` generates the synthetic AVSBench tree into `data.manual_dir` (unless
present) and builds it with TFDS into `data.data_dir`; `avsbench_*` builds the manual download
(reused when already built). Batches come from `data_pipelines.input_pipeline.make_iterator`
(a checkpointable grain iterator, saved with each checkpoint); their `audio_logmel` goes through
the KPF's VGGish. With several devices the batch is split over a 'data' mesh axis.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys

import jax
import numpy as np

from coprop_jax.models import keyframe as kf
from coprop_jax.train import keyframe_task, loop, toy_data
from coprop_jax.train import sharding as shd
from coprop_jax.train.checkpoint import Checkpointer
from coprop_jax.train.state import FAST_COMPILE, make_train_step
from coprop_jax.utils.config import load_config


def _build(d):
  """Generate (synthetic_*) and build the TFDS dataset named by `config.data`; returns builder."""
  from data_pipelines import synthetic
  from data_pipelines.avsbench import builders
  kind, _, layout = d.name.partition("_")
  if kind not in ("synthetic", "avsbench") or layout not in builders.BUILDERS:
    raise ValueError(f"data.name: expected toy_kpf, synthetic_<layout> or avsbench_<layout> with "
                     f"layout s4, ms3 or avss; got {d.name!r}")
  manual = os.path.expanduser(d.manual_dir)
  if kind == "synthetic":
    try:
      synthetic.write_dataset(manual, layout, d.synthetic.num_videos, d.image_size, None,
                              d.synthetic.seed)
      logging.info("wrote synthetic %s tree to %s", layout, manual)
    except FileExistsError:
      logging.info("reusing synthetic %s tree in %s", layout, manual)
  return builders.build(layout, manual, os.path.expanduser(d.data_dir),
                        synthetic=kind == "synthetic", skip_bad=d.skip_bad)


def make_batches(config):
  """-> (iterator of host batches, checkpointable data iterator or None, steps per epoch)."""
  d = config.data
  if d.name == "toy_kpf":
    clips = toy_data.make_dataset(d.synthetic.seed, d.synthetic.num_videos, size=d.image_size,
                                  frames=d.num_frames, num_classes=(config.keyframe.num_classes - 1
                                               if config.keyframe.num_classes > 1 else 3),
                                  semantic=config.keyframe.num_classes > 1)
    return (toy_data.iterate_batches(clips, d.batch_size, d.shuffle_seed), None,
            max(1, len(clips) // d.batch_size))
  from data_pipelines import input_pipeline
  b = _build(d)
  it = input_pipeline.make_iterator(d, "train", train=True, builder=b)
  per_epoch = max(1, b.info.splits["train"].num_examples // d.batch_size)
  # data.control_points_file, if set, is joined by the input pipeline at read time.
  if config.train.keyframes_only and not d.control_points_file:
    logging.warning("keyframes_only without data.control_points_file: using the control points "
                    "stored in the built dataset (frame 0 only unless it was built with a file)")
  return it, it, per_epoch


def run(config, workdir: str) -> dict:
  """Train per `config` into `workdir` (checkpoints/, train_summary.json); resumes if possible."""
  tc = config.train
  batches, data_iter, per_epoch = make_batches(config)
  first = next(batches)
  model = kf.from_config(config.keyframe)
  opts = FAST_COMPILE if tc.get("fast_compile", False) else None
  state = keyframe_task.init_state(model, tc, first, config.seed, compiler_options=opts)
  if config.keyframe.backbone_weights or config.keyframe.vggish_weights:
    state = keyframe_task.load_pretrained(state, config.keyframe)
    logging.info("pretrained encoders: backbone %r, vggish %r", config.keyframe.backbone_weights,
                 config.keyframe.vggish_weights)
  if tc.init_from:
    src = Checkpointer(tc.init_from)
    params = src.restore_params(state)
    logging.info("initialised params from %s (step %s)", tc.init_from, src.latest_step())
    src.close()
    state = state.replace(params=params)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state, data_iter=data_iter)
    logging.info("resumed from step %d", int(state.step))
    if data_iter is not None:  # the iterator is back at the saved position: `first` is stale
      first = next(batches)
  # keyframes_only is applied to the host batches (restrict_to_keyframes), so the all-frames
  # and the fine-tune runs compile the same step.
  step_fn = make_train_step(keyframe_task.make_loss_fn(model, tc, False), compiler_options=opts)
  num_steps = tc.num_steps if tc.num_steps > 0 else tc.num_epochs * per_epoch
  mesh = shd.make_mesh() if jax.device_count() > 1 else None

  def chain():
    for b in itertools.chain([first], batches):
      yield keyframe_task.restrict_to_keyframes(b) if tc.keyframes_only else b

  state, history = loop.train_loop(state, step_fn, chain(), num_steps, mesh=mesh,
                                   checkpointer=ckpt, checkpoint_every=tc.checkpoint_every,
                                   data_iter=data_iter, log_every=tc.log_every, logger=print)
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
