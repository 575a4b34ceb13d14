"""PVT-v2 (Pyramid Vision Transformer v2) backbone, variants b0..b5 and b2_linear.

Architecture (Wang et al., "PVT v2", CVMJ 2022; reference implementations: Hugging Face
transformers `PvtV2Model` and whai362/PVT `pvt_v2.py`):

  images [B, H, W, 3]
  -> 4 stages; stage i:
       overlapping patch embedding: conv (kernel 7/3/3/3, stride 4/2/2/2, explicit symmetric
       padding kernel//2 -- NOT "SAME", which pads asymmetrically when stride > 1) + LayerNorm
       depth_i x block:  x + Attn(LN(x));  x + MixFFN(LN(x))
         Attn: spatial-reduction attention. q from every token; k, v from a reduced map:
           sr > 1: conv kernel=stride=sr (VALID) + LN;  sr == 1 (last stage): the tokens;
           linear variant (every stage): adaptive avg-pool to 7x7 + 1x1 conv + LN + GELU.
         MixFFN: Dense -> (ReLU, linear variant only) -> 3x3 depthwise conv -> GELU(erf) -> Dense
       LayerNorm
  -> [B, ceil(H/4), ceil(W/4), C1], ..., [B, H/32.., W/32.., C4]   (list of 4 NHWC maps)

LayerNorm epsilons depend on the checkpoint's source: Hugging Face uses 1e-6 everywhere; the
original whai362/PVT code (and mmseg checkpoints built from it) uses torch's default 1e-5 in the
patch-embedding norms and the attention's spatial-reduction norms and 1e-6 in the block and stage
norms. `build_model(variant, source=...)` sets them; `coprop_jax.convert.pvt_v2.load` returns a
model built for the checkpoint it read.

Parameters are float32; the computation runs in `dtype`; LayerNorm statistics and the attention
softmax run in float32.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coprop_jax.models import layers

Dtype = Any
Array = jax.Array


@dataclasses.dataclass(frozen=True)
class PVTv2Spec:
  """Architecture of one PVT-v2 variant (REFERENCE.md section 3)."""
  hidden_sizes: tuple[int, int, int, int]
  depths: tuple[int, int, int, int]
  mlp_ratios: tuple[int, int, int, int]
  linear: bool = False
  num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
  sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
  patch_sizes: tuple[int, int, int, int] = (7, 3, 3, 3)
  strides: tuple[int, int, int, int] = (4, 2, 2, 2)


_WIDE = (64, 128, 320, 512)
VARIANTS: dict[str, PVTv2Spec] = {
    "b0": PVTv2Spec((32, 64, 160, 256), (2, 2, 2, 2), (8, 8, 4, 4)),
    "b1": PVTv2Spec(_WIDE, (2, 2, 2, 2), (8, 8, 4, 4)),
    "b2": PVTv2Spec(_WIDE, (3, 4, 6, 3), (8, 8, 4, 4)),
    "b2_linear": PVTv2Spec(_WIDE, (3, 4, 6, 3), (8, 8, 4, 4), linear=True),
    "b3": PVTv2Spec(_WIDE, (3, 4, 18, 3), (8, 8, 4, 4)),
    "b4": PVTv2Spec(_WIDE, (3, 8, 27, 3), (8, 8, 4, 4)),
    "b5": PVTv2Spec(_WIDE, (3, 6, 40, 3), (4, 4, 4, 4)),
}

# LayerNorm epsilons per checkpoint source: (layer_norm_eps, embed_norm_eps).
#   layer_norm_eps: the blocks' pre-norms and each stage's final norm.
#   embed_norm_eps: the patch-embedding norms and the attention's spatial-reduction norms.
SOURCE_EPS: dict[str, tuple[float, float]] = {
    "hf": (1e-6, 1e-6),          # transformers PvtV2Model / Backbone / ForImageClassification
    "original": (1e-6, 1e-5),    # whai362/PVT classification/pvt_v2.py
    "mmseg": (1e-6, 1e-5),       # whai362/PVT segmentation / detection (same modules, `backbone.`)
}


def get_spec(variant: str, depths: Optional[Sequence[int]] = None) -> PVTv2Spec:
  """The variant's architecture; `depths` overrides the blocks per stage (tiny test models)."""
  if variant not in VARIANTS:
    raise ValueError(f"PVT-v2: unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
  spec = VARIANTS[variant]
  if depths is not None:
    depths = tuple(int(d) for d in depths)
    if len(depths) != 4 or min(depths) < 1:
      raise ValueError(f"PVT-v2: depths must be 4 positive ints, got {depths}")
    spec = dataclasses.replace(spec, depths=depths)
  return spec


def adaptive_avg_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] averaging matrix equal to torch's AdaptiveAvgPool1d windows.

  Output cell i averages inputs floor(i*in/out) .. ceil((i+1)*in/out) - 1, so windows
  overlap when `in_size` is not a multiple of `out_size` (and when in_size < out_size).
  """
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool_2d(x: Array, out_hw: tuple[int, int]) -> Array:
  """torch.nn.AdaptiveAvgPool2d on NHWC: [B, H, W, C] -> [B, oh, ow, C], summed in float32."""
  ph = jnp.asarray(adaptive_avg_pool_matrix(x.shape[1], out_hw[0]))
  pw = jnp.asarray(adaptive_avg_pool_matrix(x.shape[2], out_hw[1]))
  y = jnp.einsum("ih,bhwc->biwc", ph, x.astype(jnp.float32))
  y = jnp.einsum("jw,biwc->bijc", pw, y)
  return y.astype(x.dtype)


class OverlapPatchEmbed(nn.Module):
  """Conv (explicit symmetric padding patch//2) + LayerNorm. [B, H, W, Cin] -> [B, H', W', C]."""
  features: int
  patch_size: int
  stride: int
  norm_eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    p = self.patch_size // 2
    x = nn.Conv(self.features, (self.patch_size, self.patch_size),
                strides=(self.stride, self.stride), padding=((p, p), (p, p)),
                dtype=self.dtype, name="proj")(x)
    return layers.LayerNorm(self.norm_eps, dtype=self.dtype, name="norm")(x)


class PatchConv(nn.Module):
  """Conv with kernel = stride = `patch` and VALID padding, as patchify + one matmul.

  [B, H, W, Cin] -> [B, H // patch, W // patch, features]; trailing rows/columns that do not fill
  a patch are dropped, as torch's Conv2d does. Parameters as `nn.Conv` (kernel
  [patch, patch, Cin, features], bias). On XLA:CPU the matmul form is ~1.5x faster than the
  strided convolution (benchmarks/RESULTS.md).
  """
  features: int
  patch: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, cin = x.shape
    r = self.patch
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (r, r, cin, self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    ho, wo = h // r, w // r
    x = x[:, :ho * r, :wo * r, :].astype(self.dtype)
    x = x.reshape(b, ho, r, wo, r, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, ho, wo, r * r * cin)
    y = jnp.dot(x, kernel.reshape(r * r * cin, self.features).astype(self.dtype))
    return y + bias.astype(self.dtype)


class SpatialReductionAttention(nn.Module):
  """PVT-v2 attention: queries from all tokens, keys/values from a spatially reduced map.

  x: [B, H, W, C] -> [B, H, W, C]. Submodules: query, key, value, proj (Dense), and for
  sr_ratio > 1 or the linear variant `sr` (Conv) + `norm` (LayerNorm). `attention_impl`: see
  `layers.dot_product_attention`.
  """
  num_heads: int
  sr_ratio: int
  linear: bool
  norm_eps: float
  attention_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"PVT-v2 attention: {c} channels not divisible by {self.num_heads} heads")
    head_dim = c // self.num_heads
    dense = lambda name: nn.Dense(c, dtype=self.dtype, name=name)
    q = dense("query")(x).reshape(b, h * w, self.num_heads, head_dim)
    if self.linear:
      kv = adaptive_avg_pool_2d(x, (7, 7))
      kv = nn.Conv(c, (1, 1), dtype=self.dtype, name="sr")(kv)
      kv = layers.LayerNorm(self.norm_eps, dtype=self.dtype, name="norm")(kv)
      kv = layers.gelu_exact(kv)
    elif self.sr_ratio > 1:
      r = self.sr_ratio
      if h < r or w < r:
        raise ValueError(
            f"PVT-v2 attention: a {h}x{w} feature map is smaller than the spatial-reduction ratio "
            f"{r} (as in PyTorch, the reduction conv needs at least one {r}x{r} patch); images "
            "must be at least 29x29 pixels for the non-linear variants")
      kv = PatchConv(c, r, dtype=self.dtype, name="sr")(x)
      kv = layers.LayerNorm(self.norm_eps, dtype=self.dtype, name="norm")(kv)
    else:
      kv = x
    kv = kv.reshape(b, -1, c)
    k = dense("key")(kv).reshape(b, -1, self.num_heads, head_dim)
    v = dense("value")(kv).reshape(b, -1, self.num_heads, head_dim)
    out = layers.dot_product_attention(q, k, v, implementation=self.attention_impl)
    out = out.reshape(b, h, w, c)
    return dense("proj")(out)


class DepthwiseConv3x3(nn.Module):
  """3x3 depthwise conv, stride 1, zero padding 1, with bias. [B, H, W, C] -> [B, H, W, C].

  Parameters as `nn.Conv(C, (3, 3), feature_group_count=C)`: kernel [3, 3, 1, C], bias [C].
  `impl="shift"` computes it as nine shifted multiply-adds (one fused elementwise kernel; on
  XLA:CPU 20x faster than the grouped convolution, see benchmarks/RESULTS.md) and accumulates
  in float32; `impl="conv"` uses `lax.conv_general_dilated` with feature_group_count=C.
  """
  impl: str = "shift"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, 1, c), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    if self.impl == "conv":
      y = jax.lax.conv_general_dilated(
          x.astype(self.dtype), kernel.astype(self.dtype), (1, 1), ((1, 1), (1, 1)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
      return (y + bias.astype(self.dtype)).astype(self.dtype)
    if self.impl != "shift":
      raise ValueError(f"DepthwiseConv3x3: impl must be 'shift' or 'conv', got {self.impl!r}")
    return layers.depthwise_shift(x, kernel, bias=bias).astype(self.dtype)


class MixFFN(nn.Module):
  """Dense -> (ReLU if linear) -> 3x3 depthwise conv -> exact GELU -> Dense. [B,H,W,C] -> same."""
  hidden_features: int
  linear: bool
  depthwise_impl: str = "shift"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    y = nn.Dense(self.hidden_features, dtype=self.dtype, name="fc1")(x)
    if self.linear:
      y = jax.nn.relu(y)
    y = DepthwiseConv3x3(self.depthwise_impl, dtype=self.dtype, name="dwconv")(y)
    y = layers.gelu_exact(y)
    return nn.Dense(c, dtype=self.dtype, name="fc2")(y)


class Block(nn.Module):
  """Pre-norm transformer block: x + Attn(norm1(x)); x + MixFFN(norm2(x)). [B,H,W,C] -> same."""
  num_heads: int
  sr_ratio: int
  mlp_ratio: int
  linear: bool
  layer_norm_eps: float
  embed_norm_eps: float
  drop_path: float = 0.0
  depthwise_impl: str = "shift"
  attention_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, drop_rate: Any = None) -> Array:
    """x: [B, H, W, C]; `drop_rate` (float or traced scalar) overrides `drop_path`."""
    c = x.shape[-1]
    drop = layers.DropPath(self.drop_path)
    y = layers.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="norm1")(x)
    y = SpatialReductionAttention(self.num_heads, self.sr_ratio, self.linear, self.embed_norm_eps,
                                  self.attention_impl, dtype=self.dtype, name="attn")(y)
    x = x + drop(y, deterministic=not train, rate=drop_rate)
    y = layers.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="norm2")(x)
    y = MixFFN(int(c * self.mlp_ratio), self.linear, self.depthwise_impl, dtype=self.dtype,
               name="mlp")(y)
    return x + drop(y, deterministic=not train, rate=drop_rate)


