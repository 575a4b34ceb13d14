"""Orbax checkpointing of a TrainState (+ the data iterator position) with async saves.

Each step directory holds item `state` (step, params, opt_state, extra, rng, nonfinite_step as a
StandardSave pytree), item `data_iter` (the iterator's position, when the data source has one:
grain iterators and the toy data's `ClipBatches`), and item `meta` (a JSON dict, e.g. the eval
metrics of a keep-best checkpoint). Saves are asynchronous; `close()` (or `wait()`) before
exiting. Orbax writes each step to a temporary directory and renames it when complete, so a crash
never leaves a half-written checkpoint that `latest_step()` would pick.

Restoring is defensive: the checkpoint's tree is compared with the target first (a missing,
unexpected or mis-shaped parameter is a `CheckpointError` naming the parameter path and both
shapes); a checkpoint that cannot be read (damaged files) is moved aside to
`<directory>.damaged/<step>` with a warning and the previous finalized checkpoint is used.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from coprop_jax.convert.checkpoint_io import CheckpointError
from coprop_jax.train.state import TrainState

STATE_FIELDS = ("step", "params", "opt_state", "extra", "rng", "nonfinite_step")


def state_tree(state: TrainState) -> dict:
  return {k: getattr(state, k) for k in STATE_FIELDS}


class _IteratorState:
  """Adapter that lets grain's per-process checkpoint handler save any iterator whose
  `get_state()` is a JSON-able dict (grain's own iterators, toy_data.ClipBatches). The position is
  snapshotted when the adapter is made (on the training thread), not when the async save runs."""

  def __init__(self, iterator: Any, snapshot: bool):
    self.iterator = iterator
    self.state = iterator.get_state() if snapshot else None

  def get_state(self) -> bytes:
    return json.dumps(self.state).encode()

  def set_state(self, state: bytes) -> None:
    position = json.loads(state.decode())   # unreadable: damaged checkpoint
    try:
      self.iterator.set_state(position)
    except ValueError as e:  # e.g. toy data of another size: the data changed, not damage
      raise CheckpointError(f"data iterator position does not fit this data source: {e}") from e

  def start_prefetch(self) -> None:
    if hasattr(self.iterator, "start_prefetch"):
      self.iterator.start_prefetch()


def _drop_closed_loop_noise() -> None:
  """A failed Orbax read (damaged files) leaves TensorStore callbacks that fire on the closed
  asyncio loop of the failed restore, each printing a 'RuntimeError: Event loop is closed'
  traceback to stderr (dozens, burying the one warning that matters). This idempotent hook,
  installed before restores, drops exactly those; every other unraisable error still reaches
  the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, "_coprop_closed_loop_filter", False):
    return

  def hook(unraisable):
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
      previous(unraisable)

  hook._coprop_closed_loop_filter = True
  sys.unraisablehook = hook


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):   # DictKey, GetAttrKey (namedtuples), SequenceKey
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flatten(tree: Any) -> dict[str, Any]:
  """{"params/Dense_0/kernel": leaf}; namedtuple fields by name, as Orbax's metadata has them."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}


def compare_trees(saved: Any, target: Any, what: str) -> None:
  """Raises CheckpointError naming every parameter path whose presence or shape differs."""
  got = {k: tuple(getattr(v, "shape", np.shape(v))) for k, v in _flatten(saved).items()}
  want = {k: tuple(getattr(v, "shape", np.shape(v))) for k, v in _flatten(target).items()}
  bad = [f"{k}: checkpoint {got[k]} vs model {want[k]}" for k in sorted(set(got) & set(want))
         if got[k] != want[k]]
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  if bad or missing or extra:
    lines = [f"{what} does not fit this model/optimizer (another config or stage?)"]
    if bad:
      lines.append(f"shape mismatches ({len(bad)}): " + "; ".join(bad[:12])
                   + (" ..." if len(bad) > 12 else ""))
    if missing:
      lines.append(f"not in the checkpoint ({len(missing)}): " + ", ".join(missing[:12])
                   + (" ..." if len(missing) > 12 else ""))
    if extra:
      lines.append(f"not in the model ({len(extra)}): " + ", ".join(extra[:12])
                   + (" ..." if len(extra) > 12 else ""))
    raise CheckpointError("; ".join(lines))


class Checkpointer:
  """`ocp.CheckpointManager` for TrainState, with damage fallback and shape checks.

  Args:
    directory: checkpoint root (made absolute).
    keep: number of most recent checkpoints kept (rotation).
    read_only: open an existing checkpoint root (e.g. `train.init_from`): a missing directory is
      a CheckpointError, nothing is created or deleted.
    what: how error messages name this root (e.g. "train.init_from").
  """

  def __init__(self, directory: str, keep: int = 3, read_only: bool = False,
               what: str = "checkpoint directory"):
    self.directory = os.path.abspath(os.path.expanduser(directory))
    self.what, self.read_only = what, read_only
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointError(f"{what} {self.directory}: directory does not exist")
    import grain.python as gp
    opts = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                        enable_async_checkpointing=not read_only,
                                        create=not read_only, read_only=read_only)
    # Handlers named up front, so a fresh process can read the metadata of every item.
    handlers = dict(state=ocp.StandardCheckpointHandler(), data_iter=gp.PyGrainCheckpointHandler(),
                    meta=ocp.JsonCheckpointHandler())
    self.manager = ocp.CheckpointManager(self.directory, options=opts, item_handlers=handlers)

  # ---- saving -------------------------------------------------------------------------------
  def save(self, state: TrainState, data_iter: Any = None, meta: Optional[dict] = None) -> None:
    """Starts an async save of `state` at its step (plus the iterator position and `meta`)."""
    import grain.python as gp
    step = int(jax.device_get(state.step))
    items = dict(state=ocp.args.StandardSave(state_tree(state)))
    if data_iter is not None:
      items["data_iter"] = gp.PyGrainCheckpointSave(_IteratorState(data_iter, snapshot=True))
    if meta is not None:
      items["meta"] = ocp.args.JsonSave(meta)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  # ---- reading ------------------------------------------------------------------------------
  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def _saved_tree(self, step: int) -> Any:
    md = self.manager.item_metadata(step)["state"]
    tree = getattr(md, "tree", md)
    if tree is None:
      raise CheckpointError(f"{self.what} {self.directory} step {step}: holds no 'state' item "
                            "(not a checkpoint of this trainer?)")
    return tree

  def read_meta(self, step: Optional[int] = None) -> Optional[dict]:
    """The `meta` JSON item of a checkpoint (None when it has none)."""
    step = self.latest_step() if step is None else step
    if step is None or not os.path.isdir(os.path.join(self.directory, str(step), "meta")):
      return None
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def _move_aside(self, step: int, err: Exception) -> None:
    dest_root = self.directory + ".damaged"
    os.makedirs(dest_root, exist_ok=True)
    dest = os.path.join(dest_root, str(step))
    n = 1
    while os.path.exists(dest):
      dest, n = os.path.join(dest_root, f"{step}.{n}"), n + 1
    shutil.move(os.path.join(self.directory, str(step)), dest)
    self.manager.reload()
    logging.warning("checkpoint step %d in %s is damaged (%s: %s); moved it to %s and falling "
                    "back to the previous finalized checkpoint", step, self.directory,
                    type(err).__name__, str(err).splitlines()[0][:300], dest)

  def _restore_with_fallback(self, build_args, check, step: Optional[int]):
    _drop_closed_loop_noise()     # before the read: its callbacks can fire before it returns
    steps = [s for s in self.all_steps() if step is None or s <= step]
    if not steps:
      raise CheckpointError(f"{self.what} {self.directory}: no checkpoint found")
    for s in reversed(steps):
      try:
        saved = self._saved_tree(s)
      except CheckpointError:
        raise
      except Exception as e:  # unreadable metadata: damaged
        if self.read_only:
          raise CheckpointError(f"{self.what} {self.directory}: step {s} is not readable "
                                f"({type(e).__name__}: {e})") from e
        self._move_aside(s, e)
        continue
      check(saved, s)             # a mismatch is the caller's config, not damage: raise
      args = build_args(saved, s)
      try:
        return self.manager.restore(s, args=ocp.args.Composite(**args)), s
      except CheckpointError:
        raise
      except Exception as e:
        if self.read_only:
          raise CheckpointError(f"{self.what} {self.directory}: step {s} is not readable "
                                f"({type(e).__name__}: {e})") from e
        self._move_aside(s, e)
    raise CheckpointError(f"{self.what} {self.directory}: every checkpoint is damaged (moved to "
                          f"{self.directory}.damaged)")

  def restore(self, target: TrainState, data_iter: Any = None,
              step: Optional[int] = None) -> TrainState:
    """Restores the newest readable checkpoint (<= `step` if given) into the structure and
    shardings of `target` (a TrainState of arrays or of `jax.ShapeDtypeStruct`s with
    `.sharding`); `data_iter` is put back at the saved position in place."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_tree(target))

    def check(saved, s):
      compare_trees(saved, abstract, f"{self.what} {self.directory} step {s}")

    def build(saved, s):
      import grain.python as gp
      items = dict(state=ocp.args.StandardRestore(abstract))
      if data_iter is not None:
        if not os.path.isdir(os.path.join(self.directory, str(s), "data_iter")):
          raise CheckpointError(f"{self.what} {self.directory} step {s} holds no data iterator "
                                "position, but this run's data source has one (another data "
                                "source?)")
        items["data_iter"] = gp.PyGrainCheckpointRestore(_IteratorState(data_iter, False))
      return items

    out, _ = self._restore_with_fallback(build, check, step)
    st = out["state"]
    return target.replace(**{k: st[k] for k in STATE_FIELDS})

  def check_variables(self, params: Any, extra: Any, step: Optional[int] = None) -> int:
    """Checks, from the metadata only (nothing restored), that the newest checkpoint (<= `step`)
    holds params/extra shaped like `params` / `extra` (arrays or ShapeDtypeStructs); raises
    CheckpointError naming every parameter that differs. Returns the step checked."""
    steps = [s for s in self.all_steps() if step is None or s <= step]
    if not steps:
      raise CheckpointError(f"{self.what} {self.directory}: no checkpoint found")
    saved = self._saved_tree(steps[-1])
    want = dict(params=params, extra=extra)
    compare_trees({k: saved[k] for k in want if k in saved}, want,
                  f"{self.what} {self.directory} step {steps[-1]}")
    return steps[-1]

  def restore_variables(self, params: Any, extra: Any, step: Optional[int] = None,
                        sharding: Any = None) -> tuple[Any, Any, int]:
    """Only params and extra of a checkpoint (e.g. to start a keyframe fine-tune from the
    all-frames run; the optimizer state of that run may differ). `params` / `extra`: targets
    (arrays or ShapeDtypeStructs) whose shapes the checkpoint must match. Returns
    (params, extra, step)."""
    want = dict(params=params, extra=extra)

    def check(saved, s):
      compare_trees({k: saved[k] for k in want if k in saved}, want,
                    f"{self.what} {self.directory} step {s}")

    def build(saved, s):
      def leaf(m):
        return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding)
      return dict(state=ocp.args.StandardRestore(jax.tree.map(leaf, saved)))

    out, s = self._restore_with_fallback(build, check, step)
    return out["state"]["params"], out["state"]["extra"], s

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
