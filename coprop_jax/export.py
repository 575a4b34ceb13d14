"""A Co-Prop model directory from trained runs (`coprop_jax.model_io` format).

  python -m coprop_jax.export --config configs/coprop.py:dataset=ms3 \
      --keyframe /tmp/kpf_ms3_ft --propagator /tmp/aip_ms3 --out /tmp/coprop_ms3 [--force]

The Keyframe Processor comes from a `kpf` / `kpf_finetune` run and the propagator (with its
encoder) from a `propagator` run. Each part may be given as:
  * a training run directory (its `best/` checkpoint, else its latest `checkpoints/` step);
  * a checkpoint root inside a run (`<run>/best`, `<run>/checkpoints`: its latest step) or one
    step directory (`<run>/checkpoints/2000`);
  * a model directory (that part of it);
  * propagator only: a converted AOT checkpoint (`python -m coprop_jax.convert aot`): every AOT
    weight, the audio parameters at their exact no-op init, so the propagator computes plain AOT
    (with `insert=aot` it IS plain AOT, no audio parameters at all).
A run is read with its workdir's config.json: a part made by another stage, or whose network
fields differ from --config's (`model_io.architecture_changes`, that part's section), is refused
with the fields named. The model directory keeps ONE VGGish, the KPF's; the propagator's audio
features come from it, so a propagator run whose frozen VGGish differs from the KPF's is refused
(train both with the same `keyframe.vggish_weights`, or, without it, the same `seed`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from coprop_jax import model_io
from coprop_jax.convert.checkpoint_io import CheckpointError, check_params_match

log = logging.getLogger(__name__)
KEYFRAME_STAGES = ("kpf", "kpf_finetune")
PROPAGATOR_STAGES = ("propagator",)


class ExportError(ValueError):
  """A part cannot be used for this model (wrong stage, config, VGGish, or no checkpoint)."""


def read_run_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config.json a training run saved in its workdir."""
  p = pathlib.Path(path)
  try:
    return ml_collections.ConfigDict(model_io._as_tuples(json.loads(p.read_text())))
  except (OSError, ValueError) as e:
    raise ExportError(f"{p}: not a readable run config ({e})") from e


def _is_step_dir(p: pathlib.Path) -> bool:
  return p.name.isdigit() and (p / "state").is_dir()


def _latest_step(root: pathlib.Path) -> Optional[int]:
  steps = [int(n.name) for n in root.iterdir() if _is_step_dir(n)] if root.is_dir() else []
  return max(steps) if steps else None


def _holds_checkpoints(p: pathlib.Path) -> bool:
  return (_is_step_dir(p) or _latest_step(p) is not None
          or any(_latest_step(p / s) is not None for s in ("best", "checkpoints")))


def resolve_run(path: str | os.PathLike) -> tuple[pathlib.Path, int, pathlib.Path]:
  """A run / checkpoint root / step directory -> (checkpoint root, step, run config.json).
  A run directory gives its best checkpoint, or its latest rolling one without a best."""
  p = pathlib.Path(path).expanduser().resolve()
  if not p.exists():
    raise ExportError(f"{p}: does not exist")
  if _is_step_dir(p):
    root, step = p.parent, int(p.name)
  elif _latest_step(p) is not None:
    root, step = p, _latest_step(p)
  else:
    for sub in ("best", "checkpoints"):
      if _latest_step(p / sub) is not None:
        root, step = p / sub, _latest_step(p / sub)
        break
    else:
      raise ExportError(f"{p}: holds no training checkpoint (expected a run directory with "
                        "best/ or checkpoints/, a checkpoint root, a step directory, or a model "
                        "directory)")
  cfg = root.parent / "config.json"
  if not cfg.is_file():
    raise ExportError(f"{root}: the run's config.json ({cfg}) is missing, so the stage and "
                      "config this checkpoint was made with cannot be checked")
  return root, step, cfg


def _section_changes(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                     section: str) -> list[str]:
  return [c for c in model_io.architecture_changes(saved, config) if c.startswith(section + ".")]


def _check_run(saved: ml_collections.ConfigDict, config, what: str, where: Any,
               stages: tuple, section: str) -> None:
  stage = saved.get("train", {}).get("stage")
  if stage not in stages:
    raise ExportError(f"--{what} {where}: a checkpoint of stage {stage!r}; the {what} part comes "
                      f"from a {' / '.join(stages)} run")
  diff = _section_changes(saved, config, section)
  if diff:
    raise ExportError(f"--{what} {where}: made with another config; fields that differ (run -> "
                      f"--config): {'; '.join(diff)}")


