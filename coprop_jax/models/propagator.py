"""Audio-insert Propagator (Co-Prop AIP): AOT's LSTT with audio insertion. Modules only.

The scan over frames (memory carry, control-point resets) is `coprop_jax.propagation`; the
whole-video pipeline (control points -> KPF -> propagation) is `coprop_jax.pipeline`. One frame
of propagation is ONE `Propagator.apply(..., method=Propagator.frame)`.

Structure follows aot-benchmark (networks/layers/transformer.py, attention.py, decoders/fpn.py,
engines/aot_engine.py) with parameter names chosen so the converter (`coprop_jax.convert.aot`) maps
AOT checkpoint keys one to one. Differences from AOT, on purpose:
  * audio insert (paper eq. 6) at configured encoder levels, output projection zero-initialised;
  * identity-from-audio: the ID embedding cross-attends to the audio tokens (zero-initialised
    output projection) -- the paper combines audio and mask for the identity, without details;
  * audio tokens: `audio_tokens="learned"` (default, not in the paper) turns the frame's 128-d
    VGGish embedding into `num_audio_tokens` tokens by K learned projections, so the eq. 6 softmax
    has several keys and different pixels attend differently. `audio_tokens="paper"` uses the
    embedding itself as the single key/value, as eq. 6 is written for F_a in R^{T x D}: the
    softmax over one key is 1, the insert adds the same W_V F_a to every pixel (a per-frame bias)
    and W_Q / W_K get exactly zero gradient.
All audio paths start as exact no-ops, so a converted AOT checkpoint behaves as AOT; Table 5's
`insert=aot` (`INSERT_VARIANTS["aot"]`) has no audio parameters at all.

Checked against aot-benchmark (AOT v1 block, default config): relative_emb_k is applied to the
unscaled query; drop-path (constant rate, per sample) only on the self-attention and FFN branches
(TRAIN_LSTT_DROPPATH_LST=False, DROPPATH_SCALING=False); position embedding normalised by the last
index (0..h-1)/(h-1); decoder ConvGN convs have a bias; bilinear upsampling with align_corners=True
(MODEL_ALIGN_CORNERS) both in the FPN and for the final logits; LayerNorm / GroupNorm eps 1e-5.
Id-dropout and embedding dropout are 0 in AOT's configs and are not implemented. Object ids: the
ID bank has `max_objects + 1` entries (AOT-L: 11); `num_objects` [B] per example masks the logits
of ids above it (AOT's engine), so one checkpoint serves binary data (num_objects=1) and AVSS.

The visual encoder is pluggable: `build_encoder(cfg)` gives AOT's MobileNetV2 ([24, 32, 96, 1280])
or ResNet-50 ([256, 512, 1024, 1024], layer4 dropped) at output stride 16, as
`encode(enc_vars, images[B,H,W,3]) -> [f4, f8, f16, f16b]`. Images are ImageNet-normalised (AOT:
/255, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)); uint8 frames are normalised inside
`encode`.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from coprop_jax.images import normalize_uint8
from coprop_jax.models.layers import (NEG_INF, DropPath, GroupNorm, LayerNorm, aot_position_embedding,
                                      conv_same, depthwise_shift, gelu_exact, local_attention,
                                      memory_attention, resize_align_corners)

Array = jax.Array

# Paper Table 5: which encoder levels get the audio insert and whether the identity embedding
# takes audio. "aot" is plain AOT: no audio anywhere. The one definition configs and the AOT
# converter use.
INSERT_VARIANTS = {
    "aot": dict(audio_insert_levels=(), identity_from_audio=False),
    "1layer": dict(audio_insert_levels=(3,), identity_from_audio=True),
    "4layer": dict(audio_insert_levels=(0, 1, 2, 3), identity_from_audio=True),
}
AUDIO_TOKEN_MODES = ("learned", "paper")
# How the propagator's convolutions run (same parameters, same results to float rounding):
# "xla": lax.conv_general_dilated (fast on GPU/TPU); "shift": the CPU forms -- k x k convs by
# `layers.conv_same` (matmul kernel gradient), 1x1 and grouped 1x1 as matmuls, the 5x5 depthwise
# as `layers.depthwise_shift`, the strided ID bank as a patch view + one matmul.
CONV_IMPLS = ("xla", "shift")


def default_conv_impl() -> str:
  """"shift" on CPU (XLA:CPU's convolution gradients are slow), "xla" on GPU/TPU."""
  return "shift" if jax.default_backend() == "cpu" else "xla"


def resolve_conv_impl(name: str) -> str:
  """"auto" -> `default_conv_impl()`; "xla" / "shift" unchanged; anything else: ValueError."""
  if name == "auto":
    return default_conv_impl()
  if name not in CONV_IMPLS:
    raise ValueError(f"propagator.conv_impl: expected 'auto' or one of {CONV_IMPLS}, got {name!r}")
  return name


def strided_patch_conv(x: Array, kernel: Array, stride: int, pad: int) -> Array:
  """Convolution with stride `stride`, symmetric zero padding `pad` and a k x k kernel with
  stride <= k <= 2 * stride, as ONE matmul over a patch view: x [B, H, W, Cin], kernel
  [k, k, Cin, F] -> [B, Ho, Wo, F] in x's dtype (= lax.conv_general_dilated).
  The k rows of patch i are padded rows stride*i .. stride*i + k - 1: the block of `stride` rows
  stride*i.. plus the first k - stride rows of the next block."""
  b, h, w, c = x.shape
  k = kernel.shape[0]
  if not stride <= k <= 2 * stride:
    raise ValueError(f"strided_patch_conv: needs stride <= k <= 2 * stride, got k={k}, stride={stride}")
  ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  need_h, need_w = stride * (ho + 1), stride * (wo + 1)
  xp = jnp.pad(x, ((0, 0), (pad, max(pad, need_h - h - pad)), (pad, max(pad, need_w - w - pad)), (0, 0)))

  def rows(a, n, axis):   # [.., n*stride+stride, ..] -> [.., n, k, ..] on `axis`
    lo = jax.lax.slice_in_dim(a, 0, n * stride, axis=axis)
    hi = jax.lax.slice_in_dim(a, stride, (n + 1) * stride, axis=axis)
    sh = lambda t: t.reshape(t.shape[:axis] + (n, stride) + t.shape[axis + 1:])
    return jnp.concatenate([sh(lo), jax.lax.slice_in_dim(sh(hi), 0, k - stride, axis=axis + 1)],
                           axis + 1)

  xp = jax.lax.slice_in_dim(xp, 0, need_h, axis=1)
  xp = jax.lax.slice_in_dim(xp, 0, need_w, axis=2)
  pt = rows(rows(xp, ho, 1), wo, 3)                      # [B, ho, k, wo, k, C]
  pt = pt.transpose(0, 1, 3, 2, 4, 5).reshape(b * ho * wo, k * k * c)
  y = jnp.dot(pt, kernel.reshape(k * k * c, -1).astype(x.dtype))
  return y.reshape(b, ho, wo, -1)


class ConvP(nn.Module):
  """A convolution with `nn.Conv`'s parameters (`kernel` [k, k, Cin / groups, F] lecun-normal,
  `bias` [F] zeros: the same names, shapes and initial values), computed in the `impl` form
  (`CONV_IMPLS`). Padding `kernel_size // 2` when `padding` is None. [B, H, W, Cin] ->
  [B, Ho, Wo, F] in `dtype`."""
  features: int
  kernel_size: int = 1
  strides: int = 1
  padding: Optional[int] = None
  feature_group_count: int = 1
  use_bias: bool = True
  impl: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k, g, cin, s = self.kernel_size, self.feature_group_count, x.shape[-1], self.strides
    pad = k // 2 if self.padding is None else self.padding
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, cin // g, self.features),
                        jnp.float32)
    x, kern = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.impl == "xla":
      y = jax.lax.conv_general_dilated(x, kern, (s, s), ((pad, pad), (pad, pad)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=g)
    elif self.impl != "shift":
      raise ValueError(f"ConvP.impl: expected one of {CONV_IMPLS}, got {self.impl!r}")
    elif g == 1 and s == 1 and 2 * pad == k - 1:
      y = conv_same(x, kern)
    elif g == cin == self.features and s == 1 and 2 * pad == k - 1:
      y = depthwise_shift(x, kern, pad=pad).astype(self.dtype)
    elif k == 1 and s == 1 and pad == 0:           # grouped 1x1: one batched matmul per group
      ci, co = cin // g, self.features // g
      y = jnp.einsum("...gi,igo->...go", x.reshape(x.shape[:-1] + (g, ci)),
                     kern.reshape(ci, g, co)).reshape(x.shape[:-1] + (self.features,))
    elif g == 1 and s <= k <= 2 * s:
      y = strided_patch_conv(x, kern, s, pad)
    else:
      raise ValueError(f"ConvP: no 'shift' form for k={k}, stride={s}, pad={pad}, groups={g}")
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32).astype(self.dtype)
    return y


