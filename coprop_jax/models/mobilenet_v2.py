"""MobileNetV2 as AOT (aot-benchmark networks/encoders/mobilenetv2.py) uses it, Flax Linen, NHWC.

torchvision layout `features.{0..18}`: 0 = 3x3 s2 stem (32), 1..17 inverted residuals with the
settings (t, c, n, s) below, 18 = 1x1 conv to 1280. Output stride 16: once the running stride
reaches 16, later stages use stride 1 and dilate their depthwise conv instead. Frozen BN, ReLU6.
Levels: features[:4] -> 24@1/4, [4:7] -> 32@1/8, [7:14] -> 96@1/16, [14:] -> 1280@1/16.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from coprop_jax.models.layers import FrozenBatchNorm, check_image

Dtype = Any

SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))
TAPS = (3, 6, 13, 18)  # last feature index of each output level


def block_specs(output_stride: int = 16):
  """[(inp, out, stride, dilation, expand)] for features 1..17 (AOT's stride/dilation rule)."""
  specs, cur, rate, inp = [], 1 * 2, 1, 32  # stem already has stride 2
  for t, c, n, s in SETTINGS:
    if cur == output_stride:
      stride, dilation = 1, rate
      rate *= s
    else:
      stride, dilation = s, 1
      cur *= s
    for i in range(n):
      specs.append((inp, c, stride if i == 0 else 1, dilation if i == 0 else rate, t))
      inp = c
  return specs


class ConvBN(nn.Module):
  features: int
  kernel: int = 1
  stride: int = 1
  dilation: int = 1
  groups: int = 1
  act: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = (self.kernel - 1) // 2 * self.dilation
    x = nn.Conv(self.features, (self.kernel,) * 2, strides=(self.stride,) * 2,
                kernel_dilation=(self.dilation,) * 2, padding=((p, p), (p, p)),
                feature_group_count=self.groups, use_bias=False, dtype=self.dtype,
                param_dtype=jnp.float32, name="conv")(x)
    x = FrozenBatchNorm(dtype=self.dtype, name="bn")(x)
    return jnp.clip(x, 0, 6) if self.act else x


class InvertedResidual(nn.Module):
  inp: int
  out: int
  stride: int
  dilation: int
  expand: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    hidden = self.inp * self.expand
    y = x
    if self.expand != 1:
      y = ConvBN(hidden, 1, dtype=self.dtype, name="expand")(y)
    y = ConvBN(hidden, 3, self.stride, self.dilation, groups=hidden, dtype=self.dtype,
               name="depthwise")(y)
    y = ConvBN(self.out, 1, act=False, dtype=self.dtype, name="project")(y)
    if self.stride == 1 and self.inp == self.out:
      y = y + x
    return y


class MobileNetV2(nn.Module):
  """images: [B, H, W, 3] -> [24@1/4, 32@1/8, 96@1/16, 1280@1/16] (output_stride=16)."""
  output_stride: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    check_image(images, "MobileNetV2 images")
    x = ConvBN(32, 3, 2, dtype=self.dtype, name="features_0")(images.astype(self.dtype))
    outs = []
    for idx, (inp, out, s, d, t) in enumerate(block_specs(self.output_stride), start=1):
      x = InvertedResidual(inp, out, s, d, t, self.dtype, name=f"features_{idx}")(x)
      if idx in TAPS:
        outs.append(x)
    x = ConvBN(1280, 1, dtype=self.dtype, name="features_18")(x)
    outs.append(x)
    return outs
