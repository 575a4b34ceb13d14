"""Evaluate a Co-Prop model over a split: several methods, one report (AVSBench figures,
Alignment Rate, keyframe/normal/MOC breakdowns, per-video CSV, comparison table).

  python -m coprop_jax.evaluate --config configs/coprop.py:dataset=ms3 --checkpoint MODEL_DIR \
      --out DIR [--split test] [--control_points gt|cosine|FILE] [--keyframe_masks DIR_OR_NPZ] \
      [--aot_checkpoint MODEL_DIR_OR_CONVERTED_AOT] [--methods coprop kpf_only ...] \
      [--workdir RUN_DIR] [--batch_size 8] [--config.a.b=value ...]

Methods (`--methods`; default: coprop, kpf_only, gt_keyframes, plus aot with --aot_checkpoint
and external_keyframes with --keyframe_masks), all at the same control points except kpf_only:
  coprop              the KPF at each keyframe, the Audio-insert Propagator through each segment
  kpf_only            every frame a keyframe (the KPF alone)
  aot                 the same KPF keyframes, propagated by a plain AOT (no audio anywhere): the
                      propagator of --aot_checkpoint, a model directory whose propagator is
                      `insert=aot`, or a converted AOT checkpoint (`convert aot`)
  gt_keyframes        GT masks at the keyframes (oracle), then the propagator
  external_keyframes  another model's keyframe masks (--keyframe_masks: PNG dir or .npz,
                      coprop_jax.eval.keyframe_masks), then the propagator
Control points (`--control_points`): `gt` (default; the GT rule on each clip's masks,
coprop_jax.rcpg.core.gt_control_points: the oracle), `cosine` (consecutive VGGish embeddings of
the model's own VGGish with cosine < rcpg.cosine_threshold), `data` (the dataset's own, i.e.
data.control_points_file), or an RCPG JSONL file (`python -m coprop_jax.rcpg`) that must list
every video of the split.

Files in --out: `<method>.summary.json`, `<method>.per_video.csv` (coprop_jax.eval.report),
`comparison.md` and `comparison.json`, each written atomically after every method has run. An
--out holding results of another experiment (dataset, split or model) or of the same method with
other settings is refused before anything runs; nothing there is overwritten then.
Every input is checked before the networks run where it can be (the control-points file covers
every video; the keyframe masks hold every keyframe): errors are one line and exit status 1.

Host cost: AVSBench's binary F takes 255 thresholds per frame on the host (numpy searchsorted +
bincount, ~0.04 s per 5-frame 224x224 video: benchmarks/RESULTS.md), small next to the networks.
The library (`Model`, `Method`, `run_methods`, `write_results`) is what `coprop_jax.ablate` and
notebooks call.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np

from coprop_jax import model_io
from coprop_jax.eval import report as report_lib

log = logging.getLogger(__name__)
FORMAT = "coprop_evaluation/1"
METHODS = ("coprop", "kpf_only", "aot", "gt_keyframes", "external_keyframes")
CONTROL_POINTS = ("gt", "cosine", "data", "every_frame", "first_frame")


class EvaluateError(ValueError):
  """Bad input to the evaluation (model, control points, keyframe masks, output directory)."""


# ---------------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class Model:
  """Networks to evaluate: `config` (its keyframe / propagator sections built them), pipeline
  `params` {"keyframe", "propagator", "encoder"} and where they came from (`source`)."""
  config: ml_collections.ConfigDict
  params: Any
  source: str


@dataclasses.dataclass
class Method:
  """One row of the report.

  keyframes: "kpf" (the model's KPF), "gt" (oracle) or a KeyframeMaskSource.
  control_points: "gt" | "cosine" | "data" | "every_frame" | "first_frame" or a
    `ControlPointTable` (see the module docstring).
  meta: extra fields recorded in the summary (compared when an --out is reused).
  """
  name: str
  model: Model
  keyframes: Any = "kpf"
  control_points: Any = "gt"
  meta: dict = dataclasses.field(default_factory=dict)


class ControlPointTable:
  """Control points from an RCPG JSON-lines file ({"video_id", "flags"} per line)."""

  def __init__(self, path: str):
    from coprop_jax.rcpg.jsonl import RecordsError, read_records
    self.path = str(pathlib.Path(path).expanduser().resolve())
    if not os.path.isfile(self.path):
      raise EvaluateError(f"control points file {self.path}: does not exist")
    try:
      records, _ = read_records(self.path)
    except (RecordsError, ValueError, OSError) as e:
      raise EvaluateError(f"control points file {self.path}: {e}") from e
    self.table: dict[str, np.ndarray] = {}
    for n, r in enumerate(records, start=1):
      vid, flags = str(r["video_id"]), np.asarray(r["flags"])
      if flags.ndim != 1 or not np.isin(flags, (0, 1)).all():
        raise EvaluateError(f"control points file {self.path}: line {n} (video {vid!r}): flags "
                            f"must be a list of 0/1, got {r['flags']}")
      if vid in self.table:
        raise EvaluateError(f"control points file {self.path}: line {n} repeats video {vid!r}")
      self.table[vid] = flags.astype(np.int32)

  def __repr__(self) -> str:
    return f"file:{self.path}"

  def check(self, videos: Mapping[str, tuple[int, int]]) -> None:
    """Every video (id -> (real frames, clip length T)) is listed, with between real-frames and
    T flags (AVSS v1s/v1m clips are 5 real frames padded to 10)."""
    missing = sorted(set(videos) - set(self.table))
    if missing:
      raise EvaluateError(f"control points file {self.path}: no line for {len(missing)} of the "
                          f"{len(videos)} videos evaluated, e.g. {missing[:5]}")
    for vid, (real, t) in videos.items():
      if not real <= len(self.table[vid]) <= t:
        raise EvaluateError(f"control points file {self.path}: video {vid!r} has "
                            f"{len(self.table[vid])} flags, its clip {real} frames")

  def flags(self, vid: str, t: int) -> np.ndarray:
    """[t] int32 flags of `vid` (zero-padded to the clip length)."""
    if vid not in self.table:
      raise EvaluateError(f"control points file {self.path}: no line for video {vid!r}")
    out = np.zeros(t, np.int32)
    f = self.table[vid][:t]
    out[:len(f)] = f
    return out


def describe(x: Any) -> str:
  """How a keyframe / control-point source is named in the summaries."""
  if isinstance(x, str):
    return x
  if hasattr(x, "clip_masks"):
    return f"masks:{os.path.abspath(getattr(x, 'path', '?'))}"
  return repr(x)


def load_main_model(path: str, config: ml_collections.ConfigDict) -> Model:
  """A model directory made with `config`'s networks (another config or a training run are
  refused, naming the fields or what to do)."""
  from coprop_jax.convert.checkpoint_io import CheckpointError
  p = pathlib.Path(path).expanduser()
  if p.is_dir() and not model_io.is_model_dir(p) and (
      (p / "config.json").is_file() or (p / "checkpoints").is_dir() or (p / "best").is_dir()):
    raise EvaluateError(f"--checkpoint {p}: a training run, not a model directory; assemble one "
                        "with python -m coprop_jax.export --keyframe RUN --propagator RUN --out DIR")
  try:
    _, params = model_io.load_model(p, expect=config)
  except CheckpointError as e:
    raise EvaluateError(f"--checkpoint: {e}") from e
  # The networks are the model's (checked equal); inference knobs (memory_slots, ...) `config`'s.
  return Model(config, params, str(p.resolve()))


def with_propagator(config: ml_collections.ConfigDict, propagator: Mapping) -> ml_collections.ConfigDict:
  """`config` (unlocked copy) whose propagator networks are `propagator`'s; inference-only knobs
  (memory_slots, mem_gap, length_bucket, dtype) stay `config`'s."""
  c = ml_collections.ConfigDict(config.to_dict())
  keep = {k.split(".", 1)[1] for k in model_io.NOT_ARCHITECTURE if k.startswith("propagator.")}
  for k, v in dict(propagator).items():
    if k not in keep and k != "train":
      c.propagator[k] = v
  return c


