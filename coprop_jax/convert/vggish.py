"""VGGish weights from torchvggish's state dict (`features.*`, `embeddings.*`) -> VGGish params.

PCA parameters (`pproc.*`) are ignored: the model returns raw embeddings.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from coprop_jax.convert.checkpoint_io import SourceDict, conv, linear
from coprop_jax.models.vggish import EMBED_DENSES, FEATURE_CONVS


def convert(src: SourceDict, prefix: str = "") -> dict:
  p = {}
  for i in FEATURE_CONVS:
    p[f"features_{i}"] = {"kernel": src.take(f"{prefix}features.{i}.weight", conv),
                          "bias": src.take(f"{prefix}features.{i}.bias")}
  for i in EMBED_DENSES:
    p[f"embeddings_{i}"] = {"kernel": src.take(f"{prefix}embeddings.{i}.weight", linear),
                            "bias": src.take(f"{prefix}embeddings.{i}.bias")}
  return p


def from_torch_state_dict(sd: Mapping[str, np.ndarray], prefix: str = "") -> dict:
  import jax
  import jax.numpy as jnp
  from coprop_jax.convert.checkpoint_io import check_params_match
  from coprop_jax.models.vggish import VGGish
  src = SourceDict(sd, "VGGish", ignore=lambda k: k.startswith(prefix + "pproc."))
  p = convert(src, prefix)
  src.finish()
  want = jax.eval_shape(VGGish().init, jax.random.PRNGKey(0), jnp.zeros((1, 96, 64)))["params"]
  check_params_match(p, want, "VGGish")
  return p
