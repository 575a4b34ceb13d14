"""AVSBench-exact segmentation metrics (binary J/F for S4/MS3, per-class mIoU/F for AVSS).

Semantics follow OpenNLPLab/AVSBench's evaluation utilities (REFERENCE.md section 5):

- Binary J: prediction = sigmoid(logit) > 0.5; per frame intersection / (union + 1e-7); a frame
  with empty GT scores true-negative pixels / all pixels. The mean is taken per evaluation batch
  (AVSBench: one video per batch), then averaged over batches.
- Binary F: beta^2 = 0.3; thresholds `linspace(0, 1 - 1e-10, 255)` applied as `prob >= th`;
  precision/recall per frame with eps 1e-20; NaN F -> 0; the F curve is averaged over the frames
  with non-empty GT within the batch and its max taken per batch (0 when the batch has none);
  then averaged over batches. F therefore depends on the batch grouping: report it.
- AVSS: argmax over classes; per frame per-class intersection/prediction/label areas; IoU with
  eps 2.22e-16 and F (beta^2 = 0.3, NaN -> 0) summed over frames; each class divided by the number
  of frames where its union is non-empty; mean over the classes seen (optionally without class 0).

The per-batch functions are jittable (fixed shapes, optional `valid` masks in place of AVSBench's
dropping of frames); the accumulators are host-side helpers that sum per-batch results.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

IOU_EPS = 1e-7
PR_EPS = 1e-20
AVSS_EPS = 2.220446049250313e-16


def _check(logits, masks, name):
  if logits.ndim != 3 or logits.shape != masks.shape:
    raise ValueError(f"{name}: expected logits and masks both [N, H, W], got "
                     f"{tuple(logits.shape)} and {tuple(masks.shape)}")


def binary_iou_per_frame(logits: Array, masks: Array) -> Array:
  """Per-frame AVSBench J. logits: [N, H, W] (pre-sigmoid), masks: [N, H, W] (0/1) -> [N]."""
  _check(logits, masks, "binary_iou_per_frame")
  pred = (jax.nn.sigmoid(logits.astype(jnp.float32)) > 0.5).astype(jnp.float32)
  gt = (masks > 0).astype(jnp.float32)
  inter = jnp.sum(pred * gt, axis=(1, 2))
  union = jnp.sum(jnp.maximum(pred, gt), axis=(1, 2))
  empty = jnp.sum(gt, axis=(1, 2)) == 0
  tn = jnp.sum((1 - pred) * (1 - gt), axis=(1, 2))
  num_pixels = masks.shape[1] * masks.shape[2]
  inter = jnp.where(empty, tn, inter)
  union = jnp.where(empty, float(num_pixels), union)
  return inter / (union + IOU_EPS)


def binary_iou_batch(logits: Array, masks: Array, valid: Optional[Array] = None) -> Array:
  """Mean J over the (valid) frames of one evaluation batch -> scalar.

  `valid`: optional [N] bool; invalid frames are dropped (AVSBench never sees them).
  """
  iou = binary_iou_per_frame(logits, masks)
  if valid is None:
    return jnp.mean(iou)
  v = valid.astype(jnp.float32)
  return jnp.sum(iou * v) / jnp.maximum(jnp.sum(v), 1.0)


def f_thresholds(num: int = 255) -> Array:
  """AVSBench's threshold list `linspace(0, 1 - 1e-10, num)` (float32 like torch)."""
  return jnp.linspace(0.0, 1.0 - 1e-10, num, dtype=jnp.float32)


def binary_f_curve_per_frame(logits: Array, masks: Array, num_thresholds: int = 255,
                             beta2: float = 0.3) -> Array:
  """Per-frame F curve over the thresholds. logits/masks: [N, H, W] -> [N, num_thresholds]."""
  _check(logits, masks, "binary_f_curve_per_frame")
  prob = jax.nn.sigmoid(logits.astype(jnp.float32))
  gt = (masks > 0).astype(jnp.float32)
  th = f_thresholds(num_thresholds)

  def one_threshold(t):
    pred = (prob >= t).astype(jnp.float32)
    tp = jnp.sum(pred * gt, axis=(1, 2))
    prec = tp / (jnp.sum(pred, axis=(1, 2)) + PR_EPS)
    rec = tp / (jnp.sum(gt, axis=(1, 2)) + PR_EPS)
    f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
    return jnp.where(jnp.isnan(f), 0.0, f)

  return jax.lax.map(one_threshold, th).T  # [N, num_thresholds]


def binary_f_batch(logits: Array, masks: Array, valid: Optional[Array] = None,
                   num_thresholds: int = 255, beta2: float = 0.3) -> Array:
  """AVSBench F of one evaluation batch -> scalar: max over thresholds of the F curve averaged
  over the (valid) frames with non-empty GT; 0 when there is none."""
  curve = binary_f_curve_per_frame(logits, masks, num_thresholds, beta2)
  use = jnp.sum(masks > 0, axis=(1, 2)) > 0
  if valid is not None:
    use = use & valid
  n = jnp.sum(use.astype(jnp.float32))
  mean_curve = jnp.sum(curve * use[:, None], axis=0) / jnp.maximum(n, 1.0)
  return jnp.where(n > 0, jnp.max(mean_curve), 0.0)


