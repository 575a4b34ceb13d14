"""AVSBench-exact segmentation metrics (binary J/F for S4/MS3, per-class mIoU/F for AVSS) and the
paper's Alignment Rate.

Semantics follow OpenNLPLab/AVSBench's evaluation code (REFERENCE.md section 5):

- Binary J: prediction = sigmoid(logit) > 0.5 (or, on the probability path, prob > 0.5); per
  frame intersection / (union + 1e-7); a frame with empty GT scores true-negative pixels / all
  pixels. The mean is taken per evaluation batch (AVSBench: one video per batch), then averaged
  over batches.
- Binary F: beta^2 = 0.3; thresholds `linspace(0, 1 - 1e-10, 255)` applied as `prob >= th` (prob =
  sigmoid(logit), or the given foreground probability); precision/recall per frame with eps
  1e-20; NaN F -> 0; the F curve is averaged over the frames with non-empty GT within the batch
  and its max taken per batch (0 when the batch has none); then averaged over batches. F
  therefore depends on the batch grouping: report it.
- AVSS (avss/test.py + utils/compute_color_metrics.py): argmax over classes; per frame and class
  the intersection / prediction / label areas (a pixel counts for the prediction when its label is
  >= 0, for the label when it is in 0..C-1); per-class IoU (eps 2.22e-16) and F (beta^2 = 0.3,
  NaN -> 0) summed over all frames of the split; each class's count is the number of frames where
  its union is non-empty. Per-class mean = sum / count with 0/0 -> 0 (a class never present counts
  0), and mIoU / F are the mean over ALL classes. See `SemanticMeter.result` for the two
  "no background" figures.
- Alignment Rate (paper section 4.1: "the proportion of predicted video frames where the
  identified object aligns with the ground truth"): see `aligned_frames_binary` /
  `aligned_frames_semantic`; `alignment_rate` is the fraction of scored frames that align.

The per-batch functions are jittable (fixed shapes, optional `valid` masks in place of AVSBench's
dropping of frames); the meters are host-side accumulators.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_jit_f = functools.partial(jax.jit, static_argnames=("num_thresholds", "beta2"))

IOU_EPS = 1e-7
PR_EPS = 1e-20
AVSS_EPS = 2.220446049250313e-16


def _check(scores, masks, name, what="logits"):
  if scores.ndim != 3 or scores.shape != masks.shape:
    raise ValueError(f"{name}: expected {what} and masks both [N, H, W], got "
                     f"{tuple(scores.shape)} and {tuple(masks.shape)}")


def check_probs(probs, name: str = "probs") -> np.ndarray:
  """Host-side check that `probs` are probabilities (finite, in [0, 1]); returns them as numpy."""
  p = np.asarray(probs)
  if not np.issubdtype(p.dtype, np.floating):
    raise ValueError(f"{name}: expected float foreground probabilities, got dtype {p.dtype}")
  if p.size and (not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1):
    raise ValueError(f"{name}: values must be finite probabilities in [0, 1], got range "
                     f"[{np.nanmin(p):.4g}, {np.nanmax(p):.4g}] (logits? use the logits path)")
  return p


# ----------------------------------------------------------------------------- binary J


def _iou_of_pred(pred: Array, masks: Array) -> Array:
  """pred: [N, H, W] float 0/1, masks: [N, H, W] (GT > 0 is foreground) -> [N] AVSBench J."""
  gt = (masks > 0).astype(jnp.float32)
  inter = jnp.sum(pred * gt, axis=(1, 2))
  union = jnp.sum(jnp.maximum(pred, gt), axis=(1, 2))
  empty = jnp.sum(gt, axis=(1, 2)) == 0
  tn = jnp.sum((1 - pred) * (1 - gt), axis=(1, 2))
  num_pixels = masks.shape[1] * masks.shape[2]
  inter = jnp.where(empty, tn, inter)
  union = jnp.where(empty, float(num_pixels), union)
  return inter / (union + IOU_EPS)


@jax.jit
def binary_iou_per_frame(logits: Array, masks: Array) -> Array:
  """Per-frame AVSBench J. logits: [N, H, W] (pre-sigmoid), masks: [N, H, W] (0/1) -> [N]."""
  _check(logits, masks, "binary_iou_per_frame")
  pred = (jax.nn.sigmoid(logits.astype(jnp.float32)) > 0.5).astype(jnp.float32)
  return _iou_of_pred(pred, masks)


@jax.jit
def binary_iou_per_frame_from_probs(probs: Array, masks: Array) -> Array:
  """Per-frame AVSBench J from foreground probabilities. probs: [N, H, W] in [0, 1] (prediction =
  prob > 0.5, as AVSBench's sigmoid(logit) > 0.5), masks: [N, H, W] -> [N]."""
  _check(probs, masks, "binary_iou_per_frame_from_probs", "probs")
  return _iou_of_pred((probs.astype(jnp.float32) > 0.5).astype(jnp.float32), masks)


def _mean_valid(x: Array, valid: Optional[Array]) -> Array:
  if valid is None:
    return jnp.mean(x)
  v = valid.astype(jnp.float32)
  return jnp.sum(x * v) / jnp.maximum(jnp.sum(v), 1.0)


@jax.jit
def binary_iou_batch(logits: Array, masks: Array, valid: Optional[Array] = None) -> Array:
  """Mean J over the (valid) frames of one evaluation batch -> scalar.

  `valid`: optional [N] bool; invalid frames are dropped (AVSBench never sees them).
  """
  return _mean_valid(binary_iou_per_frame(logits, masks), valid)


@jax.jit
def binary_iou_batch_from_probs(probs: Array, masks: Array, valid: Optional[Array] = None) -> Array:
  """`binary_iou_batch` on foreground probabilities [N, H, W] instead of logits."""
  return _mean_valid(binary_iou_per_frame_from_probs(probs, masks), valid)


# ----------------------------------------------------------------------------- binary F


def f_thresholds_np(num: int = 255) -> np.ndarray:
  """AVSBench's threshold list `torch.linspace(0, 1 - 1e-10, num)` bit for bit (float32 [num]).

  torch (CPU) computes it in float32 as `start + step * i` below the halfway index and
  `end - step * (num - 1 - i)` above it, with `end` = float32(1 - 1e-10) = 1.0, step =
  float32(end / (num - 1)) and each product-sum rounded once; numpy's own linspace differs from
  it in ~10 of the 255 values (by one float32 ulp).
  """
  if num < 2:
    raise ValueError(f"num_thresholds must be >= 2, got {num}")
  end = np.float32(1 - 1e-10)
  step = np.float64(np.float32(end / np.float32(num - 1)))
  i = np.arange(num, dtype=np.float64)
  return np.where(i < num // 2, step * i, np.float64(end) - step * (num - 1 - i)).astype(np.float32)


def f_thresholds(num: int = 255) -> Array:
  """`f_thresholds_np` as a jax array."""
  return jnp.asarray(f_thresholds_np(num))


def _f_curve_of_prob(prob: Array, masks: Array, num_thresholds: int, beta2: float) -> Array:
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


@_jit_f
def binary_f_curve_per_frame(logits: Array, masks: Array, num_thresholds: int = 255,
                             beta2: float = 0.3) -> Array:
  """Per-frame F curve over the thresholds. logits/masks: [N, H, W] -> [N, num_thresholds]."""
  _check(logits, masks, "binary_f_curve_per_frame")
  return _f_curve_of_prob(jax.nn.sigmoid(logits.astype(jnp.float32)), masks, num_thresholds, beta2)


@_jit_f
def binary_f_curve_per_frame_from_probs(probs: Array, masks: Array, num_thresholds: int = 255,
                                        beta2: float = 0.3) -> Array:
  """Per-frame F curve from foreground probabilities [N, H, W] (`prob >= th`, exactly as AVSBench
  applies its thresholds to sigmoid(logits)) -> [N, num_thresholds]."""
  _check(probs, masks, "binary_f_curve_per_frame_from_probs", "probs")
  return _f_curve_of_prob(probs.astype(jnp.float32), masks, num_thresholds, beta2)


def _f_of_curve(curve: Array, masks: Array, valid: Optional[Array]) -> Array:
  use = jnp.sum(masks > 0, axis=(1, 2)) > 0
  if valid is not None:
    use = use & valid
  n = jnp.sum(use.astype(jnp.float32))
  mean_curve = jnp.sum(curve * use[:, None], axis=0) / jnp.maximum(n, 1.0)
  return jnp.where(n > 0, jnp.max(mean_curve), 0.0)


@_jit_f
def binary_f_batch(logits: Array, masks: Array, valid: Optional[Array] = None,
                   num_thresholds: int = 255, beta2: float = 0.3) -> Array:
  """AVSBench F of one evaluation batch -> scalar: max over thresholds of the F curve averaged
  over the (valid) frames with non-empty GT; 0 when there is none."""
  return _f_of_curve(binary_f_curve_per_frame(logits, masks, num_thresholds, beta2), masks, valid)


@_jit_f
def binary_f_batch_from_probs(probs: Array, masks: Array, valid: Optional[Array] = None,
                              num_thresholds: int = 255, beta2: float = 0.3) -> Array:
  """`binary_f_batch` on foreground probabilities [N, H, W] instead of logits."""
  return _f_of_curve(binary_f_curve_per_frame_from_probs(probs, masks, num_thresholds, beta2),
                     masks, valid)


def f_from_curves(curves: np.ndarray, gt_nonempty: np.ndarray) -> float:
  """Host version of the batch rule: curves [N, K] (per-frame F curves), gt_nonempty [N] bool ->
  max over thresholds of the mean curve of the frames with non-empty GT; 0.0 when there is none."""
  c = np.asarray(curves, np.float64)
  use = np.asarray(gt_nonempty, bool)
  if not use.any():
    return 0.0
  return float(c[use].mean(axis=0).max())


# ----------------------------------------------------------------------------- host (numpy)
# The meters and the report run on the host after the network: numpy, no compile per shape.


def sigmoid_np(logits) -> np.ndarray:
  """float32 sigmoid of host logits (the logits path's probabilities)."""
  x = np.asarray(logits, np.float32)
  with np.errstate(over="ignore"):
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def binary_iou_frames(pred, masks) -> np.ndarray:
  """Host per-frame AVSBench J. pred: [N, H, W] bool (the predicted foreground, e.g. prob > 0.5),
  masks: [N, H, W] (GT > 0 is foreground) -> [N] float64."""
  p, g = np.asarray(pred, bool), np.asarray(masks) > 0
  if p.ndim != 3 or p.shape != g.shape:
    raise ValueError(f"binary_iou_frames: expected pred and masks both [N, H, W], got "
                     f"{p.shape} and {g.shape}")
  inter = np.logical_and(p, g).sum(axis=(1, 2)).astype(np.float64)
  union = np.logical_or(p, g).sum(axis=(1, 2)).astype(np.float64)
  empty = g.sum(axis=(1, 2)) == 0
  tn = np.logical_and(~p, ~g).sum(axis=(1, 2))
  inter = np.where(empty, tn, inter)
  union = np.where(empty, float(p.shape[1] * p.shape[2]), union)
  return inter / (union + IOU_EPS)


def binary_f_curves(probs, masks, num_thresholds: int = 255, beta2: float = 0.3) -> np.ndarray:
  """Host per-frame F curves. probs: [N, H, W] foreground probabilities, masks: [N, H, W] ->
  [N, num_thresholds] float64; pixel predicted at threshold k iff prob >= f_thresholds_np[k]."""
  pr, g = np.asarray(probs, np.float32), np.asarray(masks) > 0
  if pr.ndim != 3 or pr.shape != g.shape:
    raise ValueError(f"binary_f_curves: expected probs and masks both [N, H, W], got "
                     f"{pr.shape} and {g.shape}")
  th = f_thresholds_np(num_thresholds)
  k = num_thresholds
  out = np.zeros((pr.shape[0], k), np.float64)
  for i in range(pr.shape[0]):
    # Number of thresholds <= prob: the pixel is predicted at thresholds 0..idx-1.
    idx = np.searchsorted(th, pr[i].ravel(), side="right")
    gi = g[i].ravel()
    pred_cnt = np.cumsum(np.bincount(idx, minlength=k + 1)[::-1])[::-1][1:]
    tp = np.cumsum(np.bincount(idx[gi], minlength=k + 1)[::-1])[::-1][1:]
    prec = tp / (pred_cnt + PR_EPS)
    rec = tp / (gi.sum() + PR_EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
      f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
    out[i] = np.where(np.isnan(f), 0.0, f)
  return out


# ----------------------------------------------------------------------------- AVSS (semantic)


def semantic_areas(logits: Array, masks: Array, num_classes: int,
                   valid: Optional[Array] = None) -> dict[str, Array]:
  """Per-frame per-class areas for AVSS (jittable). logits: [N, H, W, C], masks: [N, H, W] int.

  Returns dict of [N, C] float32 arrays `inter`, `pred`, `label`, `union`, and `valid` [N].
  As AVSBench: a pixel counts for the prediction where its label is >= 0 (negative labels are
  ignored) and for the label where the label is in 0..C-1.
  """
  if logits.ndim != 4 or logits.shape[:3] != masks.shape or logits.shape[-1] != num_classes:
    raise ValueError(f"semantic_areas: expected logits [N, H, W, {num_classes}] and masks [N, H, W],"
                     f" got {tuple(logits.shape)} and {tuple(masks.shape)}")
  pred = jnp.argmax(logits, axis=-1)
  onehot = lambda x: jax.nn.one_hot(x, num_classes, dtype=jnp.float32)
  p = onehot(pred) * (masks >= 0)[..., None]
  lab = onehot(jnp.where((masks >= 0) & (masks < num_classes), masks, -1))
  area_pred = jnp.sum(p, axis=(1, 2))
  area_lab = jnp.sum(lab, axis=(1, 2))
  area_inter = jnp.sum(p * lab, axis=(1, 2))
  if valid is None:
    valid = jnp.ones(masks.shape[:1], bool)
  return dict(inter=area_inter, pred=area_pred, label=area_lab,
              union=area_pred + area_lab - area_inter, valid=valid)


@functools.partial(jax.jit, static_argnames=("num_classes", "beta2"))
def semantic_batch_sums(logits: Array, masks: Array, num_classes: int,
                        valid: Optional[Array] = None, beta2: float = 0.3) -> dict[str, Array]:
  """Per-class sums over the valid frames of a batch (jittable): `iou` [C], `f` [C], `count` [C]."""
  a = semantic_areas(logits, masks, num_classes, valid)
  v = a["valid"].astype(jnp.float32)[:, None]
  iou, f = _semantic_iou_f(a["inter"], a["pred"], a["label"], a["union"], beta2, jnp)
  return dict(iou=jnp.sum(iou * v, 0), f=jnp.sum(f * v, 0),
              count=jnp.sum((a["union"] > 0) * v, 0))


def _semantic_iou_f(inter, pred, label, union, beta2, xp):
  iou = inter / (AVSS_EPS + union)
  with np.errstate(divide="ignore", invalid="ignore"):
    prec = inter / pred
    rec = inter / label
    f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
  return iou, xp.where(xp.isnan(f), 0.0, f)


def semantic_frame_areas(pred: np.ndarray, masks: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
  """Host (numpy) per-frame per-class areas from predicted class ids.

  pred: [N, H, W] int class ids in 0..C-1 (e.g. argmax of the logits, or the pipeline's AVSS
  masks); masks: [N, H, W] int GT. Returns `inter`, `pred`, `label`, `union`: [N, C] float64,
  with AVSBench's pixel rules (see `semantic_areas`).
  """
  p, m = np.asarray(pred), np.asarray(masks)
  if p.ndim != 3 or p.shape != m.shape:
    raise ValueError(f"semantic_frame_areas: expected pred and masks both [N, H, W], got "
                     f"{p.shape} and {m.shape}")
  if p.size and (p.min() < 0 or p.max() >= num_classes):
    raise ValueError(f"semantic_frame_areas: predicted class ids must lie in 0..{num_classes - 1}, "
                     f"got range [{p.min()}, {p.max()}]")
  n, c = p.shape[0], num_classes
  out = {k: np.zeros((n, c), np.float64) for k in ("inter", "pred", "label")}
  for i in range(n):
    pi, mi = p[i].ravel().astype(np.int64), m[i].ravel().astype(np.int64)
    scored = mi >= 0
    lab_ok = scored & (mi < c)
    out["pred"][i] = np.bincount(pi[scored], minlength=c)[:c]
    out["label"][i] = np.bincount(mi[lab_ok], minlength=c)[:c]
    out["inter"][i] = np.bincount(pi[lab_ok & (pi == mi)], minlength=c)[:c]
  out["union"] = out["pred"] + out["label"] - out["inter"]
  return out


def semantic_frame_scores(areas: dict[str, np.ndarray], beta2: float = 0.3) -> dict[str, np.ndarray]:
  """Per-frame per-class `iou`, `f` and `present` (union non-empty) [N, C] from
  `semantic_frame_areas`; summing them over frames gives AVSBench's split sums and counts."""
  iou, f = _semantic_iou_f(areas["inter"], areas["pred"], areas["label"], areas["union"], beta2, np)
  return dict(iou=iou, f=f, present=areas["union"] > 0)


def semantic_result(iou_sum: np.ndarray, f_sum: np.ndarray, count: np.ndarray) -> dict[str, float]:
  """AVSBench avss/test.py's final figures from per-class sums [C] and counts [C].

  Per-class mean = sum / count with 0/0 -> 0 (classes never present count 0).
    mIoU, F: mean over ALL C classes (AVSBench's `miou`, `F_score`).
    mIoU_avsbench_nobg, F_avsbench_nobg: mean over classes [:-1], i.e. dropping the LAST class
      index, exactly AVSBench's `miou_noBg` / `F_score_noBg` (which, with background at index 0,
      do not drop the background).
    mIoU_nobg, F_nobg: a true no-background mean, over classes 1..C-1 (index 0 dropped).
    num_classes_present: classes with a non-zero count.
  """
  cnt = np.asarray(count, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(cnt > 0, np.asarray(iou_sum, np.float64) / cnt, 0.0)
    f = np.where(cnt > 0, np.asarray(f_sum, np.float64) / cnt, 0.0)
  out = dict(mIoU=float(iou.mean()), F=float(f.mean()),
             mIoU_avsbench_nobg=float(iou[:-1].mean()) if len(iou) > 1 else float("nan"),
             F_avsbench_nobg=float(f[:-1].mean()) if len(f) > 1 else float("nan"),
             mIoU_nobg=float(iou[1:].mean()) if len(iou) > 1 else float("nan"),
             F_nobg=float(f[1:].mean()) if len(f) > 1 else float("nan"),
             num_classes_present=int((cnt > 0).sum()))
  return out


# ----------------------------------------------------------------------------- meters


class BinaryMeter:
  """Host-side accumulator of per-batch binary J and F (mean over batches; numpy, no compile)."""

  def __init__(self, num_thresholds: int = 255, beta2: float = 0.3):
    self.num_thresholds, self.beta2 = num_thresholds, beta2
    self.j, self.f = [], []

  def add(self, logits, masks, valid=None) -> None:
    """One evaluation batch: logits/masks [N, H, W] (e.g. one video's frames)."""
    lg = np.asarray(logits, np.float32)
    self._add(sigmoid_np(lg) > 0.5, sigmoid_np(lg), masks, valid)

  def add_probs(self, probs, masks, valid=None) -> None:
    """One evaluation batch of foreground probabilities [N, H, W] in [0, 1] and masks [N, H, W]."""
    p = check_probs(probs, "BinaryMeter.add_probs").astype(np.float32)
    self._add(p > 0.5, p, masks, valid)

  def _add(self, pred, probs, masks, valid):
    masks = np.asarray(masks)
    if valid is not None:
      v = np.asarray(valid, bool)
      pred, probs, masks = pred[v], probs[v], masks[v]
    if masks.shape[0] == 0:
      raise ValueError("BinaryMeter: a batch without any valid frame")
    self.j.append(float(binary_iou_frames(pred, masks).mean()))
    curves = binary_f_curves(probs, masks, self.num_thresholds, self.beta2)
    self.f.append(f_from_curves(curves, (masks > 0).any(axis=(1, 2))))

  def result(self) -> dict[str, float]:
    if not self.j:
      raise ValueError("BinaryMeter.result: no batch was added")
    return dict(J=float(np.mean(self.j)), F=float(np.mean(self.f)), num_batches=len(self.j))


class SemanticMeter:
  """Host-side AVSS accumulator: per-class IoU/F sums and counts over the whole split.

  `result()` gives AVSBench's figures (see `semantic_result`): absent classes count 0 and the
  mean is over all classes.
  """

  def __init__(self, num_classes: int, beta2: float = 0.3):
    self.num_classes, self.beta2 = num_classes, beta2
    self.iou = np.zeros(num_classes)
    self.f = np.zeros(num_classes)
    self.count = np.zeros(num_classes)
    self.num_frames = 0

  def add(self, logits, masks, valid=None) -> None:
    """logits [N, H, W, C] (argmax taken, as AVSBench), masks [N, H, W], valid [N] bool."""
    lg = np.asarray(logits)
    if lg.ndim != 4 or lg.shape[-1] != self.num_classes:
      raise ValueError(f"SemanticMeter.add: expected logits [N, H, W, {self.num_classes}], got "
                       f"{lg.shape}")
    self.add_labels(np.argmax(lg, axis=-1), masks, valid)

  def add_labels(self, pred, masks, valid=None) -> None:
    """pred [N, H, W] predicted class ids, masks [N, H, W], valid [N] bool."""
    pred, masks = np.asarray(pred), np.asarray(masks)
    if valid is not None:
      v = np.asarray(valid, bool)
      pred, masks = pred[v], masks[v]
    s = semantic_frame_scores(semantic_frame_areas(pred, masks, self.num_classes), self.beta2)
    self.iou += s["iou"].sum(0)
    self.f += s["f"].sum(0)
    self.count += s["present"].sum(0)
    self.num_frames += pred.shape[0]

  def per_class(self) -> dict[str, np.ndarray]:
    """Per-class `iou`, `f` (sum / count, 0 where count is 0) and `count`, each [C]."""
    with np.errstate(divide="ignore", invalid="ignore"):
      return dict(iou=np.where(self.count > 0, self.iou / self.count, 0.0),
                  f=np.where(self.count > 0, self.f / self.count, 0.0), count=self.count.copy())

  def result(self) -> dict[str, float]:
    if self.num_frames == 0:
      raise ValueError("SemanticMeter.result: no frame was added")
    return semantic_result(self.iou, self.f, self.count)


# ----------------------------------------------------------------------------- Alignment Rate


def aligned_frames_binary(pred: np.ndarray, gt: np.ndarray, iou_threshold: float) -> np.ndarray:
  """Per-frame alignment for binary masks: pred/gt [N, H, W] (> 0 is foreground) -> [N] bool.

  A frame aligns when prediction and GT are both empty, or when the IoU of the predicted
  foreground with the GT foreground is >= iou_threshold (so segmenting a wrong object, or
  something where nothing sounds, does not align).
  """
  # not in the paper: the paper defines the Alignment Rate only in words; this IoU rule is ours.
  p, g = np.asarray(pred) > 0, np.asarray(gt) > 0
  if p.ndim != 3 or p.shape != g.shape:
    raise ValueError(f"aligned_frames_binary: expected pred and gt both [N, H, W], got "
                     f"{p.shape} and {g.shape}")
  if not 0.0 < iou_threshold <= 1.0:
    raise ValueError(f"alignment iou_threshold must be in (0, 1], got {iou_threshold}")
  inter = np.logical_and(p, g).sum(axis=(1, 2))
  union = np.logical_or(p, g).sum(axis=(1, 2))
  both_empty = union == 0
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(both_empty, 1.0, inter / np.maximum(union, 1))
  return both_empty | (iou >= iou_threshold)


def aligned_frames_semantic(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                            iou_threshold: float, min_area: float) -> np.ndarray:
  """Per-frame alignment for class-id masks: pred/gt [N, H, W] int -> [N] bool.

  The frame's sounding set is the set of foreground classes (1..C-1) covering at least
  `min_area` of the frame (a fraction of H*W; and at least one pixel). A frame aligns when the
  predicted set equals the GT set (both empty counts) and every class in it has IoU (pred == k
  vs gt == k over the whole frame) >= iou_threshold.
  """
  # not in the paper: set equality + per-class IoU threshold + minimum area are our definition.
  p, g = np.asarray(pred), np.asarray(gt)
  if p.ndim != 3 or p.shape != g.shape:
    raise ValueError(f"aligned_frames_semantic: expected pred and gt both [N, H, W], got "
                     f"{p.shape} and {g.shape}")
  if not 0.0 < iou_threshold <= 1.0:
    raise ValueError(f"alignment iou_threshold must be in (0, 1], got {iou_threshold}")
  if not 0.0 <= min_area < 1.0:
    raise ValueError(f"alignment min_area must be a fraction of the frame in [0, 1), got {min_area}")
  a = semantic_frame_areas(p, np.where((g >= 0) & (g < num_classes), g, 0), num_classes)
  need = max(1.0, min_area * p.shape[1] * p.shape[2])
  ps, gs = a["pred"][:, 1:] >= need, a["label"][:, 1:] >= need
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(a["union"][:, 1:] > 0, a["inter"][:, 1:] / a["union"][:, 1:], 0.0)
  same = np.all(ps == gs, axis=1)
  good = np.all(~gs | (iou >= iou_threshold), axis=1)
  return same & good


def alignment_rate(aligned: np.ndarray, valid: Optional[np.ndarray] = None) -> float:
  """Fraction of (valid) frames that align. aligned: [N] bool; valid: optional [N] bool."""
  a = np.asarray(aligned, bool)
  if a.ndim != 1:
    raise ValueError(f"alignment_rate: expected aligned [N], got shape {a.shape}")
  if valid is not None:
    v = np.asarray(valid, bool)
    if v.shape != a.shape:
      raise ValueError(f"alignment_rate: valid {v.shape} and aligned {a.shape} shapes differ")
    a = a[v]
  if a.size == 0:
    raise ValueError("alignment_rate: no frame to score")
  return float(a.mean())
