"""PVT-v2 weights from PyTorch checkpoints into `coprop_jax.models.pvt_v2.PVTv2` params.

Accepted namings (detected from the keys; wrappers `state_dict.`, `model.`, `module.` stripped):

  "hf"       Hugging Face transformers `PvtV2Model` / `PvtV2Backbone`
             (`encoder.layers.{i}.patch_embedding.proj.weight`, ...) and
             `PvtV2ForImageClassification` (same under `pvt_v2.`; `classifier.*` ignored).
  "original" whai362/PVT `pvt_v2_b*` (`patch_embed{i}.proj.weight`, `block{i}.{j}.attn.kv.weight`,
             `norm{i}.weight`, ...; the fused `kv` projection is split into key rows [:C] and value
             rows [C:]; `head.*` ignored).
  "mmseg"    the same modules inside an mmseg/mmdet model (`backbone.` prefix, usually under a
             `state_dict` wrapper); keys outside `backbone.` (decode/aux heads, necks) are ignored.

LayerNorm epsilons differ per source (HF 1e-6 everywhere; original/mmseg 1e-5 in the patch-embedding
and attention norms): build the model with `build_model(variant, source=detect_source(sd))`, or
use `load(path, variant)`, which returns a matching model with the params.

Usage:
  model, params = load("pvt_v2_b5.pth", "b5")               # any naming, .pth/.bin/.safetensors
  feats = model.apply({"params": params}, images)          # 4 NHWC maps
  # or, from a state dict already in memory ({name: np.ndarray}):
  params = from_torch_state_dict(sd, "b5"); model = build_model("b5", source=detect_source(sd))

Params come in the model's stacked layout: each stage's blocks are one `stage{i}_blocks` subtree
whose leaves have a leading block axis (`coprop_jax.models.pvt_v2.PVTv2`); Orbax checkpoints
written before that layout (`stage{i}_block{j}`) are stacked when read back with
`coprop_jax.convert.checkpoint_io.restore_params` (`coprop_jax.models.pvt_v2.upgrade_layout`).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from coprop_jax.convert.checkpoint_io import (CheckpointError, SourceDict, check_params_match,
                                               conv, linear, load_state_dict, strip_prefixes)
from coprop_jax.models.pvt_v2 import (PVTv2, VARIANTS, build_model, get_spec,  # noqa: F401
                                      init_shapes, per_block_layout, upgrade_layout)

_WRAPPERS = ("state_dict.", "model.", "module.")
_HF_PROBE = "encoder.layers.0.patch_embedding.proj.weight"
_ORIG_PROBE = "patch_embed1.proj.weight"


def _normalise(state: Mapping[str, Any]) -> tuple[dict[str, Any], str, Callable[[str], bool]]:
  """Strips wrappers; returns (state, source, ignore) with keys relative to the backbone."""
  state = strip_prefixes(state, _WRAPPERS)
  source = None
  if any(k.startswith("backbone.") for k in state):
    state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    source = "mmseg"
  if any(k.startswith("pvt_v2.") for k in state):
    state = {(k[len("pvt_v2."):] if k.startswith("pvt_v2.") else k): v for k, v in state.items()}
  if _HF_PROBE in state:
    if source == "mmseg":
      raise CheckpointError("PVT-v2 checkpoint: Hugging Face key names under a `backbone.` prefix "
                            "are not a known layout")
    return state, "hf", lambda k: k.startswith("classifier.")
  if _ORIG_PROBE in state:
    return state, source or "original", lambda k: k.startswith("head.")
  sample = ", ".join(sorted(state)[:8])
  raise CheckpointError(
      "PVT-v2 checkpoint: keys match no known naming; expected Hugging Face "
      f"('{_HF_PROBE}', optionally under 'pvt_v2.'), original whai362/PVT ('{_ORIG_PROBE}') or "
      f"mmseg ('backbone.{_ORIG_PROBE}'). First keys found: {sample or '(none)'}")


def detect_source(state_dict: Mapping[str, Any]) -> str:
  """"hf", "original" or "mmseg": which checkpoint naming (and LayerNorm eps) `state_dict` has."""
  return _normalise(state_dict)[1]


class _Names:
  """Source key names of each PVT-v2 weight, for one naming."""

  def __init__(self, hf: bool):
    self.hf = hf

  def embed(self, i: int) -> tuple[str, str]:
    if self.hf:
      stem = f"encoder.layers.{i}.patch_embedding"
      return f"{stem}.proj", f"{stem}.layer_norm"
    return f"patch_embed{i + 1}.proj", f"patch_embed{i + 1}.norm"

  def block(self, i: int, j: int) -> str:
    return f"encoder.layers.{i}.blocks.{j}." if self.hf else f"block{i + 1}.{j}."

  def stage_norm(self, i: int) -> str:
    return f"encoder.layers.{i}.layer_norm" if self.hf else f"norm{i + 1}"

  def block_parts(self) -> dict[str, str]:
    if self.hf:
      return dict(norm1="layer_norm_1", norm2="layer_norm_2", q="attention.query",
                  k="attention.key", v="attention.value", proj="attention.proj",
                  sr="attention.spatial_reduction", sr_norm="attention.layer_norm",
                  fc1="mlp.dense1", dw="mlp.dwconv.dwconv", fc2="mlp.dense2")
    return dict(norm1="norm1", norm2="norm2", q="attn.q", kv="attn.kv", proj="attn.proj",
                sr="attn.sr", sr_norm="attn.norm", fc1="mlp.fc1", dw="mlp.dwconv.dwconv",
                fc2="mlp.fc2")


def infer_variant(state_dict: Mapping[str, Any]) -> Optional[str]:
  """The variant a checkpoint's shapes describe (widths, depths, MLP ratio, linear), or None."""
  try:
    state, source, _ = _normalise(state_dict)
  except CheckpointError:
    return None
  names = _Names(source == "hf")
  parts = names.block_parts()
  hidden, depths = [], []
  for i in range(4):
    w = state.get(names.embed(i)[0] + ".weight")
    if w is None:
      return None
    hidden.append(int(np.shape(w)[0]))
    j = 0
    while names.block(i, j) + parts["norm1"] + ".weight" in state:
      j += 1
    depths.append(j)
  fc1 = state.get(names.block(0, 0) + parts["fc1"] + ".weight")
  mlp0 = int(np.shape(fc1)[0]) // hidden[0] if fc1 is not None else None
  linear_attn = names.block(3, 0) + parts["sr"] + ".weight" in state
  for name, spec in VARIANTS.items():
    if (tuple(hidden) == spec.hidden_sizes and tuple(depths) == spec.depths
        and mlp0 == spec.mlp_ratios[0] and linear_attn == spec.linear):
      return name
  return None