def load_aot_model(path: str, config: ml_collections.ConfigDict, main: Model) -> Model:
  """The plain-AOT propagator of `path` (a model directory whose propagator is `insert=aot`, or a
  converted AOT checkpoint) with `main`'s Keyframe Processor (the same keyframes)."""
  from coprop_jax.convert.checkpoint_io import CheckpointError, check_params_match, restore_params
  from coprop_jax.models.propagator import INSERT_VARIANTS
  plain = INSERT_VARIANTS["aot"]
  p = pathlib.Path(path).expanduser()
  if model_io.is_model_dir(p):
    try:
      cfg, params = model_io.load_model(p)
    except CheckpointError as e:
      raise EvaluateError(f"--aot_checkpoint: {e}") from e
    have = {k: cfg.propagator[k] for k in plain}
    if tuple(have["audio_insert_levels"]) != plain["audio_insert_levels"] or \
        bool(have["identity_from_audio"]) != plain["identity_from_audio"]:
      raise EvaluateError(f"--aot_checkpoint {p}: its propagator has audio ({have}); plain AOT is "
                          f"insert=aot ({plain})")
    seg_cfg = with_propagator(config, cfg.propagator)
    prop, enc = params["propagator"], params["encoder"]
  elif p.is_dir():
    try:
      aot = restore_params(str(p))
    except CheckpointError as e:
      raise EvaluateError(f"--aot_checkpoint {p}: neither a model directory nor a converted AOT "
                          f"checkpoint ({e})") from e
    if not isinstance(aot, dict) or set(aot) != {"propagator", "encoder"}:
      raise EvaluateError(f"--aot_checkpoint {p}: expected a converted AOT checkpoint "
                          "{'propagator', 'encoder'} (python -m coprop_jax.convert aot)")
    seg_cfg = with_propagator(config, dict(config.propagator.to_dict(), **plain))
    want = model_io.expected_shapes(seg_cfg, int(config.data.image_size))
    try:
      check_params_match({"propagator": aot["propagator"], "encoder": aot["encoder"]},
                         {"propagator": want["propagator"], "encoder": want["encoder"]},
                         f"--aot_checkpoint {p}")
    except CheckpointError as e:
      raise EvaluateError(str(e)) from e
    prop, enc = aot["propagator"], aot["encoder"]
  else:
    raise EvaluateError(f"--aot_checkpoint {p}: does not exist")
  params = {"keyframe": main.params["keyframe"], "propagator": prop, "encoder": enc}
  return Model(seg_cfg, params, f"{main.source} (KPF) + {p.resolve()} (plain AOT propagator)")