class PVTv2(nn.Module):
  """PVT-v2 backbone returning the four stage feature maps.

  Attributes:
    variant: "b0", "b1", "b2", "b2_linear", "b3", "b4" or "b5".
    dtype: computation dtype (parameters stay float32; norms/softmax in float32).
    layer_norm_eps: eps of the blocks' norm1/norm2 and the per-stage final norms (1e-6).
    embed_norm_eps: eps of the patch-embedding norms and the attention spatial-reduction norms:
      1e-6 for Hugging Face checkpoints, 1e-5 for original whai362/PVT and mmseg checkpoints
      (use `build_model(variant, source=...)`).
    drop_path_rate: stochastic depth, rising linearly from 0 over all blocks (active if train).
    depths: optional override of the blocks per stage (tiny test models); None = the variant's.
    depthwise_impl: "shift" (default; nine shifted multiply-adds, fast on every backend) or
      "conv" (grouped convolution); same parameters, same result.
    attention_impl: "auto" (cuDNN fused attention on a GPU in bfloat16, XLA otherwise), "xla" or
      "cudnn"; see `coprop_jax.models.layers.dot_product_attention`.
    scan_layers: True (default): each stage's blocks run as one `nn.scan` over their stacked
      parameters, so XLA compiles one block per stage instead of all of them (PVT-v2-b5's 52
      blocks: see benchmarks/RESULTS.md); False: the same stacked parameters, fully unrolled
      (`unroll=depth`). Same parameters and outputs either way.
    remat: recompute each block's activations in the backward pass (`nn.remat`) to save memory
      when fine-tuning; same parameters and outputs.
  Call:
    images: [B, H, W, 3], any H, W >= 29 (>= 1 for b2_linear), normalised like ImageNet;
    train: enables drop-path (then needs a "dropout" rng).
  Returns:
    [f1, f2, f3, f4], NHWC maps at strides 4, 8, 16, 32 (spatial size of a torch conv with the
    same padding: f1 is floor((H - 1) / 4) + 1 high) with the variant's hidden sizes.

  Parameter layout: stage i has `stage{i}_patch_embed`, `stage{i}_blocks` and
  `stage{i}_norm`; every leaf of `stage{i}_blocks` is the depth_i blocks' parameters stacked on a
  leading axis (e.g. `stage2_blocks/attn/query/kernel` [depth_2, C3, C3]). Trees in the older
  per-block layout (`stage{i}_block{j}`) are stacked by `upgrade_layout`.
  """
  variant: str = "b0"
  dtype: Dtype = jnp.float32
  layer_norm_eps: float = 1e-6
  embed_norm_eps: float = 1e-6
  drop_path_rate: float = 0.0
  depths: Optional[tuple[int, ...]] = None
  depthwise_impl: str = "shift"
  attention_impl: str = "auto"
  scan_layers: bool = True
  remat: bool = False

  @property
  def spec(self) -> PVTv2Spec:
    return get_spec(self.variant, self.depths)

  @nn.compact
  def __call__(self, images: Array, train: bool = False) -> list[Array]:
    layers.check_image(images, "PVT-v2 images")
    spec = self.spec
    total = sum(spec.depths)
    rates = np.linspace(0.0, self.drop_path_rate, total) if total > 1 else np.zeros(1)
    x = images.astype(self.dtype)
    outs = []
    k = 0
    for i in range(4):
      x = OverlapPatchEmbed(spec.hidden_sizes[i], spec.patch_sizes[i], spec.strides[i],
                            self.embed_norm_eps, dtype=self.dtype,
                            name=f"stage{i}_patch_embed")(x)
      depth = spec.depths[i]
      block = Block(spec.num_heads[i], spec.sr_ratios[i], spec.mlp_ratios[i], spec.linear,
                    self.layer_norm_eps, self.embed_norm_eps,
                    depthwise_impl=self.depthwise_impl, attention_impl=self.attention_impl,
                    dtype=self.dtype, name=f"stage{i}_blocks")
      x = layers.scan_layers(block, x, length=depth, scan=self.scan_layers, remat=self.remat,
                             per_layer={"drop_rate": jnp.asarray(rates[k:k + depth], jnp.float32)},
                             train=train and self.drop_path_rate > 0)
      k += depth
      x = layers.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=f"stage{i}_norm")(x)
      outs.append(x)
    return outs


