"""The Task interface: what the generic trainer (`coprop_jax.train.trainer`) needs from a stage.

A task knows its model, loss and metrics; the trainer owns the mesh, the data, the optimizer,
compilation, checkpoints, logging and the loop. `train_and_evaluate` uses a task like this:

  task = tasks.get_task(config)                        # TASKS[config.train.stage](config)
  task.set_total_steps(steps)                          # the run's length, once it is known
  batch = task.prepare_batch(host_batch)               # every training batch, host side (numpy)
  params, extra = task.init_variables(batch, rng)      # traced (eval_shape / jit), fresh runs
  tx = task.make_optimizer(params)                     # default: make_optimizer(config.train,
                                                       #   task.trainable(params), total_steps)
  state, loaded = task.load_pretrained(state)          # fresh runs only (not resume/init_from)
  loss, aux = task.loss_fn(params, extra, batch, rng, step)   # inside the compiled update step
  out = task.predict(params, extra, batch)             # traced (jit) by the trainer for evals
  metrics, images = task.evaluate(predict, eval_batches, num_images)   # host loop

Batches are dicts in the shared vocabulary (DESIGN.md): `frames` [B, T, H, W, 3], `masks`
[B, T, H, W], `gt_valid` / `frame_valid` [B, T], `audio_*`, `control_points` [B, T]. The traced
methods see only the numeric arrays (the trainer drops `video_id`); `evaluate` sees host batches.
Every metric a task reports is "higher is better" (the trainer keeps the best checkpoint by one).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import jax
import numpy as np
import optax

from coprop_jax.images import IMAGENET_MEAN, IMAGENET_STD

Array = jax.Array


class Task:
  """Base class of a training stage. Subclasses set `name` and implement the methods that raise
  NotImplementedError; the others have working defaults.

  Attributes (set by subclasses):
    name: the `config.train.stage` value that selects the task.
    metric_names: eval metrics `evaluate` reports (the valid `eval.best_metric` values).
    default_best_metric: the keep-best metric when `eval.best_metric` is "".
    length_dependent: the loss depends on the run's length (`set_total_steps`), so the length
      may not change on resume.
  """
  name: str = ""
  length_dependent: bool = False
  metric_names: tuple[str, ...] = ()
  default_best_metric: str = ""

  def __init__(self, config: Any):
    self.config = config
    self.total_steps: Optional[int] = None

  def set_total_steps(self, total_steps: int) -> None:
    """Called by the trainer once the run's number of update steps is known (before anything is
    traced): losses that ramp or switch with training progress and decaying learning rates
    need it. Default: stored in `self.total_steps`."""
    self.total_steps = int(total_steps)

  def prepare_batch(self, batch: dict) -> dict:
    """Host-side change of a training batch (numpy in, numpy out; shapes must not change, so
    one compiled step serves every batch). Default: unchanged."""
    return batch

  def init_variables(self, batch: dict, rng: Array) -> tuple[Any, Any]:
    """(params, extra) of a fresh model; traced. `batch`: one (prepared) training batch of
    arrays (only shapes matter). `extra`: non-trainable collections (e.g. batch_stats), {}."""
    raise NotImplementedError

  def trainable(self, params: Any) -> Any:
    """Pytree of bools (the params' structure or a prefix of it): False = frozen (no update, no
    optimizer moments); or of floats, learning-rate ratios (0 = frozen; see
    `state.make_optimizer`). `params` may be abstract (ShapeDtypeStructs). Default: all
    trainable."""
    del params
    return None

  def make_optimizer(self, params: Any) -> optax.GradientTransformation:
    """The optimizer of this stage. `params` may be abstract. Default: `state.make_optimizer`
    from `config.train` with `trainable(params)` and the run's `total_steps`."""
    from coprop_jax.train.state import make_optimizer
    return make_optimizer(self.config.train, self.trainable(params), total_steps=self.total_steps)

  def loss_fn(self, params: Any, extra: Any, batch: dict, rng: Array,
              step: Array) -> tuple[Array, dict[str, Array]]:
    """(scalar loss, dict of scalar aux metrics); traced inside the update step. `rng`: a fresh
    key per step; `step`: int32 [], the 0-based index of the update (for ramps and switches)."""
    raise NotImplementedError

  def load_pretrained(self, state: Any) -> tuple[Any, list[str]]:
    """Puts pretrained weights (config-named files) into a fresh state. Returns (state, list of
    "what <- where" descriptions for the log). Default: nothing to load."""
    return state, []

  def predict(self, params: Any, extra: Any, batch: dict) -> Array:
    """Evaluation forward pass; traced. -> one array that `evaluate` reads (the KPF: logits
    [B, T, H, W, C]; the propagator: foreground probabilities or class ids [B, T, H, W])."""
    raise NotImplementedError

  def evaluate(self, predict: Callable[[dict], np.ndarray], batches: Iterable[dict],
               num_images: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Metrics over `batches` (host batches of the eval split) with `predict(host_batch) ->
    numpy array` (the jitted `predict` on that batch; `evaluate` may change the batch first,
    e.g. its control points). Returns (metrics {name: float} containing `metric_names`, images
    {name: uint8 [H', W', 3]} for the first `num_images` videos)."""
    raise NotImplementedError


# ---- mask pictures for TensorBoard (shared by tasks) ---------------------------------------------

def palette(num_classes: int) -> np.ndarray:
  """[max(num_classes, 2), 3] uint8 colours; class 0 (background) black, class 1 red."""
  rng = np.random.default_rng(0)
  cols = rng.integers(60, 256, (max(num_classes, 2), 3)).astype(np.uint8)
  cols[0] = 0
  cols[1] = (230, 40, 40)
  return cols


def to_uint8_frames(frames: np.ndarray) -> np.ndarray:
  """[..., 3] ImageNet-normalised float (or uint8) frames -> uint8 RGB."""
  if frames.dtype == np.uint8:
    return frames
  x = (frames * IMAGENET_STD + IMAGENET_MEAN) * 255.0
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def mask_panel(frames: np.ndarray, gt: np.ndarray, pred: np.ndarray, num_classes: int,
               alpha: float = 0.5) -> np.ndarray:
  """One picture of a clip: a row per frame, columns frame | GT overlay | prediction overlay.

  frames [T, H, W, 3] (normalised float or uint8), gt / pred [T, H, W] int ids -> uint8
  [T*H, 3*W, 3]. Pixels of id 0 keep the frame; others are blended with their class colour."""
  img = to_uint8_frames(np.asarray(frames)).astype(np.float32)
  cols = palette(num_classes).astype(np.float32)

  def overlay(ids):
    ids = np.clip(np.asarray(ids), 0, len(cols) - 1)
    out = img.copy()
    fg = ids > 0
    out[fg] = (1 - alpha) * img[fg] + alpha * cols[ids[fg]]
    return out

  rows = np.concatenate([img, overlay(gt), overlay(pred)], axis=2)   # [T, H, 3W, 3]
  return np.clip(rows.reshape(-1, rows.shape[2], 3), 0, 255).astype(np.uint8)
