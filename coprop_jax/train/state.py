"""Train state, optimizer and the generic jitted train step (reused by every stage's trainer).

`TrainState` is a pytree: step, params, opt_state, `extra` (non-trainable variable collections,
e.g. ResNet's frozen `batch_stats`) and an rng key. `make_train_step(loss_fn)` turns a loss
function `loss_fn(params, extra, batch, rng) -> (loss, aux dict)` into a jitted step that donates
the old state and returns (new_state, metrics) with loss, grad_norm and the aux entries.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any
  extra: Any
  rng: Array
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation, extra: Any = None,
             rng: Optional[Array] = None) -> "TrainState":
    return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
               extra={} if extra is None else extra,
               rng=jax.random.PRNGKey(0) if rng is None else rng, tx=tx)

  def apply_gradients(self, grads: Any) -> "TrainState":
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


def make_optimizer(tc: Any, frozen: Sequence[str] = ()) -> optax.GradientTransformation:
  """optax transform from `config.train`: optimizer ("adam" | "adamw" | "sgd"), lr,
  weight_decay, optional grad_clip (global norm; <= 0 disables).

  `frozen`: top-level parameter names (e.g. "vggish") that are never updated: their updates are
  zero (no weight decay either) and the optimizer keeps no moments for them."""
  name = tc.get("optimizer", "adam")
  lr = float(tc.get("lr", 1e-4))
  wd = float(tc.get("weight_decay", 0.0))
  if name == "adam":
    tx = optax.adam(lr) if wd == 0 else optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))
  elif name == "adamw":
    tx = optax.adamw(lr, weight_decay=wd)
  elif name == "sgd":
    tx = optax.sgd(lr, momentum=0.9)
  else:
    raise ValueError(f"train.optimizer: unknown {name!r}; expected adam, adamw or sgd")
  clip = float(tc.get("grad_clip", 0.0))
  tx = optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx
  if not frozen:
    return tx
  frozen = tuple(frozen)

  def labels(params):
    return {k: jax.tree.map(lambda _: "frozen" if k in frozen else "train", v)
            for k, v in params.items()}

  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# XLA options that cut CPU compile time ~3-4x (LLVM at -O0) at some run-time cost: for tiny
# models in tests and CPU demos (`config.train.fast_compile`), not for real training.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

LossFn = Callable[[Any, Any, dict, Array], tuple[Array, dict]]


def make_train_step(loss_fn: LossFn, donate: bool = True,
                    compiler_options: Optional[dict] = None) -> Callable:
  """jit(step)(state, batch) -> (state, metrics). metrics: loss, grad_norm, aux scalars.

  `compiler_options`: XLA options for this step, e.g. `FAST_COMPILE` for tiny CPU runs/tests."""

  def step(state: TrainState, batch: dict):
    rng, sub = jax.random.split(state.rng)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.extra, batch, sub)
    new = state.apply_gradients(grads).replace(rng=rng)
    metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads))
    return new, metrics

  return jax.jit(step, donate_argnums=(0,) if donate else (), compiler_options=compiler_options)