# ---------------------------------------------------------------------------------- data
def eval_batches(config: ml_collections.ConfigDict, split: str, batch_size: int,
                 workdir: Optional[str] = None) -> tuple[Any, Iterable[dict]]:
  """(prepared builder, re-iterable host batches of `split`): batches of `batch_size` clips,
  the last one padded with empty clips (frame_valid False, video_id "") so every batch has one
  shape. `workdir` expands `{workdir}` in data paths (runlocal configs keep data in the run)."""
  from coprop_jax.utils.config import resolve_path
  from data_pipelines import input_pipeline, prepare
  d = ml_collections.ConfigDict(config.data.to_dict())
  for k in ("manual_dir", "data_dir"):
    if "{workdir}" in d[k] and not workdir:
      raise EvaluateError(f"data.{k}={d[k]!r} uses {{workdir}}: pass --workdir (e.g. the training "
                          "run's, whose data it reuses)")
    d[k] = resolve_path(d[k], workdir or "")
  b = prepare.prepare_dataset(d)
  if split not in b.info.splits or b.info.splits[split].num_examples == 0:
    raise EvaluateError(f"--split {split!r}: the {d.name} build in {d.data_dir} has no such "
                        f"examples (splits: { {k: v.num_examples for k, v in b.info.splits.items()} })")

  class Batches:
    def __iter__(self) -> Iterator[dict]:
      ds = input_pipeline.make_dataset(d, split, train=False, batch_size=batch_size, builder=b)
      for batch in ds.to_iter_dataset():
        n = len(batch["video_id"])
        if n < batch_size:
          idx = np.r_[np.arange(n), np.full(batch_size - n, n - 1)]
          batch = {k: v[idx] for k, v in batch.items()}
          batch["frame_valid"] = batch["frame_valid"].copy()
          batch["frame_valid"][n:] = False
          batch["video_id"] = np.array(list(batch["video_id"][:n]) + [""] * (batch_size - n), object)
        yield batch

  return b, Batches()


