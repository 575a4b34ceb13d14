"""The paper's ablations by config: Table 2a (KPF / RCPG / AIP on or off), 2b (control points:
cosine / 1step / 3step / rcpg / gt) and 5 (audio-insert levels: none / 1 / 4).

  python -m coprop_jax.ablate --table 2a|2b|5 --config configs/coprop.py:dataset=ms3,runlocal=True \
      --workdir DIR [--split test] [--rcpg_control_points rcpg=FILE 1step=FILE ...] \
      [--batch_size 8] [--config.a.b=value ...]

Each row is a Co-Prop model (a Keyframe Processor run + a propagator run) and a control-point
source, evaluated on `--split` with `coprop_jax.evaluate` (J, F, Alignment Rate). The runs a
table needs are trained with `coprop_jax.train.trainer.train_and_evaluate` into DIR/runs/<run>
(the --config with `stage=` / `insert=` set in its config string, so each stage gets the
settings configs/coprop.py gives it), exported to DIR/models/<kpf>+<propagator>, and REUSED:
  * a row that only changes inference (the control points: every row of 2b) uses the same model;
  * a run whose DIR/runs/<run>/train_summary.json reached the planned steps is not trained again
    (its config.json must equal this one in every field the trainer compares on resume: a DIR
    holding another experiment is refused, naming the fields); an unfinished run resumes;
  * the tables share DIR: 2a, 2b and 5 all reuse `kpf`, `kpf_finetune` and `aip_4layer`.
Runs: kpf (stage kpf), kpf_finetune (stage kpf_finetune from kpf's checkpoints), aip_4layer /
aip_1layer / aot (stage propagator with insert=4layer / 1layer / aot).

Rows:
  2a  KPF x RCPG x AIP as the paper's four rows: KPF off = the stage-1 KPF without the keyframe
      fine-tune; RCPG off = cosine control points; AIP off = plain AOT (no audio anywhere).
  2b  the fine-tuned KPF + the 4-layer AIP at cosine, 1step, 3step, rcpg and gt (oracle)
      control points.
  5   the fine-tuned KPF + a propagator with insert aot / 1layer / 4layer.
Control points "1step", "3step" and "rcpg" come from an audio LLM (`python -m coprop_jax.rcpg
--method M`, rcpg.model_name_or_path); give their JSONL files with --rcpg_control_points M=FILE.
Rows without one are written to the table as "not run: needs a local audio LLM
(rcpg.model_name_or_path) ..." and nothing is made up for them.

Files: DIR/table_<t>.md (one markdown table), DIR/table_<t>.json, and the evaluation files of
every run row in DIR/eval_<t>/ (coprop_jax.evaluate's summaries, per-video CSVs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pathlib
import sys
from typing import Any, Mapping, Optional, Sequence

import ml_collections

from coprop_jax import evaluate as ev_lib
from coprop_jax import model_io

log = logging.getLogger(__name__)
FORMAT = "coprop_ablation/1"
TABLES = ("2a", "2b", "5")
LLM_METHODS = ("1step", "3step", "rcpg")
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


RUNS = {r.name: r for r in (
    Run("kpf", "kpf"),
    Run("kpf_finetune", "kpf_finetune", init_from="kpf"),
    Run("aip_4layer", "propagator", "4layer"),
    Run("aip_1layer", "propagator", "1layer"),
    Run("aot", "propagator", "aot"),
)}


@dataclasses.dataclass
class Row:
  """One table row: a model (keyframe run + propagator run) at a control-point source.
  control_points: "cosine" | "gt" | an LLM method name (1step / 3step / rcpg).
  cells: the row's leading columns (e.g. KPF / RCPG / AIP marks)."""
  table: str
  name: str
  cells: tuple
  keyframe: str
  propagator: str
  control_points: str
  skip: str = ""

  @property
  def model(self) -> str:
    return f"{self.keyframe}+{self.propagator}"


HEADERS = {"2a": ("KPF", "RCPG", "AIP"), "2b": ("Control points",), "5": ("Propagator",)}


