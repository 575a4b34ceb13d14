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


def test_thresholds_equal_torch_linspace():
  for k in (255, 100, 10):
    np.testing.assert_array_equal(metrics.f_thresholds_np(k), torch.linspace(0, 1 - 1e-10, k).numpy())


def test_binary_meter_matches_reference(rng):
  """Host path (BinaryMeter: one batch per add) vs the torch reference, case by case."""
  refs_j, refs_f = [], []
  meter = metrics.BinaryMeter()
  for logits, gt in _cases(rng):
    one = metrics.BinaryMeter()
    one.add(logits, gt)
    meter.add(logits, gt)
    refs_j.append(ref_mask_iou(torch.tensor(logits), torch.tensor(gt)))
    refs_f.append(ref_fmeasure(torch.tensor(logits), torch.tensor(gt)))
    assert one.result()["J"] == pytest.approx(refs_j[-1], abs=1e-6)
    assert one.result()["F"] == pytest.approx(refs_f[-1], abs=1e-6)
  r = meter.result()
  assert r["J"] == pytest.approx(np.mean(refs_j), abs=1e-6)
  assert r["F"] == pytest.approx(np.mean(refs_f), abs=1e-6)
  assert r["num_batches"] == 3


def test_binary_jittable_batch_functions(rng):
  """The jittable per-batch functions (one shape, so one compile each) vs the reference."""
  logits, gt = next(_cases(rng))
  for valid in (np.ones(4, bool), np.array([True, False, True, True])):
    keep = valid.nonzero()[0]
    rj = ref_mask_iou(torch.tensor(logits[keep]), torch.tensor(gt[keep]))
    rf = ref_fmeasure(torch.tensor(logits[keep]), torch.tensor(gt[keep]))
    assert float(metrics.binary_iou_batch(logits, gt, valid)) == pytest.approx(rj, abs=1e-6)
    assert float(metrics.binary_f_batch(logits, gt, valid)) == pytest.approx(rf, abs=1e-5)
    probs = torch.sigmoid(torch.tensor(logits)).numpy()
    assert float(metrics.binary_iou_batch_from_probs(probs, gt, valid)) == pytest.approx(rj, abs=1e-6)
    assert float(metrics.binary_f_batch_from_probs(probs, gt, valid)) == pytest.approx(rf, abs=1e-5)
  np.testing.assert_allclose(np.asarray(metrics.binary_f_curve_per_frame(logits, gt)),
                             metrics.binary_f_curves(metrics.sigmoid_np(logits), gt), atol=1e-6)


def test_binary_empty_gt_scores_true_negatives():
  gt = np.zeros((1, 4, 4), np.float32)
  logits = -np.ones((1, 4, 4), np.float32)
  logits[0, 0, 0] = 1.0
  m = metrics.BinaryMeter()
  m.add(logits, gt)
  assert m.result()["J"] == pytest.approx(15 / 16, abs=1e-6)
  assert m.result()["F"] == 0.0                       # no frame with non-empty GT in the batch


def test_binary_valid_mask_drops_frames(rng):
  logits, gt = next(_cases(rng))
  valid = np.array([True, False, True, True])
  keep = valid.nonzero()[0]
  m = metrics.BinaryMeter()
  m.add(logits, gt, valid)
  assert m.result()["J"] == pytest.approx(
      ref_mask_iou(torch.tensor(logits[keep]), torch.tensor(gt[keep])), abs=1e-6)
  assert m.result()["F"] == pytest.approx(
      ref_fmeasure(torch.tensor(logits[keep]), torch.tensor(gt[keep])), abs=1e-6)
  with pytest.raises(ValueError, match="without any valid frame"):
    m.add(logits, gt, np.zeros(4, bool))