# ---------------------------------------------------------------------------------- evaluation
class Evaluator:
  """Runs methods over host batches (one pass over the data, every method per batch) into one
  `EvalReport` each. Segmenters are built once per distinct network config and share the KPF's
  compiled function when their Keyframe Processors are the same."""

  def __init__(self, config: ml_collections.ConfigDict, *, compiler_options: Optional[dict] = None):
    self.config = config
    self.semantic = int(config.keyframe.num_classes) > 1
    self.compiler_options = compiler_options
    self._segmenters: dict[str, Any] = {}
    self._vggish = None

  def new_report(self) -> report_lib.EvalReport:
    ec = self.config.eval
    return report_lib.EvalReport(
        "semantic" if self.semantic else "binary",
        num_classes=int(self.config.keyframe.num_classes) if self.semantic else None,
        alignment_iou=ec.alignment_iou, alignment_min_area=ec.alignment_min_area,
        num_thresholds=ec.f_num_thresholds, beta2=ec.f_beta2,
        moc_ids_file=os.path.expanduser(ec.moc_ids_file) if ec.moc_ids_file else "",
        avss_score_padding=bool(ec.avss_score_padding) and self.semantic)   # AVSS only

  def segmenter(self, model: Model):
    from coprop_jax import pipeline
    key = json.dumps(model_io.architecture(model.config), sort_keys=True) + json.dumps(
        {k: model.config.propagator[k] for k in ("memory_slots", "mem_gap", "length_bucket")})
    if key not in self._segmenters:
      seg = pipeline.make_segmenter(model.config, compiler_options=self.compiler_options)
      kf = json.dumps(model.config.keyframe.to_dict(), sort_keys=True, default=list)
      for other_kf, other in self._segmenters.values():
        if other_kf == kf:      # the same KPF: one compiled function for both
          seg.kpf, seg.ids_from_classes = other.kpf, other.ids_from_classes
          break
      self._segmenters[key] = (kf, seg)
    return self._segmenters[key][1]

  def _embeddings(self, model: Model, batch: dict) -> np.ndarray:
    """Per-frame audio embeddings [B, T, 128]: the batch's, or the model's VGGish on log-mels."""
    if "audio_embed" in batch:
      return np.asarray(batch["audio_embed"], np.float32)
    from coprop_jax.models.vggish import VGGish
    if self._vggish is None:
      self._vggish = jax.jit(lambda p, x: VGGish().apply({"params": p}, x),
                             compiler_options=self.compiler_options)
    lm = np.asarray(batch["audio_logmel"], np.float32)
    b, t = lm.shape[:2]
    vgg = model.params["keyframe"]["params"]["vggish"]
    return np.asarray(self._vggish(vgg, lm.reshape((b * t,) + lm.shape[2:]))).reshape(b, t, -1)

  def control_points(self, method: Method, batch: dict) -> np.ndarray:
    """[B, T] int32 control points of `method` for a host batch; each clip's first valid frame
    is a keyframe whatever the source says (there is nothing to propagate from otherwise)."""
    from coprop_jax.rcpg.core import cosine_control_points, gt_control_points
    masks = np.asarray(batch["masks"])
    fv = np.asarray(batch["frame_valid"], bool)
    gv = np.asarray(batch["gt_valid"], bool) & fv
    b, t = fv.shape
    src = method.control_points
    if isinstance(src, ControlPointTable):
      cp = np.stack([src.flags(str(v), t) if v else np.zeros(t, np.int32)
                     for v in batch["video_id"]])
    elif src == "gt":
      cp = np.stack([gt_control_points(masks[i], gv[i], binary=not self.semantic) for i in range(b)])
    elif src == "every_frame":
      cp = np.ones((b, t), np.int32)
    elif src == "first_frame":
      cp = np.zeros((b, t), np.int32)
    elif src == "data":
      cp = np.asarray(batch["control_points"], np.int32).copy()
    elif src == "cosine":
      emb = self._embeddings(method.model, batch)
      thr = float(self.config.rcpg.cosine_threshold)
      cp = np.stack([cosine_control_points(emb[i], thr) for i in range(b)])
    else:
      raise EvaluateError(f"method {method.name}: unknown control points {src!r}; expected one of "
                          f"{CONTROL_POINTS} or a ControlPointTable")
    cp = (np.asarray(cp, np.int32) * fv).astype(np.int32)
    for i in range(b):
      first = np.flatnonzero(fv[i])
      if first.size:
        cp[i, first[0]] = 1
    return cp

  def check_inputs(self, methods: Sequence[Method], batches: Iterable[dict]) -> dict:
    """Before any network runs (a pass over the data only): the control-point files list every
    video of the split, and the keyframe-mask sources hold every keyframe where the control
    points are known without the networks (not `cosine`). Returns {video id: (real frames, T)}
    (empty when no method reads such a file)."""
    need = [m for m in methods if isinstance(m.control_points, ControlPointTable)
            or hasattr(m.keyframes, "clip_masks")]
    videos: dict[str, tuple[int, int]] = {}
    if not need:
      return videos
    gaps: dict[str, list] = {m.name: [] for m in need}
    tables = {id(m.control_points): m.control_points for m in need
              if isinstance(m.control_points, ControlPointTable)}
    for batch in batches:
      fv = np.asarray(batch["frame_valid"], bool)
      real = [i for i, v in enumerate(batch["video_id"]) if v]
      for i in real:
        videos[str(batch["video_id"][i])] = (int(fv[i].sum()), fv.shape[1])
      for m in need:
        src = m.keyframes
        if not hasattr(src, "clip_masks") or m.control_points == "cosine" or (
            isinstance(m.control_points, ControlPointTable)
            and any(str(batch["video_id"][i]) not in m.control_points.table for i in real)):
          continue       # no masks needed, known only after the networks, or reported below
        cp = self.control_points(m, batch)
        for i in real:
          vid = str(batch["video_id"][i])
          gaps[m.name] += [(vid, int(tt)) for tt in np.flatnonzero(cp[i] * fv[i])
                           if not src.has(vid, int(tt))]
    for tab in tables.values():
      tab.check(videos)
    for m in need:
      if gaps[m.name]:
        g = gaps[m.name]
        raise EvaluateError(f"keyframe masks {getattr(m.keyframes, 'path', '?')}: no mask for "
                            f"{len(g)} keyframe(s) of method {m.name}, e.g. "
                            + ", ".join(f"video {v!r} frame {t}" for v, t in g[:5]))
    return videos

  def run(self, methods: Sequence[Method], batches: Iterable[dict]) -> dict[str, dict]:
    """One pass over `batches`. Returns {method name: {"report": EvalReport, "seconds": network
    + metrics time, "pipeline": keyframe counters}}."""
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
      raise EvaluateError(f"methods: repeated names {names}")
    out = {m.name: dict(report=self.new_report(), seconds=0.0,
                        pipeline=dict(num_keyframes=0, classes_dropped=0, empty_keyframes=0))
           for m in methods}
    n_batches, t_start = 0, time.perf_counter()
    for batch in batches:
      real = [i for i, v in enumerate(batch["video_id"]) if v]
      if not real:
        continue
      for m in methods:
        t0 = time.perf_counter()
        cp = self.control_points(m, batch)
        seg = self.segmenter(m.model)
        try:
          res = seg.segment(m.model.params, dict(batch, control_points=cp), keyframes=m.keyframes)
        except (KeyError, ValueError) as e:   # a keyframe mask missing or not fitting the task
          raise EvaluateError(f"method {m.name}: {e.args[0] if e.args else e}") from e
        rec = out[m.name]
        for k in rec["pipeline"]:
          rec["pipeline"][k] += int(res["report"][k])
        for i in real:
          kw = (dict(pred=res["masks"][i]) if self.semantic else dict(probs=res["fg_prob"][i]))
          rec["report"].add_video(str(batch["video_id"][i]), gt=batch["masks"][i],
                                  gt_valid=batch["gt_valid"][i], frame_valid=batch["frame_valid"][i],
                                  is_keyframe=res["is_keyframe"][i], **kw)
        rec["seconds"] += time.perf_counter() - t0
      n_batches += 1
      if n_batches % 10 == 0:
        log.info("evaluated %d batches (%.0f s)", n_batches, time.perf_counter() - t_start)
    if not n_batches:
      raise EvaluateError("the split holds no clip")
    return out