_BLOCK_KEY = re.compile(r"^stage(\d+)_block(\d+)$")


def is_per_block_layout(params: Mapping[str, Any]) -> bool:
  """True for a PVT-v2 params tree in the older per-block layout (`stage{i}_block{j}` keys)."""
  return (isinstance(params, Mapping) and "stage0_patch_embed" in params
          and any(_BLOCK_KEY.match(str(k)) for k in params))


def upgrade_layout(params: Mapping[str, Any]) -> dict[str, Any]:
  """A PVT-v2 params tree in the current (stacked) layout, from either layout.

  Per-block trees (`stage{i}_block{j}`, written by coprop_jax.convert before the stacked layout
  and by older checkpoints) are stacked into `stage{i}_blocks` (numpy arrays); stacked trees are
  returned unchanged. Raises ValueError when a stage's blocks are not numbered 0..n-1 or differ
  in structure or shapes.
  """
  if not is_per_block_layout(params):
    if any(_BLOCK_KEY.match(str(k)) for k in params):
      raise ValueError("PVT-v2 params: per-block keys (stage{i}_block{j}) without "
                       "stage0_patch_embed; not a PVT-v2 tree")
    return dict(params)
  out: dict[str, Any] = {}
  stages: dict[int, dict[int, Any]] = {}
  for k, v in params.items():
    m = _BLOCK_KEY.match(str(k))
    if m:
      stages.setdefault(int(m.group(1)), {})[int(m.group(2))] = v
    else:
      out[k] = v
  for i, blocks in sorted(stages.items()):
    if f"stage{i}_blocks" in out:
      raise ValueError(f"PVT-v2 params: both stage{i}_blocks and stage{i}_block0.. present")
    if sorted(blocks) != list(range(len(blocks))):
      raise ValueError(f"PVT-v2 params: stage {i} blocks are numbered {sorted(blocks)}; "
                       f"expected 0..{len(blocks) - 1}")
    out[f"stage{i}_blocks"] = layers.stack_layer_params(
        [blocks[j] for j in range(len(blocks))], f"PVT-v2 params: stage{i} blocks")
  return out


