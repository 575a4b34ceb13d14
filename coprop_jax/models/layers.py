"""Building blocks shared by every network in `coprop_jax.models`.

Conventions (every module in this package follows them):
  * NHWC images and feature maps; token sequences are [B, N, C].
  * Parameters are float32 (`param_dtype`); computation runs in `dtype` (float32 by default,
    bfloat16 on accelerators). Normalisation statistics are computed in float32.
  * Dense kernels are [in, out] and conv kernels [kh, kw, in, out]; the converters in
    `coprop_jax.convert` transpose PyTorch weights into this layout.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Array = jax.Array


def check_image(x: Array, name: str = "images", channels: int = 3) -> None:
  """Raises a clear error unless `x` is an NHWC batch [B, H, W, channels]."""
  if x.ndim != 4:
    raise ValueError(f"{name}: expected a rank-4 NHWC array [B, H, W, {channels}], "
                     f"got shape {tuple(x.shape)} (rank {x.ndim})")
  if x.shape[-1] != channels:
    raise ValueError(f"{name}: expected {channels} channels in the last axis (NHWC), "
                     f"got shape {tuple(x.shape)}")


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, statistics in float32, output in `dtype`.

  Parameter names (`scale`, `bias`) match `flax.linen.LayerNorm`.
  """
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    feat = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (feat,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (feat,), jnp.float32)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)