def id_mask_value(dtype) -> float:
  """Logit given to ids above `num_objects` (aot-benchmark: -1e10 in float32, -1e4 in half)."""
  return NEG_INF if jnp.dtype(dtype).itemsize >= 4 else -1e4


def mask_ids(logits: Array, num_objects: Array) -> Array:
  """logits [B, H, W, ids]; num_objects [B] -> ids above num_objects set to `id_mask_value`."""
  allowed = jnp.arange(logits.shape[-1])[None, :] <= num_objects[:, None]
  return jnp.where(allowed[:, None, None, :], logits, id_mask_value(logits.dtype))


# ----------------------------------------------------------------------------- modules
class AudioInsert(nn.Module):
  """The audio insert: visual tokens (queries) cross-attend to audio tokens (paper eq. 6,
  softmax(Q K^T / sqrt(d)) V with Q from the visual map and K, V from the audio).

  not in the paper: eq. 6 is single-head with no output projection and no residual; here it has
  `num_heads` heads, an output `projection` and the residual add x + proj(...). The projection is
  zero-initialised, so the module is the identity until trained (a converted AOT starts as AOT).
  With num_heads=1 and an identity projection it is x + eq. 6 (tests/test_audio_insert.py).
  Where it sits ("four layers", `audio_insert_levels`): levels 0-2 (1/4, 1/8, 1/16 maps) reach
  only the decoder's skip connections; level 3 (the projected 1/16 map) alone enters the LSTT,
  as in AOT's design, where only that map is propagated.

  x: [B, h, w, C]; audio: [B, Na, Ca] -> [B, h, w, C]. With Na = 1 the softmax is 1 for every
  query: the output is x + proj(W_V a), the same vector at every pixel.
  """
  num_heads: int = 8
  dim: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, audio: Array) -> Array:
    b, h, w, c = x.shape
    nh, hd = self.num_heads, self.dim // self.num_heads
    q = nn.Dense(self.dim, dtype=self.dtype, name="query")(x.reshape(b, h * w, c))
    k = nn.Dense(self.dim, dtype=self.dtype, name="key")(audio.astype(self.dtype))
    vv = nn.Dense(self.dim, dtype=self.dtype, name="value")(audio.astype(self.dtype))
    q = q.reshape(b, h * w, nh, hd) / math.sqrt(hd)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k.reshape(b, -1, nh, hd)).astype(jnp.float32)
    attn = jax.nn.softmax(logits, -1).astype(self.dtype)
    o = jnp.einsum("bhqk,bkhd->bqhd", attn, vv.reshape(b, -1, nh, hd)).reshape(b, h * w, self.dim)
    o = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="projection")(o)
    return x + o.reshape(b, h, w, c).astype(x.dtype)


