"""The one runner: trains the runs an experiment needs (reusing finished ones), exports the models,
evaluates the rows and writes the table. `python -m coprop_jax.ablate --table T` is `ablate(T, ...)`;
the demo (`coprop_jax.demo`) trains its runs through `train_runs` with the same progress bars.

The library this runner drives (kept here, in one place): `coprop_jax.train.trainer` (training,
config comparison), `coprop_jax.export` (model directories), `coprop_jax.evaluate` (the metric
path: `Method`, `run_methods`), `coprop_jax.model_io`.

Reuse: a run whose DIR/runs/<run>/train_summary.json reached the planned steps is not trained
again (its config.json must equal this one in every field the trainer compares on resume: a DIR
holding another experiment is refused, naming the fields); an unfinished run resumes. Rows that
only change inference (control points, frame subsets) share one model and one evaluation.
Rows needing an audio LLM's control points without a file are written as "not run" and nothing
is made up for them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Mapping, Optional, Sequence

import ml_collections

from coprop_jax import evaluate as ev_lib
from coprop_jax import export as export_lib
from coprop_jax import model_io
from coprop_jax.experiments import progress, recipes
from coprop_jax.train import trainer

log = logging.getLogger(__name__)
FORMAT = "coprop_ablation/1"
TABLES = recipes.TABLES
STATISTICS_TABLE = "3"     # dataset statistics: no training (experiments/statistics.py)
LLM_METHODS = recipes.LLM_METHODS
NEEDS_LLM = ("not run: needs a local audio LLM (rcpg.model_name_or_path); make its control "
             "points with python -m coprop_jax.rcpg --method {m} and pass "
             "--rcpg_control_points {m}=FILE")


class AblateError(ValueError):
  """Bad ablation input (table, config, workdir of another experiment, control-point files)."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: `stage` with config-string `insert` (propagator runs) into runs/<name>."""
  name: str
  stage: str
  insert: Optional[str] = None
  init_from: Optional[str] = None     # another Run's name whose checkpoints start this one


RUNS = {name: Run(name, r.stage, r.insert or None, r.init_from or None)
        for name, r in recipes.ablation_runs().items()}


@dataclasses.dataclass
class Row:
  """One table row: a model (keyframe run + propagator run) at a control-point source, its
  figures taken over `subset` of the frames. cells: the row's leading columns."""
  table: str
  name: str
  cells: tuple
  keyframe: str
  propagator: str
  control_points: str
  subset: str = "all"
  skip: str = ""

  @property
  def model(self) -> str:
    return f"{self.keyframe}+{self.propagator}"

  @property
  def method(self) -> str:
    """The evaluated method's name: rows differing only in `subset` share it."""
    return f"{self.table}_{self.model}_{self.control_points}".replace("+", "_")


def plan_rows(table: str, rcpg_files: Mapping[str, str]) -> list[Row]:
  """The rows of `table` (recipes.table); rows whose LLM control points have no file carry
  `skip`."""
  if table not in TABLES:
    raise AblateError(f"--table {table!r}: expected one of {', '.join(TABLES)}")
  rows = []
  for r in recipes.table(table).rows:
    cp = r["control_points"]
    if cp == "rcpg_or_gt":
      cp = "rcpg" if "rcpg" in rcpg_files else "gt"
    row = Row(table, r["name"], tuple(r["cells"]), r["keyframe"], r["propagator"], cp, r["subset"])
    if cp in LLM_METHODS and cp not in rcpg_files:
      row.skip = NEEDS_LLM.format(m=cp)
    rows.append(row)
  return rows


# not in the paper: its "original AOT" is the pretrained AOT-L; without `propagator.aot_weights`
# (no converted AOT, e.g. on synthetic data) the AOT rows use an insert=aot propagator trained
# with the same stage-2 recipe as the AIP instead (the table's note says which was used).
def runs_needed(rows: Sequence[Row], config: ml_collections.ConfigDict) -> list[Run]:
  """The training runs the rows that run need, each once, in dependency order. The plain-AOT
  propagator is not trained when `propagator.aot_weights` (a converted AOT) is set."""
  names = []
  for r in rows:
    if r.skip:
      continue
    for n in (r.keyframe, r.propagator):
      if n == "aot" and config.propagator.aot_weights:
        continue
      chain = []
      while n:
        chain.append(n)
        n = RUNS[n].init_from
      names += [c for c in reversed(chain) if c not in names]
  return [RUNS[n] for n in names]


