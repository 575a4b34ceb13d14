"""VGGish audio network (torchvggish layout) in Flax Linen.

logmel [B, 96, 64] (from `coprop_jax.audio.waveform_to_patches`, run on the host) ->
embeddings [B, 128] (raw, before PCA/quantisation; ReLU after the last layer as torchvggish).
Flatten happens in NHWC order (6 x 4 x 512), as torchvggish permutes before flattening.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any
CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
FEATURE_CONVS = (0, 3, 6, 8, 11, 13)  # torchvggish `features.{i}` indices of the convs
EMBED_DENSES = (0, 2, 4)


class VGGish(nn.Module):
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, logmel):
    if logmel.ndim != 3 or tuple(logmel.shape[1:]) != (96, 64):
      raise ValueError(f"VGGish logmel: expected [B, 96, 64], got shape {tuple(logmel.shape)}")
    x = logmel.astype(self.dtype)[..., None]
    convs = iter(FEATURE_CONVS)
    for c in CFG:
      if c == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nn.relu(nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                            param_dtype=jnp.float32, name=f"features_{next(convs)}")(x))
    x = x.reshape(x.shape[0], -1)  # NHWC flatten: 6*4*512
    for i, f in zip(EMBED_DENSES, (4096, 4096, 128)):
      x = nn.relu(nn.Dense(f, dtype=self.dtype, param_dtype=jnp.float32,
                           name=f"embeddings_{i}")(x))
    return x


def embed_frames(params, audio_logmel, dtype=jnp.float32):
  """audio_logmel [B, T, 96, 64] -> [B, T, 128] VGGish embeddings."""
  if audio_logmel.ndim != 4:
    raise ValueError(f"embed_frames: expected audio_logmel [B, T, 96, 64], "
                     f"got shape {tuple(audio_logmel.shape)}")
  b, t = audio_logmel.shape[:2]
  out = VGGish(dtype=dtype).apply({"params": params}, audio_logmel.reshape(b * t, 96, 64))
  return out.reshape(b, t, 128)
