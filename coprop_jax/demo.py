"""Co-Prop end to end on synthetic data: the README's first command.

  pip install -e . && python -m coprop_jax.demo [--workdir /tmp/coprop_demo]
  python -m coprop_jax.demo --config configs/demo.py:smoke=True --workdir /tmp/demo_smoke

Stages (one progress bar each), all through the library's own entry points; the training runs
and the evaluated methods are recipes (coprop_jax.experiments.recipes.demo_runs / demo_methods)
trained by the experiments runner:
  1. data            MOC-like synthetic MS3 clips (data_pipelines.moc_synth; "moc_ambiguous" by
                     default, "moc" with configs/demo.py:data=clean) -> TFDS build
                     (data_pipelines.prepare.prepare_dataset)
  2. control points  the generator's own control points of every split (training: the keyframe
                     fine-tune and stage 2 read them; evaluation: "Co-Prop, GT control points"),
                     the binary GT rule on the masks scored against them, and the `cosine` method
                     on the evaluation split's audio (coprop_jax.rcpg.runner; no audio LLM on a
                     CPU box), scored against them
  3-8. training      coprop_jax.train.trainer.train_and_evaluate, one run each under runs/:
                     kpf (all frames) -> kpf_finetune (keyframes, from kpf), kpf_blind (all frames,
                     keyframe.audio_mode="zero"), propagator_pretrain (the tracking prior: a plain
                     propagator on "tracking" clips, saved as runs/propagator_pretrain/prior_weights),
                     propagator (stage 2, the paper's 4-level audio insert) and propagator_aot
                     (stage 2 without audio: INSERT_VARIANTS["aot"]), both from the prior
  8. model dirs      coprop_jax.export: model/ (fine-tuned KPF + propagator; the notebooks load it)
                     and model_aot/ (the same KPF + the plain-AOT propagator)
  9. evaluation      coprop_jax.evaluate on the test split: Co-Prop (cosine control points), Co-Prop
                     with GT control points, KPF only, the audio-blind KPF, plain AOT propagation
                     (the first frame's KPF mask propagated through the clip, no audio), and
                     Co-Prop's keyframes with the plain-AOT propagator (paper Table 5's "AOT")
  10. pictures       for the first `demo.num_shown` test clips whose source switches: an overlay
                     grid and a timeline (coprop_jax.eval.visualize), Co-Prop's and plain AOT's

Workdir (`--workdir`, default /tmp/coprop_demo):
  data/                     synthetic tree + TFDS build (reused when made from the same settings)
  control_points/           gt.jsonl (the generator's, every split), gt_rule_<split>.jsonl and
                            gt_rule_vs_truth.json (the binary mask rule), cosine_<split>.jsonl,
                            cosine_vs_gt.json
  runs/<stage>/             trainer workdirs: checkpoints/, tensorboard/, train_summary.json
  model/, model_aot/        model directories (coprop_jax.model_io)
  eval/                     comparison.md + comparison.json (the metrics table), per-method
                            <method>.summary.json and <method>.per_video.csv
  pictures/                 <video>_overlay.png, <video>_timeline.png, <video>_timeline_aot.png
  xla_cache/                persistent XLA compilation cache shared by the stages
  demo_summary.json, demo.log   figures, targets, times and paths; the full log
A rerun in the same workdir starts the stages again (runs/, model*, eval/, pictures/ are
replaced) but reuses the data and the compilation cache; `--resume` also keeps runs/ (each run
continues from its last checkpoint, or is complete already). A non-empty workdir that no demo wrote
is refused.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Optional

import ml_collections
import numpy as np

from coprop_jax.experiments import progress, recipes, runner
from coprop_jax.models.propagator import INSERT_VARIANTS
from coprop_jax.utils.config import resolve_path

log = logging.getLogger(__name__)
MARKER = ".coprop_demo"
OUTPUTS = ("runs", "model", "model_aot", "eval", "pictures", "control_points",
           "demo_summary.json")
EVAL_BATCH = 8   # clips per evaluation call (metrics are per video: the size changes no figure)
DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py")


class DemoError(RuntimeError):
  """The demo cannot run as asked (workdir, config); the message says what to do."""


# ----------------------------------------------------------------------------- workdir, config
def prepare_workdir(workdir: str, resume: bool = False) -> pathlib.Path:
  """Creates `workdir` (or reuses one a demo wrote: its previous outputs are removed, the data and
  the compilation cache kept; with `resume` the training runs and control points are kept too,
  so each run continues from its last checkpoint). A non-empty directory without the demo's
  marker is refused."""
  wd = pathlib.Path(workdir).expanduser().resolve()
  if wd.exists() and not wd.is_dir():
    raise DemoError(f"--workdir {wd}: exists and is not a directory")
  if wd.is_dir() and any(wd.iterdir()) and not (wd / MARKER).exists():
    raise DemoError(f"--workdir {wd}: not empty and not written by the demo (no {MARKER}); "
                    "choose an empty or new directory")
  wd.mkdir(parents=True, exist_ok=True)
  (wd / MARKER).write_text("written by python -m coprop_jax.demo\n")
  for name in OUTPUTS:
    if resume and name in ("runs", "control_points"):
      continue
    p = wd / name
    if p.is_dir():
      shutil.rmtree(p)
    elif p.exists():
      p.unlink()
  return wd


def resolve_config(config: ml_collections.ConfigDict, workdir: pathlib.Path
                   ) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` whose `{workdir}` paths point into the demo's workdir (so every
  stage's run shares the data and the compilation cache)."""
  if "demo" not in config:
    raise DemoError("config has no `demo` section: use configs/demo.py (or a config built on it)")
  c = ml_collections.ConfigDict(config.to_dict())
  for sec, key in (("data", "manual_dir"), ("data", "data_dir"),
                   ("train", "compilation_cache_dir")):
    c[sec][key] = resolve_path(c[sec][key], str(workdir))
  return c