# ---------------------------------------------------------------------------------- output
def method_meta(method: Method, experiment: Mapping) -> dict:
  """What a method's summary records about it (compared when its --out is reused)."""
  return dict(experiment=dict(experiment), model=method.model.source,
              keyframes=describe(method.keyframes), control_points=describe(method.control_points),
              **method.meta)


def check_out_dir(out: str | os.PathLike, methods: Sequence[Method], experiment: Mapping,
                  report: report_lib.EvalReport) -> None:
  """Refuses an output directory holding another experiment's results (any summary there with
  another `experiment`), or this method's with other settings; nothing is written."""
  out = pathlib.Path(out)
  if out.exists() and not out.is_dir():
    raise EvaluateError(f"--out {out}: exists and is not a directory")
  if not out.is_dir():
    return
  task, settings = report.task, report.settings()
  mine = {m.name: method_meta(m, experiment) for m in methods}
  for p in sorted(out.glob("*.summary.json")):
    try:
      s = report_lib.load_summary(p)
    except report_lib.ReportError as e:
      raise EvaluateError(f"--out {out}: {e}; not an evaluation directory of this experiment") from e
    their = s.get("meta", {}).get("experiment")
    if their != dict(experiment):
      raise EvaluateError(f"--out {out} holds results of another experiment ({p.name}: {their} vs "
                          f"{dict(experiment)}); use another --out")
    name = s.get("method")
    if name in mine:
      diff = [k for k, v in (("task", task), ("settings", settings), ("meta", mine[name]))
              if s.get(k) != v]
      if diff:
        raise EvaluateError(f"--out {out}: {p.name} holds method {name!r} with other {diff} "
                            f"({ {k: s.get(k) for k in diff} }); use another --out")
  comp = out / "comparison.json"
  if comp.exists():
    try:
      their = json.loads(comp.read_text()).get("experiment")
    except ValueError as e:
      raise EvaluateError(f"--out {out}: comparison.json is not readable ({e})") from e
    if their != dict(experiment):
      raise EvaluateError(f"--out {out} holds results of another experiment (comparison.json: "
                          f"{their} vs {dict(experiment)}); use another --out")


