"""Training tasks, one per stage, selected by `config.train.stage` (see tasks/base.py).

  kpf            Keyframe Processor on all frames (tasks/kpf.py)
  kpf_finetune   Keyframe Processor on keyframes only, usually from `train.init_from` (tasks/kpf.py)
  propagator     Audio-insert Propagator (stage 2), AOT's recipe (tasks/propagator.py)

A new stage plugs in by adding its `Task` subclass to `TASKS`.
"""
from __future__ import annotations

from typing import Any

from coprop_jax.train.tasks.base import Task
from coprop_jax.train.tasks.kpf import KpfFinetuneTask, KpfTask
from coprop_jax.train.tasks.propagator import PropagatorTask

# Every stage a config may name (configs/parts/train.py documents them).
STAGES = ("kpf", "kpf_finetune", "propagator")
# The training task of each stage.
TASKS: dict[str, type[Task]] = {"kpf": KpfTask, "kpf_finetune": KpfFinetuneTask,
                                "propagator": PropagatorTask}


class UnknownStageError(ValueError):
  """config.train.stage names a stage without a training task."""


def get_task(config: Any) -> Task:
  """The task of `config.train.stage`, built from `config`."""
  stage = config.train.stage
  if stage not in TASKS:
    raise UnknownStageError(f"train.stage={stage!r}: unknown stage; stages that can be trained: "
                            f"{', '.join(sorted(TASKS))}")
  return TASKS[stage](config)
