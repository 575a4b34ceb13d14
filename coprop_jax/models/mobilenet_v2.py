"""MobileNetV2 as AOT (aot-benchmark networks/encoders/mobilenetv2.py) uses it, Flax Linen, NHWC.

torchvision layout `features.{0..18}`: 0 = 3x3 s2 stem (32), 1..17 inverted residuals with the
settings (t, c, n, s) below, 18 = 1x1 conv to 1280. Output stride 16: once the running stride
reaches 16, later stages use stride 1 and dilate their depthwise conv instead. Frozen BN, ReLU6.
Levels: features[:4] -> 24@1/4, [4:7] -> 32@1/8, [7:14] -> 96@1/16, [14:] -> 1280@1/16.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from coprop_jax.models.layers import Conv, FrozenBatchNorm, check_image, depthwise_shift

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


class _DepthwiseConv(nn.Module):
  """Parameters as `nn.Conv(C, (k, k), feature_group_count=C, use_bias=False)`: kernel [k, k, 1, C]."""
  kernel_size: int
  stride: int
  dilation: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, self.kernel_size, 1, c), jnp.float32)
    pad = (self.kernel_size - 1) // 2 * self.dilation
    return depthwise_shift(x, kernel, self.stride, self.dilation, pad).astype(self.dtype)


class ConvBN(nn.Module):
  """Conv (no bias) -> FrozenBatchNorm -> ReLU6 (unless act=False); torch padding (k-1)//2*d.

  A depthwise conv (groups == features == input channels) uses `depthwise_shift` when
  `depthwise_impl="shift"` (default) and XLA's grouped convolution when "conv"; a dense
  stride-1 undilated conv uses `layers.Conv` (1x1: a matmul); same parameters either way.
  """
  features: int
  kernel: int = 1
  stride: int = 1
  dilation: int = 1
  groups: int = 1
  act: bool = True
  dtype: Dtype = jnp.float32
  depthwise_impl: str = "shift"

  @nn.compact
  def __call__(self, x):
    p = (self.kernel - 1) // 2 * self.dilation
    if self.depthwise_impl not in ("shift", "conv"):
      raise ValueError(f"MobileNetV2: depthwise_impl must be 'shift' or 'conv', "
                       f"got {self.depthwise_impl!r}")
    depthwise = self.groups > 1 and self.groups == self.features == x.shape[-1]
    if depthwise and self.depthwise_impl == "shift":
      x = _DepthwiseConv(self.kernel, self.stride, self.dilation, self.dtype, name="conv")(x)
    elif self.groups == 1 and self.stride == 1 and self.dilation == 1 and self.kernel % 2:
      # expand/project 1x1 convs: a matmul, whose gradient XLA:CPU computes ~25x faster
      x = Conv(self.features, self.kernel, use_bias=False, dtype=self.dtype, name="conv")(x)
    else:
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
  depthwise_impl: str = "shift"

  @nn.compact
  def __call__(self, x):
    hidden = self.inp * self.expand
    y = x
    if self.expand != 1:
      y = ConvBN(hidden, 1, dtype=self.dtype, name="expand")(y)
    y = ConvBN(hidden, 3, self.stride, self.dilation, groups=hidden, dtype=self.dtype,
               depthwise_impl=self.depthwise_impl, name="depthwise")(y)
    y = ConvBN(self.out, 1, act=False, dtype=self.dtype, name="project")(y)
    if self.stride == 1 and self.inp == self.out:
      y = y + x
    return y


class MobileNetV2(nn.Module):
  """images: [B, H, W, 3] -> [24@1/4, 32@1/8, 96@1/16, 1280@1/16] (output_stride=16).

  `depthwise_impl`: "shift" (default; fast on XLA:CPU) or "conv" (grouped convolution); same
  parameters and results.
  """
  output_stride: int = 16
  dtype: Dtype = jnp.float32
  depthwise_impl: str = "shift"

  @nn.compact
  def __call__(self, images, train: bool = False):
    check_image(images, "MobileNetV2 images")
    x = ConvBN(32, 3, 2, dtype=self.dtype, name="features_0")(images.astype(self.dtype))
    outs = []
    for idx, (inp, out, s, d, t) in enumerate(block_specs(self.output_stride), start=1):
      x = InvertedResidual(inp, out, s, d, t, self.dtype, self.depthwise_impl,
                           name=f"features_{idx}")(x)
      if idx in TAPS:
        outs.append(x)
    x = ConvBN(1280, 1, dtype=self.dtype, name="features_18")(x)
    outs.append(x)
    return outs


def aot_frozen_mask(params, freeze_at: int = 2, frozen_bn: bool = True):
  """Which MobileNetV2 params AOT never trains -> pytree of bools like `params` (True = frozen).

  aot-benchmark `MobileNetV2.freeze(freeze_at)` (default config TRAIN_ENCODER_FREEZE_AT = 2):
  freeze_at >= 1 freezes the stem (features 0), >= 2 level 1 (features 0-3), >= 3 level 2
  (4-6), >= 4 level 3 (7-13), >= 5 level 4 (14-18). With `frozen_bn` (AOT's default
  FrozenBatchNorm2d holds weight/bias as buffers) every BN scale/bias is frozen too. Use as an
  optax mask, e.g. `optax.multi_transform({False: adamw, True: optax.set_to_zero()}, mask)`.
  """
  levels = [(0, 0), (0, 3), (4, 6), (7, 13), (14, 18)]  # freeze_at 1..5 -> features range

  def frozen(path, _):
    keys = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    if frozen_bn and "bn" in keys:
      return True
    top = next((k for k in keys if str(k).startswith("features_")), None)
    if top is None:
      return False
    idx = int(str(top).split("_")[1])
    return any(lo <= idx <= hi for lo, hi in levels[:max(0, min(freeze_at, 5))])

  return jax.tree_util.tree_map_with_path(frozen, params)
