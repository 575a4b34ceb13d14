"""Stage-2 (propagator) training pieces: AOT's losses, the loss function, optimizer helpers.

Losses as aot-benchmark (networks/layers/loss.py, engines/aot_engine.py; REFERENCE.md section 8),
per frame:
  * top-k cross-entropy: per-pixel CE (label 255 ignored: loss 0, still counted in the pixel
    total), the k largest averaged, k = int((r * top_k_percent + (1 - r)) * num_pixels) with
    r = min(1, step / (hard_mining_ratio * total_steps + 1e-5)): all pixels at first, the hardest
    15% from mid-training on;
  * soft Jaccard: Tversky with alpha = beta = 1 on softmax probabilities of the non-ignored
    pixels, 1 - tp / (tp + fp + fn + 1e-6) per class present in the label, averaged over those
    classes (0 when none).
Logits come with the ids above the clip's num_objects already at -1e9 (as AOT's engine masks
them), which equals AOT's slicing of the logits to obj_num + 1 channels.
Frame loss = ce_weight * CE + jaccard_weight * Jaccard (AOT: 0.5 / 0.5), averaged over the
frames with GT that are propagated (keyframes are excluded: their mask is given). AOT also adds
an auxiliary loss on the reference frame that decays to 0; it is not used here (the reference's
mask is an input in Co-Prop).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
IGNORE = 255


def top_k_fraction(step, total_steps: int, top_k_percent: float = 0.15,
                   hard_mining_ratio: float = 0.5) -> Array:
  """Fraction of pixels kept by the top-k CE at `step` (1 at step 0, top_k_percent from
  hard_mining_ratio * total_steps on)."""
  r = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / (hard_mining_ratio * total_steps + 1e-5))
  return r * top_k_percent + (1.0 - r)


def top_k_cross_entropy(logits: Array, labels: Array, fraction) -> Array:
  """logits [N, H, W, C] float32, labels [N, H, W] int (255 ignored), fraction (scalar, traced ok)
  -> [N] mean CE of the int(fraction * H * W) hardest pixels of each frame."""
  n, h, w, c = logits.shape
  valid = labels != IGNORE
  lab = jnp.where(valid, labels, 0).astype(jnp.int32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  ce = -jnp.take_along_axis(logp, lab[..., None], -1)[..., 0]
  ce = jnp.where(valid, ce, 0.0).reshape(n, h * w)
  k = jnp.maximum(jnp.floor(fraction * (h * w)).astype(jnp.int32), 1)
  top = -jnp.sort(-ce, axis=1)  # descending
  keep = jnp.arange(h * w)[None, :] < k
  return jnp.sum(jnp.where(keep, top, 0.0), 1) / k


def soft_jaccard(logits: Array, labels: Array, eps: float = 1e-6) -> Array:
  """logits [N, H, W, C], labels [N, H, W] (255 ignored) -> [N] AOT SoftJaccordLoss."""
  c = logits.shape[-1]
  valid = (labels != IGNORE)[..., None]
  p = jax.nn.softmax(logits.astype(jnp.float32), -1) * valid
  g = jax.nn.one_hot(jnp.where(labels == IGNORE, -1, labels), c, dtype=jnp.float32)
  axes = (1, 2)
  tp = jnp.sum(p * g, axes)
  fp = jnp.sum(p * (1 - g) * valid, axes)
  fn = jnp.sum((1 - p) * g, axes)
  present = jnp.sum(g, axes) > 0
  per_class = 1.0 - tp / (tp + fp + fn + eps)
  count = jnp.sum(present, 1)
  return jnp.where(count > 0, jnp.sum(jnp.where(present, per_class, 0.0), 1) / jnp.maximum(count, 1), 0.0)


def frame_losses(logits: Array, labels: Array, step, total_steps: int, tc: Any) -> dict:
  """Per-frame AOT losses. logits [N,H,W,C], labels [N,H,W]; tc = config.propagator.train.
  Returns dict(loss, ce, jaccard) each [N]."""
  frac = top_k_fraction(step, total_steps, tc.top_k_percent, tc.hard_mining_ratio)
  ce = top_k_cross_entropy(logits, labels, frac)
  jac = soft_jaccard(logits, labels)
  return dict(loss=tc.ce_weight * ce + tc.jaccard_weight * jac, ce=ce, jaccard=jac)


def _weighted_mean(x: Array, w: Array) -> Array:
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def make_loss_fn(config, total_steps: Optional[int] = None, *, encode: Optional[Callable] = None,
                 formulation: str = "batched"):
  """loss_fn(params, extra, batch, rng, step) -> (loss, aux) for stage 2.

  params / extra: `coprop_jax.train.tasks.propagator.split_train_params` of the pipeline params (trainable
  {"propagator", "encoder"}; extra {"encoder": BatchNorm statistics, "vggish"}). batch: host
  vocabulary with masks, gt_valid, frame_valid, control_points (GT-derived), audio. step: the
  optimizer step (traced): drives the top-k ramp and the switch to sequential training at
  int(seq_training_start * total_steps). total_steps: defaults to config.train.num_steps.
  aux: ce, jaccard (weighted means), num_frames, seq_training (0/1), top_k_fraction.
  formulation: see `coprop_jax.train.tasks.propagator.make_train_forward`.
  """
  from coprop_jax.train.tasks.propagator import make_train_forward
  tc = config.propagator.train
  total = int(config.train.num_steps if total_steps is None else total_steps)
  if total <= 0:
    raise ValueError(f"propagator loss: total_steps must be > 0 (config.train.num_steps={total}); "
                     "pass total_steps when training by epochs")
  switch = int(tc.seq_training_start * total)
  forward = make_train_forward(config, encode=encode, formulation=formulation)

  def loss_fn(params, extra, batch, rng, step):
    seq = jnp.asarray(step) >= switch
    out = forward(params, extra, batch, rng, seq)
    lg, tgt, w = out["logits"], out["targets"], out["weights"]
    b, t = w.shape
    per = frame_losses(lg.reshape((b * t,) + lg.shape[2:]), tgt.reshape((b * t,) + tgt.shape[2:]),
                       step, total, tc)
    wf = w.reshape(-1)
    aux = dict(ce=_weighted_mean(per["ce"], wf), jaccard=_weighted_mean(per["jaccard"], wf),
               num_frames=jnp.sum(wf), seq_training=seq.astype(jnp.float32),
               top_k_fraction=top_k_fraction(step, total, tc.top_k_percent, tc.hard_mining_ratio))
    return _weighted_mean(per["loss"], wf), aux

  loss_fn.switch_step = switch
  return loss_fn


# ----------------------------------------------------------------------------- optimizer helpers
def param_labels(params: dict, config) -> dict:
  """Trainable params {"propagator", "encoder"} -> same tree of labels for `optax.multi_transform`:
  "propagator", "encoder" (AOT trains it at 0.1x the lr, TRAIN_LR_ENCODER_RATIO) or "frozen"
  (AOT's frozen encoder stages and BatchNorm affine params: `aot_frozen_mask` with
  config.propagator.train.encoder_freeze_at). Use `optax.set_to_zero()` for "frozen"."""
  pc = config.propagator
  if pc.encoder == "mobilenet_v2":
    from coprop_jax.models.mobilenet_v2 import aot_frozen_mask
  elif pc.encoder == "resnet50":
    from coprop_jax.models.resnet import aot_frozen_mask
  else:
    raise ValueError(f"propagator.encoder: unknown {pc.encoder!r}")
  enc = jax.tree_util.tree_map(lambda f: "frozen" if f else "encoder",
                               aot_frozen_mask(params["encoder"], freeze_at=pc.train.encoder_freeze_at))
  return {"propagator": jax.tree_util.tree_map(lambda _: "propagator", params["propagator"]),
          "encoder": enc}


def freeze_id_bank_after(switch_step: int) -> optax.GradientTransformation:
  """Chain after the optimizer: zero the updates of `patch_wise_id_bank` from update number
  `switch_step` on (AOT's TRAIN_SEQ_TRAINING_FREEZE_PARAMS: the ID bank gets no gradient, so
  no step and no weight decay, in sequential training)."""
  def init(_):
    return {"count": jnp.zeros((), jnp.int32)}

  def update(updates, state, params=None):
    del params
    frozen = state["count"] >= switch_step

    def one(path, u):
      if any(getattr(k, "key", None) == "patch_wise_id_bank" for k in path):
        return jnp.where(frozen, jnp.zeros_like(u), u)
      return u
    return jax.tree_util.tree_map_with_path(one, updates), {"count": state["count"] + 1}

  return optax.GradientTransformation(init, update)