class SelfAttention(nn.Module):
  """AOT MultiheadAttention(use_linear=True): linear_Q/K/V + projection."""
  d_model: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q, k, v):
    nh, hd = self.num_heads, self.d_model // self.num_heads
    sp = lambda t: t.reshape(t.shape[:-1] + (nh, hd))
    q = sp(nn.Dense(self.d_model, dtype=self.dtype, name="linear_Q")(q)) / math.sqrt(hd)
    k = sp(nn.Dense(self.d_model, dtype=self.dtype, name="linear_K")(k))
    v = sp(nn.Dense(self.d_model, dtype=self.dtype, name="linear_V")(v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1).astype(v.dtype), v)
    return nn.Dense(self.d_model, dtype=self.dtype, name="projection")(o.reshape(o.shape[:2] + (-1,)))


class Projection(nn.Module):
  """AOT MultiheadAttention(use_linear=False): only the output `projection`."""
  d_model: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.d_model, dtype=self.dtype, name="projection")(x)


class LocalAttentionParams(nn.Module):
  """AOT short-term attention parameters: relative_emb_k (1x1 grouped conv), relative_emb_v, projection."""
  d_model: int
  num_heads: int
  max_dis: int
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, q_map: Array, k_map: Array, v_map: Array) -> Array:
    """q_map (unscaled), k_map, v_map: [B, h, w, C] -> [B, h*w, C] (after projection).

    As AOT: relative_emb_k is computed from the unscaled query, then q is scaled by 1/sqrt(hd)."""
    b, h, w, c = q_map.shape
    nh, hd, w2 = self.num_heads, c // self.num_heads, (2 * self.max_dis + 1) ** 2
    rel_k = ConvP(nh * w2, 1, feature_group_count=nh, impl=self.conv_impl, dtype=self.dtype,
                  name="relative_emb_k")(q_map).reshape(b, h, w, nh, w2)
    rel_v = self.param("relative_emb_v", nn.initializers.zeros, (nh, hd, w2), jnp.float32)
    sp = lambda t: t.reshape(b, h, w, nh, hd)
    o = local_attention(sp(q_map / math.sqrt(hd)), sp(k_map), sp(v_map), rel_k, rel_v, self.max_dis)
    return nn.Dense(c, dtype=self.dtype, name="projection")(o.reshape(b, h * w, c))


