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


def lr_schedule(tc: Any) -> optax.Schedule:
  """Learning rate by step from `config.train` (constant `lr`, as the paper's Adam 1e-4)."""
  return optax.constant_schedule(float(tc.lr))


def make_optimizer(tc: Any, trainable: Any = None) -> optax.GradientTransformation:
  """optax transform from `config.train`: optimizer ("adam" | "adamw" | "sgd"), lr (through
  `lr_schedule`), weight_decay, grad_clip (global norm; <= 0 disables).

  `trainable`: optional pytree of bools with the params' structure (or a prefix of it, e.g.
  {"vggish": False, "backbone": True, ...}); False leaves are never updated: their updates are
  zero (no weight decay either) and the optimizer keeps no moments for them."""
  name = tc.optimizer
  lr = lr_schedule(tc)
  wd = float(tc.weight_decay)
  if name == "adam":
    tx = optax.adam(lr) if wd == 0 else optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))
  elif name == "adamw":
    tx = optax.adamw(lr, weight_decay=wd)
  elif name == "sgd":
    tx = optax.sgd(lr, momentum=0.9)
  else:
    raise ValueError(f"train.optimizer: unknown {name!r}; expected adam, adamw or sgd")
  clip = float(tc.grad_clip)
  tx = optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx
  if trainable is None or all(jax.tree.leaves(trainable)):
    return tx

  def labels(params):
    full = jax.tree.map(lambda t, sub: jax.tree.map(lambda _: "train" if t else "frozen", sub),
                        trainable, params)
    return full

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def train_step(state: TrainState, batch: dict, *, loss_fn: LossFn,
               lr_fn: Optional[optax.Schedule] = None) -> tuple[TrainState, dict]:
  """One update. batch: dict of arrays (a task's device batch). Returns (state, metrics).

  `loss_fn(params, extra, batch, rng, step)`: `step` is `state.step` (int32 [], the 0-based
  index of this update), so losses can ramp or switch with training progress.
  A non-finite loss or gradient norm leaves the state as it was (except `nonfinite_step`)."""
  rng, sub = jax.random.split(state.rng)
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.extra, batch, sub, state.step)
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
                    lr_fn: Optional[optax.Schedule] = None) -> Callable:
  """jit(train_step)(state, batch) -> (state, metrics), without explicit shardings (tests,
  benchmarks; the trainer compiles `train_step` itself with the mesh's shardings)."""

  def step(state: TrainState, batch: dict):
    return train_step(state, batch, loss_fn=loss_fn, lr_fn=lr_fn)

  return jax.jit(step, donate_argnums=(0,) if donate else (), compiler_options=compiler_options)
