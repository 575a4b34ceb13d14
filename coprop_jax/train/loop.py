"""Generic training loop: step, log loss/grad-norm, stop on NaN, checkpoint.

`train_loop` is stage-agnostic: it takes a TrainState, a jitted step (from
`state.make_train_step`) and an iterator of host batches (numpy dicts). With a mesh, batches are
split over its 'data' axis and the state is replicated onto it before the first step.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np

from coprop_jax.train import sharding as shd
from coprop_jax.train.checkpoint import Checkpointer
from coprop_jax.train.state import TrainState

log = logging.getLogger("coprop_jax.train")


def _arrays(batch: dict) -> dict:
  return {k: v for k, v in batch.items()
          if isinstance(v, (np.ndarray, jax.Array)) and v.dtype.kind not in "OSU"}


def train_loop(state: TrainState, step_fn: Callable, batches: Iterator[dict], num_steps: int,
               mesh: Optional[jax.sharding.Mesh] = None,
               checkpointer: Optional[Checkpointer] = None, checkpoint_every: int = 0,
               data_iter: Any = None, log_every: int = 50,
               logger: Callable[[str], None] = log.info) -> tuple[TrainState, list[dict]]:
  """Run until state.step == num_steps. Returns (state, history of logged metric dicts).

  Raises FloatingPointError (after saving nothing further) when loss or grad norm is not finite
  at a logging step. The final state is checkpointed (forced) when a checkpointer is given.
  """
  if mesh is not None:
    state = shd.put_replicated(mesh, state)
  else:
    # Commit every leaf to its device: a state mixing uncommitted leaves (fresh optimizer state)
    # with committed ones (restored params) would otherwise compile the step twice.
    state = jax.tree.map(lambda x: jax.device_put(x, x.sharding) if isinstance(x, jax.Array)
                         else x, state)
  history = []
  start = int(jax.device_get(state.step))
  t0 = time.perf_counter()
  last = start
  for step in range(start, num_steps):
    batch = next(batches)
    arrays = shd.shard_batch(mesh, batch) if mesh is not None else _arrays(batch)
    state, metrics = step_fn(state, arrays)
    done = step + 1
    if done % max(log_every, 1) == 0 or done == num_steps:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
        raise FloatingPointError(f"non-finite loss/grad_norm at step {done}: {m}")
      dt = time.perf_counter() - t0
      m.update(step=done, steps_per_s=(done - last) / max(dt, 1e-9))
      t0, last = time.perf_counter(), done
      history.append(m)
      logger(f"step {done}: " + ", ".join(f"{k}={v:.4g}" for k, v in m.items() if k != "step"))
    if checkpointer is not None and checkpoint_every > 0 and done % checkpoint_every == 0:
      checkpointer.save(state, data_iter)
  if checkpointer is not None:
    if checkpointer.latest_step() != int(jax.device_get(state.step)):
      checkpointer.save(state, data_iter, force=True)
    checkpointer.wait()
  return state, history
