"""ResNet-50 weights from torchvision or Hugging Face (`ResNetModel` / `resnet.`-prefixed
classification models) into `coprop_jax.models.resnet.ResNet50` variables.

torchvision: conv1, bn1, layer{1..4}.{j}.conv{1,2,3} / bn{1,2,3} / downsample.{0,1}; fc.* ignored.
HF: embedder.embedder.{convolution,normalization}, encoder.stages.{i}.layers.{j}.layer.{k} and
.shortcut; classifier.* ignored. num_batches_tracked is ignored explicitly.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from coprop_jax.convert.checkpoint_io import SourceDict, conv

DEPTHS = (3, 4, 6, 3)


def _ignored(k: str) -> bool:
  return (k.endswith("num_batches_tracked") or k.startswith("fc.") or k.startswith("classifier.")
          or ".fc." in k)


def _bn(src, key, params, stats, name):
  params[name] = {"bn": {"scale": src.take(key + ".weight"), "bias": src.take(key + ".bias")}}
  stats[name] = {"bn": {"mean": src.take(key + ".running_mean"),
                        "var": src.take(key + ".running_var")}}


def _names(hf: bool, prefix: str):
  """Maps our (block, part) to source key stems."""
  if hf:
    def stem(part):
      return prefix + {"conv1": "embedder.embedder.convolution",
                       "bn1": "embedder.embedder.normalization"}[part]

    def block(i, j, part):
      base = f"{prefix}encoder.stages.{i}.layers.{j}."
      k = {"conv1": "layer.0.convolution", "bn1": "layer.0.normalization",
           "conv2": "layer.1.convolution", "bn2": "layer.1.normalization",
           "conv3": "layer.2.convolution", "bn3": "layer.2.normalization",
           "downsample_conv": "shortcut.convolution", "downsample_bn": "shortcut.normalization"}
      return base + k[part]
  else:
    def stem(part):
      return prefix + part

    def block(i, j, part):
      k = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(part, part)
      return f"{prefix}layer{i + 1}.{j}.{k}"
  return stem, block


def convert(src: SourceDict, prefix: str = "", stages: int = 4) -> dict:
  """Takes ResNet-50 keys under `prefix` from `src` -> {"params", "batch_stats"} for
  `ResNet50(stages=stages)` (3: AOT's encoder without layer4)."""
  hf = src.has_prefix(prefix + "embedder.") or src.has_prefix(prefix + "resnet.embedder.")
  if src.has_prefix(prefix + "resnet.embedder."):
    prefix = prefix + "resnet."
  stem, block = _names(hf, prefix)
  params, stats = {}, {}
  params["conv1"] = {"kernel": src.take(stem("conv1") + ".weight", conv)}
  _bn(src, stem("bn1"), params, stats, "bn1")
  for i, n in enumerate(DEPTHS[:stages]):
    for j in range(n):
      p, s = {}, {}
      for c in ("conv1", "conv2", "conv3") + (("downsample_conv",) if j == 0 else ()):
        p[c] = {"kernel": src.take(block(i, j, c) + ".weight", conv)}
      for b in ("bn1", "bn2", "bn3") + (("downsample_bn",) if j == 0 else ()):
        _bn(src, block(i, j, b), p, s, b)
      params[f"layer{i + 1}_{j}"] = p
      stats[f"layer{i + 1}_{j}"] = s
  return {"params": params, "batch_stats": stats}


def from_torch_state_dict(sd: Mapping[str, np.ndarray], prefix: str = "") -> dict:
  """Whole torchvision / HF ResNet-50 state dict -> {"params", "batch_stats"} for ResNet50."""
  import jax
  import jax.numpy as jnp
  from coprop_jax.convert.checkpoint_io import check_params_match
  from coprop_jax.models.resnet import ResNet50
  src = SourceDict(sd, "ResNet-50", ignore=_ignored)
  out = convert(src, prefix)
  src.finish()
  want = jax.eval_shape(ResNet50().init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  check_params_match(out, dict(want), "ResNet-50")
  return out


def convert_aot(src: SourceDict, prefix: str = "encoder.") -> dict:
  """aot-benchmark R50-AOTL encoder (torchvision naming `{prefix}conv1`, `bn1`, `layer{1,2,3}.{j}.*`;
  AOT drops layer4) -> {"params", "batch_stats"} for `ResNet50(output_stride=16, stages=3)`.
  AOT's FrozenBatchNorm2d has weight/bias/running_mean/running_var (no num_batches_tracked)."""
  return convert(src, prefix, stages=3)
