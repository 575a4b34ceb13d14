"""ResNet-50 (torchvision v1.5 / Hugging Face `ResNetModel` layout) in Flax Linen, NHWC.

Bottleneck blocks put the stride on the 3x3 conv (torchvision v1.5, HF
`downsample_in_bottleneck=False`). `output_stride=16` dilates layer4 the way torchvision's
`replace_stride_with_dilation=[False, False, True]` and AOT's `_make_layer` do: stride 1, the
first layer4 block keeps dilation 1 (torchvision `previous_dilation`, AOT `max(dilation // 2, 1)`),
the following blocks use dilation 2. `stages=3` is AOT's R50 encoder (aot-benchmark
networks/encoders/resnet.py): layer4 is not built and the outputs are
[layer1, layer2, layer3, layer3] = [256@1/4, 512@1/8, 1024@1/16, 1024@1/16]. `frozen_bn=True` uses `layers.FrozenBatchNorm`
(statistics never updated); `frozen_bn=False` uses a trainable BatchNorm whose `batch_stats`
are updated when `train=True` (apply with `mutable=["batch_stats"]`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from coprop_jax.models.layers import Conv, FrozenBatchNorm, check_image

Dtype = Any


class _Norm(nn.Module):
  """FrozenBatchNorm or trainable BatchNorm (same param/stat names: scale, bias / mean, var)."""
  frozen: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.frozen:
      return FrozenBatchNorm(epsilon=1e-5, dtype=self.dtype, name="bn")(x)
    y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=jnp.float32, name="bn")(x.astype(jnp.float32))
    return y.astype(self.dtype)


def _conv(features, k, stride=1, dilation=1, dtype=jnp.float32, name=None):
  """Conv without bias, torch padding (k // 2) * dilation; params as `nn.Conv`. Stride-1
  undilated convs go through `layers.Conv` (1x1 as a matmul, k x k with a backward pass that is
  fast on XLA:CPU too)."""
  if stride == 1 and dilation == 1:
    return Conv(features, k, use_bias=False, dtype=dtype, name=name)
  pad = (k // 2) * dilation
  return nn.Conv(features, (k, k), strides=(stride, stride), kernel_dilation=(dilation, dilation),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


class Bottleneck(nn.Module):
  """x: [B, H, W, Cin] -> [B, H/stride, W/stride, 4*planes]."""
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  frozen_bn: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = lambda n: _Norm(self.frozen_bn, self.dtype, name=n)
    y = _conv(self.planes, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(norm("bn1")(y, train))
    y = _conv(self.planes, 3, self.stride, self.dilation, self.dtype, name="conv2")(y)
    y = nn.relu(norm("bn2")(y, train))
    y = _conv(self.planes * 4, 1, dtype=self.dtype, name="conv3")(y)
    y = norm("bn3")(y, train)
    if self.downsample:
      x = _conv(self.planes * 4, 1, self.stride, dtype=self.dtype, name="downsample_conv")(x)
      x = norm("downsample_bn")(x, train)
    return nn.relu(y + x.astype(y.dtype))


class ResNet50(nn.Module):
  """images: [B, H, W, 3] (ImageNet-normalised) -> [256@1/4, 512@1/8, 1024@1/16, 2048@1/32 or 1/16].

  With `stages=3` (AOT): -> [256@1/4, 512@1/8, 1024@1/16, 1024@1/16] (layer3 output twice).
  """
  output_stride: int = 32
  frozen_bn: bool = True
  dtype: Dtype = jnp.float32
  depths: Sequence[int] = (3, 4, 6, 3)
  stages: int = 4

  @nn.compact
  def __call__(self, images, train: bool = False):
    check_image(images, "ResNet50 images")
    if self.output_stride not in (16, 32):
      raise ValueError(f"ResNet50: output_stride must be 16 or 32, got {self.output_stride}")
    if self.stages not in (3, 4):
      raise ValueError(f"ResNet50: stages must be 4 (full) or 3 (AOT, no layer4), got {self.stages}")
    x = images.astype(self.dtype)
    x = _conv(64, 7, 2, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(_Norm(self.frozen_bn, self.dtype, name="bn1")(x, train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outs = []
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512)[:self.stages], self.depths)):
      stride, dilation = (1 if i == 0 else 2), 1
      if i == 3 and self.output_stride == 16:
        stride, dilation = 1, 2
      for j in range(n):
        x = Bottleneck(planes, stride if j == 0 else 1, 1 if j == 0 else dilation,
                       downsample=(j == 0),
                       frozen_bn=self.frozen_bn, dtype=self.dtype,
                       name=f"layer{i + 1}_{j}")(x, train)
      outs.append(x)
    if self.stages == 3:
      outs.append(x)  # AOT: "Following STMVOS, we drop stage 5" and repeats the 1/16 map
    return outs


def aot_frozen_mask(params, freeze_at: int = 2, frozen_bn: bool = True):
  """Which ResNet-50 params AOT never trains -> pytree of bools like `params` (True = frozen).

  aot-benchmark `ResNet.freeze(freeze_at)` (default TRAIN_ENCODER_FREEZE_AT = 2): >= 1 freezes
  the stem (conv1, bn1), >= 2 layer1, >= 3 layer2, >= 4 layer3 (>= 5 layer4, which AOT does not
  build). With `frozen_bn` every BN scale/bias is frozen (AOT's FrozenBatchNorm2d buffers).
  """
  def frozen(path, _):
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if frozen_bn and ("bn" in keys or any(k.startswith("bn") or k == "downsample_bn"
                                          for k in keys)):
      return True
    top = keys[0] if keys else ""
    if top in ("conv1", "bn1"):
      return freeze_at >= 1
    if top.startswith("layer"):
      return freeze_at >= int(top[len("layer")]) + 1
    return False

  return jax.tree_util.tree_map_with_path(frozen, params)
