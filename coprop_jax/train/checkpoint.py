"""Orbax checkpointing of a TrainState (+ optional grain iterator) with async saves.

Each step directory holds item `state` (params, opt_state, extra, step, rng as a StandardSave
pytree) and, when a grain `DataLoaderIterator`/`DatasetIterator` is given, item `data_iter`
(its exact position). Saves are asynchronous; call `wait()` (or `close()`) before exiting.
Orbax writes each step to a temporary directory and renames it when complete, so a crash never
leaves a half-written checkpoint that `latest_step()` would pick.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from coprop_jax.train.state import TrainState


def _state_tree(state: TrainState) -> dict:
  return dict(step=state.step, params=state.params, opt_state=state.opt_state,
              extra=state.extra, rng=state.rng)


class Checkpointer:
  """Thin wrapper of `ocp.CheckpointManager` for TrainState.

  Args:
    directory: checkpoint root (created if missing; made absolute).
    keep: number of most recent checkpoints kept.
    save_every: `maybe_save` saves when step % save_every == 0.
  """

  def __init__(self, directory: str, keep: int = 3, save_every: int = 1):
    self.directory = os.path.abspath(os.path.expanduser(directory))
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                        enable_async_checkpointing=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=opts)

  def save(self, state: TrainState, data_iter: Any = None, force: bool = False) -> bool:
    step = int(jax.device_get(state.step))
    items = dict(state=ocp.args.StandardSave(_state_tree(state)))
    if data_iter is not None:
      import grain.python as gp
      items["data_iter"] = gp.PyGrainCheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def restore(self, target: TrainState, step: Optional[int] = None,
              data_iter: Any = None) -> TrainState:
    """Restore into the structure (and shardings) of `target` (a TrainState, possibly of
    `jax.ShapeDtypeStruct`s with `.sharding`). `data_iter` is restored in place if given."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"Checkpointer.restore: no checkpoint under {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(target))
    items = dict(state=ocp.args.StandardRestore(abstract))
    if data_iter is not None:
      import grain.python as gp
      items["data_iter"] = gp.PyGrainCheckpointRestore(data_iter)
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    s = out["state"]
    return target.replace(step=s["step"], params=s["params"], opt_state=s["opt_state"],
                          extra=s["extra"], rng=s["rng"])

  def restore_params(self, target: TrainState, step: Optional[int] = None) -> Any:
    """Only the params of a checkpoint (e.g. to start a keyframe fine-tune from the all-frames
    run). `target` must have the saved run's state structure (same model and optimizer)."""
    return self.restore(target, step).params

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
