"""A Co-Prop model directory: what inference needs, in one place (evaluate, predict, notebooks).

    save_model(out_dir, config, params, image_size=224, sources={...})
    config, params = load_model(out_dir)                 # the saved config, locked
    config, params = load_model(out_dir, expect=cfg)     # refuses a model made with another config

`params` is the pipeline's tree (`coprop_jax.pipeline.init_params`): {"keyframe": KPF variables,
"propagator": params, "encoder": {"params", "batch_stats"}}. Layout of `out_dir`:

    config.json   the full experiment config (ml_collections, as JSON)
    model.json    format version, the image size it was trained at, where the weights came from
    params/       Orbax PyTree checkpoint of `params`

The directory is written into a hidden temporary sibling and renamed into place, so an
interrupted save leaves nothing half-written; an existing directory is refused unless
`force=True`, and even then only a model directory is replaced. On load, the parameters are
checked against the shapes the saved config builds, so a damaged or mixed directory names the
parameter that does not fit.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import uuid
from typing import Any, Mapping, Optional

import jax
import ml_collections

from coprop_jax.convert.checkpoint_io import (CheckpointError, check_params_match, restore_params,
                                              save_params)

FORMAT = "coprop_jax.model/1"
# Sections whose fields define the networks. Everything else (data, train, eval, rcpg) and the
# inference/training knobs below may differ between the model's config and the caller's.
MODEL_SECTIONS = ("keyframe", "propagator")
NOT_ARCHITECTURE = frozenset({
    "keyframe.backbone_weights", "keyframe.vggish_weights", "keyframe.freeze_vggish",
    "keyframe.dtype", "propagator.aot_weights", "propagator.memory_slots", "propagator.mem_gap",
    "propagator.length_bucket", "propagator.remat", "propagator.dtype", "propagator.drop_path"})


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


# Fields outside MODEL_SECTIONS that change the networks' parameters: with a precomputed
# `data.audio_embed` the KPF has no VGGish (pipeline.init_params(audio_logmel=False)).
DATA_ARCHITECTURE = ("data.audio_embed",)


def uses_audio_embed(config: ml_collections.ConfigDict) -> bool:
  """True when the config's data give precomputed `audio_embed` (no VGGish in the KPF)."""
  return bool(config.get("data", {}).get("audio_embed", ""))


def architecture(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config fields that define the networks' parameters and computation (flattened)."""
  flat = _flat(json.loads(json.dumps(config.to_dict(), default=list)))
  out = {k: v for k, v in flat.items() if k.split(".")[0] in MODEL_SECTIONS
         and k not in NOT_ARCHITECTURE and not k.startswith("propagator.train.")}
  out.update({k: flat[k] for k in DATA_ARCHITECTURE if flat.get(k)})   # "" = absent (VGGish)
  return out


def architecture_changes(saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict
                         ) -> list[str]:
  """'field: saved -> current' for every architecture field that differs."""
  a, b = architecture(saved), architecture(current)
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def is_model_dir(path: str | os.PathLike) -> bool:
  p = pathlib.Path(path)
  return (p / "model.json").is_file() and (p / "params").is_dir()


_SHAPES: dict = {}   # (architecture JSON, image size) -> shapes; tracing the networks takes seconds


def expected_shapes(config: ml_collections.ConfigDict, image_size: int) -> Any:
  """Shapes of the params `config` builds (traced, nothing computed; cached per architecture)."""
  from coprop_jax import pipeline
  key = (json.dumps(architecture(config), sort_keys=True), int(image_size))
  if key not in _SHAPES:
    cfg = ml_collections.ConfigDict(config.to_dict())
    cfg.propagator.aot_weights = ""   # shapes only: never read a checkpoint here
    logmel = not uses_audio_embed(cfg)
    _SHAPES[key] = jax.eval_shape(
        lambda r: pipeline.init_params(cfg, r, int(image_size), audio_logmel=logmel),
        jax.random.PRNGKey(0))
  return _SHAPES[key]


def save_model(out_dir: str | os.PathLike, config: ml_collections.ConfigDict, params: Any, *,
               image_size: Optional[int] = None, sources: Optional[Mapping[str, str]] = None,
               force: bool = False) -> pathlib.Path:
  """Writes `params` + `config` as a model directory (see the module docstring); returns its path.

  image_size: the square input size the model was trained at (default `config.data.image_size`);
  sources: free-form provenance, e.g. {"keyframe": "<kpf run>/best", "propagator": "..."}.
  """
  out = pathlib.Path(out_dir).expanduser().resolve()
  if out.exists():
    if not force:
      raise FileExistsError(f"{out} already exists; pass force=True (--force) to replace it")
    if not is_model_dir(out):
      raise FileExistsError(f"{out} exists and is not a Co-Prop model directory; refusing to "
                            "replace it even with force (choose another path)")
  size = int(image_size or config.data.image_size)
  check_params_match(jax.device_get(params), expected_shapes(config, size),
                     f"model params for {out}")
  out.parent.mkdir(parents=True, exist_ok=True)
  tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp = out.parent / f".{out.name}.tmp-{tag}"
  try:
    tmp.mkdir()
    save_params(jax.device_get(params), tmp / "params")
    (tmp / "config.json").write_text(config.to_json_best_effort(indent=1, sort_keys=True) + "\n")
    meta = dict(format=FORMAT, image_size=size, sources=dict(sources or {}))
    (tmp / "model.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    if out.exists():
      old = out.parent / f".{out.name}.old-{tag}"
      os.replace(out, old)
      os.replace(tmp, out)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return out


def _as_tuples(x: Any) -> Any:
  """JSON lists back to the tuples the configs use (ml_collections keeps field types)."""
  if isinstance(x, dict):
    return {k: _as_tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_as_tuples(v) for v in x)
  return x


def read_model_info(path: str | os.PathLike) -> tuple[ml_collections.ConfigDict, dict]:
  """(saved config, model.json contents) of a model directory, without reading the weights."""
  p = pathlib.Path(path).expanduser()
  if not p.is_dir():
    raise CheckpointError(f"model directory {p}: does not exist")
  if not is_model_dir(p):
    raise CheckpointError(f"{p}: not a Co-Prop model directory (expected model.json, config.json "
                          "and params/, as written by coprop_jax.model_io.save_model)")
  try:
    meta = json.loads((p / "model.json").read_text())
    cfg = json.loads((p / "config.json").read_text())
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{p}: model.json / config.json not readable ({e})") from e
  if meta.get("format") != FORMAT:
    raise CheckpointError(f"{p}/model.json: format {meta.get('format')!r}, expected {FORMAT!r}")
  return ml_collections.ConfigDict(_as_tuples(cfg)), meta


def load_model(path: str | os.PathLike, expect: Optional[ml_collections.ConfigDict] = None
               ) -> tuple[ml_collections.ConfigDict, Any]:
  """(config, params) of a model directory; the config is the saved one, locked.

  expect: the caller's config; a model whose networks were built from other settings is refused
  with a CheckpointError listing the fields that differ (the data, training and inference-only
  fields may differ). The weights are checked against the shapes the saved config builds.
  """
  p = pathlib.Path(path).expanduser()
  config, meta = read_model_info(p)
  if expect is not None:
    changes = architecture_changes(config, expect)
    if changes:
      raise CheckpointError(f"model {p} was made with another config; fields that differ (model "
                            f"-> yours): {'; '.join(changes)}")
  params = restore_params(p / "params")
  check_params_match(params, expected_shapes(config, int(meta["image_size"])), f"model {p}")
  config.lock()
  return config, params
