"""The paper's tables by config: Table 3 (dataset statistics, no training), 2a (KPF / RCPG / AIP on or off), 2b (control points:
cosine / 1step / 3step / rcpg / gt), 5 (audio-insert levels: none / 1 / 4), 6 (keyframes vs
normal frames) and AR (Alignment Rate: Co-Prop, KPF on every frame, AOT from frame 0; Fig. 3).

  python -m coprop_jax.ablate --table 2a|2b|5|6|AR --config configs/coprop.py:dataset=ms3,runlocal=True \
      --workdir DIR [--split test] [--rcpg_control_points rcpg=FILE 1step=FILE ...] \
      [--batch_size 8] [--config.a.b=value ...]

The rows and the runs they need are data (`coprop_jax/experiments/recipes.py`), executed by
`coprop_jax.experiments.runner`: each row is a Co-Prop model (a Keyframe Processor run + a
propagator run) and a control-point source, evaluated on `--split` (J, F, Alignment Rate). Runs
are trained into DIR/runs/<run> (the --config with `stage=` / `insert=` set in its config
string), exported to DIR/models/<kpf>+<propagator>, and REUSED: rows that only change inference
share one model; a finished run is not trained again (a DIR holding another experiment is
refused, naming the fields); an unfinished run resumes; all tables share DIR.
Runs: kpf, kpf_finetune (from kpf), aip_4layer / aip_1layer / aot (stage propagator with
insert=4layer / 1layer / aot). Control points "1step", "3step" and "rcpg" come from an audio LLM
(`python -m coprop_jax.rcpg --method M`); give their files with --rcpg_control_points M=FILE. Rows
without one read "not run: needs a local audio LLM ..." and nothing is made up for them.

Each training run and the evaluation show a progress bar; every log line (other libraries'
included) goes to DIR/ablate.log. Files: DIR/table_<t>.md, DIR/table_<t>.json, DIR/eval_<t>/.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from coprop_jax import evaluate as ev_lib
from coprop_jax.experiments import progress
from coprop_jax.experiments.runner import (  # noqa: F401  (the ablation API, re-exported)
    FORMAT, LLM_METHODS, NEEDS_LLM, RUNS, STATISTICS_TABLE, TABLES, AblateError, Row, Run, ablate, markdown,
    model_for, plan_rows, run_config, run_is_done, run_spec, runs_needed)


def main(argv: Optional[list[str]] = None) -> int:
  import pathlib
  from coprop_jax.convert.checkpoint_io import CheckpointError
  from coprop_jax.eval.report import ReportError
  from coprop_jax.train.trainer import USER_ERRORS
  from coprop_jax.utils.config import ConfigError
  ap = argparse.ArgumentParser(prog="python -m coprop_jax.ablate", description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog="Config fields are overridden with --config.<a.b>=<value>.")
  ap.add_argument("--table", required=True, choices=(STATISTICS_TABLE, *TABLES))
  ap.add_argument("--config", required=True, help="experiment config file[:config string] (configs/coprop.py)")
  ap.add_argument("--workdir", required=True, help="runs, models, evaluations and tables go here")
  ap.add_argument("--split", default="test", help="evaluation split; table 3: a split or 'all'")
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
  wd = pathlib.Path(args.workdir).expanduser().resolve()
  undo = progress.quiet_libraries(wd / "ablate.log")
  try:
    res = ablate(args.table, args.config, rest, wd, split=args.split, rcpg_files=files,
                 batch_size=args.batch_size)
  except (AblateError, ev_lib.EvaluateError, ReportError, CheckpointError, ConfigError,
          FileExistsError, FileNotFoundError, *USER_ERRORS) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  finally:
    undo()
  print(res["markdown"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