def semantic_areas(logits: Array, masks: Array, num_classes: int,
                   valid: Optional[Array] = None) -> dict[str, Array]:
  """Per-frame per-class areas for AVSS. logits: [N, H, W, C], masks: [N, H, W] int (0..C-1).

  Returns dict of [N, C] float32 arrays `inter`, `pred`, `label`, `union`, and `valid` [N].
  Like AVSBench, only pixels whose label is in 0..C-1 count (labels < 0 are ignored).
  """
  if logits.ndim != 4 or logits.shape[:3] != masks.shape or logits.shape[-1] != num_classes:
    raise ValueError(f"semantic_areas: expected logits [N, H, W, {num_classes}] and masks [N, H, W],"
                     f" got {tuple(logits.shape)} and {tuple(masks.shape)}")
  pred = jnp.argmax(logits, axis=-1)
  lab_ok = (masks >= 0) & (masks < num_classes)
  onehot = lambda x: jax.nn.one_hot(x, num_classes, dtype=jnp.float32)
  p = onehot(pred) * lab_ok[..., None]
  lab = onehot(jnp.where(lab_ok, masks, -1))
  area_pred = jnp.sum(p, axis=(1, 2))
  area_lab = jnp.sum(lab, axis=(1, 2))
  area_inter = jnp.sum(p * lab, axis=(1, 2))
  if valid is None:
    valid = jnp.ones(masks.shape[:1], bool)
  return dict(inter=area_inter, pred=area_pred, label=area_lab,
              union=area_pred + area_lab - area_inter, valid=valid)


def semantic_batch_sums(logits: Array, masks: Array, num_classes: int,
                        valid: Optional[Array] = None, beta2: float = 0.3) -> dict[str, Array]:
  """Per-class sums over the valid frames of a batch: `iou` [C], `f` [C], `count` [C]."""
  a = semantic_areas(logits, masks, num_classes, valid)
  v = a["valid"].astype(jnp.float32)[:, None]
  iou = a["inter"] / (AVSS_EPS + a["union"])
  prec = a["inter"] / a["pred"]
  rec = a["inter"] / a["label"]
  f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
  f = jnp.where(jnp.isnan(f), 0.0, f)
  return dict(iou=jnp.sum(iou * v, 0), f=jnp.sum(f * v, 0),
              count=jnp.sum((a["union"] > 0) * v, 0))


class BinaryMeter:
  """Host-side accumulator of per-batch binary J and F (mean over batches)."""

  def __init__(self, num_thresholds: int = 255, beta2: float = 0.3):
    self.num_thresholds, self.beta2 = num_thresholds, beta2
    self.j, self.f = [], []

  def add(self, logits, masks, valid=None) -> None:
    """One evaluation batch: logits/masks [N, H, W] (e.g. one video's frames)."""
    self.j.append(float(binary_iou_batch(jnp.asarray(logits), jnp.asarray(masks),
                                         None if valid is None else jnp.asarray(valid))))
    self.f.append(float(binary_f_batch(jnp.asarray(logits), jnp.asarray(masks),
                                       None if valid is None else jnp.asarray(valid),
                                       self.num_thresholds, self.beta2)))

  def result(self) -> dict[str, float]:
    if not self.j:
      raise ValueError("BinaryMeter.result: no batch was added")
    return dict(J=float(np.mean(self.j)), F=float(np.mean(self.f)), num_batches=len(self.j))


class SemanticMeter:
  """Host-side AVSS accumulator: per-class IoU/F sums and counts over the whole set."""

  def __init__(self, num_classes: int, beta2: float = 0.3):
    self.num_classes, self.beta2 = num_classes, beta2
    self.iou = np.zeros(num_classes)
    self.f = np.zeros(num_classes)
    self.count = np.zeros(num_classes)

  def add(self, logits, masks, valid=None) -> None:
    s = semantic_batch_sums(jnp.asarray(logits), jnp.asarray(masks), self.num_classes,
                            None if valid is None else jnp.asarray(valid), self.beta2)
    self.iou += np.asarray(s["iou"], np.float64)
    self.f += np.asarray(s["f"], np.float64)
    self.count += np.asarray(s["count"], np.float64)

  def result(self) -> dict[str, float]:
    seen = self.count > 0
    if not seen.any():
      raise ValueError("SemanticMeter.result: no class was seen (no valid frame added?)")
    iou = self.iou[seen] / self.count[seen]
    f = self.f[seen] / self.count[seen]
    fg = seen.copy()
    fg[0] = False
    out = dict(mIoU=float(iou.mean()), F=float(f.mean()))
    if fg.any():
      out["mIoU_no_bg"] = float((self.iou[fg] / self.count[fg]).mean())
      out["F_no_bg"] = float((self.f[fg] / self.count[fg]).mean())
    return out


def alignment_rate(pred_present: np.ndarray, gt_present: np.ndarray,
                   valid: Optional[np.ndarray] = None) -> float:
  """Fraction of frames whose predicted set of sounding objects equals the GT's.

  pred_present / gt_present: [N, K] bool (object/class k present in frame n), or [N] bool for the
  binary case (anything sounding). `valid`: optional [N] bool selecting frames to score.
  """
  p, g = np.asarray(pred_present, bool), np.asarray(gt_present, bool)
  if p.shape != g.shape:
    raise ValueError(f"alignment_rate: pred {p.shape} and gt {g.shape} shapes differ")
  if p.ndim == 1:
    p, g = p[:, None], g[:, None]
  match = np.all(p == g, axis=1)
  if valid is not None:
    match = match[np.asarray(valid, bool)]
  if match.size == 0:
    raise ValueError("alignment_rate: no frame to score")
  return float(match.mean())


def presence_from_masks(masks: np.ndarray, num_classes: int, min_pixels: int = 1) -> np.ndarray:
  """[N, H, W] int masks -> [N, num_classes - 1] bool presence of classes 1..C-1 (foreground)."""
  m = np.asarray(masks)
  counts = np.stack([(m == k).sum(axis=(1, 2)) for k in range(1, num_classes)], axis=1)
  return counts >= min_pixels