class GNActDWConv(nn.Module):
  """AOT FFN activation: GroupNorm(32) -> GELU -> 5x5 depthwise conv (no bias). x: [B,h,w,C]."""
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    x = gelu_exact(GroupNorm(32, dtype=self.dtype, name="gn")(x))
    return ConvP(x.shape[-1], 5, padding=2, feature_group_count=x.shape[-1], use_bias=False,
                 impl=self.conv_impl, dtype=self.dtype, name="conv")(x)


class LSTTLayer(nn.Module):
  """One LSTT block (pre-norm). Tokens [B, N, C] with N = h*w."""
  d_model: int = 256
  num_heads: int = 8
  ffn_dim: int = 1024
  max_dis: int = 7
  drop_path: float = 0.1
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  def setup(self):
    ln = lambda: LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.norm1, self.norm2, self.norm3 = ln(), ln(), ln()
    self.self_attn = SelfAttention(self.d_model, self.num_heads, self.dtype)
    self.linear_Q = nn.Dense(self.d_model, dtype=self.dtype)
    self.linear_V = nn.Dense(self.d_model, dtype=self.dtype)
    self.long_term_attn = Projection(self.d_model, self.dtype)
    self.short_term_attn = LocalAttentionParams(self.d_model, self.num_heads, self.max_dis, self.dtype,
                                                self.conv_impl)
    self.linear1 = nn.Dense(self.ffn_dim, dtype=self.dtype)
    self.activation = GNActDWConv(self.dtype, self.conv_impl)
    self.linear2 = nn.Dense(self.d_model, dtype=self.dtype)
    self.droppath = DropPath(self.drop_path)

  def fuse(self, curr_k: Array, curr_v: Array, id_emb: Array):
    """Memory (K, V) of a frame: K = its Q projection, V = linear_V(norm2(x) + id_emb)."""
    return curr_k, self.linear_V(curr_v + id_emb.astype(curr_v.dtype))

  def __call__(self, x, pos, size_2d, memory, id_emb=None, is_ref=None, deterministic=True):
    """x: [B,N,C]; pos: [N,C]; memory: None (every example is a reference frame: it attends to
    itself fused with `id_emb`, AOT's add_reference_frame) or (long_k, long_v [B,S,N,C],
    long_valid [B,S], short_k, short_v [B,N,C]). With `is_ref` [B] bool (needs `id_emb`), the
    examples where it is True ignore `memory` and attend to themselves (slot 0 and the short-term
    memory replaced, the other slots masked): a per-example reset without a second pass.
    Returns (x_out, (curr_k, curr_v_raw), self-fused (k, v) or None)."""
    b, n, c = x.shape
    h, w = size_2d
    nh, hd = self.num_heads, c // self.num_heads
    t = self.norm1(x)
    qk = t + pos.astype(t.dtype)
    x = x + self.droppath(self.self_attn(qk, qk, t), deterministic)
    t = self.norm2(x)
    curr_q = self.linear_Q(t)
    curr_k, curr_v = curr_q, t
    self_kv = None if id_emb is None else self.fuse(curr_k, curr_v, id_emb)
    if memory is None:
      k, v = self_kv
      long_k, long_v, long_valid = k[:, None], v[:, None], jnp.ones((b, 1), bool)
      short_k, short_v = k, v
    else:
      long_k, long_v, long_valid, short_k, short_v = memory
      if is_ref is not None:
        k, v = self_kv
        r3 = is_ref[:, None, None]
        long_k = long_k.at[:, 0].set(jnp.where(r3, k.astype(long_k.dtype), long_k[:, 0]))
        long_v = long_v.at[:, 0].set(jnp.where(r3, v.astype(long_v.dtype), long_v[:, 0]))
        long_valid = jnp.where(is_ref[:, None], jnp.arange(long_valid.shape[1])[None] == 0, long_valid)
        short_k = jnp.where(r3, k.astype(short_k.dtype), short_k)
        short_v = jnp.where(r3, v.astype(short_v.dtype), short_v)
    qs = curr_q / math.sqrt(hd)
    sp = lambda a: a.reshape(a.shape[:-1] + (nh, hd))
    lt = memory_attention(sp(qs), sp(long_k.astype(qs.dtype)), sp(long_v.astype(qs.dtype)), long_valid)
    lt = self.long_term_attn(lt.reshape(b, n, c))
    st = self.short_term_attn(curr_q.reshape(b, h, w, c), short_k.astype(qs.dtype).reshape(b, h, w, c),
                              short_v.astype(qs.dtype).reshape(b, h, w, c))
    x = x + lt + st  # AOT (droppath_lst=False, lt/st dropout 0): no drop-path on this branch
    t = self.linear1(self.norm3(x))
    t = self.activation(t.reshape(b, h, w, -1)).reshape(b, n, -1)
    x = x + self.droppath(self.linear2(t), deterministic)
    return x, (curr_k, curr_v), self_kv