# ------------------------------------------------------------------------------ configs
def run_spec(spec: str, run: Run) -> str:
  """The --config spec of `run`: the stage (and insert) appended to the config string (later
  keys win), so configs/coprop.py applies its per-stage settings."""
  path, _, arg = spec.partition(":")
  items = [x for x in arg.split(",") if x.strip()] + [f"stage={run.stage}"]
  if run.insert:
    items.append(f"insert={run.insert}")
  return f"{path}:{','.join(items)}"


def run_config(spec: str, overrides: Sequence[str], run: Run, workdir: pathlib.Path
               ) -> ml_collections.ConfigDict:
  """The config of `run`: data paths with {workdir} resolved to the ablation DIR (every run and
  the evaluation share one data build), init_from set to the run it starts from."""
  from coprop_jax.utils.config import ConfigError, load_config, resolve_path
  try:
    c = load_config(run_spec(spec, run), overrides)
  except ConfigError as e:
    raise AblateError(f"--config {spec}: {e} (the ablation sets stage= and insert= in the config "
                      "string: use configs/coprop.py or a config with those keys)") from e
  with c.unlocked():
    for k in ("manual_dir", "data_dir"):
      c.data[k] = resolve_path(c.data[k], str(workdir))
    if c.train.get("compilation_cache_dir"):
      c.train.compilation_cache_dir = resolve_path(c.train.compilation_cache_dir, str(workdir))
    if run.init_from:
      c.train.init_from = str(workdir / "runs" / run.init_from / "checkpoints")
    if run.stage == "kpf_finetune" and not c.data.control_points_file:
      # the keyframes of the fine-tune: the GT rule's on the train split (ensure_gt_control_points)
      c.data.control_points_file = str(gt_control_points_file(workdir))
  return c


def gt_control_points_file(workdir: pathlib.Path) -> pathlib.Path:
  return workdir / "control_points" / "gt_train.jsonl"


def ensure_gt_control_points(config: ml_collections.ConfigDict) -> None:
  """Writes `config.data.control_points_file` (the GT rule's control points of the train split,
  `python -m coprop_jax.rcpg --method gt`) when it is missing."""
  from coprop_jax.rcpg import runner as rcpg_runner
  from data_pipelines import prepare
  out = pathlib.Path(config.data.control_points_file)
  if out.is_file():
    return
  prepare.prepare_dataset(config.data)   # the tree the rule reads (built once, shared)
  out.parent.mkdir(parents=True, exist_ok=True)
  rcpg_runner.run(config.rcpg, "gt", str(out), data_dir=config.data.manual_dir,
                  layout=config.data.name.partition("_")[2], split="train", progress=False)


# ------------------------------------------------------------------------------ training
def run_is_done(cfg: ml_collections.ConfigDict, run_dir: pathlib.Path) -> bool:
  """True when `run_dir` holds a finished run of `cfg` (train_summary.json at the planned step).
  A run of another config is an error naming the fields (as the trainer's resume check)."""
  saved_path = run_dir / "config.json"
  if not saved_path.is_file():
    return False
  try:
    saved = json.loads(saved_path.read_text())
  except ValueError as e:
    raise AblateError(f"{saved_path}: not a readable config ({e}); use another --workdir") from e
  changes = trainer.config_changes(saved, trainer._jsonable(cfg))
  if changes:
    raise AblateError(f"{run_dir} holds a run made with another config; fields that differ (saved "
                      f"-> now): {'; '.join(changes)}; use another --workdir")
  summary = run_dir / "train_summary.json"
  if not summary.is_file():
    return False
  final = json.loads(summary.read_text()).get("final_step", -1)
  return cfg.train.num_steps <= 0 or final >= cfg.train.num_steps