def write_results(out: str | os.PathLike, methods: Sequence[Method], results: Mapping[str, dict],
                  experiment: Mapping) -> dict[str, dict]:
  """Writes every method's summary + per-video CSV, then comparison.md / comparison.json (each
  file atomically). Returns the summaries by method name."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  summaries = {}
  for m in methods:
    summaries[m.name] = results[m.name]["report"].write(out, m.name, method_meta(m, experiment))
  ordered = [summaries[m.name] for m in methods]
  table = report_lib.write_comparison(out / "comparison.md", ordered)
  comp = dict(format=FORMAT, experiment=dict(experiment), methods=[m.name for m in methods],
              figures={s["method"]: s["subsets"] for s in ordered},
              seconds={m.name: round(results[m.name]["seconds"], 2) for m in methods},
              pipeline={m.name: results[m.name]["pipeline"] for m in methods}, table=table)
  report_lib.write_text_atomic(out / "comparison.json", json.dumps(comp, indent=1, sort_keys=True) + "\n")
  return summaries


def run_methods(config: ml_collections.ConfigDict, methods: Sequence[Method], split: str,
                out: str | os.PathLike, *, experiment: Mapping, batch_size: int = 8,
                workdir: Optional[str] = None) -> dict[str, dict]:
  """The library entry point: checks --out and the inputs, runs every method over `split` in one
  pass, writes the files (see the module docstring). Returns the summaries by method name."""
  from coprop_jax.train.state import FAST_COMPILE
  ev = Evaluator(config, compiler_options=FAST_COMPILE if config.train.fast_compile else None)
  check_out_dir(out, methods, experiment, ev.new_report())
  _, batches = eval_batches(config, split, batch_size, workdir)
  videos = ev.check_inputs(methods, batches)
  if videos:
    log.info("inputs checked for %d videos", len(videos))
  t0 = time.perf_counter()
  results = ev.run(methods, batches)
  log.info("evaluated %s on %s/%s in %.1f s", ", ".join(m.name for m in methods),
           config.data.name, split, time.perf_counter() - t0)
  return write_results(out, methods, results, experiment)


def build_methods(config: ml_collections.ConfigDict, model: Model, names: Sequence[str], *,
                  control_points: Any = "gt", keyframe_masks: Optional[str] = None,
                  aot_checkpoint: Optional[str] = None) -> list[Method]:
  """The CLI's methods (see the module docstring) from their names."""
  from coprop_jax.eval.keyframe_masks import KeyframeMaskSource
  unknown = [n for n in names if n not in METHODS]
  if unknown:
    raise EvaluateError(f"--methods: unknown {unknown}; expected some of {list(METHODS)}")
  if "aot" in names and not aot_checkpoint:
    raise EvaluateError("method aot needs --aot_checkpoint (a plain-AOT model directory or a "
                        "converted AOT checkpoint)")
  if "external_keyframes" in names and not keyframe_masks:
    raise EvaluateError("method external_keyframes needs --keyframe_masks (PNG dir or .npz)")
  out = []
  for n in names:
    if n == "coprop":
      out.append(Method(n, model, "kpf", control_points))
    elif n == "kpf_only":
      out.append(Method(n, model, "kpf", "every_frame"))
    elif n == "gt_keyframes":
      out.append(Method(n, model, "gt", control_points))
    elif n == "aot":
      out.append(Method(n, load_aot_model(aot_checkpoint, config, model), "kpf", control_points))
    elif n == "external_keyframes":
      try:
        src = KeyframeMaskSource(keyframe_masks, binary=int(config.keyframe.num_classes) == 1)
      except (FileNotFoundError, ValueError) as e:
        raise EvaluateError(f"--keyframe_masks: {e}") from e
      out.append(Method(n, model, src, control_points))
  return out


