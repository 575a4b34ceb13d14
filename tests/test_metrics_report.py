"""Evaluation report: figures on hand-computed videos, subsets (keyframes / normal / MOC), files,
the comparison table and bad input."""
import csv
import io
import json

import numpy as np
import pytest

from coprop_jax.eval import metrics, report


def _box(y0, y1, x0, x1, h=4, w=4):
  m = np.zeros((h, w), np.int32)
  m[y0:y1, x0:x1] = 1
  return m


def _binary_videos():
  """Four 4x4 videos; the expected figures below are worked out by hand in the test."""
  z = np.zeros((4, 4), np.int32)
  a_gt = np.stack([_box(0, 2, 0, 2)] * 3)
  a_pred = np.stack([_box(0, 2, 0, 2), _box(0, 2, 0, 2), _box(2, 4, 2, 4)])  # frame 2: wrong object
  b_pred = np.stack([z, z.copy()])
  b_pred[1, 0, 0] = 1                                                         # FP where nothing sounds
  d_gt = np.stack([_box(0, 2, 0, 2), _box(2, 4, 2, 4)])                       # the source switches
  return [
      dict(video_id="a", gt=a_gt, pred=a_pred, gt_valid=[1, 1, 1], frame_valid=[1, 1, 1],
           is_keyframe=[1, 0, 0]),
      dict(video_id="b", gt=np.stack([z, z]), probs=b_pred * 0.8 + 0.1, gt_valid=[1, 1],
           frame_valid=[1, 1], is_keyframe=[1, 1]),
      dict(video_id="c", gt=np.stack([_box(0, 4, 0, 2), _box(0, 4, 0, 2)]),
           probs=np.stack([_box(0, 4, 0, 1), z]) * 0.7 + 0.2, gt_valid=[1, 0], frame_valid=[1, 1],
           is_keyframe=[1, 0]),
      dict(video_id="d", gt=d_gt, probs=d_gt * 0.9 + 0.05, pred=d_gt, gt_valid=[1, 1],
           frame_valid=[1, 1], is_keyframe=[1, 1]),
  ]


def _add_all(rep, videos):
  for v in videos:
    v = dict(v)
    rep.add_video(v.pop("video_id"), **{k: (np.asarray(x, bool) if k in ("gt_valid", "frame_valid", "is_keyframe") else x)
                                       for k, x in v.items()})


def _f(p, r):
  return 1.3 * p * r / (0.3 * p + r) if p + r else 0.0


def test_binary_report_hand_computed():
  rep = report.EvalReport("binary", alignment_iou=0.5)
  _add_all(rep, _binary_videos())
  s = rep.summary("coprop", {"dataset": "toy", "split": "test"})
  # Per video (J per frame; F = max over thresholds of the mean F curve of non-empty-GT frames;
  # threshold 0 predicts every pixel, the others the mask itself):
  # a: J [1, 1, 0]; F frames [1, 1, 0] at th > 0, all-pixels F(4/16, 1) at th 0.
  # b: J [16/16, 15/16]; no non-empty GT -> F 0. c: scored frame 0 only: J 4/8; F(1, 1/2).
  # d: J [1, 1], F 1 (probabilities 0.95 / 0.05).
  fa_all = max(2 / 3, _f(0.25, 1))
  j = [2 / 3, (1 + 15 / 16) / 2, 0.5, 1.0]
  f = [fa_all, 0.0, max(_f(1, 0.5), _f(0.5, 1)), 1.0]
  al = s["subsets"]["all"]
  assert al["J"] == pytest.approx(np.mean(j), abs=1e-6)
  assert al["F"] == pytest.approx(np.mean(f), abs=1e-6)
  assert al["alignment_rate"] == pytest.approx(6 / 8)        # a: 2/3, b: 1/2, c: 1/1, d: 2/2
  assert (al["num_videos"], al["num_frames"]) == (4, 8)
  # Keyframes (Table 6): a frame 0, b both, c frame 0, d both.
  kf = s["subsets"]["keyframes"]
  assert kf["J"] == pytest.approx(np.mean([1, (1 + 15 / 16) / 2, 0.5, 1]), abs=1e-6)
  assert kf["F"] == pytest.approx(np.mean([1, 0, f[2], 1]), abs=1e-6)
  assert kf["alignment_rate"] == pytest.approx(5 / 6) and kf["num_frames"] == 6
  # Normal frames: only video a has scored ones (c's frame 1 has no GT).
  nf = s["subsets"]["normal"]
  assert (nf["num_videos"], nf["num_frames"]) == (1, 2)
  assert nf["J"] == pytest.approx(0.5, abs=1e-6) and nf["F"] == pytest.approx(max(0.5, _f(0.25, 1)))
  assert nf["alignment_rate"] == 0.5
  # MOC from GT: only d's sounding object changes.
  moc = s["subsets"]["moc"]
  assert moc["num_videos"] == 1 and moc["J"] == pytest.approx(1.0, abs=1e-6) and moc["F"] == 1.0
  assert s["settings"]["moc_source"] == "gt_control_points"
  assert s["f_from"] == "hard masks/probabilities" and s["num_videos"] == 4
  # The subset `all` is AVSBench's one-video-per-batch figure: BinaryMeter agrees.
  meter = metrics.BinaryMeter()
  for v in _binary_videos():
    sc = np.asarray(v["gt_valid"], bool)
    p = v.get("probs", v.get("pred"))
    meter.add_probs(np.asarray(p, np.float32)[sc], v["gt"][sc])
  assert meter.result()["J"] == pytest.approx(al["J"]) and meter.result()["F"] == pytest.approx(al["F"])