def stage_configs(config: ml_collections.ConfigDict, workdir: pathlib.Path
                  ) -> dict[str, ml_collections.ConfigDict]:
  """The config of each training run (name -> config, in training order), from the demo's run
  recipes (`coprop_jax.experiments.recipes.demo_runs`) and the demo config: the stage, its
  number of steps (`demo.*_steps`), where it starts from, the KPF's audio and the propagator's
  insert variant. Every run reads the generator's control points (control_points/gt.jsonl)
  except the tracking prior, which has its own "tracking" data (frame 0 its only reference)."""
  dm, runs = config.demo, workdir / "runs"
  gt_file = str(workdir / "control_points" / "gt.jsonl")
  prior = str(runs / "propagator_pretrain" / "prior_weights")
  base = {k: v for k, v in config.to_dict().items() if k != "demo"}
  out = {}
  for r in recipes.demo_runs():
    name = r.name
    sec, _, field = r.steps.partition(".")
    steps = int(config[sec][field])
    if r.prior and steps <= 0:
      continue
    c = ml_collections.ConfigDict(base)   # (the demo section is the demo's, not saved with runs)
    c.train.stage = r.stage
    c.train.num_steps = steps
    c.data.control_points_file = gt_file
    if r.init_from:
      c.train.init_from = str(runs / r.init_from / "checkpoints")
    for sec, fields in r.overrides.items():
      c[sec].update(fields)
    if r.insert:
      c.propagator.update(INSERT_VARIANTS[r.insert])
    if r.prior:
      # not in the paper: the tracking prior (configs/parts/demo.py, pretrain_steps).
      c.data.control_points_file = ""
      c.data.manual_dir = str(workdir / "data" / "tracking" / "synthetic")
      c.data.data_dir = str(workdir / "data" / "tracking" / "tfds")
      c.data.synthetic.generator = "tracking"
    elif r.stage == "propagator" and dm.pretrain_steps > 0:
      c.propagator.aot_weights = prior
    out[name] = c
  return out