def _restore(root: pathlib.Path, step: int, params: Any, extra: Any, what: str) -> tuple[Any, Any]:
  from coprop_jax.train.checkpoint import Checkpointer
  ck = Checkpointer(str(root), read_only=True, what=f"--{what}")
  try:
    p, e, _ = ck.restore_variables(params, extra, step=step)
  finally:
    ck.close()
  return jax.device_get(p), jax.device_get(e)


def load_keyframe_part(path, config, shapes) -> tuple[Any, str]:
  """KPF variables ({"params", ...}) from a kpf/kpf_finetune run or a model directory."""
  if model_io.is_model_dir(path):
    saved, _ = model_io.read_model_info(path)
    diff = _section_changes(saved, config, "keyframe")
    if diff:
      raise ExportError(f"--keyframe {path}: a model made with another config; fields that differ "
                        f"(model -> --config): {'; '.join(diff)}")
    _, params = model_io.load_model(path)
    return params["keyframe"], f"model {pathlib.Path(path).resolve()}"
  root, step, cfg = resolve_run(path)
  _check_run(read_run_config(cfg), config, "keyframe", root / str(step), KEYFRAME_STAGES, "keyframe")
  want = shapes["keyframe"]
  params, extra = _restore(root, step, want["params"], {k: v for k, v in want.items() if k != "params"},
                           "keyframe")
  return dict(extra, params=params), f"{root / str(step)}"


def load_propagator_part(path, config, shapes) -> tuple[dict, Optional[Any], str]:
  """({"propagator", "encoder"}, the VGGish it was trained with or None, source) from a propagator
  run, a model directory or a converted AOT checkpoint."""
  from coprop_jax.convert.checkpoint_io import restore_params
  from coprop_jax.pipeline import load_aot_weights
  if model_io.is_model_dir(path):
    saved, _ = model_io.read_model_info(path)
    diff = _section_changes(saved, config, "propagator")
    if diff:
      raise ExportError(f"--propagator {path}: a model made with another config; fields that "
                        f"differ (model -> --config): {'; '.join(diff)}")
    _, params = model_io.load_model(path)
    vgg = params["keyframe"].get("params", {}).get("vggish")
    return ({"propagator": params["propagator"], "encoder": params["encoder"]}, vgg,
            f"model {pathlib.Path(path).resolve()}")
  p = pathlib.Path(path).expanduser().resolve()
  if p.is_dir() and not _holds_checkpoints(p):
    try:   # a converted AOT checkpoint: {"propagator", "encoder"}
      aot = restore_params(str(p))
    except CheckpointError as e:
      raise ExportError(f"--propagator {p}: neither a training run, a model directory nor a "
                        f"converted AOT checkpoint ({e})") from e
    if not isinstance(aot, dict) or set(aot) != {"propagator", "encoder"}:
      got = sorted(aot) if isinstance(aot, dict) else type(aot).__name__
      raise ExportError(f"--propagator {p}: a checkpoint holding {got}, expected a converted AOT "
                        "checkpoint {'propagator', 'encoder'} (python -m coprop_jax.convert aot)")
    from coprop_jax.models import propagator as prop_lib
    size = int(config.data.image_size)
    # The audio parameters (absent from AOT) keep a fresh init: zero output projections, no-ops.
    fresh = jax.jit(lambda r: prop_lib.init(config.propagator, r, (size, size)))(
        jax.random.PRNGKey(config.seed))
    try:
      new = load_aot_weights(config, dict(fresh), aot)
    except CheckpointError as e:
      raise ExportError(f"--propagator {p}: {e}") from e
    return ({"propagator": jax.device_get(new["propagator"]), "encoder": jax.device_get(new["encoder"])},
            None, f"converted AOT {p}")
  root, step, cfg = resolve_run(path)
  _check_run(read_run_config(cfg), config, "propagator", root / str(step), PROPAGATOR_STAGES,
             "propagator")
  enc = shapes["encoder"]
  params_t = {"propagator": shapes["propagator"], "encoder": enc.get("params", {})}
  extra_t = {"encoder": {k: v for k, v in enc.items() if k != "params"}}
  kv = shapes["keyframe"].get("params", {}).get("vggish")
  if kv is not None:
    extra_t["vggish"] = kv
  params, extra = _restore(root, step, params_t, extra_t, "propagator")
  return ({"propagator": params["propagator"], "encoder": dict(extra["encoder"], params=params["encoder"])},
          extra.get("vggish"), f"{root / str(step)}")