def main(argv: Optional[list[str]] = None) -> int:
  from coprop_jax.convert.checkpoint_io import CheckpointError
  from coprop_jax.utils.config import ConfigError, load_config
  from data_pipelines.avsbench.readers import DataError
  from data_pipelines.prepare import PrepareError
  ap = argparse.ArgumentParser(
      prog="python -m coprop_jax.evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
      description=__doc__.split("\n\n")[0], epilog="Config fields are overridden with "
      "--config.<a.b>=<value>; the eval.* section sets the report (alignment_iou, moc_ids_file, ...).")
  ap.add_argument("--config", required=True, help="experiment config file[:config string]")
  ap.add_argument("--checkpoint", required=True, help="model directory (python -m coprop_jax.export)")
  ap.add_argument("--out", required=True, help="directory for the report files")
  ap.add_argument("--split", default="test")
  # not in the paper: the default control points are the GT rule (an oracle), since the paper's
  # RCPG needs an audio LLM; pass its JSONL file (python -m coprop_jax.rcpg) for the paper's setup.
  ap.add_argument("--control_points", default="gt",
                  help="gt (default: GT rule, oracle), cosine, data, or an RCPG JSONL file")
  ap.add_argument("--keyframe_masks", default=None, help="another model's keyframe masks (dir or .npz)")
  ap.add_argument("--aot_checkpoint", default=None,
                  help="plain-AOT model directory (insert=aot) or converted AOT checkpoint")
  ap.add_argument("--methods", nargs="+", default=None, help=f"some of {', '.join(METHODS)}")
  ap.add_argument("--workdir", default=None, help="expands {workdir} in data paths (runlocal)")
  ap.add_argument("--batch_size", type=int, default=8, help="clips per network call")
  args, rest = ap.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    ap.error(f"unexpected arguments {bad} (config overrides are --config.<a.b>=<value>)")
  if args.batch_size < 1:
    ap.error("--batch_size must be >= 1")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  try:
    config = load_config(args.config, rest)
    names = [n for x in (args.methods or []) for n in x.split(",") if n]
    if not names:
      names = ["coprop", "kpf_only", "gt_keyframes"] + (["aot"] if args.aot_checkpoint else []) \
          + (["external_keyframes"] if args.keyframe_masks else [])
    cps = args.control_points
    if cps not in ("gt", "cosine", "data"):
      cps = ControlPointTable(cps)
    model = load_main_model(args.checkpoint, config)
    methods = build_methods(config, model, names, control_points=cps,
                            keyframe_masks=args.keyframe_masks, aot_checkpoint=args.aot_checkpoint)
    experiment = dict(dataset=config.data.name, split=args.split, model=model.source,
                      image_size=int(config.data.image_size))
    summaries = run_methods(config, methods, args.split, args.out, experiment=experiment,
                            batch_size=args.batch_size, workdir=args.workdir)
  except (EvaluateError, report_lib.ReportError, CheckpointError, ConfigError, DataError,
          PrepareError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps({"out": str(pathlib.Path(args.out).resolve()),
                    "methods": {k: {"all": v["subsets"]["all"]} for k, v in summaries.items()}}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