def plan_rows(table: str, rcpg_files: Mapping[str, str]) -> list[Row]:
  """The rows of `table`; rows whose LLM control points have no file carry `skip`."""
  if table not in TABLES:
    raise AblateError(f"--table {table!r}: expected one of {', '.join(TABLES)}")
  mark = lambda b: "✓" if b else "✗"
  rows = []
  if table == "2a":
    for kpf_ft, rcpg, aip in ((0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1)):
      rows.append(Row(table, f"kpf{kpf_ft}_rcpg{rcpg}_aip{aip}", (mark(kpf_ft), mark(rcpg), mark(aip)),
                      "kpf_finetune" if kpf_ft else "kpf", "aip_4layer" if aip else "aot",
                      "rcpg" if rcpg else "cosine"))
  elif table == "2b":
    for cp in ("cosine", "1step", "3step", "rcpg", "gt"):
      rows.append(Row(table, f"cp_{cp}", (cp,), "kpf_finetune", "aip_4layer", cp))
  else:
    # not in the paper: it does not say which control points Table 5 used; here RCPG's when its
    # file is given, else the GT rule (oracle), the same for every row (only the propagator varies).
    cp = "rcpg" if "rcpg" in rcpg_files else "gt"
    for label, run in (("AOT", "aot"), ("1-layer", "aip_1layer"), ("4-layer", "aip_4layer")):
      rows.append(Row(table, f"insert_{run}", (label,), "kpf_finetune", run, cp))
  for r in rows:
    if r.control_points in LLM_METHODS and r.control_points not in rcpg_files:
      r.skip = NEEDS_LLM.format(m=r.control_points)
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
    if run.init_from:
      c.train.init_from = str(workdir / "runs" / run.init_from / "checkpoints")
  return c


# ------------------------------------------------------------------------------ training
def run_is_done(cfg: ml_collections.ConfigDict, run_dir: pathlib.Path) -> bool:
  """True when `run_dir` holds a finished run of `cfg` (train_summary.json at the planned step).
  A run of another config is an error naming the fields (as the trainer's resume check)."""
  from coprop_jax.train import trainer
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


def train_runs(spec: str, overrides: Sequence[str], runs: Sequence[Run], workdir: pathlib.Path
               ) -> dict[str, str]:
  """Trains (or reuses) every run. Returns {run name: "trained" | "reused"}."""
  from coprop_jax.train.trainer import train_and_evaluate
  status = {}
  for run in runs:
    cfg = run_config(spec, overrides, run, workdir)
    d = workdir / "runs" / run.name
    if run_is_done(cfg, d):
      log.info("run %s: reusing %s", run.name, d)
      status[run.name] = "reused"
      continue
    log.info("run %s: training stage %s%s into %s", run.name, run.stage,
             f" (insert={run.insert})" if run.insert else "", d)
    train_and_evaluate(cfg, str(d))
    status[run.name] = "trained"
  return status


def model_for(spec: str, overrides: Sequence[str], row: Row, workdir: pathlib.Path) -> ev_lib.Model:
  """The row's model directory DIR/models/<kpf>+<propagator> (exported once, then reused)."""
  from coprop_jax import export
  prop = RUNS[row.propagator]
  cfg = run_config(spec, overrides, dataclasses.replace(prop, init_from=None), workdir)
  out = workdir / "models" / row.model
  if not model_io.is_model_dir(out):
    p_src = (cfg.propagator.aot_weights if row.propagator == "aot" and cfg.propagator.aot_weights
             else str(workdir / "runs" / row.propagator))
    export.export(cfg, str(workdir / "runs" / row.keyframe), p_src, str(out))
  _, params = model_io.load_model(out, expect=cfg)
  return ev_lib.Model(cfg, params, str(out))


# ------------------------------------------------------------------------------ table
def _pct(x: Optional[float]) -> str:
  return "–" if x is None else f"{100 * x:.2f}"


def markdown(table: str, rows: Sequence[Row], figures: Mapping[str, Mapping], note: str) -> str:
  """One markdown table: the row's cells, then J, F, Alignment Rate (all frames, %) or why the
  row did not run."""
  head = HEADERS[table] + ("J", "F", "Align.", "Model")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(HEADERS[table]) + "---:|---:|---:|---|"]
  for r in rows:
    if r.skip:
      vals = ("–", "–", "–", r.skip)
    else:
      f = figures[r.name]
      vals = (_pct(f.get("J", f.get("mIoU"))), _pct(f.get("F")), _pct(f.get("alignment_rate")), r.model)
    lines.append("| " + " | ".join(map(str, (*r.cells, *vals))) + " |")
  return "\n".join(lines) + "\n\n" + note + "\n"