class ConvGN(nn.Module):
  features: int
  kernel: int
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    x = ConvP(self.features, self.kernel, impl=self.conv_impl, dtype=self.dtype,
              name="conv")(x)  # torch Conv2d default: with bias
    return GroupNorm(8, dtype=self.dtype, name="gn")(x)


class FPNDecoder(nn.Module):
  """AOT FPNSegmentationHead. inputs: list of [B,h,w,C] at 1/16 (concatenated); shortcuts: encoder
  maps [f4, f8, f16]. Returns logits [B, H/4, W/4, num_ids]."""
  num_ids: int
  d_model: int = 256
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  @nn.compact
  def __call__(self, inputs, shortcuts):
    d, dt, ci = self.d_model, self.dtype, self.conv_impl
    conv = lambda f, name: ConvP(f, 1, impl=ci, dtype=dt, name=name)
    x = nn.relu(ConvGN(d, 1, dt, ci, name="conv_in")(jnp.concatenate(inputs, -1)))
    x = nn.relu(ConvGN(d, 3, dt, ci, name="conv_16x")(x + conv(d, "adapter_16x")(shortcuts[2])))
    x = resize_align_corners(x, shortcuts[1].shape[1:3])
    x = nn.relu(ConvGN(d // 2, 3, dt, ci, name="conv_8x")(x + conv(d, "adapter_8x")(shortcuts[1])))
    x = resize_align_corners(x, shortcuts[0].shape[1:3])
    x = nn.relu(ConvGN(d // 2, 3, dt, ci, name="conv_4x")(x + conv(d // 2, "adapter_4x")(shortcuts[0])))
    return conv(self.num_ids, "conv_out")(x)


class Propagator(nn.Module):
  """AIP network without the visual encoder. See the module docstring; methods via `apply`.

  Attributes: num_layers / d_model / num_heads / ffn_dim (LSTT); max_objects (ID bank of
  max_objects + 1 entries); audio_insert_levels (encoder levels 0..3 with the eq. 6 insert);
  identity_from_audio (ID embedding cross-attends to the audio); audio_tokens ("learned" |
  "paper") and num_audio_tokens (see the module docstring); local_max_dis (short-term window);
  drop_path; dtype (compute; params float32); conv_impl ("xla" | "shift", `CONV_IMPLS`: the
  form of every convolution and of the ID bank; the parameters are the same either way).
  Audio inputs are one frame's audio embedding [B, Ca] (VGGish: Ca = 128).
  """
  num_layers: int = 3
  d_model: int = 256
  num_heads: int = 8
  ffn_dim: int = 1024
  max_objects: int = 10
  audio_insert_levels: Sequence[int] = (0, 1, 2, 3)
  identity_from_audio: bool = True
  audio_tokens: str = "learned"
  num_audio_tokens: int = 4
  local_max_dis: int = 7
  drop_path: float = 0.1
  dtype: Any = jnp.float32
  conv_impl: str = "xla"

  def setup(self):
    dt, ci = self.dtype, self.conv_impl
    if self.audio_tokens not in AUDIO_TOKEN_MODES:
      raise ValueError(f"propagator.audio_tokens: expected one of {AUDIO_TOKEN_MODES}, "
                       f"got {self.audio_tokens!r}")
    if ci not in CONV_IMPLS:
      raise ValueError(f"propagator.conv_impl: expected one of {CONV_IMPLS}, got {ci!r}")
    self.encoder_projector = ConvP(self.d_model, 1, impl=ci, dtype=dt)
    self.patch_wise_id_bank = ConvP(self.d_model, 17, strides=16, padding=8, impl=ci, dtype=dt)
    self.layers = [LSTTLayer(self.d_model, self.num_heads, self.ffn_dim, self.local_max_dis,
                             self.drop_path, dt, ci, name=f"layers_{i}") for i in range(self.num_layers)]
    self.decoder_norms = [LayerNorm(epsilon=1e-5, dtype=dt, name=f"decoder_norms_{i}")
                          for i in range(self.num_layers)]
    self.decoder = FPNDecoder(self.max_objects + 1, self.d_model, dt, ci)
    self.audio_insert = {str(l): AudioInsert(self.num_heads, self.d_model, dt, name=f"audio_insert_{l}")
                         for l in self.audio_insert_levels}
    if self.identity_from_audio:
      self.id_audio = AudioInsert(self.num_heads, self.d_model, dt)
    if self.audio_tokens == "learned" and (self.audio_insert_levels or self.identity_from_audio):
      # not in the paper: K learned linear views of the frame's VGGish embedding as K audio tokens
      # (eq. 6 with one token is a per-frame bias; with K keys each pixel weighs them differently).
      self.audio_token_proj = nn.Dense(self.num_audio_tokens * self.d_model, dtype=dt)

  def tokens(self, audio: Array) -> Array:
    """audio [B, Ca] (one frame's embedding) -> audio tokens [B, Na, C]: "paper" Na = 1 (the
    embedding itself), "learned" Na = num_audio_tokens (C = d_model)."""
    if audio.ndim != 2:
      raise ValueError(f"propagator audio: expected one frame's embedding [B, C], got {audio.shape}")
    if self.audio_tokens == "paper":
      return audio[:, None].astype(self.dtype)
    t = self.audio_token_proj(audio.astype(self.dtype))
    return t.reshape(audio.shape[0], self.num_audio_tokens, self.d_model)

  def embed(self, feats, audio):
    """feats: encoder maps [f4, f8, f16, f16b]; audio [B, Ca] -> 4 maps, last projected to d_model."""
    feats = [f.astype(self.dtype) for f in feats]
    feats[3] = self.encoder_projector(feats[3])
    if self.audio_insert_levels:
      toks = self.tokens(audio)
      for l in self.audio_insert_levels:
        feats[l] = self.audio_insert[str(l)](feats[l], toks)
    return feats

  def id_embed(self, mask_onehot, audio, freeze_bank=None):
    """mask_onehot: [B, H, W, max_objects+1] -> [B, N16, d_model].

    freeze_bank: optional traced bool; True stops the gradient of the ID bank's output (AOT's
    sequential training freezes `patch_wise_id_bank`; the audio part keeps training)."""
    e = self.patch_wise_id_bank(mask_onehot.astype(self.dtype))
    if freeze_bank is not None:
      e = jnp.where(freeze_bank, jax.lax.stop_gradient(e), e)
    if self.identity_from_audio:
      e = self.id_audio(e, self.tokens(audio))
    return e.reshape(e.shape[0], -1, e.shape[-1])

  def lstt(self, x_map, memory, id_emb=None, is_ref=None, deterministic=True):
    """x_map: [B,h,w,C]; memory: None or a list per layer of (long_k, long_v, valid, short_k,
    short_v); is_ref: see `LSTTLayer`. Returns (decoder inputs list of [B,h,w,C], per-layer
    (curr_k, curr_v_raw), per-layer self-fused (k, v) or None)."""
    b, h, w, c = x_map.shape
    pos = aot_position_embedding(h, w, c // 2).reshape(h * w, c)
    x = x_map.reshape(b, h * w, c)
    outs, kvs, self_kvs = [x_map], [], []
    for i, layer in enumerate(self.layers):
      x, kv, skv = layer(x, pos, (h, w), None if memory is None else memory[i], id_emb, is_ref,
                         deterministic)
      outs.append(self.decoder_norms[i](x).reshape(b, h, w, c))
      kvs.append(kv)
      self_kvs.append(skv)
    return outs, kvs, (None if id_emb is None else self_kvs)

  def fuse(self, kvs, id_emb):
    return [layer.fuse(ck, cv, id_emb) for layer, (ck, cv) in zip(self.layers, kvs)]

  def decode(self, outs, feats, out_hw):
    """-> logits [B, *out_hw, max_objects+1] float32 (align-corners upsampling, as AOT)."""
    return resize_align_corners(self.decoder(outs, feats[:3]).astype(jnp.float32), out_hw)

  def frame(self, feats, audio, memory, ref_onehot, is_ref, num_objects, *, short_onehot=None,
            use_short_onehot=None, freeze_id=None, id_perm=None, deterministic=True):
    """One whole frame step (the scan body's single `apply`).

    feats: encoder maps of the frame; audio: [B, Ca]; memory: per layer (long_k, long_v [B,S,N,C],
    valid [B,S], short_k, short_v [B,N,C]); ref_onehot: [B,H,W,ids] keyframe mask, used where
    is_ref [B] is True (those examples run AOT's reference pass: they attend to themselves fused
    with the keyframe's ids; `memory` is ignored for them); num_objects: [B] allowed ids 1..n.
    Training only: short_onehot [B,H,W,ids] replaces the fed-back prediction where
    use_short_onehot [B] (teacher forcing); freeze_id (traced bool) stops the ID bank's gradient;
    id_perm [B, ids] (perm[:, 0] = 0) represents object id j by bank entry id_perm[:, j] (AOT's
    id shuffle); logits come back in the original ids.
    Returns (logits [B,H,W,ids] float32 with ids above num_objects masked, per-layer (k, v) fused
    with the keyframe ids, per-layer (k, v) fused with the predicted (or teacher) ids).
    """
    out_hw = ref_onehot.shape[1:3]
    perm = None if id_perm is None else jax.nn.one_hot(id_perm, ref_onehot.shape[-1], dtype=jnp.float32)
    to_bank = (lambda oh: oh) if perm is None else (lambda oh: jnp.einsum("bhwj,bjk->bhwk", oh, perm))
    feats = self.embed(feats, audio)
    id_ref = self.id_embed(to_bank(ref_onehot), audio, freeze_id)
    outs, kvs, ref_kv = self.lstt(feats[3], memory, id_ref, is_ref, deterministic)
    logits = self.decode(outs, feats, out_hw)
    if perm is not None:
      logits = jnp.einsum("bhwk,bjk->bhwj", logits, perm)
    logits = mask_ids(logits, num_objects)
    pred = jax.lax.stop_gradient(jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1],
                                                dtype=jnp.float32))
    if short_onehot is not None:
      pred = jnp.where(use_short_onehot[:, None, None, None], short_onehot.astype(pred.dtype), pred)
    pred_kv = self.fuse(kvs, self.id_embed(to_bank(pred), audio, freeze_id))
    return logits, ref_kv, pred_kv

  def __call__(self, feats, audio, mask_onehot, deterministic=True):
    """Init path: reference-frame pass + one propagation step (creates every parameter)."""
    feats = self.embed(feats, audio)
    id_emb = self.id_embed(mask_onehot, audio)
    outs, kvs, _ = self.lstt(feats[3], None, id_emb, deterministic=deterministic)
    fused = self.fuse(kvs, id_emb)
    mem = [(k[:, None], v[:, None], jnp.ones((k.shape[0], 1), bool), k, v) for k, v in fused]
    outs, kvs, _ = self.lstt(feats[3], mem, deterministic=deterministic)
    return self.decode(outs, feats, mask_onehot.shape[1:3])


def from_config(cfg) -> Propagator:
  """Builds the Propagator from `config.propagator` (configs/parts/propagator.py)."""
  return Propagator(num_layers=cfg.num_layers, d_model=cfg.d_model, num_heads=cfg.num_heads,
                    ffn_dim=cfg.ffn_dim, max_objects=cfg.max_objects,
                    audio_insert_levels=tuple(cfg.audio_insert_levels),
                    identity_from_audio=cfg.identity_from_audio, audio_tokens=cfg.audio_tokens,
                    num_audio_tokens=cfg.num_audio_tokens, local_max_dis=cfg.local_max_dis,
                    drop_path=cfg.drop_path, dtype=jnp.dtype(cfg.dtype),
                    conv_impl=resolve_conv_impl(cfg.get("conv_impl", "auto")))


def init_params(model: Propagator, rng, feats, audio, mask_onehot):
  """feats: encoder maps for one frame; audio [B, Ca]; mask_onehot [B,H,W,ids] -> params."""
  return model.init(rng, feats, audio, mask_onehot)["params"]


# ----------------------------------------------------------------------------- visual encoder
# Channels of the four encoder maps [1/4, 1/8, 1/16, 1/16] (AOT's MODEL_ENCODER_DIM).
ENCODER_CHANNELS = {"mobilenet_v2": (24, 32, 96, 1280), "resnet50": (256, 512, 1024, 1024)}


def encoder_by_name(name: str, dtype: Any = jnp.float32):
  """"mobilenet_v2" | "resnet50" -> (module, encode(enc_vars, images[B,H,W,3]) -> [f4, f8, f16, f16b]).

  "mobilenet_v2": AOT-L's MobileNetV2 at output stride 16, maps [24, 32, 96, 1280].
  "resnet50": R50-AOTL's ResNet-50: conv1..layer3 at output stride 16 (layer3 stride 2, no
  dilation), layer4 dropped as in AOT ("following STMVOS"), maps [256, 512, 1024, 1024] where
  the last is layer3 again. Both use frozen BatchNorm. `images` are ImageNet-normalised float
  (uint8 input is normalised here). enc_vars = {"params", "batch_stats"}.
  """
  from coprop_jax.models.mobilenet_v2 import MobileNetV2
  from coprop_jax.models.resnet import ResNet50
  dt = jnp.dtype(dtype)
  if name == "mobilenet_v2":
    module = MobileNetV2(output_stride=16, dtype=dt)
  elif name == "resnet50":
    module = ResNet50(output_stride=16, frozen_bn=True, dtype=dt, stages=3)  # layer3 map twice
  else:
    raise ValueError(f"propagator.encoder: expected one of {sorted(ENCODER_CHANNELS)}, got {name!r}")

  def encode(enc_vars, images):
    if images.dtype == jnp.uint8:
      images = normalize_uint8(images)  # AOT's transforms: (x / 255 - mean) / std
    return list(module.apply(enc_vars, images))
  return module, encode


def build_encoder(cfg):
  """`config.propagator` -> `encoder_by_name(cfg.encoder, cfg.dtype)`."""
  return encoder_by_name(cfg.encoder, cfg.dtype)


def init(cfg, rng, image_hw: Sequence[int] = (224, 224), audio_dim: int = 128):
  """Initial {"propagator": params, "encoder": {"params", "batch_stats"}} for `config.propagator`.

  audio_dim: channels of the per-frame audio feature (VGGish embedding: 128)."""
  model = from_config(cfg)
  enc_module, encode = build_encoder(cfg)
  r_enc, r_prop = jax.random.split(rng)
  img = jnp.zeros((1,) + tuple(image_hw) + (3,), jnp.float32)
  enc_vars = enc_module.init(r_enc, img)
  feats = encode(enc_vars, img)
  mask = jax.nn.one_hot(jnp.zeros((1,) + tuple(image_hw), jnp.int32), model.max_objects + 1)
  params = init_params(model, r_prop, feats, jnp.zeros((1, audio_dim)), mask)
  return {"propagator": params, "encoder": enc_vars}