def test_semantic_report_hand_computed_and_padding():
  gt = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]])
  pred = np.array([[[0, 1], [0, 1]], [[0, 0], [0, 2]], [[3, 3], [3, 3]]])
  kw = dict(gt=gt, pred=pred, gt_valid=np.array([1, 1, 0], bool), frame_valid=np.array([1, 1, 0], bool),
            is_keyframe=np.array([1, 0, 0], bool))
  rep = report.EvalReport("semantic", num_classes=4, alignment_iou=0.5, alignment_min_area=0.0)
  rep.add_video("v", **kw)
  s = rep.summary("coprop")
  f0a, f0b, f1a = _f(0.5, 1), _f(1, 0.75), _f(1, 2 / 3)      # see test_metrics' hand example
  al = s["subsets"]["all"]
  assert al["mIoU"] == pytest.approx((0.625 + 2 / 3) / 4)
  assert al["F"] == pytest.approx(((f0a + f0b) / 2 + f1a) / 4)
  assert al["mIoU_avsbench_nobg"] == pytest.approx((0.625 + 2 / 3) / 3)
  assert al["mIoU_nobg"] == pytest.approx((2 / 3) / 3)
  # Alignment: frame A has the right class set {1} but IoU 2/3 >= 0.5 -> aligned; frame B
  # predicts class 2 where nothing sounds -> not aligned.
  assert al["alignment_rate"] == 0.5 and al["num_frames"] == 2
  kf = s["subsets"]["keyframes"]                          # frame A only
  assert kf["mIoU"] == pytest.approx((0.5 + 2 / 3) / 4) and kf["alignment_rate"] == 1.0
  # AVSBench's avss/test.py also scores the zero-padded frame (GT background): class 3 then
  # counts once with IoU 0 and background gains a frame with IoU 0.
  rep2 = report.EvalReport("semantic", num_classes=4, alignment_min_area=0.0, avss_score_padding=True)
  rep2.add_video("v", **kw)
  al2 = rep2.summary("coprop")["subsets"]["all"]
  assert al2["num_frames"] == 3
  assert al2["mIoU"] == pytest.approx(((0.5 + 0.75 + 0) / 3 + 2 / 3 + 0 + 0) / 4)
  assert al2["num_classes_present"] == 4


def test_moc_ids_file(tmp_path):
  ids = tmp_path / "moc.txt"
  ids.write_text("# MOC\na\n\nc\n")
  rep = report.EvalReport("binary", moc_ids_file=str(ids))
  _add_all(rep, _binary_videos())
  s = rep.summary("coprop")
  assert s["subsets"]["moc"]["num_videos"] == 2 and s["settings"]["moc_source"] == f"file:{ids}"
  assert s["subsets"]["moc"]["J"] == pytest.approx((2 / 3 + 0.5) / 2, abs=1e-6)
  rows = {r["video_id"]: r for r in rep.rows()}
  assert rows["a"]["moc"] == 1 and rows["b"]["moc"] == 0
  ids.write_text("a\nzz_other_split\n")
  rep = report.EvalReport("binary", moc_ids_file=str(ids))
  _add_all(rep, _binary_videos())
  with pytest.raises(report.ReportError, match=f"{ids}.*zz_other_split"):
    rep.summary("coprop")
  ids.write_text("a\na\n")
  with pytest.raises(report.ReportError, match="line 2 repeats id 'a'"):
    report.EvalReport("binary", moc_ids_file=str(ids))