def ablate(table: str, spec: str, overrides: Sequence[str], workdir: str | os.PathLike, *,
           split: str = "test", rcpg_files: Optional[Mapping[str, str]] = None,
           batch_size: int = 8) -> dict:
  """The library entry point (see the module docstring). Returns the JSON written."""
  from coprop_jax.eval.report import write_text_atomic
  rcpg_files = dict(rcpg_files or {})
  bad = sorted(set(rcpg_files) - set(LLM_METHODS))
  if bad:
    raise AblateError(f"--rcpg_control_points: unknown method(s) {bad}; expected {list(LLM_METHODS)}")
  workdir = pathlib.Path(workdir).expanduser().resolve()
  rows = plan_rows(table, rcpg_files)
  # The evaluation's config: the experiment's own dataset (a stage-2 config may train on another,
  # e.g. S4's propagator on MS3) and eval.* / rcpg.* settings.
  base = run_config(spec, overrides, RUNS["kpf"], workdir)
  tables = {m: ev_lib.ControlPointTable(f) for m, f in rcpg_files.items()}   # checked up front
  runs = runs_needed(rows, base)
  workdir.mkdir(parents=True, exist_ok=True)
  status = train_runs(spec, overrides, runs, workdir)
  methods, models = [], {}
  for r in rows:
    if r.skip:
      continue
    if r.model not in models:
      models[r.model] = model_for(spec, overrides, r, workdir)
    cp = tables[r.control_points] if r.control_points in tables else r.control_points
    methods.append(ev_lib.Method(f"{table}_{r.name}", models[r.model], "kpf", cp,
                                 meta=dict(row=r.name, model_dir=r.model)))
  figures = {}
  if methods:
    experiment = dict(dataset=base.data.name, split=split, table=table, workdir=str(workdir))
    summaries = ev_lib.run_methods(base, methods, split, workdir / f"eval_{table}",
                                   experiment=experiment, batch_size=batch_size, workdir=str(workdir))
    figures = {r.name: summaries[f"{table}_{r.name}"]["subsets"]["all"] for r in rows if not r.skip}
  note = (f"{base.data.name} {split} split; figures in % over all frames with GT (AVSBench J/F; "
          f"Alignment Rate with IoU >= {base.eval.alignment_iou}). Runs: "
          + ", ".join(f"{k} ({v})" for k, v in status.items()) + ".")
  if table == "5":
    note += f" Control points: {rows[0].control_points} for every row."
  if "aot" in {r.propagator for r in rows if not r.skip}:
    note += (" Plain AOT: the converted AOT of propagator.aot_weights, untrained here."
             if base.propagator.aot_weights else
             " Plain AOT: no propagator.aot_weights, so an insert=aot propagator trained with the "
             "same stage-2 recipe (not the paper's pretrained AOT).")
  md = markdown(table, rows, figures, note)
  result = dict(format=FORMAT, table=table, config=spec, overrides=list(overrides), split=split,
                runs=status, rows=[dict(dataclasses.asdict(r), figures=figures.get(r.name))
                                   for r in rows], markdown=md)
  write_text_atomic(workdir / f"table_{table}.md", md)
  write_text_atomic(workdir / f"table_{table}.json", json.dumps(result, indent=1) + "\n")
  return result


def main(argv: Optional[list[str]] = None) -> int:
  from coprop_jax.convert.checkpoint_io import CheckpointError
  from coprop_jax.eval.report import ReportError
  from coprop_jax.train.trainer import USER_ERRORS
  from coprop_jax.utils.config import ConfigError
  ap = argparse.ArgumentParser(prog="python -m coprop_jax.ablate", description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="Config fields are overridden with --config.<a.b>=<value>.")
  ap.add_argument("--table", required=True, choices=TABLES)
  ap.add_argument("--config", required=True, help="experiment config file[:config string] (configs/coprop.py)")
  ap.add_argument("--workdir", required=True, help="runs, models, evaluations and tables go here")
  ap.add_argument("--split", default="test")
  ap.add_argument("--rcpg_control_points", nargs="*", default=[], metavar="METHOD=FILE",
                  help="control-point JSONL files of the LLM methods (1step, 3step, rcpg)")
  ap.add_argument("--batch_size", type=int, default=8, help="clips per network call in evaluation")
  args, rest = ap.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    ap.error(f"unexpected arguments {bad} (config overrides are --config.<a.b>=<value>)")
  files = {}
  for item in args.rcpg_control_points:
    m, sep, f = item.partition("=")
    if not sep or not f:
      ap.error(f"--rcpg_control_points {item!r}: expected METHOD=FILE")
    files[m] = f
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  try:
    res = ablate(args.table, args.config, rest, args.workdir, split=args.split, rcpg_files=files,
                 batch_size=args.batch_size)
  except (AblateError, ev_lib.EvaluateError, ReportError, CheckpointError, ConfigError,
          FileExistsError, FileNotFoundError, *USER_ERRORS) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(res["markdown"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