def _ln(src: SourceDict, key: str) -> dict[str, np.ndarray]:
  return {"scale": src.take(key + ".weight"), "bias": src.take(key + ".bias")}


def _dense(src: SourceDict, key: str) -> dict[str, np.ndarray]:
  return {"kernel": src.take(key + ".weight", linear), "bias": src.take(key + ".bias")}


def _conv(src: SourceDict, key: str) -> dict[str, np.ndarray]:
  return {"kernel": src.take(key + ".weight", conv), "bias": src.take(key + ".bias")}


def convert(src: SourceDict, variant: str, prefix: str = "", source: str = "hf",
            depths: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """Takes one PVT-v2's weights from `src` (keys under `prefix`, naming `source`) -> params in
  the model's (stacked) layout.

  For converters of larger models that hold a PVT-v2 inside one checkpoint: the caller owns
  `src` and calls `src.finish()` once everything is consumed (unexpected keys are reported
  there); PVT-v2 weights missing from `src` raise `CheckpointError` here.
  """
  params = _convert_per_block(src, variant, prefix, source, depths)
  if src.missing:
    raise CheckpointError(f"{src.what}: PVT-v2 {variant} weights missing from the checkpoint "
                          f"({len(src.missing)}): " + ", ".join(src.missing[:20])
                          + (" ..." if len(src.missing) > 20 else ""))
  try:
    return upgrade_layout(params)
  except ValueError as e:
    raise CheckpointError(f"{src.what}: {e}") from e


def _convert_per_block(src: SourceDict, variant: str, prefix: str, source: str,
                       depths: Optional[Sequence[int]]) -> dict[str, Any]:
  """`convert` in the per-block layout (`stage{i}_block{j}`), placeholders for missing keys."""
  spec = get_spec(variant, depths)
  names = _Names(source == "hf")
  parts = names.block_parts()
  p = prefix
  params: dict[str, Any] = {}
  for i in range(4):
    proj, norm = names.embed(i)
    params[f"stage{i}_patch_embed"] = {"proj": _conv(src, p + proj), "norm": _ln(src, p + norm)}
    c = spec.hidden_sizes[i]
    for j in range(spec.depths[i]):
      b = p + names.block(i, j)
      attn: dict[str, Any] = {"query": _dense(src, b + parts["q"]),
                              "proj": _dense(src, b + parts["proj"])}
      if "kv" in parts:
        kv_w = src.take(b + parts["kv"] + ".weight")
        kv_b = src.take(b + parts["kv"] + ".bias")
        if kv_w.ndim != 2 or kv_w.shape[0] != 2 * c or kv_b.shape != (2 * c,):
          raise CheckpointError(
              f"PVT-v2 checkpoint: {b + parts['kv']} has shape {kv_w.shape} (bias {kv_b.shape}); "
              f"variant {variant} stage {i} expects ({2 * c}, {c}) -- wrong variant?"
              + _hint(src, variant))
        attn["key"] = {"kernel": linear(kv_w[:c]), "bias": kv_b[:c]}
        attn["value"] = {"kernel": linear(kv_w[c:]), "bias": kv_b[c:]}
      else:
        attn["key"] = _dense(src, b + parts["k"])
        attn["value"] = _dense(src, b + parts["v"])
      if spec.linear or spec.sr_ratios[i] > 1:
        attn["sr"] = _conv(src, b + parts["sr"])
        attn["norm"] = _ln(src, b + parts["sr_norm"])
      params[f"stage{i}_block{j}"] = {
          "norm1": _ln(src, b + parts["norm1"]),
          "attn": attn,
          "norm2": _ln(src, b + parts["norm2"]),
          "mlp": {"fc1": _dense(src, b + parts["fc1"]), "dwconv": _conv(src, b + parts["dw"]),
                  "fc2": _dense(src, b + parts["fc2"])},
      }
    params[f"stage{i}_norm"] = _ln(src, p + names.stage_norm(i))
  return params


def _hint(src: SourceDict, variant: str) -> str:
  guess = infer_variant(src.state)
  if guess and guess != variant:
    return f"\n  the checkpoint looks like PVT-v2 variant {guess!r}, not {variant!r}"
  return ""


def from_torch_state_dict(state_dict: Mapping[str, Any], variant: str,
                          depths: Optional[Sequence[int]] = None) -> dict[str, Any]:
  """Flax params for `PVTv2(variant)` from a `{name: array}` state dict in any supported naming,
  in the model's stacked layout (`stage{i}_blocks`, see `coprop_jax.models.pvt_v2.PVTv2`).

  Raises `CheckpointError` listing missing, unexpected and mis-shaped weights when the checkpoint
  does not fit the variant (with the variant it looks like, when recognisable). Build the model
  with `build_model(variant, source=detect_source(state_dict))` for the right LayerNorm eps.
  """
  get_spec(variant, depths)
  state, source, ignore = _normalise(state_dict)
  src = SourceDict(state, what=f"PVT-v2 {variant} ({source} naming)", ignore=ignore)
  params = _convert_per_block(src, variant, "", source, depths)
  problems = []
  try:
    src.finish()
  except CheckpointError as e:
    problems.append(str(e))
  # Checked per block, so that a mismatch names the block (`stage0_block1/...`).
  expected = per_block_layout(init_shapes(variant, image_hw=(64, 64), depths=depths))
  try:
    check_params_match(_fill_missing(params, expected), expected, f"PVT-v2 {variant}")
  except CheckpointError as e:
    problems.append(str(e))
  if problems:
    raise CheckpointError("\n".join(problems) + _hint(src, variant))
  return upgrade_layout(params)


def _fill_missing(tree: Any, expected: Any) -> Any:
  """`tree` with the empty placeholders SourceDict returns for missing keys replaced by arrays of
  the expected shape, so that shape checking reports only real mismatches (the missing source
  keys are reported by `SourceDict.finish`)."""
  if isinstance(tree, Mapping):
    exp = expected if isinstance(expected, Mapping) else {}
    return {k: _fill_missing(v, exp.get(k)) for k, v in tree.items()}
  if np.size(tree) == 0 and expected is not None and hasattr(expected, "shape"):
    return np.zeros(expected.shape, np.float32)
  return tree


def load(path: str | os.PathLike, variant: str, **model_kw) -> tuple[PVTv2, dict[str, Any]]:
  """Reads a PVT-v2 checkpoint file (.safetensors, .pth, .bin; any naming) -> (model, params).

  The model's LayerNorm epsilons match the checkpoint's source; `model_kw` (dtype,
  drop_path_rate, ...) go to `PVTv2`.
  """
  state = load_state_dict(path)
  try:
    params = from_torch_state_dict(state, variant, depths=model_kw.get("depths"))
  except CheckpointError as e:
    raise CheckpointError(f"checkpoint {path}: {e}") from e
  return build_model(variant, source=detect_source(state), **model_kw), params


__all__ = ["from_torch_state_dict", "convert", "load", "detect_source", "infer_variant",
           "build_model", "init_shapes"]