def save_tracking_prior(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> str:
  """The pretraining run's propagator and encoder saved as a converted-AOT checkpoint
  ({"propagator", "encoder"}), which the stage-2 runs load through `propagator.aot_weights`
  exactly as they would load the paper's AOT-L (audio paths start as no-ops)."""
  from coprop_jax import export, model_io
  from coprop_jax.convert.checkpoint_io import save_params
  run = workdir / "runs" / "propagator_pretrain"
  out = run / "prior_weights"
  shapes = model_io.expected_shapes(config, int(config.data.image_size))
  part, _, _ = export.load_propagator_part(str(run), config, shapes)
  save_params({"propagator": part["propagator"], "encoder": part["encoder"]}, out, force=True)
  return str(out)


# ----------------------------------------------------------------------------- progress
_bar = progress.bar
_Counted = progress.Counted


# ----------------------------------------------------------------------------- stages
def build_data(config: ml_collections.ConfigDict) -> Any:
  """Stage 1: the synthetic tree and its TFDS build; returns the builder."""
  from data_pipelines import prepare
  return prepare.prepare_dataset(config.data)


def write_control_points(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                         splits: list[str]) -> dict[str, Any]:
  """Stage 2: RCPG `gt` control points of every split (one file, gt.jsonl) and the evaluation
  method's (`rcpg.method`: "cosine" on the data's own audio embedding, or "gt") for
  `demo.split`, scored against GT (coprop_jax.rcpg.runner.evaluate_files). Returns the paths and
  that score."""
  from coprop_jax import audio as audio_lib
  from coprop_jax.rcpg import jsonl, runner
  d, rc = config.data, config.rcpg
  out = workdir / "control_points"
  out.mkdir(parents=True, exist_ok=True)
  from data_pipelines import moc_synth
  layout = d.name.partition("_")[2]
  split = config.demo.split
  for s in splits:
    # the GT rule on the binary masks (what real MS3 data allows), scored against the truth below
    runner.run(rc, "gt", str(out / f"gt_rule_{s}.jsonl"), data_dir=d.manual_dir, layout=layout,
               split=s, progress=False)
  # The control points that train and evaluate: the generator's own (the frames where the set of
  # sounding objects changes, exact), not the binary rule, which misses a source switching to an
  # object of equal size and flags fast-moving or resizing objects.
  truth = moc_synth.true_control_points(layout, d.synthetic.num_videos, d.image_size,
                                        d.synthetic.seed, d.synthetic.generator)
  jsonl.write_atomic(str(out / "gt.jsonl"), [dict(video_id=v, **r) for v, r in truth.items()])
  jsonl.write_atomic(str(out / f"gt_{split}.jsonl"),
                     [dict(video_id=v, **r) for v, r in truth.items() if r["split"] == split])
  rule_score = runner.evaluate_files(str(out / f"gt_rule_{split}.jsonl"), str(out / f"gt_{split}.jsonl"))
  (out / "gt_rule_vs_truth.json").write_text(json.dumps(rule_score, indent=1, sort_keys=True) + "\n")
  method = rc.method
  if method not in ("gt", "cosine"):
    raise DemoError(f"rcpg.method={method!r}: the demo computes 'gt' or 'cosine' control points "
                    "(the audio-LLM methods need a local Qwen model: python -m coprop_jax.rcpg)")
  pred = out / f"{method}_{split}.jsonl"
  embed = None
  if method == "cosine":
    if not d.audio_embed:
      raise DemoError("rcpg.method='cosine' in the demo embeds the audio like the data "
                      "(data.audio_embed); it is empty")
    embed = lambda vid, logmel: audio_lib.frame_embeddings(logmel, d.audio_embed)
  if method != "gt":   # "gt": the generator's control points written above
    runner.run(rc, method, str(pred), data_dir=d.manual_dir, layout=layout, split=split,
               embed_fn=embed, progress=False)
  score = runner.evaluate_files(str(pred), str(out / f"gt_{split}.jsonl"))
  (out / f"{method}_vs_gt.json").write_text(json.dumps(score, indent=1, sort_keys=True) + "\n")
  return dict(gt=str(out / "gt.jsonl"), eval=str(pred), method=method, score=score,
              gt_rule_score=rule_score)


def train_stage(name: str, config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
  """One training run under runs/<name> with a progress bar (a finished run of the same config,
  kept by --resume, is reused)."""
  return runner.train_runs({name: config}, workdir / "runs")[name]["summary"]


def export_models(configs: dict, workdir: pathlib.Path) -> dict[str, str]:
  """Stage 8: model/ (fine-tuned KPF + audio-insert propagator) and model_aot/ (the same KPF +
  the plain-AOT propagator), through coprop_jax.export."""
  from coprop_jax import export
  runs = workdir / "runs"
  out = {}
  with _bar("model directories", 2, unit="dir") as bar:
    for name, prop in (("model", "propagator"), ("model_aot", "propagator_aot")):
      cfg = ml_collections.ConfigDict(configs[prop].to_dict())
      cfg.train.stage = "kpf_finetune"   # a model directory's config: the KPF's stage
      out[name] = str(export.export(cfg, str(runs / "kpf_finetune"), str(runs / prop),
                                    str(workdir / name)))
      bar.update(1)
  return out


def _zero_audio(batches):
  """The batches with all-zero audio (what the audio-blind KPF was trained on)."""
  class Zeroed:
    def __iter__(self):
      for b in batches:
        yield dict(b, **{k: np.zeros_like(b[k]) for k in ("audio_embed", "audio_logmel") if k in b})
  return Zeroed()


def evaluate_methods(config: ml_collections.ConfigDict, configs: dict, workdir: pathlib.Path,
                     models: dict[str, str], control_points: dict) -> dict:
  """Stage 9: the metrics table of `demo.split` (coprop_jax.evaluate), written to eval/.
  `config`: the demo config; `configs`: the runs' (stage_configs).
  Returns {"summaries": {method: summary}, "methods": [...], "table": markdown}."""
  from coprop_jax import evaluate as ev_lib
  from coprop_jax import export, model_io
  from coprop_jax.train.state import FAST_COMPILE
  split = config.demo.split
  config = configs["kpf_finetune"]   # the model's networks (model/ was exported with them)
  main = ev_lib.load_main_model(models["model"], config)
  aot = ev_lib.load_aot_model(models["model_aot"], config, main)
  blind_cfg = configs["kpf_blind"]
  shapes = model_io.expected_shapes(blind_cfg, int(config.data.image_size))
  blind_kpf, where = export.load_keyframe_part(str(workdir / "runs" / "kpf_blind"), blind_cfg, shapes)
  blind = ev_lib.Model(config, dict(main.params, keyframe=blind_kpf), f"{where} (audio-blind KPF)")
  models = dict(model=main, model_aot=aot, blind=blind)
  cps = dict(eval=ev_lib.ControlPointTable(control_points["eval"]),
             truth=ev_lib.ControlPointTable(control_points["gt"]))
  # Labels: coprop_jax.eval.report.METHOD_LABELS; the list: experiments.recipes.demo_methods.
  recipe = recipes.demo_methods()
  methods = [ev_lib.Method(m["name"], models[m["model"]], m["keyframes"],
                           cps.get(m["control_points"], m["control_points"])) for m in recipe]
  zeroed = {m["name"] for m in recipe if m["zero_audio"]}
  evaluator = ev_lib.Evaluator(config, compiler_options=FAST_COMPILE)
  _, batches = ev_lib.eval_batches(config, split, EVAL_BATCH)
  evaluator.check_inputs(methods, batches)
  n = sum(1 for _ in batches)
  with _bar(f"evaluate {split}", 2 * n, unit="batch") as bar:
    results = evaluator.run([m for m in methods if m.name not in zeroed], _Counted(batches, bar))
    results.update(evaluator.run([m for m in methods if m.name in zeroed],
                                 _Counted(_zero_audio(batches), bar)))
  experiment = dict(dataset=config.data.name, generator=config.data.synthetic.generator,
                    split=split, image_size=int(config.data.image_size))
  summaries = ev_lib.write_results(workdir / "eval", methods, results, experiment)
  return dict(summaries=summaries, methods={m.name: m for m in methods}, evaluator=evaluator,
              batches=batches, table=(workdir / "eval" / "comparison.md").read_text())


def draw_pictures(config: ml_collections.ConfigDict, workdir: pathlib.Path, evaluation: dict
                  ) -> list[dict]:
  """Stage 10: for the first `demo.num_shown` clips of the split whose source switches (by their
  GT control points; else the first clips), an overlay grid of Co-Prop's masks and a timeline of
  Co-Prop's and of plain AOT's, with the clip's objects named by class (the generator's own
  object maps, drawn again: AVSBench's layout stores none)."""
  from coprop_jax.eval import visualize
  from coprop_jax.train.tasks.base import to_uint8_frames
  from data_pipelines import moc_synth, synthetic
  d, split = config.data, config.demo.split
  layout = d.name.partition("_")[2]
  fn = moc_synth.clip_fn_of(d.synthetic.generator)
  clips = {c["video_id"]: c for s, c in moc_synth.clip_stream(
      layout, d.synthetic.num_videos, d.image_size, d.synthetic.seed, clip_fn=fn) if s == split}
  ev, methods = evaluation["evaluator"], evaluation["methods"]
  out_dir = workdir / "pictures"
  out_dir.mkdir(parents=True, exist_ok=True)
  rows = []   # (batch, index, video id, switches)
  for batch in evaluation["batches"]:
    for i, vid in enumerate(batch["video_id"]):
      if vid:
        rows.append((batch, i, str(vid), int(clips[str(vid)]["control_points"][1:].sum())))
  shown = [r for r in rows if r[3] > 0][:config.demo.num_shown]
  shown += [r for r in rows if r[3] == 0][:config.demo.num_shown - len(shown)]
  written = []
  with _bar("pictures", len(shown), unit="clip") as bar:
    for batch, i, vid, _ in shown:
      clip = clips[vid]
      names = {o + 1: synthetic.CLASS_NAMES[c] for o, c in enumerate(clip["object_classes"])}
      gt_cp = clip["control_points"]   # the generator's (exact)
      files = {}
      for name, suffix in (("coprop", ""), ("aot", "_aot")):
        m = methods[name]
        cp = ev.control_points(m, batch)
        res = ev.segmenter(m.model).segment(m.model.params, dict(batch, control_points=cp),
                                            keyframes=m.keyframes)
        label = "Co-Prop" if name == "coprop" else "plain AOT propagation"
        if name == "coprop":
          files["overlay"] = str(visualize.save_overlay_grid(
              out_dir / f"{vid}_overlay.png", to_uint8_frames(batch["frames"][i]),
              res["masks"][i], batch["masks"][i], control_points=cp[i],
              gt_valid=batch["gt_valid"][i], frame_valid=batch["frame_valid"][i],
              title=f"{vid}: {label} (top) vs GT (bottom); KEY = keyframe"))
        files[f"timeline{suffix}"] = str(visualize.save_timeline(
            out_dir / f"{vid}_timeline{suffix}.png", batch["audio_logmel"][i],
            control_points=cp[i], gt_control_points=gt_cp, pred_masks=res["masks"][i],
            gt_masks=batch["masks"][i], objects=clip["visible"], names=names,
            gt_valid=batch["gt_valid"][i], frame_valid=batch["frame_valid"][i],
            title=f"{vid}: {label}"))
      written.append(dict(video_id=vid, **files))
      bar.update(1)
  return written


# ----------------------------------------------------------------------------- the demo
def check_targets(config: ml_collections.ConfigDict, summaries: dict) -> list[dict]:
  """The issue's targets on the evaluation split -> [{name, value, target, ok}]."""
  dm = config.demo
  fig = lambda m, k: summaries[m]["subsets"]["all"][k]
  j, ar = fig("coprop", "J"), fig("coprop", "alignment_rate")
  return [
      dict(name="Co-Prop J", value=j, target=f">= {dm.target_j}", ok=j >= dm.target_j),
      dict(name="Co-Prop Alignment Rate", value=ar, target=f">= {dm.target_alignment}",
           ok=ar >= dm.target_alignment),
      dict(name="audio-blind KPF J", value=fig("kpf_blind", "J"),
           target=f"<= Co-Prop J - {dm.blind_j_gap} = {j - dm.blind_j_gap:.4f}",
           ok=fig("kpf_blind", "J") <= j - dm.blind_j_gap),
      dict(name="plain AOT Alignment Rate", value=fig("aot", "alignment_rate"),
           target=f"< Co-Prop's {ar:.4f}", ok=fig("aot", "alignment_rate") < ar),
  ]


def run(config: ml_collections.ConfigDict, workdir: str, resume: bool = False) -> dict:
  """The whole demo (see the module docstring); returns what demo_summary.json holds.
  resume: keep the training runs of a previous (e.g. interrupted) demo in `workdir` and continue
  them (same config only: the trainer refuses a changed one)."""
  wd = prepare_workdir(workdir, resume)
  undo = progress.quiet_libraries(wd / "demo.log")
  t_start = time.perf_counter()
  times: dict[str, float] = {}

  @contextlib.contextmanager
  def timed(name):
    t0 = time.perf_counter()
    yield
    times[name] = round(time.perf_counter() - t0, 1)
    log.info("demo stage %s: %.1f s", name, times[name])

  try:
    config = resolve_config(config, wd)
    with timed("data"), _bar("data", 1, unit="build") as bar:
      builder = build_data(config)
      bar.update(1)
    splits = sorted(builder.info.splits.keys())
    with timed("control_points"), _bar("control points", 1, unit="pass") as bar:
      cps = write_control_points(config, wd, splits)
      bar.update(1)
    configs = stage_configs(config, wd)
    runs = {}
    for name, cfg in configs.items():
      with timed(f"train_{name}"):
        if name == "propagator_pretrain":
          with _bar("tracking-prior data", 1, unit="build") as bar:
            build_data(cfg)
            bar.update(1)
        runs[name] = train_stage(name, cfg, wd)
        if name == "propagator_pretrain":
          save_tracking_prior(cfg, wd)
    with timed("export"):
      models = export_models(configs, wd)
    with timed("evaluate"):
      evaluation = evaluate_methods(config, configs, wd, models, cps)
    with timed("pictures"):
      pictures = draw_pictures(config, wd, evaluation)
  finally:
    undo()
  times["total"] = round(time.perf_counter() - t_start, 1)
  summaries = evaluation["summaries"]
  targets = check_targets(config, summaries)
  summary = dict(
      workdir=str(wd), seconds=times, targets=targets,
      control_points=dict(method=cps["method"], vs_gt=cps["score"], files=[cps["gt"], cps["eval"]],
                          gt_rule_vs_truth=cps["gt_rule_score"]),
      figures={m: {sub: {k: s["subsets"][sub].get(k) for k in ("J", "F", "alignment_rate",
                                                                "num_frames", "num_videos")}
                   for sub in ("all", "keyframes", "normal", "moc")}
               for m, s in summaries.items()},
      files=dict(table_md=str(wd / "eval" / "comparison.md"),
                 table_json=str(wd / "eval" / "comparison.json"),
                 model=models["model"], model_aot=models["model_aot"], pictures=pictures,
                 tensorboard={n: str(wd / "runs" / n / "tensorboard") for n in runs},
                 runs={n: r["workdir"] for n, r in runs.items()}, log=str(wd / "demo.log")),
      table=evaluation["table"])
  from coprop_jax.eval.report import write_text_atomic
  write_text_atomic(wd / "demo_summary.json", json.dumps(summary, indent=1, default=str) + "\n")
  return summary


def print_summary(summary: dict) -> None:
  f = summary["files"]
  print("\n" + summary["table"])
  cp = summary["control_points"]
  print(f"control points ({cp['method']}) vs GT: " + ", ".join(
      f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in cp["vs_gt"].items()
      if not isinstance(v, (dict, list))))
  gr = cp["gt_rule_vs_truth"]
  print(f"binary GT rule (mask IoU < 0.4) vs the generator's control points: precision "
        f"{gr['precision']:.3f}, recall {gr['recall']:.3f}")
  print("\ntargets:")
  for t in summary["targets"]:
    print(f"  [{'ok' if t['ok'] else 'MISSED'}] {t['name']} = {t['value']:.4f} (target {t['target']})")
  print("\ntimes (s): " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()))
  print("\nfiles:")
  print(f"  metrics table      {f['table_md']}\n                     {f['table_json']}")
  print(f"  model directory    {f['model']}   (notebooks: COPROP_MODEL_DIR)")
  print(f"  plain-AOT model    {f['model_aot']}")
  for p in f["pictures"]:
    for k in ("overlay", "timeline", "timeline_aot"):
      print(f"  {k:<18} {p[k]}")
  print(f"  TensorBoard        tensorboard --logdir {pathlib.Path(f['log']).parent / 'runs'}")
  print(f"  summary, log       {pathlib.Path(f['log']).parent / 'demo_summary.json'}, {f['log']}")


def main(argv: Optional[list[str]] = None) -> int:
  import argparse
  from coprop_jax.convert.checkpoint_io import CheckpointError
  from coprop_jax.utils.config import ConfigError, load_config
  ap = argparse.ArgumentParser(
      prog="python -m coprop_jax.demo", description=__doc__.split("\n\n")[0],
      epilog="Config fields are overridden with --config.<a.b>=<value> (e.g. "
      "--config.demo.kpf_steps=100).")
  ap.add_argument("--workdir", default="/tmp/coprop_demo", help="where everything is written")
  ap.add_argument("--config", default=DEFAULT_CONFIG,
                  help="demo config file[:config string] (default configs/demo.py)")
  ap.add_argument("--resume", action="store_true",
                  help="continue the training runs of an interrupted demo in --workdir")
  args, rest = ap.parse_known_args(argv)
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    ap.error(f"unrecognized arguments: {' '.join(bad)}")
  try:
    config = load_config(args.config, rest)
    summary = run(config, args.workdir, args.resume)
  except (DemoError, runner.AblateError, ConfigError, CheckpointError, ValueError,
          FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print_summary(summary)
  return 0


if __name__ == "__main__":
  sys.exit(main())