def vggish_difference(a: Any, b: Any) -> float:
  """Largest absolute difference between two VGGish param trees (inf when shapes differ)."""
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  if [k for k, _ in la] != [k for k, _ in lb]:
    return float("inf")
  worst = 0.0
  for (_, x), (_, y) in zip(la, lb):
    if np.shape(x) != np.shape(y):
      return float("inf")
    worst = max(worst, float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) if np.size(x) else 0.0)
  return worst


def check_part(path: str, config: ml_collections.ConfigDict, what: str) -> None:
  """Stage and network-config checks of one part from its config.json (or model.json), before
  any weights are read, so that a wrong pair is refused before the slow restores."""
  stages, section = ((KEYFRAME_STAGES, "keyframe") if what == "keyframe"
                     else (PROPAGATOR_STAGES, "propagator"))
  if model_io.is_model_dir(path):
    saved, _ = model_io.read_model_info(path)
    diff = _section_changes(saved, config, section)
    if diff:
      raise ExportError(f"--{what} {path}: a model made with another config; fields that differ "
                        f"(model -> --config): {'; '.join(diff)}")
    return
  p = pathlib.Path(path).expanduser().resolve()
  if what == "propagator" and p.is_dir() and not _holds_checkpoints(p):
    return        # a converted AOT checkpoint: checked against the shapes when loaded
  root, step, cfg = resolve_run(p)
  _check_run(read_run_config(cfg), config, what, root / str(step), stages, section)


def assemble(config: ml_collections.ConfigDict, keyframe: str, propagator: str) -> tuple[dict, dict]:
  """(pipeline params {"keyframe", "propagator", "encoder"}, sources) from the two parts (see
  the module docstring); every check made, nothing written."""
  check_part(keyframe, config, "keyframe")
  check_part(propagator, config, "propagator")
  size = int(config.data.image_size)
  shapes = model_io.expected_shapes(config, size)
  kvars, k_src = load_keyframe_part(keyframe, config, shapes)
  prop, vgg, p_src = load_propagator_part(propagator, config, shapes)
  kv = kvars.get("params", {}).get("vggish")
  if vgg is not None and kv is not None:
    d = vggish_difference(vgg, kv)
    if d > 0:
      raise ExportError(
          f"--propagator {p_src} was trained with another VGGish than --keyframe {k_src} (largest "
          f"difference {d:.3g}); the model keeps the KPF's VGGish for both networks: train both "
          "stages with the same keyframe.vggish_weights (or, without it, the same seed)")
  params = {"keyframe": kvars, "propagator": prop["propagator"], "encoder": prop["encoder"]}
  check_params_match(params, shapes, "exported model")
  return params, {"keyframe": k_src, "propagator": p_src}


def export(config: ml_collections.ConfigDict, keyframe: str, propagator: str, out: str,
           force: bool = False) -> pathlib.Path:
  """Writes the model directory `out` (model_io.save_model) from the two parts."""
  params, sources = assemble(config, keyframe, propagator)
  return model_io.save_model(out, config, params, image_size=int(config.data.image_size),
                             sources=sources, force=force)


def main(argv: Optional[list[str]] = None) -> int:
  from coprop_jax.utils.config import ConfigError, load_config
  ap = argparse.ArgumentParser(
      prog="python -m coprop_jax.export", description=__doc__.split("\n\n")[0],
      epilog="Config fields are overridden with --config.<a.b>=<value>.")
  ap.add_argument("--config", required=True, help="experiment config file[:config string]")
  ap.add_argument("--keyframe", required=True, help="kpf / kpf_finetune run, checkpoint or model dir")
  ap.add_argument("--propagator", required=True,
                  help="propagator run, checkpoint, model dir or converted AOT checkpoint")
  ap.add_argument("--out", required=True, help="model directory to write")
  ap.add_argument("--force", action="store_true", help="replace an existing model directory")
  args, rest = ap.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    ap.error(f"unexpected arguments {bad} (config overrides are --config.<a.b>=<value>)")
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    config = load_config(args.config, rest)
    out = export(config, args.keyframe, args.propagator, args.out, force=args.force)
  except (ExportError, CheckpointError, ConfigError, FileExistsError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps({"model": str(out)}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