def per_block_layout(params: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of `upgrade_layout`: `stage{i}_blocks` split into `stage{i}_block{j}` (numpy
  arrays, or shapes for a `jax.ShapeDtypeStruct` tree), e.g. for per-block tools or messages."""
  out: dict[str, Any] = {}
  for k, v in params.items():
    m = re.match(r"^stage(\d+)_blocks$", str(k))
    if not m:
      out[k] = v
      continue
    for j, block in enumerate(layers.unstack_layer_params(v)):
      out[f"stage{m.group(1)}_block{j}"] = block
  return out


def build_model(variant: str = "b0", source: str = "hf", **kw) -> PVTv2:
  """A `PVTv2` whose LayerNorm epsilons match checkpoints from `source` ("hf", "original",
  "mmseg"); other keyword arguments (dtype, drop_path_rate, depths) go to `PVTv2`."""
  if source not in SOURCE_EPS:
    raise ValueError(f"PVT-v2: unknown checkpoint source {source!r}; expected one of "
                     f"{sorted(SOURCE_EPS)}")
  get_spec(variant, kw.get("depths"))
  layer_eps, embed_eps = SOURCE_EPS[source]
  kw.setdefault("layer_norm_eps", layer_eps)
  kw.setdefault("embed_norm_eps", embed_eps)
  if kw.get("depths") is not None:
    kw["depths"] = tuple(kw["depths"])
  return PVTv2(variant=variant, **kw)


def init_shapes(variant: str = "b0", image_hw: tuple[int, int] = (224, 224), **kw) -> Any:
  """Parameter shapes (`jax.ShapeDtypeStruct` pytree) of a variant, without allocating them."""
  model = build_model(variant, **kw)
  x = jax.ShapeDtypeStruct((1, image_hw[0], image_hw[1], 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape, x.dtype)))[
      "params"]


def output_hw(height: int, width: int) -> list[tuple[int, int]]:
  """Spatial sizes of the four outputs for an input of height x width."""
  sizes = []
  for p, s in zip((7, 3, 3, 3), (4, 2, 2, 2)):
    height = (height + 2 * (p // 2) - p) // s + 1
    width = (width + 2 * (p // 2) - p) // s + 1
    sizes.append((height, width))
  return sizes


__all__ = ["PVTv2", "PVTv2Spec", "VARIANTS", "SOURCE_EPS", "get_spec",
           "build_model", "init_shapes", "output_hw", "upgrade_layout", "per_block_layout",
           "is_per_block_layout", "adaptive_avg_pool_2d",
           "adaptive_avg_pool_matrix"]
