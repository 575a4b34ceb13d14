"""Segmentation losses with per-frame weights (frames without GT are masked out).

Binary (S4/MS3): BCE + soft IoU on sigmoid probabilities. Semantic (AVSS): CE + soft Dice over
classes. not in the paper: it names no losses; these are our choice (the usual pairs of AVS
segmentation baselines). Every loss takes `weight` [N] (1 for frames that have GT and are valid, 0 otherwise);
the result is the mean over the weighted frames (0 when no frame has weight).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def frame_weights(gt_valid: Array, frame_valid: Array, control_points: Array | None = None,
                  keyframes_only: bool = False) -> Array:
  """[B, T] bools -> [B, T] float32 weights: gt_valid & frame_valid (& control_points==1)."""
  w = gt_valid.astype(bool) & frame_valid.astype(bool)
  if keyframes_only:
    if control_points is None:
      raise ValueError("frame_weights: keyframes_only needs control_points [B, T]")
    w = w & (control_points == 1)
  return w.astype(jnp.float32)


def _weighted_mean(per_frame: Array, weight: Array) -> Array:
  return jnp.sum(per_frame * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def binary_losses(logits: Array, masks: Array, weight: Array, bce_weight: float = 1.0,
                  iou_weight: float = 1.0, eps: float = 1.0) -> dict[str, Array]:
  """logits: [N, H, W] (or [N, H, W, 1]), masks: [N, H, W] int (>0 = object), weight: [N].

  Soft IoU per frame: 1 - (sum(p*g) + eps) / (sum(p + g - p*g) + eps) (eps=1 smooths empty GT).
  Returns dict(loss, bce, iou).
  """
  if logits.ndim == 4:
    logits = logits[..., 0]
  if logits.shape != masks.shape or weight.shape != masks.shape[:1]:
    raise ValueError(f"binary_losses: logits {logits.shape}, masks {masks.shape}, weight "
                     f"{weight.shape}: expected [N,H,W], [N,H,W], [N]")
  logits = logits.astype(jnp.float32)
  g = (masks > 0).astype(jnp.float32)
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, g), axis=(1, 2))
  p = jax.nn.sigmoid(logits)
  inter = jnp.sum(p * g, axis=(1, 2))
  union = jnp.sum(p + g - p * g, axis=(1, 2))
  iou = 1.0 - (inter + eps) / (union + eps)
  bce, iou = _weighted_mean(bce, weight), _weighted_mean(iou, weight)
  return dict(loss=bce_weight * bce + iou_weight * iou, bce=bce, iou=iou)


def semantic_losses(logits: Array, masks: Array, weight: Array, ce_weight: float = 1.0,
                    dice_weight: float = 1.0, eps: float = 1.0) -> dict[str, Array]:
  """logits: [N, H, W, C], masks: [N, H, W] int in 0..C-1, weight: [N].

  Dice per frame is the mean over all C classes of 1 - (2 sum(p g) + eps) / (sum(p) + sum(g) + eps)
  (soft, over the pixels); with eps = 1 a class absent from both GT and prediction scores ~0 loss.
  Returns dict(loss, ce, dice).
  """
  if logits.ndim != 4 or logits.shape[:3] != masks.shape or weight.shape != masks.shape[:1]:
    raise ValueError(f"semantic_losses: logits {logits.shape}, masks {masks.shape}, weight "
                     f"{weight.shape}: expected [N,H,W,C], [N,H,W], [N]")
  c = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, masks), axis=(1, 2))
  p = jax.nn.softmax(logits, axis=-1)
  g = jax.nn.one_hot(masks, c, dtype=jnp.float32)
  inter = jnp.sum(p * g, axis=(1, 2))
  denom = jnp.sum(p + g, axis=(1, 2))
  dice = 1.0 - jnp.mean((2 * inter + eps) / (denom + eps), axis=-1)
  ce, dice = _weighted_mean(ce, weight), _weighted_mean(dice, weight)
  return dict(loss=ce_weight * ce + dice_weight * dice, ce=ce, dice=dice)


def segmentation_losses(logits: Array, masks: Array, weight: Array, num_classes: int,
                        w1: float = 1.0, w2: float = 1.0) -> dict[str, Array]:
  """Dispatch: num_classes == 1 -> binary_losses, else semantic_losses."""
  if num_classes == 1:
    return binary_losses(logits, masks, weight, w1, w2)
  return semantic_losses(logits, masks, weight, w1, w2)
