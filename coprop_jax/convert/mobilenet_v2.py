"""MobileNetV2 (AOT encoder) weights from an AOT checkpoint's `encoder.features.*` keys
(torchvision naming) -> `coprop_jax.models.mobilenet_v2.MobileNetV2` variables."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from coprop_jax.convert.checkpoint_io import SourceDict, conv
from coprop_jax.models.mobilenet_v2 import block_specs


def _convbn(src, conv_key, bn_key):
  p = {"conv": {"kernel": src.take(conv_key + ".weight", conv)},
       "bn": {"scale": src.take(bn_key + ".weight"), "bias": src.take(bn_key + ".bias")}}
  s = {"bn": {"mean": src.take(bn_key + ".running_mean"), "var": src.take(bn_key + ".running_var")}}
  return p, s


def convert(src: SourceDict, prefix: str = "encoder.") -> dict:
  """Takes `{prefix}features.*` keys from `src` -> {"params", "batch_stats"}."""
  f = prefix + "features."
  params, stats = {}, {}
  params["features_0"], stats["features_0"] = _convbn(src, f + "0.0", f + "0.1")
  for idx, (_, _, _, _, t) in enumerate(block_specs(), start=1):
    b = f"{f}{idx}.conv."
    names = ((("expand", "0.0", "0.1"), ("depthwise", "1.0", "1.1"), ("project", "2", "3"))
             if t != 1 else (("depthwise", "0.0", "0.1"), ("project", "1", "2")))
    p, s = {}, {}
    for name, c, n in names:
      p[name], s[name] = _convbn(src, b + c, b + n)
    params[f"features_{idx}"], stats[f"features_{idx}"] = p, s
  params["features_18"], stats["features_18"] = _convbn(src, f + "18.0", f + "18.1")
  return {"params": params, "batch_stats": stats}


def from_torch_state_dict(sd: Mapping[str, np.ndarray], prefix: str = "") -> dict:
  src = SourceDict(sd, "MobileNetV2",
                   ignore=lambda k: k.endswith("num_batches_tracked") or "classifier" in k)
  out = convert(src, prefix)
  src.finish()
  return out