def test_semantic_matches_reference(rng):
  c, n, h, w = 6, 5, 12, 12
  meter = metrics.SemanticMeter(c)
  tot = [torch.zeros(c) for _ in range(3)]
  for _ in range(3):
    masks = rng.integers(0, 3, (n, h, w)).astype(np.int32)   # classes 3..5 never in GT
    logits = rng.normal(0, 1, (n, h, w, c)).astype(np.float32)
    logits[0] = np.eye(c)[masks[0]] * 10                      # one perfect frame
    logits[..., c - 1] = -100.0                               # class 5 never anywhere
    masks[1, 0, :3] = -1                                      # ignored pixels
    masks[2, 1, :2] = c + 3                                   # out-of-range labels
    meter.add(logits, masks)
    r = ref_avss(torch.tensor(logits).permute(0, 3, 1, 2), torch.tensor(masks), c)
    tot = [a + b for a, b in zip(tot, r)]
    # The jittable per-batch sums and the host per-frame areas agree with the reference.
    s = metrics.semantic_batch_sums(logits, masks, c)
    np.testing.assert_allclose(np.asarray(s["count"]), r[2].numpy())
    np.testing.assert_allclose(np.asarray(s["iou"]), r[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s["f"]), r[1].numpy(), rtol=1e-5, atol=1e-6)
    fs = metrics.semantic_frame_scores(metrics.semantic_frame_areas(logits.argmax(-1), masks, c))
    np.testing.assert_allclose(fs["iou"].sum(0), r[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(fs["f"].sum(0), r[1].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fs["present"].sum(0), r[2].numpy())
  # AVSBench avss/test.py's final step: nan (0/0) -> 0, mean over ALL classes; noBg = [:-1].
  miou_pc, f_pc = tot[0] / tot[2], tot[1] / tot[2]
  miou_pc[torch.isnan(miou_pc)] = 0
  f_pc[torch.isnan(f_pc)] = 0
  res = meter.result()
  assert res["mIoU"] == pytest.approx(float(torch.mean(miou_pc)), abs=1e-5)
  assert res["F"] == pytest.approx(float(torch.mean(f_pc)), abs=1e-5)
  assert res["mIoU_avsbench_nobg"] == pytest.approx(float(torch.mean(miou_pc[:-1])), abs=1e-5)
  assert res["F_avsbench_nobg"] == pytest.approx(float(torch.mean(f_pc[:-1])), abs=1e-5)
  assert res["mIoU_nobg"] == pytest.approx(float(torch.mean(miou_pc[1:])), abs=1e-5)
  assert res["num_classes_present"] == int((tot[2] > 0).sum()) < c


def test_semantic_hand_computed_absent_classes():
  """C = 4; class 3 never appears, class 2 only as a false positive. Worked out by hand:
  frame A: GT [[0,1],[1,1]], pred [[0,1],[0,1]] -> class 0: inter 1, union 2 (IoU 1/2, P 1/2,
  R 1, F 1.3*.5/1.15); class 1: inter 2, union 3 (IoU 2/3, P 1, R 2/3, F 1.3*(2/3)/(.3+2/3)).
  frame B: GT all 0, pred [[0,0],[0,2]] -> class 0: inter 3, union 4 (IoU 3/4, P 1, R 3/4,
  F 1.3*.75/1.05); class 2: union 1, IoU 0, F 0 (counted once).
  Per class: IoU [(1/2+3/4)/2, 2/3, 0, 0 (absent)], F [(F0A+F0B)/2, F1A, 0, 0]."""
  gt = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
  pred = np.array([[[0, 1], [0, 1]], [[0, 0], [0, 2]]])
  f0a, f0b, f1a = 1.3 * 0.5 / 1.15, 1.3 * 0.75 / 1.05, 1.3 * (2 / 3) / (0.3 + 2 / 3)
  iou_pc = [0.625, 2 / 3, 0.0, 0.0]
  f_pc = [(f0a + f0b) / 2, f1a, 0.0, 0.0]
  m = metrics.SemanticMeter(4)
  m.add_labels(pred[:1], gt[:1])
  m.add(np.eye(4)[pred[1:]] * 3.0, gt[1:])   # the logits path (argmax) on frame B
  r = m.result()
  assert r["mIoU"] == pytest.approx(sum(iou_pc) / 4)                       # 0.3229
  assert r["F"] == pytest.approx(sum(f_pc) / 4)
  assert r["mIoU_avsbench_nobg"] == pytest.approx(sum(iou_pc[:3]) / 3)     # drops class 3
  assert r["F_avsbench_nobg"] == pytest.approx(sum(f_pc[:3]) / 3)
  assert r["mIoU_nobg"] == pytest.approx(sum(iou_pc[1:]) / 3)              # drops class 0
  assert r["F_nobg"] == pytest.approx(sum(f_pc[1:]) / 3)
  assert r["num_classes_present"] == 3
  # The old "mean over classes seen" would read higher: (0.625 + 2/3 + 0) / 3.
  assert r["mIoU"] < (0.625 + 2 / 3) / 3
  np.testing.assert_allclose(m.per_class()["count"], [2, 1, 1, 0])
  with pytest.raises(ValueError, match="0..3"):
    m.add_labels(pred + 4, gt)
  with pytest.raises(ValueError, match="no frame"):
    metrics.SemanticMeter(4).result()


def test_semantic_valid_mask_ignores_padding(rng):
  c = 4
  masks = rng.integers(0, c, (4, 8, 8)).astype(np.int32)
  logits = rng.normal(0, 1, (4, 8, 8, c)).astype(np.float32)
  valid = np.array([True, True, False, False])
  a = metrics.semantic_batch_sums(logits, masks, c, valid)           # jittable path
  fs = metrics.semantic_frame_scores(metrics.semantic_frame_areas(logits[:2].argmax(-1), masks[:2], c))
  np.testing.assert_allclose(np.asarray(a["iou"]), fs["iou"].sum(0), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(a["f"]), fs["f"].sum(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(a["count"]), fs["present"].sum(0))
  m1, m2 = metrics.SemanticMeter(c), metrics.SemanticMeter(c)
  m1.add(logits, masks, valid)
  m2.add(logits[:2], masks[:2])
  assert m1.result() == m2.result() and m1.num_frames == 2


def test_shape_errors():
  with pytest.raises(ValueError, match="expected logits and masks"):
    metrics.binary_iou_batch(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
  with pytest.raises(ValueError, match="semantic_areas"):
    metrics.semantic_areas(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4)), 5)


def test_binary_probability_path(rng):
  """Probabilities give the logits path's figures (prob = sigmoid(logit)); J thresholds prob > 0.5,
  F applies prob >= th exactly like AVSBench does to sigmoid(logits)."""
  for logits, gt in _cases(rng):
    m = metrics.BinaryMeter()
    m.add_probs(torch.sigmoid(torch.tensor(logits)).numpy(), gt)
    assert m.result()["J"] == pytest.approx(
        ref_mask_iou(torch.tensor(logits), torch.tensor(gt)), abs=1e-6)
    assert m.result()["F"] == pytest.approx(
        ref_fmeasure(torch.tensor(logits), torch.tensor(gt)), abs=1e-6)
  # Hand example: prob 0.5 exactly is background for J; GT [[1,1],[0,0]] -> pred [[0,1],[0,1]]:
  # J = 1/3. F over thresholds: th <= 0.2 -> P 2/4, R 1; 0.2 < th <= 0.5 -> P 2/3, R 1;
  # 0.5 < th <= 0.51 -> P 1/2, R 1/2; above -> P 0, R 0 (or F 0). Best: P 2/3, R 1.
  probs = np.array([[[0.5, 0.51], [0.2, 0.9]]], np.float32)
  gt = np.array([[[1, 1], [0, 0]]], np.float32)
  f = lambda p, r: 1.3 * p * r / (0.3 * p + r)
  meter = metrics.BinaryMeter()
  meter.add_probs(probs, gt)
  assert meter.result()["J"] == pytest.approx(1 / 3, abs=1e-6)   # 1 / (3 + 1e-7)
  assert meter.result()["F"] == pytest.approx(max(f(0.5, 1), f(2 / 3, 1), f(0.5, 0.5)), abs=1e-9)
  # A threshold value itself is included (prob >= th): prob == th[200] predicts at k = 200.
  th = metrics.f_thresholds_np(255)
  curve = metrics.binary_f_curves(np.full((1, 1, 2), th[200], np.float32),
                                  np.array([[[1, 0]]]))
  assert curve[0, 200] == pytest.approx(f(0.5, 1)) and curve[0, 201] == 0.0
  with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
    meter.add_probs(probs * 3, gt)


def test_alignment_binary_wrong_object():
  gt = np.zeros((5, 8, 8), int)
  pred = np.zeros((5, 8, 8), int)
  gt[0, :4, :4] = 1; pred[0, 4:, 4:] = 1           # wrong object: both non-empty, IoU 0
  gt[1, :4, :4] = 1; pred[1, :4, :4] = 1           # right object
  gt[2, :4, :4] = 1; pred[2, :4, 1:4] = 1          # IoU 12/16 = 0.75
  pred[3, 0, 0] = 1                                # something where nothing sounds
  # frame 4: both empty -> aligned
  np.testing.assert_array_equal(metrics.aligned_frames_binary(pred, gt, 0.5),
                                [False, True, True, False, True])
  np.testing.assert_array_equal(metrics.aligned_frames_binary(pred, gt, 0.8),
                                [False, True, False, False, True])
  assert metrics.alignment_rate(metrics.aligned_frames_binary(pred, gt, 0.5)) == pytest.approx(0.6)
  assert metrics.alignment_rate([True, False, True], valid=[True, True, False]) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="iou_threshold"):
    metrics.aligned_frames_binary(pred, gt, 0.0)
  with pytest.raises(ValueError, match="no frame"):
    metrics.alignment_rate([True], valid=[False])


def test_alignment_semantic_sets_and_iou():
  h = w = 10
  gt = np.zeros((5, h, w), int)
  pred = np.zeros((5, h, w), int)
  gt[0, :5, :5] = 1; pred[0, :5, :5] = 2            # wrong class at the right place
  gt[1, :5, :5] = 1; pred[1, :5, :5] = 1            # right
  pred[1, 9, 9] = 3                                 # 1-pixel speck: below min_area 0.05 -> ignored
  gt[2, :5, :5] = 1; gt[2, 5:, 5:] = 2              # two sources, one missed
  pred[2, :5, :5] = 1
  gt[3, :5, :5] = 1; pred[3, 5:, 5:] = 1            # same set, wrong place (IoU 0)
  # frame 4: both empty
  np.testing.assert_array_equal(
      metrics.aligned_frames_semantic(pred, gt, 4, iou_threshold=0.5, min_area=0.05),
      [False, True, False, False, True])
  # Without the minimum area the speck makes frame 1 a different set.
  assert not metrics.aligned_frames_semantic(pred, gt, 4, 0.5, 0.0)[1]
  with pytest.raises(ValueError, match="min_area"):
    metrics.aligned_frames_semantic(pred, gt, 4, 0.5, 1.5)
