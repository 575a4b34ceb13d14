"""MobileNetV2 (AOT encoder) weights -> `coprop_jax.models.mobilenet_v2.MobileNetV2` variables.

Sources: an AOT checkpoint's `encoder.features.*` keys, or a torchvision `mobilenet_v2` state
dict (`features.*`; `classifier.*` ignored), which is what AOT's `MODEL_ENCODER_PRETRAIN`
(mobilenet_v2-b0353104.pth) holds. Naming (torchvision): `features.0.{0,1}` stem conv/BN,
`features.1.conv.{0.0,0.1,1,2}` (t=1 block: depthwise, BN, project, BN),
`features.{2..17}.conv.{0.0,0.1,1.0,1.1,2,3}` (expand, depthwise, project), `features.18.{0,1}`.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from coprop_jax.convert.checkpoint_io import CheckpointError, SourceDict, conv
from coprop_jax.models.mobilenet_v2 import block_specs


def _convbn(src, conv_key, bn_key):
  p = {"conv": {"kernel": src.take(conv_key + ".weight", conv)},
       "bn": {"scale": src.take(bn_key + ".weight"), "bias": src.take(bn_key + ".bias")}}
  s = {"bn": {"mean": src.take(bn_key + ".running_mean"), "var": src.take(bn_key + ".running_var")}}
  return p, s


def convert(src: SourceDict, prefix: str = "encoder.") -> dict:
  """Takes `{prefix}features.*` keys from `src` -> {"params", "batch_stats"}.

  Used by `coprop_jax.convert.aot` on a whole AOT checkpoint (the caller runs `src.finish()`).
  """
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


def from_torch_state_dict(sd: Mapping[str, np.ndarray], prefix: Optional[str] = None) -> dict:
  """Whole torchvision / AOT-encoder state dict -> {"params", "batch_stats"} for MobileNetV2.

  `prefix=None` picks "encoder." when `encoder.features.*` keys exist, else "". Raises
  `CheckpointError` naming missing / unexpected keys and mis-shaped parameters (e.g. a ResNet
  or a width-multiplier != 1 checkpoint).
  """
  import jax
  import jax.numpy as jnp
  from coprop_jax.convert.checkpoint_io import check_params_match
  from coprop_jax.models.mobilenet_v2 import MobileNetV2
  if prefix is None:
    prefix = "encoder." if any(k.startswith("encoder.features.") for k in sd) else ""
  if not any(k.startswith(prefix + "features.") for k in sd):
    some = ", ".join(sorted(sd)[:5])
    raise CheckpointError(
        f"MobileNetV2: no '{prefix}features.*' keys, so this is not a torchvision/AOT "
        f"MobileNetV2 checkpoint (first keys: {some}{' ...' if len(sd) > 5 else ''})")
  src = SourceDict(sd, "MobileNetV2", ignore=lambda k: k.endswith("num_batches_tracked")
                   or k.startswith(prefix + "classifier."))
  out = convert(src, prefix)
  src.finish()
  want = jax.eval_shape(MobileNetV2().init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  check_params_match(out, dict(want), "MobileNetV2")
  return out


def hf_to_torchvision_names(sd: Mapping[str, Any]) -> dict:
  """Hugging Face `MobileNetV2Model` keys -> torchvision / AOT `features.*` keys (values untouched).

  HF's layout equals AOT's encoder when built with `MobileNetV2Config(output_stride=16,
  tf_padding=False, layer_norm_eps=1e-5)`; Google's released HF checkpoints use TF padding and
  do not match AOT numerically even though their names convert.
  """
  out = {}

  def cbn(src, dst, bn_dst):
    for k, v in sd.items():
      if k.startswith(src + ".convolution."):
        out[dst + "." + k.rsplit(".", 1)[1]] = v
      elif k.startswith(src + ".normalization."):
        out[bn_dst + "." + k.rsplit(".", 1)[1]] = v

  cbn("conv_stem.first_conv", "features.0.0", "features.0.1")
  cbn("conv_stem.conv_3x3", "features.1.conv.0.0", "features.1.conv.0.1")
  cbn("conv_stem.reduce_1x1", "features.1.conv.1", "features.1.conv.2")
  for i in range(16):
    f = f"features.{i + 2}.conv."
    cbn(f"layer.{i}.expand_1x1", f + "0.0", f + "0.1")
    cbn(f"layer.{i}.conv_3x3", f + "1.0", f + "1.1")
    cbn(f"layer.{i}.reduce_1x1", f + "2", f + "3")
  cbn("conv_1x1", "features.18.0", "features.18.1")
  unused = sorted(k for k in sd if not k.startswith(("conv_stem.", "layer.", "conv_1x1.")))
  if unused:
    raise CheckpointError(f"HF MobileNetV2 state dict: keys outside its layout: {unused[:10]}")
  return out
