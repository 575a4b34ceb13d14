"""Train state, optimizer and the generic update step (shared by every stage's task).

`TrainState` is a pytree: step, params, opt_state, `extra` (non-trainable variable collections,
e.g. ResNet's frozen `batch_stats`), an rng key and `nonfinite_step`. `train_step` turns a task's
loss function `loss_fn(params, extra, batch, rng, step) -> (loss, aux dict)` into one update:

- the loss and the gradient norm are checked on device at EVERY step; a non-finite value skips
  the update (state unchanged, step not advanced) and records the failing step number in
  `nonfinite_step` (0 = every step so far was finite). The trainer reads that scalar on the host
  at log, eval and checkpoint steps, so no checkpoint is ever written from a non-finite state;
- metrics: loss, grad_norm, param_norm, update_norm, lr and the loss function's aux scalars.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
LossFn = Callable[[Any, Any, dict, Array, Array], tuple[Array, dict]]


@flax.struct.dataclass
class TrainState:
  step: Array            # int32 []: updates applied so far
  params: Any
  opt_state: Any
  extra: Any             # non-trainable collections (e.g. {"batch_stats": ...}), constant
  rng: Array             # PRNG key, split once per step (dropout, drop-path, audio shuffles)
  nonfinite_step: Array  # int32 []: first step whose loss/grad norm was not finite, 0 = none
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation, extra: Any = None,
             rng: Optional[Array] = None) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               extra={} if extra is None else extra,
               rng=jax.random.PRNGKey(0) if rng is None else rng,
               nonfinite_step=jnp.zeros((), jnp.int32), tx=tx)


def lr_schedule(tc: Any, total_steps: Optional[int] = None) -> optax.Schedule:
  """Learning rate by step from `config.train`.

  lr_schedule "constant": `lr` at every step (the paper's Adam 1e-4).
  lr_schedule "poly" (aot-benchmark utils/learning.py `adjust_learning_rate`, not in the paper):
    with w = warmup_ratio * total_steps (a float), steps < w warm up linearly from `end_lr` to
    `lr` (end_lr + (lr - end_lr) * step / w), then end_lr + (lr - end_lr) * (1 - i / (n + 1)) **
    poly_power with i = step - w and n = total_steps - w. Needs `total_steps`.
  Fields other than `lr` are read with defaults, so older configs keep a constant rate.
  """
  kind = tc.get("lr_schedule", "constant")
  base = float(tc.lr)
  if kind == "constant":
    return optax.constant_schedule(base)
  if kind != "poly":
    raise ValueError(f"train.lr_schedule: unknown {kind!r}; expected constant or poly")
  if not total_steps or total_steps <= 0:
    raise ValueError("train.lr_schedule='poly' needs the run's total number of steps")
  end, power = float(tc.get("end_lr", 0.0)), float(tc.get("poly_power", 0.9))
  # A float, as aot-benchmark's warm_up_steps = TRAIN_LR_WARM_UP_RATIO * TRAIN_TOTAL_STEPS.
  warm = float(tc.get("warmup_ratio", 0.0)) * total_steps
  n = total_steps - warm

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    up = end + (base - end) * step / max(warm, 1e-9)
    i = jnp.maximum(step - warm, 0.0)
    down = end + (base - end) * jnp.maximum(1.0 - i / (n + 1), 0.0) ** power
    return jnp.where(step < warm, up, down)

  return schedule


def _floor_lr(tc: Any) -> float:
  """The rate that group ratios scale towards: `end_lr` for "poly", 0 for "constant"."""
  return float(tc.get("end_lr", 0.0)) if tc.get("lr_schedule", "constant") == "poly" else 0.0


def group_schedule(tc: Any, ratio: float, total_steps: Optional[int] = None) -> optax.Schedule:
  """The rate of a parameter group with learning-rate `ratio`: floor + ratio * (lr(step) - floor),
  floor = end_lr for "poly" (aot-benchmark's TRAIN_LR_ENCODER_RATIO rule) and 0 for "constant"
  (plainly ratio * lr). ratio 1 is `lr_schedule` itself."""
  base = lr_schedule(tc, total_steps)
  if ratio == 1.0:
    return base
  floor = _floor_lr(tc)
  return lambda step: floor + ratio * (base(step) - floor)


def _base_optimizer(tc: Any, lr: optax.Schedule, decay_mask: Any = None
                    ) -> optax.GradientTransformation:
  name = tc.optimizer
  wd = float(tc.weight_decay)
  if name == "adam":
    return optax.adam(lr) if wd == 0 else optax.chain(optax.add_decayed_weights(wd, decay_mask),
                                                      optax.adam(lr))
  if name == "adamw":
    return optax.adamw(lr, weight_decay=wd, mask=decay_mask)
  if name == "sgd":
    return optax.sgd(lr, momentum=0.9)
  raise ValueError(f"train.optimizer: unknown {name!r}; expected adam, adamw or sgd")


def make_optimizer(tc: Any, trainable: Any = None, *, total_steps: Optional[int] = None,
                   decay_mask: Any = None) -> optax.GradientTransformation:
  """optax transform from `config.train`: optimizer ("adam" | "adamw" | "sgd"), the rate of
  `lr_schedule` (total_steps: the run's length, needed by "poly"), weight_decay, grad_clip
  (global norm over the trained params; <= 0 disables).

  `trainable`: optional pytree with the params' structure (or a prefix of it, e.g.
  {"vggish": False, "backbone": True, ...}) of
    * bools: False leaves are never updated: their updates are zero (no weight decay either)
      and the optimizer keeps no moments for them;
    * or floats, learning-rate ratios per leaf (`group_schedule`): 0 = frozen as False above,
      1 = the schedule itself, e.g. 0.1 for a pretrained encoder. Each distinct ratio is one
      optax group; the gradient is clipped over all trained groups together.
  `decay_mask`: optional pytree of bools (params' structure): weight decay only where True.
  """
  clip = float(tc.grad_clip)
  if trainable is None or all(isinstance(x, bool) for x in jax.tree.leaves(trainable)):
    tx = _base_optimizer(tc, lr_schedule(tc, total_steps), decay_mask)
    tx = optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx
    if trainable is None or all(jax.tree.leaves(trainable)):
      return tx

    def labels(params):
      return jax.tree.map(lambda t, sub: jax.tree.map(lambda _: "train" if t else "frozen", sub),
                          trainable, params)

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)

  ratios = sorted({float(r) for r in jax.tree.leaves(trainable)})
  if ratios[0] < 0:
    raise ValueError(f"learning-rate ratios must be >= 0, got {ratios[0]}")
  name = lambda r: "frozen" if r == 0 else f"lr_x{r:g}"

  def labels(params):
    return jax.tree.map(lambda r, sub: jax.tree.map(lambda _: name(float(r)), sub),
                        trainable, params)

  groups = {name(r): (optax.set_to_zero() if r == 0 else
                      _base_optimizer(tc, group_schedule(tc, r, total_steps), decay_mask))
            for r in ratios}
  tx = optax.multi_transform(groups, labels)
  if clip <= 0:
    return tx
  # Frozen gradients are zeroed first, so the global norm is that of the trained params.
  zero_frozen = optax.multi_transform({name(r): (optax.set_to_zero() if r == 0 else
                                                 optax.identity()) for r in ratios}, labels)
  return optax.chain(zero_frozen, optax.clip_by_global_norm(clip), tx)


def trained_mask(trainable: Any, params: Any) -> Any:
  """`trainable` (None, or a prefix tree of bools / learning-rate ratios, as `make_optimizer`
  takes) -> a bool per leaf of `params`: True where the leaf is trained (ratio > 0)."""
  if trainable is None:
    return jax.tree.map(lambda _: True, params)
  return jax.tree.map(lambda t, sub: jax.tree.map(lambda _: bool(t) if isinstance(t, bool)
                                                  else float(t) > 0, sub), trainable, params)


def value_and_trained_grad(loss_fn: LossFn, params: Any, trainable: Any, *args):
  """((loss, aux), grads) with only the trained leaves of `params` differentiated.

  Frozen leaves (`trainable` False / ratio 0, see `trained_mask`) are closed over as constants,
  so XLA neither computes nor keeps their gradients; their entries in `grads` are zeros (the
  optimizer zeroes frozen updates anyway, so the update is the same as differentiating all)."""
  if trainable is None:
    return jax.value_and_grad(loss_fn, has_aux=True)(params, *args)
  leaves, treedef = jax.tree.flatten(params)
  mask = jax.tree.leaves(trained_mask(trainable, params))
  idx = [i for i, m in enumerate(mask) if m]

  def f(trained, *a):
    full = list(leaves)
    for i, x in zip(idx, trained):
      full[i] = x
    return loss_fn(jax.tree.unflatten(treedef, full), *a)

  out, g = jax.value_and_grad(f, has_aux=True)([leaves[i] for i in idx], *args)
  full = [jnp.zeros_like(x) for x in leaves]
  for i, x in zip(idx, g):
    full[i] = x
  return out, jax.tree.unflatten(treedef, full)


def train_step(state: TrainState, batch: dict, *, loss_fn: LossFn,
               lr_fn: Optional[optax.Schedule] = None, trainable: Any = None
               ) -> tuple[TrainState, dict]:
  """One update. batch: dict of arrays (a task's device batch). Returns (state, metrics).

  `loss_fn(params, extra, batch, rng, step)`: `step` is `state.step` (int32 [], the 0-based
  index of this update), so losses can ramp or switch with training progress.
  `trainable`: the task's `trainable(params)` (None = all): frozen leaves are not
  differentiated (`value_and_trained_grad`); `grad_norm` is the norm over the trained leaves.
  A non-finite loss or gradient norm leaves the state as it was (except `nonfinite_step`)."""
  rng, sub = jax.random.split(state.rng)
  (loss, aux), grads = value_and_trained_grad(loss_fn, state.params, trainable,
                                              state.extra, batch, sub, state.step)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (state.nonfinite_step == 0)
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
  new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
  first_bad = jnp.where(state.nonfinite_step > 0, state.nonfinite_step, state.step + 1)
  new = new.replace(nonfinite_step=jnp.where(ok, state.nonfinite_step, first_bad))
  metrics = dict(aux, loss=loss, grad_norm=grad_norm, param_norm=optax.global_norm(params),
                 update_norm=optax.global_norm(updates))
  if lr_fn is not None:
    metrics["lr"] = jnp.asarray(lr_fn(state.step), jnp.float32)
  return new, metrics


# XLA options that cut CPU compile time ~3-4x (LLVM at -O0, and XLA:CPU's older loop emitters
# instead of the fusion emitters: ~2.4x more, benchmarks/RESULTS.md) at some run-time cost: for
# tiny models in tests and CPU demos (`config.train.fast_compile`), not for real training.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def make_train_step(loss_fn: LossFn, donate: bool = True,
                    compiler_options: Optional[dict] = None,
                    lr_fn: Optional[optax.Schedule] = None, trainable: Any = None) -> Callable:
  """jit(train_step)(state, batch) -> (state, metrics), without explicit shardings (tests,
  benchmarks; the trainer compiles `train_step` itself with the mesh's shardings).
  `trainable`: see `train_step` (None: every parameter differentiated)."""

  def step(state: TrainState, batch: dict):
    return train_step(state, batch, loss_fn=loss_fn, lr_fn=lr_fn, trainable=trainable)

  return jax.jit(step, donate_argnums=(0,) if donate else (), compiler_options=compiler_options)