def train_runs(configs: Mapping[str, ml_collections.ConfigDict], runs_dir: pathlib.Path,
               reuse: bool = True, after: Optional[Mapping] = None) -> dict[str, dict]:
  """Trains each run `name -> config` in order into runs_dir/<name> with a progress bar, or
  reuses a finished one (`reuse`). `after[name](config)` runs after that run (trained or reused).
  Returns {name: {"status": "trained" | "reused", "summary": train summary or None}}."""
  out = {}
  for name, cfg in configs.items():
    d = runs_dir / name
    if reuse and run_is_done(cfg, d):
      log.info("run %s: reusing %s", name, d)
      with progress.bar(f"train {name} (reused)", 1, unit="run") as b:
        b.update(1)
      out[name] = dict(status="reused", summary=json.loads((d / "train_summary.json").read_text()))
    else:
      log.info("run %s: training stage %s into %s", name, cfg.train.stage, d)
      out[name] = dict(status="trained", summary=progress.train_with_progress(name, cfg, str(d)))
    if after and name in after:
      after[name](cfg)
  return out


def model_for(spec: str, overrides: Sequence[str], row: Row, workdir: pathlib.Path) -> ev_lib.Model:
  """The row's model directory DIR/models/<kpf>+<propagator> (exported once, then reused)."""
  prop = RUNS[row.propagator]
  cfg = run_config(spec, overrides, dataclasses.replace(prop, init_from=None), workdir)
  out = workdir / "models" / row.model
  if not model_io.is_model_dir(out):
    p_src = (cfg.propagator.aot_weights if row.propagator == "aot" and cfg.propagator.aot_weights
             else str(workdir / "runs" / row.propagator))
    export_lib.export(cfg, str(workdir / "runs" / row.keyframe), p_src, str(out))
  _, params = model_io.load_model(out, expect=cfg)
  return ev_lib.Model(cfg, params, str(out))


def evaluate(config: ml_collections.ConfigDict, methods: Sequence[ev_lib.Method], split: str,
             out: pathlib.Path, experiment: Mapping, batch_size: int, workdir: str) -> dict:
  """`coprop_jax.evaluate.run_methods` with a progress bar over the split's batches."""
  from coprop_jax.train.state import FAST_COMPILE
  ev = ev_lib.Evaluator(config, compiler_options=FAST_COMPILE if config.train.fast_compile else None)
  ev_lib.check_out_dir(out, methods, experiment, ev.new_report())
  _, batches = ev_lib.eval_batches(config, split, batch_size, workdir)
  ev.check_inputs(methods, batches)
  n = sum(1 for _ in batches)
  with progress.bar(f"evaluate {len(methods)} method(s) on {split}", n, unit="batch") as b:
    results = ev.run(methods, progress.Counted(batches, b))
  return ev_lib.write_results(out, methods, results, experiment)


# ------------------------------------------------------------------------------ table
def _pct(x: Optional[float]) -> str:
  return "–" if x is None else f"{100 * x:.2f}"


def row_figures(row: Row, summary: Mapping, columns: Sequence) -> dict:
  """The row's figures: each column's metric over the column's subset (or the row's, when the
  column names none), from its own method's summary."""
  out = {}
  for label, subset, metric in columns:
    sub = summary["subsets"].get(subset or row.subset, {})
    val = sub.get(metric)
    if val is None and metric == "J":
      val = sub.get("mIoU")
    out[label] = val
  return out


def markdown(table: str, rows: Sequence[Row], figures: Mapping[str, Mapping], note: str) -> str:
  """One markdown table: the row's cells, then its columns (%) or why the row did not run."""
  rec = recipes.table(table)
  labels = [c[0] for c in rec.columns]
  head = list(rec.headers) + labels + ["Model"]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(rec.headers) + "---:|" * len(labels) + "---|"]
  for r in rows:
    if r.skip:
      vals = ["–"] * len(labels) + [r.skip]
    else:
      vals = [_pct(figures[r.name].get(k)) for k in labels] + [r.model]
    lines.append("| " + " | ".join(map(str, (*r.cells, *vals))) + " |")
  return "\n".join(lines) + "\n\n" + note + "\n"


def statistics_table(spec: str, overrides: Sequence[str], workdir: pathlib.Path, split: str) -> dict:
  """Table 3 of `split` ("all": train, val and test) -> the JSON written to DIR/table_3.json."""
  from coprop_jax.eval.report import write_text_atomic
  from coprop_jax.experiments import statistics
  cfg = run_config(spec, overrides, RUNS["kpf"], workdir)
  splits = ["train", "val", "test"] if split == "all" else [split]
  workdir.mkdir(parents=True, exist_ok=True)
  with progress.bar("dataset statistics", 1, unit="table") as b:
    res = statistics.table_3(cfg, splits, workdir)
    b.update(1)
  result = dict(format=FORMAT, table=STATISTICS_TABLE, config=spec, overrides=list(overrides),
                split=split, runs={}, **res)
  write_text_atomic(workdir / "table_3.md", res["markdown"])
  write_text_atomic(workdir / "table_3.json", json.dumps(result, indent=1) + "\n")
  return result