class GroupNorm(nn.Module):
  """GroupNorm over the channel axis of [..., C] (PyTorch semantics), statistics in float32.

  For NHWC maps the statistics run over H, W and the channels of each group, as
  `torch.nn.GroupNorm` does for NCHW.
  """
  num_groups: int
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f"GroupNorm: {c} channels not divisible by {self.num_groups} groups")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    x32 = x.astype(jnp.float32)
    shape = x.shape
    g = x32.reshape(shape[0], -1, self.num_groups, c // self.num_groups)
    mean = jnp.mean(g, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 3), keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = g.reshape(shape) * scale + bias
    return y.astype(self.dtype)


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics (inference mode), as AOT and detection backbones use it.

  `mean`/`var` live in the `batch_stats` collection and are never updated; `scale`/`bias` are
  ordinary parameters (trainable unless the optimizer masks them). Computed in float32.
  """
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32)).value
    var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32)).value
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    y = x.astype(jnp.float32) * mul + (bias - mean * mul)
    return y.astype(self.dtype)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example with probability `rate`."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    rng = self.make_rng("dropout")
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(rng, keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Mlp(nn.Module):
  """Dense -> activation -> Dense, names `fc1`/`fc2`."""
  hidden_features: int
  out_features: Optional[int] = None
  activation: Callable[[Array], Array] = nn.gelu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out = self.out_features or x.shape[-1]
    x = nn.Dense(self.hidden_features, dtype=self.dtype, name="fc1")(x)
    x = self.activation(x)
    return nn.Dense(out, dtype=self.dtype, name="fc2")(x)


def gelu_exact(x: Array) -> Array:
  """GELU with the exact erf form (PyTorch's default `nn.GELU()`)."""
  return nn.gelu(x, approximate=False)


def dot_product_attention(q: Array, k: Array, v: Array, mask: Optional[Array] = None,
                          bias: Optional[Array] = None) -> Array:
  """Softmax attention. q: [B, Nq, H, D], k/v: [B, Nk, H, D] -> [B, Nq, H, D].

  Scores are scaled by 1/sqrt(D) and the softmax runs in float32. `mask` broadcasts to
  [B, H, Nq, Nk] (True = attend); `bias` is added to the scores before the softmax.
  """
  scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class MultiHeadAttention(nn.Module):
  """Multi-head attention with separate `query`/`key`/`value`/`out` Dense layers.

  Separate projections (rather than a fused qkv kernel) keep PyTorch checkpoint conversion a
  transpose per matrix.

  Attributes:
    num_heads: number of heads; `qkv_features` must divide by it.
    qkv_features: width of q/k/v (defaults to the query's width).
    out_features: output width (defaults to the query's width).
    use_bias: bias in the q/k/v projections (the output projection always has one).
  Call:
    inputs_q: [B, Nq, Cq]; inputs_kv: [B, Nk, Ckv] (defaults to inputs_q);
    inputs_v: optional separate value input [B, Nk, Cv] (AOT feeds v differently from k);
    mask: broadcastable to [B, H, Nq, Nk], True = attend. Returns [B, Nq, out_features].
  """
  num_heads: int
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array] = None,
               inputs_v: Optional[Array] = None, mask: Optional[Array] = None) -> Array:
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    inputs_v = inputs_kv if inputs_v is None else inputs_v
    feat = self.qkv_features or inputs_q.shape[-1]
    if feat % self.num_heads:
      raise ValueError(f"MultiHeadAttention: {feat} features not divisible by {self.num_heads} heads")
    head_dim = feat // self.num_heads
    dense = lambda name: nn.Dense(feat, use_bias=self.use_bias, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(t.shape[:-1] + (self.num_heads, head_dim))
    q = split(dense("query")(inputs_q))
    k = split(dense("key")(inputs_kv))
    v = split(dense("value")(inputs_v))
    out = dot_product_attention(q, k, v, mask=mask)
    out = out.reshape(out.shape[:-2] + (feat,))
    return nn.Dense(self.out_features or inputs_q.shape[-1], dtype=self.dtype, name="out")(out)


def sine_position_embedding_2d(height: int, width: int, num_pos_feats: int = 128,
                               temperature: float = 10000.0, normalize: bool = True,
                               scale: float = 2 * math.pi, dtype: Dtype = jnp.float32,
                               zero_based: bool = False) -> Array:
  """2-D sine position embedding (DETR style, no padding mask) -> [height, width, 2 * num_pos_feats].

  Positions are 1..H / 1..W (DETR's cumsum of an all-ones mask); with `normalize` they are divided
  by H / W (+1e-6) and multiplied by `scale`. Channel order is (y features, x features), each
  interleaving sin/cos like DETR. Used by the Keyframe Processor. `zero_based=True` is AOT's
  variant (positions 0..H-1 divided by H-1; `aot_position_embedding` below),
  which the propagator must use to match AOT checkpoints.
  """
  first = 0 if zero_based else 1
  y = jnp.arange(first, height + first, dtype=jnp.float32)[:, None] * jnp.ones((1, width))
  x = jnp.arange(first, width + first, dtype=jnp.float32)[None, :] * jnp.ones((height, 1))
  if normalize:
    eps = 1e-6
    y = y / (height + first - 1 + eps) * scale
    x = x / (width + first - 1 + eps) * scale
  dim_t = jnp.arange(num_pos_feats, dtype=jnp.float32)
  dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
  px = x[..., None] / dim_t
  py = y[..., None] / dim_t
  px = jnp.stack([jnp.sin(px[..., 0::2]), jnp.cos(px[..., 1::2])], axis=-1).reshape(height, width, -1)
  py = jnp.stack([jnp.sin(py[..., 0::2]), jnp.cos(py[..., 1::2])], axis=-1).reshape(height, width, -1)
  return jnp.concatenate([py, px], axis=-1).astype(dtype)


def depthwise_shift(x, kernel, stride: int = 1, dilation: int = 1, pad: int = 1, bias=None):
  """Depthwise conv as k*k strided, shifted multiply-adds (float32 accumulation).

  x: [B, H, W, C], kernel: [k, k, 1, C] (Flax grouped-conv layout), symmetric zero padding
  `pad`, optional `bias` [C] -> [B, Ho, Wo, C] float32; same result as
  `lax.conv_general_dilated(..., feature_group_count=C)` (+ bias).
  XLA:CPU runs grouped convolutions ~20x slower than this fused elementwise form
  (benchmarks/RESULTS.md, PVT-v2 section); on GPU/TPU both are fine.
  """
  b, h, w, c = x.shape
  k = kernel.shape[0]
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  y = jnp.zeros((b, ho, wo, c), jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  for i in range(k):
    for j in range(k):
      sl = jax.lax.slice(xp, (0, i * dilation, j * dilation, 0),
                         (b, i * dilation + (ho - 1) * stride + 1,
                          j * dilation + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
      y = y + sl.astype(jnp.float32) * kernel[i, j, 0].astype(jnp.float32)
  return y


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree (works on `jax.eval_shape` outputs too)."""
  return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------- AOT kernels
# Used by the propagator (coprop_jax/models/propagator.py); semantics as aot-benchmark's.
NEG_INF = -1e9  # logit of a masked key / slot (exp underflows to exactly 0 in float32)


def aot_position_embedding(h: int, w: int, num_pos_feats: int = 128,
                           temperature: float = 10000.0) -> Array:
  """AOT PositionEmbeddingSine(normalize=True) -> [h, w, 2*num_pos_feats].

  Unlike DETR (cumsum, 1..h over h) AOT uses coordinates 0..h-1 divided by (h-1 + 1e-6), times 2*pi;
  channels are (y, x) features, each interleaving sin/cos.
  """
  return sine_position_embedding_2d(h, w, num_pos_feats, temperature, zero_based=True)


def _interp_matrix(n_out: int, n_in: int) -> Array:
  """[n_out, n_in] bilinear weights with align_corners=True (torch F.interpolate semantics)."""
  if n_in == 1 or n_out == 1:
    return jnp.zeros((n_out, n_in), jnp.float32).at[:, 0].set(1.0)
  src = jnp.arange(n_out, dtype=jnp.float32) * ((n_in - 1) / (n_out - 1))
  lo = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, n_in - 2)
  frac = src - lo
  return (jax.nn.one_hot(lo, n_in) * (1 - frac)[:, None] + jax.nn.one_hot(lo + 1, n_in) * frac[:, None])


def resize_align_corners(x: Array, out_hw) -> Array:
  """Bilinear resize of [B, h, w, C] to [B, *out_hw, C] with align_corners=True (AOT's setting)."""
  mh = _interp_matrix(out_hw[0], x.shape[1]).astype(x.dtype)
  mw = _interp_matrix(out_hw[1], x.shape[2]).astype(x.dtype)
  return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw)


def local_attention(q: Array, k: Array, v: Array, rel_k: Array, rel_v: Array, max_dis: int) -> Array:
  """Windowed attention of each query over a (2*max_dis+1)^2 window of k/v (AOT short-term).

  q, k, v: [B, h, w, H, D] (q already scaled); rel_k: [B, h, w, H, W2] relative-position logits;
  rel_v: [H, D, W2] relative value bias. Window positions outside the image are masked.
  Implemented as one gather of the W2 shifted copies of the zero-padded k/v (no identity-kernel
  convolution, no (hw x hw) matrix).
  Returns [B, h, w, H, D].
  """
  h, w = q.shape[1:3]
  win = 2 * max_dis + 1
  dy, dx = np.divmod(np.arange(win * win), win)  # window index j = dy*win + dx (torch unfold order)
  oy = np.arange(h)[:, None, None] + dy[None, None, :]  # [h, 1, W2] rows in the padded map
  ox = np.arange(w)[None, :, None] + dx[None, None, :]  # [1, w, W2]
  valid = ((oy >= max_dis) & (oy < h + max_dis)) & ((ox >= max_dis) & (ox < w + max_dis))  # [h,w,W2]

  def patches(x):  # [B,h,w,H,D] -> [B,h,w,W2,H,D]: one gather of W2 shifted copies, no matmul
    xp = jnp.pad(x, ((0, 0), (max_dis, max_dis), (max_dis, max_dis), (0, 0), (0, 0)))
    return xp[:, oy, ox]

  kp, vp = patches(k), patches(v)
  logits = jnp.einsum("bhwnd,bhwknd->bhwnk", q, kp).astype(jnp.float32) + rel_k.astype(jnp.float32)
  logits = jnp.where(jnp.asarray(valid)[None, :, :, None, :], logits, NEG_INF)
  attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhwnk,bhwknd->bhwnd", attn, vp)
  return out + jnp.einsum("bhwnk,ndk->bhwnd", attn, rel_v.astype(v.dtype))


def memory_attention(q: Array, k: Array, v: Array, valid: Array) -> Array:
  """Attention over a slot memory (AOT long-term). q: [B,N,H,D] (scaled); k/v: [B,S,N,H,D];
  valid: [B,S] bool (invalid slots get NEG_INF logits). Returns [B,N,H,D]."""
  b, s, n, nh, d = k.shape
  logits = jnp.einsum("bqhd,bsnhd->bhqsn", q, k).astype(jnp.float32)
  logits = jnp.where(valid[:, None, None, :, None], logits, NEG_INF)
  logits = logits.reshape(b, nh, q.shape[1], s * n)
  attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(b, nh, q.shape[1], s, n)
  return jnp.einsum("bhqsn,bsnhd->bqhd", attn, v)
