"""Stage 2 through the trainer, cheaply: the real propagator task (loss, optimizer, ID-bank
freeze, evaluation) around a one-layer width-32 propagator with the stand-in encoder of
tests/propagator_helpers.py (pooling + a fixed projection, no parameters), so the BPTT step
compiles in seconds. Run as a script it is `python -m coprop_jax.train` with the stage
"propagator_standin" registered and trainer_helpers' COPROP_TEST_KILL_AFTER_SAVE hook.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from coprop_jax.train import tasks
from coprop_jax.train.tasks.propagator import PropagatorTask
from propagator_helpers import fake_encode

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Toy clips (in-memory, audio embeddings, control points at the sounding-object switches).
CONFIG = f"{ROOT}/configs/coprop.py:dataset=toy,stage=propagator,runlocal=True"
TINY = ["train.stage=propagator_standin", "propagator.num_layers=1", "propagator.d_model=32",
        "propagator.num_heads=4", "propagator.ffn_dim=64", "propagator.local_max_dis=1",
        "propagator.num_audio_tokens=2", "propagator.max_objects=3", "data.synthetic.num_videos=8",
        "train.fast_compile=True"]


class StandinPropagatorTask(PropagatorTask):
  name = "propagator_standin"

  def build_encoder(self):
    return None, fake_encode


def register() -> None:
  tasks.TASKS["propagator_standin"] = StandinPropagatorTask


def run_cli(workdir, *overrides, env=None, timeout=300, config=CONFIG, xla_cache=None):
  """This file as the train CLI in a subprocess (overrides as --config.<a.b>=<v>)."""
  cmd = [sys.executable, __file__, f"--config={config}", f"--workdir={workdir}",
         *[f"--config.{o}" for o in overrides]]
  e = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", JAX_PLATFORMS="cpu",
           **(env or {}))
  if xla_cache:
    e.update(JAX_COMPILATION_CACHE_DIR=str(xla_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  e.pop("XLA_FLAGS", None)
  return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


if __name__ == "__main__":
  from absl import app
  import trainer_helpers
  register()
  if os.environ.get("COPROP_TEST_KILL_AFTER_SAVE"):
    trainer_helpers._kill_after_save(int(os.environ["COPROP_TEST_KILL_AFTER_SAVE"]))
  from coprop_jax.train.__main__ import main
  app.run(main)
