"""Metrics vs a straightforward torch re-implementation of AVSBench's utility definitions."""
import numpy as np
import pytest
import torch

from coprop_jax.eval import metrics


# ---- reference (written from AVSBench's definitions: loops, torch ops, no vectorisation) ----
def ref_mask_iou(pred, target, eps=1e-7):
  n = pred.shape[0]
  num_pixels = pred.shape[-1] * pred.shape[-2]
  no_obj = target.sum(2).sum(1) == 0
  p = (torch.sigmoid(pred) > 0.5).int()
  inter = (p * target).sum(2).sum(1)
  union = torch.max(p, target).sum(2).sum(1)
  inter_no = ((1 - target) * (1 - p)).sum(2).sum(1)
  inter[no_obj] = inter_no[no_obj]
  union[no_obj] = num_pixels
  return float(torch.sum(inter / (union + eps)) / n)


def ref_fmeasure(pred, gt, num=255):
  pred = torch.sigmoid(pred)
  beta2 = 0.3
  avg_f, img_num, score = 0.0, 0, torch.zeros(num)
  th = torch.linspace(0, 1 - 1e-10, num)
  for i in range(pred.shape[0]):
    if torch.mean(gt[i].float()) == 0.0:
      continue
    prec, rec = torch.zeros(num), torch.zeros(num)
    for k in range(num):
      y = (pred[i] >= th[k]).float()
      tp = (y * gt[i]).sum()
      prec[k], rec[k] = tp / (y.sum() + 1e-20), tp / (gt[i].sum() + 1e-20)
    f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
    f[f != f] = 0
    avg_f = avg_f + f
    img_num += 1
    score = avg_f / img_num
  return float(score.max())


def ref_avss(output, target, nclass, beta2=0.3):
  predict = torch.argmax(output, 1) + 1
  target = target.float() + 1
  predict = predict.float() * (target > 0).float()
  intersection = predict * (predict == target).float()
  ious, fs, cnt = torch.zeros(nclass), torch.zeros(nclass), torch.zeros(nclass)
  for i in range(target.shape[0]):
    ai = torch.histc(intersection[i], bins=nclass, min=1, max=nclass)
    ap = torch.histc(predict[i], bins=nclass, min=1, max=nclass)
    al = torch.histc(target[i], bins=nclass, min=1, max=nclass)
    au = ap + al - ai
    ious += ai / (2.220446049250313e-16 + au)
    cnt[torch.nonzero(au).squeeze(-1)] += 1
    p, r = ai / ap, ai / al
    f = (1 + beta2) * p * r / (beta2 * p + r)
    f[f != f] = 0
    fs += f
  return ious, fs, cnt


def _cases(rng):
  """Hand-made binary batches: perfect, empty GT (right and wrong), partial, all-empty."""
  h = w = 16
  gt = np.zeros((4, h, w), np.float32)
  gt[0, 2:10, 3:12] = 1
  gt[2, 5:9, 5:9] = 1
  # frame 1: empty GT; frame 3: empty GT
  logits = rng.normal(0, 3, (4, h, w)).astype(np.float32)
  logits[0] = np.where(gt[0] > 0, 5.0, -5.0)        # perfect
  logits[1] = -4.0                                    # empty GT, predicted empty -> J 1
  logits[1, :2, :3] = 4.0                             # ...with 6 FP pixels
  yield logits, gt
  yield logits[1:2], gt[1:2]                          # only empty-GT frame: F = 0
  yield rng.normal(0, 2, (5, h, w)).astype(np.float32), (rng.random((5, h, w)) > 0.6).astype(np.float32)


def test_binary_j_f_match_reference(rng):
  for logits, gt in _cases(rng):
    j = float(metrics.binary_iou_batch(logits, gt))
    f = float(metrics.binary_f_batch(logits, gt))
    assert j == pytest.approx(ref_mask_iou(torch.tensor(logits), torch.tensor(gt)), abs=1e-6)
    assert f == pytest.approx(ref_fmeasure(torch.tensor(logits), torch.tensor(gt)), abs=1e-5)


def test_binary_empty_gt_scores_true_negatives():
  gt = np.zeros((1, 4, 4), np.float32)
  logits = -np.ones((1, 4, 4), np.float32)
  logits[0, 0, 0] = 1.0
  assert float(metrics.binary_iou_batch(logits, gt)) == pytest.approx(15 / 16, abs=1e-6)


