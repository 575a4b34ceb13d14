"""Evaluation report: per-video accumulation -> AVSBench figures, Alignment Rate, breakdowns, files.

  rep = EvalReport("binary", alignment_iou=0.5)            # or EvalReport("semantic", num_classes=71)
  for video in predictions:                                # one call per video
    rep.add_video(vid, gt=masks, gt_valid=gv, frame_valid=fv, is_keyframe=cp == 1, probs=fg_prob)
  summary = rep.write(out_dir, method="coprop", meta={"dataset": "ms3", "split": "test"})
  write_comparison(out_dir / "comparison.md", [load_summary(p) for p in summary_paths])

Inputs per video (numpy, one video; T frames):
  gt [T, H, W] int (binary: > 0 is the object; semantic: class ids, 0 background);
  gt_valid, frame_valid, is_keyframe [T] bool (is_keyframe: the control points used, 1 = keyframe);
  binary: `probs` [T, H, W] foreground probabilities (the pipeline's output) and/or `pred`
    [T, H, W] 0/1 masks (when only hard masks exist, e.g. another model's PNGs: F is then
    computed from the 0/1 mask, recorded as `f_from: "hard masks"`); with both, `pred` must
    equal `probs > 0.5` on the scored frames;
  semantic: `pred` [T, H, W] predicted class ids.

Scored frames: gt_valid & frame_valid (semantic with `avss_score_padding=True` also scores the
padded frames of short AVSS clips as AVSBench's avss/test.py does: GT all background).

Figures (each for the subsets `all`, `keyframes` (is_keyframe), `normal` (not is_keyframe) and
`moc`, paper Table 6 and Fig. 3):
  binary J / F: AVSBench's per-batch rules with ONE VIDEO PER METRIC BATCH (S4/MS3 test use
    batch size 1): per video, J = mean of the per-frame J over the video's scored frames in the
    subset, F = max over thresholds of the F curve averaged over those frames with non-empty GT
    (0 when the video has none in the subset); the figure is the mean over the videos having at
    least one scored frame in the subset. With subset `all` this is AVSBench's test figure.
  semantic: AVSBench's avss sums (per-class IoU/F summed over the subset's frames of all videos,
    divided by per-class counts, absent classes 0, mean over all classes; see
    `metrics.semantic_result` for the two no-background means).
  alignment_rate: aligned frames / scored frames of the subset, pooled over videos
    (`metrics.aligned_frames_binary` / `aligned_frames_semantic`).
MOC subset: the ids of `moc_ids_file` (one video id per line; the paper's 17 MS3 test videos for
real AVSBench), or, without a file, the videos whose GT sounding set changes: the GT
control-point rule (`coprop_jax.rcpg.core.gt_control_points`) marks a keyframe after frame 0.

Files (`write`): `<method>.summary.json` and `<method>.per_video.csv`, each written atomically
(temp + rename); `write_comparison` writes the markdown table of several methods.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pathlib
import re
import tempfile
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from coprop_jax.eval import metrics

FORMAT = "coprop_eval_report/1"
TASKS = ("binary", "semantic")
SUBSETS = ("all", "keyframes", "normal", "moc")
# Display names of the methods compared in the paper's tables (other names are shown as given).
METHOD_LABELS = {
    "coprop": "Co-Prop",
    "kpf_only": "KPF only (every frame a keyframe)",
    "aot": "Plain AOT propagation (no audio)",
    "gt_keyframes": "GT keyframe masks (oracle)",
    "external_keyframes": "External keyframe masks",
    "coprop_gt_cp": "Co-Prop, GT control points",
    "kpf_blind": "KPF only, trained and run without audio",
    "coprop_aot": "Co-Prop keyframes + plain-AOT propagator (Table 5 'AOT')",
}
_METHOD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ReportError(ValueError):
  """Bad input to the report, or report files that do not fit together."""


def write_text_atomic(path, text: str) -> pathlib.Path:
  """Writes `text` to `path` via a temp sibling + fsync + rename; never leaves a partial file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", newline="") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def load_video_ids(path) -> list[str]:
  """A video-id list file: one id per line; blank lines and lines starting with '#' skipped."""
  p = pathlib.Path(path)
  if not p.is_file():
    raise ReportError(f"video id file {p}: does not exist")
  ids, seen = [], {}
  for n, line in enumerate(p.read_text().splitlines(), start=1):
    s = line.strip()
    if not s or s.startswith("#"):
      continue
    if s in seen:
      raise ReportError(f"video id file {p}: line {n} repeats id {s!r} (first on line {seen[s]})")
    seen[s] = n
    ids.append(s)
  if not ids:
    raise ReportError(f"video id file {p}: holds no video id")
  return ids