def test_write_files_and_refuse_other_experiment(tmp_path):
  rep = report.EvalReport("binary")
  _add_all(rep, _binary_videos())
  s = rep.write(tmp_path, "coprop", {"dataset": "ms3", "split": "test"})
  js, cv = tmp_path / "coprop.summary.json", tmp_path / "coprop.per_video.csv"
  assert json.loads(js.read_text()) == json.loads(json.dumps(s))
  rows = list(csv.DictReader(io.StringIO(cv.read_text())))
  assert [r["video_id"] for r in rows] == ["a", "b", "c", "d"]
  assert float(rows[0]["J"]) == pytest.approx(2 / 3, abs=1e-6) and rows[2]["J_normal"] == ""
  assert rows[0]["keyframes"] == "1" and rows[0]["normal_frames"] == "2"
  # Same method + meta: rewritten in place. Another split into the same place: refused, intact.
  rep.write(tmp_path, "coprop", {"dataset": "ms3", "split": "test"})
  before = (js.read_bytes(), cv.read_bytes())
  with pytest.raises(report.ReportError, match="coprop.summary.json.*meta"):
    rep.write(tmp_path, "coprop", {"dataset": "ms3", "split": "val"})
  assert (js.read_bytes(), cv.read_bytes()) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["coprop.per_video.csv", "coprop.summary.json"]
  with pytest.raises(report.ReportError, match="method name"):
    rep.write(tmp_path, "../x", {})


def test_comparison_table(tmp_path):
  summaries = []
  for method, flip in (("coprop", False), ("kpf_only", True), ("external_keyframes", False)):
    rep = report.EvalReport("binary")
    vids = _binary_videos()
    if flip:   # KPF-only stand-in: video d's second frame predicted as the first object
      vids[3] = dict(vids[3], probs=np.stack([vids[3]["gt"][0]] * 2) * 0.9 + 0.05, pred=None)
    if method == "external_keyframes":
      vids = [dict(v, probs=None, pred=(np.asarray(v.get("probs", v.get("pred"))) > 0.5).astype(int))
              for v in vids]
    _add_all(rep, vids)
    summaries.append(rep.write(tmp_path, method, {"split": "test"}))
  md = report.write_comparison(tmp_path / "comparison.md",
                               [report.load_summary(tmp_path / f"{m}.summary.json")
                                for m in ("coprop", "kpf_only", "external_keyframes")])
  assert (tmp_path / "comparison.md").read_text() == md
  lines = md.splitlines()
  assert lines[0].startswith("| Method | J | F | Align. | J key | J normal | MOC J")
  assert lines[2].startswith("| Co-Prop | ") and lines[3].startswith("| KPF only")
  assert lines[4].startswith("| External keyframe masks * |") and "hard 0/1 masks" in md
  j = summaries[0]["subsets"]["all"]["J"]
  assert f"| {100 * j:.2f} |" in lines[2]
  assert summaries[1]["subsets"]["moc"]["alignment_rate"] == 0.5
  # Different videos or settings: refused, naming the method and the field.
  rep = report.EvalReport("binary", alignment_iou=0.7)
  _add_all(rep, _binary_videos())
  with pytest.raises(report.ReportError, match="'aot'.*'settings'"):
    report.comparison_table([summaries[0], rep.summary("aot")])
  rep = report.EvalReport("binary")
  _add_all(rep, _binary_videos()[:3])
  with pytest.raises(report.ReportError, match="'aot'.*'video_ids_sha1'"):
    report.comparison_table([summaries[0], rep.summary("aot")])
  (tmp_path / "bad.json").write_text("{}")
  with pytest.raises(report.ReportError, match="bad.json"):
    report.load_summary(tmp_path / "bad.json")


def test_bad_input():
  v = _binary_videos()
  rep = report.EvalReport("binary")
  _add_all(rep, v[:1])
  with pytest.raises(report.ReportError, match="'a' added twice"):
    _add_all(rep, v[:1])
  with pytest.raises(report.ReportError, match="'d'.*differs from probs > 0.5 on 4 pixels"):
    bad = v[3]["gt"].copy()
    bad[0, 2:4, 2:4] = 1
    _add_all(rep, [dict(v[3], pred=bad)])
  with pytest.raises(report.ReportError, match="'a'.*0/1.*\\[2\\]"):
    rep2 = report.EvalReport("binary")
    _add_all(rep2, [dict(v[0], pred=v[0]["pred"] * 2)])
  with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
    _add_all(report.EvalReport("binary"), [dict(v[1], probs=v[1]["probs"] * 5)])
  with pytest.raises(report.ReportError, match="is_keyframe has shape"):
    _add_all(report.EvalReport("binary"), [dict(v[0], is_keyframe=[1, 0])])
  sem = report.EvalReport("semantic", num_classes=3)
  with pytest.raises(report.ReportError, match="probs are for the binary task"):
    _add_all(sem, [v[1]])
  with pytest.raises(report.ReportError, match="'a'.*0..2"):
    _add_all(sem, [dict(v[0], pred=v[0]["pred"] * 5)])
  with pytest.raises(report.ReportError, match="num_classes"):
    report.EvalReport("semantic")
  with pytest.raises(report.ReportError, match="no video"):
    report.EvalReport("binary").summary("x")