def test_binary_valid_mask_drops_frames(rng):
  logits, gt = next(_cases(rng))
  valid = np.array([True, False, True, True])
  keep = valid.nonzero()[0]
  assert float(metrics.binary_iou_batch(logits, gt, valid)) == pytest.approx(
      ref_mask_iou(torch.tensor(logits[keep]), torch.tensor(gt[keep])), abs=1e-6)
  assert float(metrics.binary_f_batch(logits, gt, valid)) == pytest.approx(
      ref_fmeasure(torch.tensor(logits[keep]), torch.tensor(gt[keep])), abs=1e-5)


def test_binary_meter_averages_batches(rng):
  meter = metrics.BinaryMeter()
  refs_j, refs_f = [], []
  for logits, gt in _cases(rng):
    meter.add(logits, gt)
    refs_j.append(ref_mask_iou(torch.tensor(logits), torch.tensor(gt)))
    refs_f.append(ref_fmeasure(torch.tensor(logits), torch.tensor(gt)))
  r = meter.result()
  assert r["J"] == pytest.approx(np.mean(refs_j), abs=1e-6)
  assert r["F"] == pytest.approx(np.mean(refs_f), abs=1e-5)
  assert r["num_batches"] == 3


def test_semantic_matches_reference(rng):
  c, n, h, w = 6, 5, 12, 12
  meter = metrics.SemanticMeter(c)
  tot = [torch.zeros(c) for _ in range(3)]
  for _ in range(3):
    masks = rng.integers(0, 3, (n, h, w)).astype(np.int32)   # classes 3..5 never in GT
    logits = rng.normal(0, 1, (n, h, w, c)).astype(np.float32)
    logits[0] = np.eye(c)[masks[0]] * 10                      # one perfect frame
    meter.add(logits, masks)
    r = ref_avss(torch.tensor(logits).permute(0, 3, 1, 2), torch.tensor(masks), c)
    tot = [a + b for a, b in zip(tot, r)]
  s = metrics.semantic_batch_sums(logits, masks, c)
  np.testing.assert_allclose(np.asarray(s["count"]), r[2].numpy())
  np.testing.assert_allclose(np.asarray(s["iou"]), r[0].numpy(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(s["f"]), r[1].numpy(), rtol=1e-5, atol=1e-6)
  seen = tot[2] > 0
  res = meter.result()
  assert res["mIoU"] == pytest.approx(float((tot[0][seen] / tot[2][seen]).mean()), abs=1e-5)
  assert res["F"] == pytest.approx(float((tot[1][seen] / tot[2][seen]).mean()), abs=1e-5)
  assert res["mIoU_no_bg"] < 1.0


def test_semantic_valid_mask_ignores_padding(rng):
  c = 4
  masks = rng.integers(0, c, (4, 8, 8)).astype(np.int32)
  logits = rng.normal(0, 1, (4, 8, 8, c)).astype(np.float32)
  valid = np.array([True, True, False, False])
  a = metrics.semantic_batch_sums(logits, masks, c, valid)
  b = metrics.semantic_batch_sums(logits[:2], masks[:2], c)
  for k in a:
    np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-6)


def test_shape_errors():
  with pytest.raises(ValueError, match="expected logits and masks"):
    metrics.binary_iou_batch(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
  with pytest.raises(ValueError, match="semantic_areas"):
    metrics.semantic_areas(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4)), 5)


def test_alignment_rate():
  pred = np.array([[1, 0], [1, 1], [0, 0], [0, 1]], bool)
  gt = np.array([[1, 0], [1, 0], [0, 0], [0, 1]], bool)
  assert metrics.alignment_rate(pred, gt) == pytest.approx(0.75)
  assert metrics.alignment_rate(pred, gt, valid=[True, True, False, False]) == pytest.approx(0.5)
  masks = np.zeros((2, 3, 3), int)
  masks[0, 0, 0] = 2
  np.testing.assert_array_equal(metrics.presence_from_masks(masks, 3), [[False, True], [False, False]])
  with pytest.raises(ValueError):
    metrics.alignment_rate(pred, gt[:2])