def sounding_set_changes(gt: np.ndarray, scored: np.ndarray, binary: bool) -> bool:
  """True when the GT control-point rule puts a keyframe after frame 0 (the MOC criterion)."""
  from coprop_jax.rcpg.core import gt_control_points
  return bool(np.asarray(gt_control_points(gt, scored, binary=binary))[1:].any())


def _as_bool(x, name, t, vid):
  a = np.asarray(x)
  if a.shape != (t,):
    raise ReportError(f"video {vid!r}: {name} has shape {a.shape}, expected ({t},)")
  return a.astype(bool)


class EvalReport:
  """Accumulates one method's predictions video by video (see the module docstring)."""

  def __init__(self, task: str, *, num_classes: Optional[int] = None, alignment_iou: float = 0.5,
               alignment_min_area: float = 0.01, num_thresholds: int = 255, beta2: float = 0.3,
               moc_ids_file: str = "", avss_score_padding: bool = False):
    if task not in TASKS:
      raise ReportError(f"task must be one of {TASKS}, got {task!r}")
    if task == "semantic" and (num_classes is None or num_classes < 2):
      raise ReportError(f"task 'semantic' needs num_classes >= 2, got {num_classes}")
    if not 0.0 < alignment_iou <= 1.0:
      raise ReportError(f"alignment_iou must be in (0, 1], got {alignment_iou}")
    if not 0.0 <= alignment_min_area < 1.0:
      raise ReportError(f"alignment_min_area must be in [0, 1), got {alignment_min_area}")
    if avss_score_padding and task != "semantic":
      raise ReportError("avss_score_padding applies to task 'semantic' only")
    self.task, self.num_classes = task, num_classes
    self.alignment_iou, self.alignment_min_area = float(alignment_iou), float(alignment_min_area)
    self.num_thresholds, self.beta2 = int(num_thresholds), float(beta2)
    self.avss_score_padding = bool(avss_score_padding)
    self.moc_ids_file = str(moc_ids_file)
    self.moc_ids = set(load_video_ids(moc_ids_file)) if moc_ids_file else None
    self._videos: dict[str, dict] = {}
    self._f_from: set[str] = set()

  # ---------------------------------------------------------------------------------- input
  @property
  def video_ids(self) -> list[str]:
    return list(self._videos)

  def add_video(self, video_id: str, *, gt, gt_valid, frame_valid, is_keyframe, pred=None,
                probs=None) -> None:
    """Adds one video's prediction (shapes in the module docstring). Raises ReportError on a
    repeated id or inconsistent input, naming the video."""
    vid = str(video_id)
    if vid in self._videos:
      raise ReportError(f"video {vid!r} added twice")
    gt = np.asarray(gt)
    if gt.ndim != 3:
      raise ReportError(f"video {vid!r}: gt has shape {gt.shape}, expected [T, H, W]")
    t = gt.shape[0]
    gv = _as_bool(gt_valid, "gt_valid", t, vid)
    fv = _as_bool(frame_valid, "frame_valid", t, vid)
    kf = _as_bool(is_keyframe, "is_keyframe", t, vid) & fv
    scored = gv & fv
    if self.avss_score_padding:
      scored = scored | ~fv
    for name, a in (("pred", pred), ("probs", probs)):
      if a is not None and np.shape(a) != gt.shape:
        raise ReportError(f"video {vid!r}: {name} has shape {np.shape(a)}, gt {gt.shape}")
    rec = dict(scored=scored, keyframe=kf, real=fv)
    if self.task == "binary":
      if probs is None and pred is None:
        raise ReportError(f"video {vid!r}: binary task needs probs (foreground probabilities) "
                          "or pred (0/1 masks)")
      if pred is not None:
        pm = np.asarray(pred)
        bad = ~np.isin(pm[scored], (0, 1))
        if bad.any():
          raise ReportError(f"video {vid!r}: binary pred must hold 0/1, found values "
                            f"{np.unique(pm[scored][bad])[:5].tolist()}")
      if probs is not None:
        p = metrics.check_probs(probs, f"video {vid!r} probs").astype(np.float32)
        fg = p > 0.5
        if pred is not None:
          diff = int((fg[scored] != (np.asarray(pred)[scored] > 0)).sum())
          if diff:
            raise ReportError(f"video {vid!r}: pred differs from probs > 0.5 on {diff} pixels of "
                              "scored frames; give consistent masks and probabilities")
        self._f_from.add("probabilities")
      else:
        fg = np.asarray(pred) > 0
        p = fg.astype(np.float32)
        self._f_from.add("hard masks")
      g = gt[scored] > 0
      rec["iou"] = np.full(t, np.nan)
      rec["iou"][scored] = metrics.binary_iou_frames(fg[scored], g)
      rec["curves"] = np.zeros((t, self.num_thresholds), np.float32)
      rec["curves"][scored] = metrics.binary_f_curves(p[scored], g, self.num_thresholds, self.beta2)
      rec["nonempty"] = (gt > 0).any(axis=(1, 2)) & scored
      rec["aligned"] = np.zeros(t, bool)
      rec["aligned"][scored] = metrics.aligned_frames_binary(fg[scored], g, self.alignment_iou)
      binary = True
    else:
      if probs is not None:
        raise ReportError(f"video {vid!r}: probs are for the binary task; give pred class ids")
      if pred is None:
        raise ReportError(f"video {vid!r}: semantic task needs pred (class ids [T, H, W])")
      pm = np.asarray(pred)
      if not np.issubdtype(pm.dtype, np.integer):
        raise ReportError(f"video {vid!r}: pred must be integer class ids, got dtype {pm.dtype}")
      c = self.num_classes
      rec["scores"] = {k: np.zeros((t, c)) for k in ("iou", "f")}
      rec["scores"]["present"] = np.zeros((t, c), bool)
      rec["aligned"] = np.zeros(t, bool)
      if scored.any():
        try:
          s = metrics.semantic_frame_scores(
              metrics.semantic_frame_areas(pm[scored], gt[scored], c), self.beta2)
          al = metrics.aligned_frames_semantic(pm[scored], gt[scored], c, self.alignment_iou,
                                               self.alignment_min_area)
        except ValueError as e:
          raise ReportError(f"video {vid!r}: {e}") from e
        for k in ("iou", "f", "present"):
          rec["scores"][k][scored] = s[k]
        rec["aligned"][scored] = al
      binary = False
    rec["changes"] = sounding_set_changes(gt, gv & fv, binary)
    self._videos[vid] = rec

  # ---------------------------------------------------------------------------------- figures
  def _in_moc(self, vid: str) -> bool:
    if self.moc_ids is not None:
      return vid in self.moc_ids
    return self._videos[vid]["changes"]

  def _select(self, rec: dict, subset: str) -> np.ndarray:
    if subset == "keyframes":
      return rec["scored"] & rec["keyframe"]
    if subset == "normal":
      return rec["scored"] & rec["real"] & ~rec["keyframe"]
    return rec["scored"]

  def _video_figures(self, rec: dict, sel: np.ndarray) -> dict:
    """Per-video figures over the frames `sel` (None values when `sel` is empty)."""
    if not sel.any():
      return {}
    out = {"alignment_rate": float(rec["aligned"][sel].mean())}
    if self.task == "binary":
      out["J"] = float(rec["iou"][sel].mean())
      out["F"] = metrics.f_from_curves(rec["curves"][sel], rec["nonempty"][sel])
    else:
      s = rec["scores"]
      cnt = s["present"][sel].sum(0)
      seen = cnt > 0
      # Per-video only (not an AVSBench figure): mean over the classes present in these frames.
      out["mIoU"] = float((s["iou"][sel].sum(0)[seen] / cnt[seen]).mean()) if seen.any() else 0.0
      out["F"] = float((s["f"][sel].sum(0)[seen] / cnt[seen]).mean()) if seen.any() else 0.0
    return out

  def subset_figures(self, subset: str) -> dict:
    """Figures of one subset (`all`, `keyframes`, `normal`, `moc`); see the module docstring."""
    if subset not in SUBSETS:
      raise ReportError(f"subset must be one of {SUBSETS}, got {subset!r}")
    vids = [v for v in self._videos if subset != "moc" or self._in_moc(v)]
    sub = "all" if subset == "moc" else subset
    sels = {v: self._select(self._videos[v], sub) for v in vids}
    used = [v for v in vids if sels[v].any()]
    n_frames = int(sum(sels[v].sum() for v in vids))
    out: dict = {"num_videos": len(used), "num_frames": n_frames}
    if not used:
      keys = ("J", "F") if self.task == "binary" else (
          "mIoU", "F", "mIoU_avsbench_nobg", "F_avsbench_nobg", "mIoU_nobg", "F_nobg")
      out.update({k: None for k in keys}, alignment_rate=None)
      return out
    aligned = sum(int(self._videos[v]["aligned"][sels[v]].sum()) for v in used)
    if self.task == "binary":
      per = [self._video_figures(self._videos[v], sels[v]) for v in used]
      out["J"] = float(np.mean([p["J"] for p in per]))
      out["F"] = float(np.mean([p["F"] for p in per]))
    else:
      c = self.num_classes
      iou, f, cnt = np.zeros(c), np.zeros(c), np.zeros(c)
      for v in used:
        s, m = self._videos[v]["scores"], sels[v]
        iou += s["iou"][m].sum(0)
        f += s["f"][m].sum(0)
        cnt += s["present"][m].sum(0)
      res = metrics.semantic_result(iou, f, cnt)
      out.update({k: res[k] for k in ("mIoU", "F", "mIoU_avsbench_nobg", "F_avsbench_nobg",
                                       "mIoU_nobg", "F_nobg", "num_classes_present")})
    out["alignment_rate"] = aligned / n_frames
    return out

  def settings(self) -> dict:
    return dict(alignment_iou=self.alignment_iou, alignment_min_area=self.alignment_min_area,
                num_thresholds=self.num_thresholds, beta2=self.beta2, num_classes=self.num_classes,
                avss_score_padding=self.avss_score_padding,
                moc_source=(f"file:{self.moc_ids_file}" if self.moc_ids is not None
                            else "gt_control_points"),
                metric_batch="one video" if self.task == "binary" else "whole split")

  def summary(self, method: str, meta: Optional[Mapping] = None) -> dict:
    """The JSON summary of this method (see the module docstring)."""
    if not self._videos:
      raise ReportError("report: no video was added")
    if self.moc_ids is not None:
      unknown = sorted(self.moc_ids - set(self._videos))
      if unknown:
        raise ReportError(f"MOC id file {self.moc_ids_file}: {len(unknown)} ids were not evaluated "
                          f"(another split or dataset?), e.g. {unknown[:5]}")
    ids = sorted(self._videos)
    return {
        "format": FORMAT, "method": method, "label": METHOD_LABELS.get(method, method),
        "task": self.task, "meta": dict(meta or {}), "settings": self.settings(),
        "f_from": "/".join(sorted(self._f_from)) if self.task == "binary" else "class ids",
        "num_videos": len(ids),
        "video_ids_sha1": hashlib.sha1("\n".join(ids).encode()).hexdigest(),
        "subsets": {s: self.subset_figures(s) for s in SUBSETS},
    }

  def rows(self) -> list[dict]:
    """One row per video (the per-video CSV): frame counts and figures per subset."""
    out = []
    main = ("J", "F") if self.task == "binary" else ("mIoU", "F")
    for vid, rec in self._videos.items():
      row = {"video_id": vid, "moc": int(self._in_moc(vid)),
             "frames": int(rec["scored"].sum()),
             "keyframes": int(self._select(rec, "keyframes").sum()),
             "normal_frames": int(self._select(rec, "normal").sum())}
      for subset, suffix in (("all", ""), ("keyframes", "_keyframes"), ("normal", "_normal")):
        fig = self._video_figures(rec, self._select(rec, subset))
        for k in main + ("alignment_rate",):
          row[k + suffix] = fig.get(k)
      out.append(row)
    return out

  def per_video_csv(self) -> str:
    rows = self.rows()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
      w.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v))
                  for k, v in r.items()})
    return buf.getvalue()

  def write(self, out_dir, method: str, meta: Optional[Mapping] = None) -> dict:
    """Writes `<out_dir>/<method>.summary.json` and `.per_video.csv` atomically; returns the
    summary. A summary already there from another task, settings or meta (e.g. another split)
    is an error naming the file and the differing fields; nothing is overwritten then."""
    if not _METHOD_RE.match(method):
      raise ReportError(f"method name {method!r}: use letters, digits, '_', '-' or '.'")
    s = self.summary(method, meta)
    out = pathlib.Path(out_dir)
    js = out / f"{method}.summary.json"
    if js.exists():
      old = load_summary(js)
      diff = [k for k in ("task", "meta", "settings") if old.get(k) != s[k]]
      if diff:
        raise ReportError(f"{js}: holds a report of method {method!r} with other {diff} "
                          f"({ {k: old.get(k) for k in diff} } vs { {k: s[k] for k in diff} }); "
                          "use another output directory or method name")
    write_text_atomic(out / f"{method}.per_video.csv", self.per_video_csv())
    write_text_atomic(js, json.dumps(s, indent=1, sort_keys=True) + "\n")
    return s