def ablate(table: str, spec: str, overrides: Sequence[str], workdir: str | os.PathLike, *,
           split: str = "test", rcpg_files: Optional[Mapping[str, str]] = None,
           batch_size: int = 8) -> dict:
  """Trains, exports and evaluates what `table` needs; writes DIR/table_<t>.md and .json (and the
  evaluation files in DIR/eval_<t>/). Returns the JSON written."""
  from coprop_jax.eval.report import write_text_atomic
  rcpg_files = dict(rcpg_files or {})
  bad = sorted(set(rcpg_files) - set(LLM_METHODS))
  if bad:
    raise AblateError(f"--rcpg_control_points: unknown method(s) {bad}; expected {list(LLM_METHODS)}")
  workdir = pathlib.Path(workdir).expanduser().resolve()
  if table == STATISTICS_TABLE:
    return statistics_table(spec, overrides, workdir, split)
  rows = plan_rows(table, rcpg_files)
  rec = recipes.table(table)
  # The evaluation's config: the experiment's own dataset (a stage-2 config may train on another,
  # e.g. S4's propagator on MS3) and eval.* / rcpg.* settings.
  base = run_config(spec, overrides, RUNS["kpf"], workdir)
  tables = {m: ev_lib.ControlPointTable(f) for m, f in rcpg_files.items()}   # checked up front
  runs = runs_needed(rows, base)
  workdir.mkdir(parents=True, exist_ok=True)
  configs = {r.name: run_config(spec, overrides, r, workdir) for r in runs}
  for r in runs:
    if r.stage == "kpf_finetune" and configs[r.name].data.control_points_file == str(
        gt_control_points_file(workdir)):
      ensure_gt_control_points(configs[r.name])
  done = train_runs(configs, workdir / "runs")
  status = {k: v["status"] for k, v in done.items()}
  methods, models = {}, {}
  for r in rows:
    if r.skip or r.method in methods:
      continue
    if r.model not in models:
      with progress.bar(f"export {r.model}", 1, unit="model") as b:
        models[r.model] = model_for(spec, overrides, r, workdir)
        b.update(1)
    cp = tables[r.control_points] if r.control_points in tables else r.control_points
    methods[r.method] = ev_lib.Method(r.method, models[r.model], "kpf", cp,
                                      meta=dict(model_dir=r.model, control_points=r.control_points))
  figures, summaries = {}, {}
  if methods:
    experiment = dict(dataset=base.data.name, split=split, table=table, workdir=str(workdir))
    summaries = evaluate(base, list(methods.values()), split, workdir / f"eval_{table}",
                         experiment, batch_size, str(workdir))
    figures = {r.name: row_figures(r, summaries[r.method], rec.columns) for r in rows if not r.skip}
  note = (f"{base.data.name} {split} split; figures in % (AVSBench J/F; Alignment Rate with IoU >= "
          f"{base.eval.alignment_iou}). Runs: " + ", ".join(f"{k} ({v})" for k, v in status.items())
          + ".")
  if rec.note:
    note += " " + rec.note
  cps = sorted({r.control_points for r in rows if not r.skip})
  if table in ("5", "6", "AR"):
    note += f" Control points: {', '.join(cps)}."
  if "aot" in {r.propagator for r in rows if not r.skip}:
    note += (" Plain AOT: the converted AOT of propagator.aot_weights, untrained here."
             if base.propagator.aot_weights else
             " Plain AOT: no propagator.aot_weights, so an insert=aot propagator trained with the "
             "same stage-2 recipe (not the paper's pretrained AOT).")
  md = markdown(table, rows, figures, note)
  result = dict(format=FORMAT, table=table, config=spec, overrides=list(overrides), split=split,
                runs=status, rows=[dict(dataclasses.asdict(r), method=r.method,
                                        figures=figures.get(r.name)) for r in rows], markdown=md)
  write_text_atomic(workdir / f"table_{table}.md", md)
  write_text_atomic(workdir / f"table_{table}.json", json.dumps(result, indent=1) + "\n")
  return result