# ---------------------------------------------------------------------------------- comparison


def load_summary(path) -> dict:
  p = pathlib.Path(path)
  try:
    s = json.loads(p.read_text())
  except FileNotFoundError:
    raise ReportError(f"summary {p}: does not exist") from None
  except json.JSONDecodeError as e:
    raise ReportError(f"summary {p}: not valid JSON ({e})") from e
  if not isinstance(s, dict) or s.get("format") != FORMAT:
    raise ReportError(f"summary {p}: not a {FORMAT} summary (format {s.get('format') if isinstance(s, dict) else None!r})")
  return s


def _pct(x) -> str:
  return "–" if x is None else f"{100 * x:.2f}"


def comparison_table(summaries: Sequence[Mapping]) -> str:
  """Markdown table comparing methods (one summary per row, in the given order).

  All summaries must share the task, the evaluated videos and the settings (alignment tau,
  minimum area, thresholds, MOC source); otherwise ReportError names the method and the field.
  """
  if not summaries:
    raise ReportError("comparison: no summary given")
  ref = summaries[0]
  names = [s["method"] for s in summaries]
  if len(set(names)) != len(names):
    raise ReportError(f"comparison: repeated method names {names}")
  for s in summaries[1:]:
    for k in ("task", "video_ids_sha1", "settings"):
      if s.get(k) != ref.get(k):
        raise ReportError(f"comparison: method {s['method']!r} differs from {ref['method']!r} in "
                          f"{k!r} ({s.get(k)!r} vs {ref.get(k)!r}); compare runs on the same "
                          "videos with the same settings")
  st = ref["settings"]
  if ref["task"] == "binary":
    cols = [("J", "all", "J"), ("F", "all", "F"), ("Align.", "all", "alignment_rate"),
            ("J key", "keyframes", "J"), ("J normal", "normal", "J"),
            ("MOC J", "moc", "J"), ("MOC F", "moc", "F"), ("MOC Align.", "moc", "alignment_rate")]
  else:
    cols = [("mIoU", "all", "mIoU"), ("F", "all", "F"),
            ("mIoU noBg (AVSBench [:-1])", "all", "mIoU_avsbench_nobg"),
            ("mIoU no bg (1..C-1)", "all", "mIoU_nobg"), ("Align.", "all", "alignment_rate"),
            ("mIoU key", "keyframes", "mIoU"), ("mIoU normal", "normal", "mIoU"),
            ("MOC mIoU", "moc", "mIoU"), ("MOC Align.", "moc", "alignment_rate")]
  lines = ["| Method | " + " | ".join(c[0] for c in cols) + " |",
           "|---|" + "---:|" * len(cols)]
  hard = []
  for s in summaries:
    mark = ""
    if s.get("f_from") == "hard masks":
      mark = " *"
      hard.append(s["method"])
    lines.append(f"| {s.get('label', s['method'])}{mark} | " + " | ".join(
        _pct(s["subsets"][sub].get(key)) for _, sub, key in cols) + " |")
  sub = ref["subsets"]
  where = ", ".join(f"{k} {ref['meta'][k]}" for k in ("dataset", "split") if k in ref.get("meta", {}))
  notes = [
      "",
      (f"{where}: " if where else "") + f"{ref['num_videos']} videos ({sub['all']['num_frames']} scored frames: "
      f"{sub['keyframes']['num_frames']} keyframes, {sub['normal']['num_frames']} normal; MOC "
      f"{sub['moc']['num_videos']} videos from {st['moc_source']}). Figures in %.",
  ]
  if ref["task"] == "binary":
    notes.append("J/F: AVSBench, one video per metric batch, averaged over videos (a subset: each "
                 "video's frames in it).")
  else:
    notes.append("mIoU/F: AVSBench avss sums over the frames, absent classes count 0, mean over all "
                 f"{st['num_classes']} classes.")
  notes.append(f"Align.: share of frames whose segmented object(s) match the GT (IoU >= "
               f"{st['alignment_iou']}" + ("" if ref["task"] == "binary" else
                                           f", classes covering >= {st['alignment_min_area']} of the "
                                           "frame") + "; both empty counts as aligned).")
  if hard:
    notes.append("* F from hard 0/1 masks (no probabilities available).")
  return "\n".join(lines) + "\n" + "\n\n".join(notes) + "\n"


def write_comparison(path, summaries: Sequence[Mapping]) -> str:
  """Writes `comparison_table(summaries)` to `path` atomically; returns the table."""
  table = comparison_table(summaries)
  write_text_atomic(path, table)
  return table
