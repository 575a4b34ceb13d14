"""Audio-insert Propagator (Co-Prop AIP): AOT-style LSTT with audio insertion, scanned over frames.

Structure follows aot-benchmark (networks/layers/transformer.py, attention.py, decoders/fpn.py,
engines/aot_engine.py) with parameter names chosen so the converter (`coprop_jax.convert.aot`) maps
AOT checkpoint keys one to one. Differences from AOT, on purpose:
  * long-term memory is fixed-size: the keyframe pinned in slot 0 plus a ring buffer of
    `memory_slots` frames written every `mem_gap` frames, with a validity mask. It is the
    `lax.scan` carry, so memory is flat in the number of frames and one compile covers a clip length;
  * audio insert (paper eq. 6) at configured encoder levels, output projection zero-initialised;
  * identity-from-audio: a zero-initialised Dense of the frame's audio added to the ID embedding.
Both audio additions start as exact no-ops, so a converted AOT checkpoint behaves as AOT.

Checked against aot-benchmark (AOT v1 block, default config): relative_emb_k is applied to the
unscaled query; drop-path (constant rate, per sample) only on the self-attention and FFN branches
(TRAIN_LSTT_DROPPATH_LST=False, DROPPATH_SCALING=False); position embedding normalised by the last
index (0..h-1)/(h-1); decoder ConvGN convs have a bias; bilinear upsampling with align_corners=True
(MODEL_ALIGN_CORNERS) both in the FPN and for the final logits; LayerNorm / GroupNorm eps 1e-5.
Id-dropout and embedding dropout are 0 in AOT's configs and are not implemented.

The visual encoder is pluggable: `propagate` takes `encode(enc_vars, images[B,H,W,3]) -> [f4, f8,
f16, f16b]`; `build_encoder(cfg)` gives AOT's MobileNetV2 ([24, 32, 96, 1280]) or ResNet-50
([256, 512, 1024, 1024], layer4 dropped) at output stride 16. Images are ImageNet-normalised
(AOT: /255, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)); uint8 frames are normalised
inside `encode`.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coprop_jax.images import normalize_uint8
from coprop_jax.models.layers import (DropPath, GroupNorm, LayerNorm, gelu_exact,
                                      sine_position_embedding_2d)

Array = jax.Array
NEG = -1e9


# ----------------------------------------------------------------------------- AOT helpers
def aot_position_embedding(h: int, w: int, num_pos_feats: int = 128, temperature: float = 10000.0) -> Array:
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


def resize_align_corners(x: Array, out_hw: Sequence[int]) -> Array:
  """Bilinear resize of [B, h, w, C] to [B, *out_hw, C] with align_corners=True (AOT's setting)."""
  mh = _interp_matrix(out_hw[0], x.shape[1]).astype(x.dtype)
  mw = _interp_matrix(out_hw[1], x.shape[2]).astype(x.dtype)
  return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw)


# ----------------------------------------------------------------------------- attention kernels
def local_attention(q: Array, k: Array, v: Array, rel_k: Array, rel_v: Array, max_dis: int) -> Array:
  """Windowed attention of each query over a (2*max_dis+1)^2 window of k/v (AOT short-term).

  q, k, v: [B, h, w, H, D] (q already scaled); rel_k: [B, h, w, H, W2] relative-position logits;
  rel_v: [H, D, W2] relative value bias. Window positions outside the image are masked.
  Implemented as one gather of the W2 shifted copies of the zero-padded k/v (no identity-kernel
  convolution, no (hw x hw) matrix).
  Returns [B, h, w, H, D].
  """
  b, h, w, nh, d = q.shape
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
  logits = jnp.where(jnp.asarray(valid)[None, :, :, None, :], logits, NEG)
  attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhwnk,bhwknd->bhwnd", attn, vp)
  return out + jnp.einsum("bhwnk,ndk->bhwnd", attn, rel_v.astype(v.dtype))


def memory_attention(q: Array, k: Array, v: Array, valid: Array) -> Array:
  """Attention over a slot memory. q: [B,N,H,D] (scaled); k/v: [B,S,N,H,D]; valid: [B,S] bool."""
  b, s, n, nh, d = k.shape
  logits = jnp.einsum("bqhd,bsnhd->bhqsn", q, k).astype(jnp.float32)
  logits = jnp.where(valid[:, None, None, :, None], logits, NEG)
  logits = logits.reshape(b, nh, q.shape[1], s * n)
  attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(b, nh, q.shape[1], s, n)
  return jnp.einsum("bhqsn,bsnhd->bqhd", attn, v)


# ----------------------------------------------------------------------------- modules
class AudioInsert(nn.Module):
  """Paper eq. 6: visual tokens (queries) cross-attend to audio tokens, residual add.

  x: [B, h, w, C]; audio: [B, Na, Ca] -> [B, h, w, C]. `projection` is zero-initialised, so the
  module is the identity until trained.
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

  @nn.compact
  def __call__(self, q_map: Array, k_map: Array, v_map: Array) -> Array:
    """q_map (unscaled), k_map, v_map: [B, h, w, C] -> [B, h*w, C] (after projection).

    As AOT: relative_emb_k is computed from the unscaled query, then q is scaled by 1/sqrt(hd)."""
    b, h, w, c = q_map.shape
    nh, hd, w2 = self.num_heads, c // self.num_heads, (2 * self.max_dis + 1) ** 2
    rel_k = nn.Conv(nh * w2, (1, 1), feature_group_count=nh, dtype=self.dtype,
                    name="relative_emb_k")(q_map).reshape(b, h, w, nh, w2)
    rel_v = self.param("relative_emb_v", nn.initializers.zeros, (nh, hd, w2), jnp.float32)
    sp = lambda t: t.reshape(b, h, w, nh, hd)
    o = local_attention(sp(q_map / math.sqrt(hd)), sp(k_map), sp(v_map), rel_k, rel_v, self.max_dis)
    return nn.Dense(c, dtype=self.dtype, name="projection")(o.reshape(b, h * w, c))


class GNActDWConv(nn.Module):
  """AOT FFN activation: GroupNorm(32) -> GELU -> 5x5 depthwise conv (no bias). x: [B,h,w,C]."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = gelu_exact(GroupNorm(32, dtype=self.dtype, name="gn")(x))
    return nn.Conv(x.shape[-1], (5, 5), padding=2, feature_group_count=x.shape[-1], use_bias=False,
                   dtype=self.dtype, name="conv")(x)


class LSTTLayer(nn.Module):
  """One LSTT block (pre-norm). Tokens [B, N, C] with N = h*w."""
  d_model: int = 256
  num_heads: int = 8
  ffn_dim: int = 1024
  max_dis: int = 7
  drop_path: float = 0.1
  dtype: Any = jnp.float32

  def setup(self):
    ln = lambda: LayerNorm(epsilon=1e-5, dtype=self.dtype)
    self.norm1, self.norm2, self.norm3 = ln(), ln(), ln()
    self.self_attn = SelfAttention(self.d_model, self.num_heads, self.dtype)
    self.linear_Q = nn.Dense(self.d_model, dtype=self.dtype)
    self.linear_V = nn.Dense(self.d_model, dtype=self.dtype)
    self.long_term_attn = Projection(self.d_model, self.dtype)
    self.short_term_attn = LocalAttentionParams(self.d_model, self.num_heads, self.max_dis, self.dtype)
    self.linear1 = nn.Dense(self.ffn_dim, dtype=self.dtype)
    self.activation = GNActDWConv(self.dtype)
    self.linear2 = nn.Dense(self.d_model, dtype=self.dtype)
    self.droppath = DropPath(self.drop_path)

  def fuse(self, curr_k: Array, curr_v: Array, id_emb: Array):
    """Memory (K, V) of a frame: K = its Q projection, V = linear_V(norm2(x) + id_emb)."""
    return curr_k, self.linear_V(curr_v + id_emb.astype(curr_v.dtype))

  def __call__(self, x, pos, size_2d, memory, id_emb=None, deterministic=True):
    """x: [B,N,C]; pos: [N,C]; memory: None (reference frame: attend to itself fused with id_emb)
    or (long_k, long_v [B,S,N,C], long_valid [B,S], short_k, short_v [B,N,C]).
    Returns (x_out, curr_k, curr_v_raw)."""
    b, n, c = x.shape
    h, w = size_2d
    nh, hd = self.num_heads, c // self.num_heads
    t = self.norm1(x)
    qk = t + pos.astype(t.dtype)
    x = x + self.droppath(self.self_attn(qk, qk, t), deterministic)
    t = self.norm2(x)
    curr_q = self.linear_Q(t)
    curr_k, curr_v = curr_q, t
    if memory is None:
      k, v = self.fuse(curr_k, curr_v, id_emb)
      long_k, long_v, long_valid = k[:, None], v[:, None], jnp.ones((b, 1), bool)
      short_k, short_v = k, v
    else:
      long_k, long_v, long_valid, short_k, short_v = memory
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
    return x, curr_k, curr_v


class ConvGN(nn.Module):
  features: int
  kernel: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (self.kernel, self.kernel), padding=self.kernel // 2,
                dtype=self.dtype, name="conv")(x)  # torch Conv2d default: with bias
    return GroupNorm(8, dtype=self.dtype, name="gn")(x)


class FPNDecoder(nn.Module):
  """AOT FPNSegmentationHead. inputs: list of [B,h,w,C] at 1/16 (concatenated); shortcuts: encoder
  maps [f4, f8, f16]. Returns logits [B, H/4, W/4, num_ids]."""
  num_ids: int
  d_model: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, shortcuts):
    d, dt = self.d_model, self.dtype
    x = nn.relu(ConvGN(d, 1, dt, name="conv_in")(jnp.concatenate(inputs, -1)))
    x = nn.relu(ConvGN(d, 3, dt, name="conv_16x")(x + nn.Conv(d, (1, 1), dtype=dt, name="adapter_16x")(shortcuts[2])))
    x = resize_align_corners(x, shortcuts[1].shape[1:3])
    x = nn.relu(ConvGN(d // 2, 3, dt, name="conv_8x")(x + nn.Conv(d, (1, 1), dtype=dt, name="adapter_8x")(shortcuts[1])))
    x = resize_align_corners(x, shortcuts[0].shape[1:3])
    x = nn.relu(ConvGN(d // 2, 3, dt, name="conv_4x")(x + nn.Conv(d // 2, (1, 1), dtype=dt, name="adapter_4x")(shortcuts[0])))
    return nn.Conv(self.num_ids, (1, 1), dtype=dt, name="conv_out")(x)


class Propagator(nn.Module):
  """AIP network without the visual encoder. See module docstring; methods are used via `apply`."""
  num_layers: int = 3
  d_model: int = 256
  num_heads: int = 8
  ffn_dim: int = 1024
  max_objects: int = 1
  audio_insert_levels: Sequence[int] = (0, 1, 2, 3)
  identity_from_audio: bool = True
  local_max_dis: int = 7
  drop_path: float = 0.1
  dtype: Any = jnp.float32

  def setup(self):
    dt = self.dtype
    self.encoder_projector = nn.Conv(self.d_model, (1, 1), dtype=dt)
    self.patch_wise_id_bank = nn.Conv(self.d_model, (17, 17), strides=(16, 16), padding=8, dtype=dt)
    self.layers = [LSTTLayer(self.d_model, self.num_heads, self.ffn_dim, self.local_max_dis,
                             self.drop_path, dt, name=f"layers_{i}") for i in range(self.num_layers)]
    self.decoder_norms = [LayerNorm(epsilon=1e-5, dtype=dt, name=f"decoder_norms_{i}")
                          for i in range(self.num_layers)]
    self.decoder = FPNDecoder(self.max_objects + 1, self.d_model, dt)
    self.audio_insert = {str(l): AudioInsert(self.num_heads, self.d_model, dt, name=f"audio_insert_{l}")
                         for l in self.audio_insert_levels}
    if self.identity_from_audio:
      self.id_audio = nn.Dense(self.d_model, dtype=dt, kernel_init=nn.initializers.zeros,
                               bias_init=nn.initializers.zeros)

  def embed(self, feats, audio):
    """feats: encoder maps [f4, f8, f16, f16b]; audio [B, Na, Ca] -> 4 maps, last projected to d_model."""
    feats = [f.astype(self.dtype) for f in feats]
    feats[3] = self.encoder_projector(feats[3])
    for l in self.audio_insert_levels:
      feats[l] = self.audio_insert[str(l)](feats[l], audio)
    return feats

  def id_embed(self, mask_onehot, audio):
    """mask_onehot: [B, H, W, max_objects+1] -> [B, N16, d_model]."""
    e = self.patch_wise_id_bank(mask_onehot.astype(self.dtype))
    if self.identity_from_audio:
      e = e + self.id_audio(jnp.mean(audio.astype(self.dtype), axis=1))[:, None, None, :]
    return e.reshape(e.shape[0], -1, e.shape[-1])

  def lstt(self, x_map, memory, id_emb=None, deterministic=True):
    """x_map: [B,h,w,C]; memory: None or list per layer of (long_k, long_v, valid, short_k, short_v).
    Returns (decoder inputs list of [B,h,w,C], per-layer (curr_k, curr_v_raw))."""
    b, h, w, c = x_map.shape
    pos = aot_position_embedding(h, w, c // 2).reshape(h * w, c)
    x = x_map.reshape(b, h * w, c)
    outs, kvs = [x_map], []
    for i, layer in enumerate(self.layers):
      x, ck, cv = layer(x, pos, (h, w), None if memory is None else memory[i], id_emb, deterministic)
      outs.append(self.decoder_norms[i](x).reshape(b, h, w, c))
      kvs.append((ck, cv))
    return outs, kvs

  def fuse(self, kvs, id_emb):
    return [layer.fuse(ck, cv, id_emb) for layer, (ck, cv) in zip(self.layers, kvs)]

  def decode(self, outs, feats, out_hw):
    logits = self.decoder(outs, feats[:3])
    b = logits.shape[0]
    return resize_align_corners(logits.astype(jnp.float32), out_hw)

  def __call__(self, feats, audio, mask_onehot, deterministic=True):
    """Init path: reference-frame pass + one propagation step (creates every parameter)."""
    feats = self.embed(feats, audio)
    id_emb = self.id_embed(mask_onehot, audio)
    outs, kvs = self.lstt(feats[3], None, id_emb, deterministic)
    fused = self.fuse(kvs, id_emb)
    mem = [(k[:, None], v[:, None], jnp.ones((k.shape[0], 1), bool), k, v) for k, v in fused]
    outs, kvs = self.lstt(feats[3], mem, None, deterministic)
    return self.decode(outs, feats, mask_onehot.shape[1:3])


def from_config(cfg) -> Propagator:
  """Builds the Propagator from `config.propagator` (configs/parts/propagator.py)."""
  return Propagator(num_layers=cfg.num_layers, d_model=cfg.d_model, num_heads=cfg.num_heads,
                    ffn_dim=cfg.ffn_dim, max_objects=cfg.max_objects,
                    audio_insert_levels=tuple(cfg.audio_insert_levels),
                    identity_from_audio=cfg.identity_from_audio, local_max_dis=cfg.local_max_dis,
                    drop_path=cfg.drop_path, dtype=jnp.dtype(cfg.dtype))


# ----------------------------------------------------------------------------- visual encoder
# Channels of the four encoder maps [1/4, 1/8, 1/16, 1/16] (AOT's MODEL_ENCODER_DIM).
ENCODER_CHANNELS = {"mobilenet_v2": (24, 32, 96, 1280), "resnet50": (256, 512, 1024, 1024)}
def build_encoder(cfg):
  """`config.propagator` -> (encoder module, encode(enc_vars, images[B,H,W,3]) -> [f4, f8, f16, f16b]).

  "mobilenet_v2": AOT-L's MobileNetV2 at output stride 16, maps [24, 32, 96, 1280].
  "resnet50": R50-AOTL's ResNet-50: conv1..layer3 at output stride 16 (layer3 stride 2, no
  dilation), layer4 dropped as in AOT ("following STMVOS"), maps [256, 512, 1024, 1024] where
  the last is layer3 again. Both use frozen BatchNorm. `images` are ImageNet-normalised float
  (uint8 input is normalised here). enc_vars = {"params", "batch_stats"}.
  """
  from coprop_jax.models.mobilenet_v2 import MobileNetV2
  from coprop_jax.models.resnet import ResNet50
  dt = jnp.dtype(cfg.dtype)
  if cfg.encoder == "mobilenet_v2":
    module = MobileNetV2(output_stride=16, dtype=dt)
  elif cfg.encoder == "resnet50":
    module = ResNet50(output_stride=16, frozen_bn=True, dtype=dt, stages=3)  # layer3 map twice
  else:
    raise ValueError(f"propagator.encoder: expected one of {sorted(ENCODER_CHANNELS)}, got {cfg.encoder!r}")

  def encode(enc_vars, images):
    if images.dtype == jnp.uint8:
      images = normalize_uint8(images)  # AOT's transforms: (x / 255 - mean) / std
    return list(module.apply(enc_vars, images))
  return module, encode


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
  params = init_params(model, r_prop, feats, jnp.zeros((1, 1, audio_dim)), mask)
  return {"propagator": params, "encoder": enc_vars}


# ----------------------------------------------------------------------------- scan over frames
def _audio_tokens(audio: Array) -> Array:
  """[B, T, C] -> [B, T, 1, C]; [B, T, Na, C] unchanged."""
  if audio.ndim == 3:
    return audio[:, :, None]
  if audio.ndim != 4:
    raise ValueError(f"audio: expected [B, T, C] or [B, T, Na, C], got shape {audio.shape}")
  return audio


def init_params(model: Propagator, rng, feats, audio, mask_onehot):
  """feats: encoder maps for one frame; audio [B, Na, C]; mask_onehot [B,H,W,ids] -> params."""
  return model.init(rng, feats, audio, mask_onehot)["params"]


def _at(x: Array, t) -> Array:
  """x[:, t] for a traced t, without copying x (no time-major transpose of the inputs)."""
  return jax.lax.dynamic_index_in_dim(x, t, axis=1, keepdims=False)


def propagate_features(model: Propagator, params, keyframe_mask: Array, feats_seq, audio: Array,
                       frame_valid: Optional[Array] = None, memory_slots: int = 4, mem_gap: int = 5,
                       train: bool = False, rng=None, remat: bool = False,
                       num_objects: Optional[Array] = None, encode=None, enc_params=None,
                       output: str = "logits"):
  """Propagates `keyframe_mask` (frame 0) through frames 1..T-1 with one `lax.scan`.

  keyframe_mask: [B, H, W] int32 ids in [0, max_objects]; feats_seq: list of encoder maps each
  [B, T, h, w, C]; audio: [B, T, C] or [B, T, Na, C]; frame_valid: [B, T] bool (invalid frames
  leave the memory unchanged; a frame invalid for every clip of the batch, e.g. length-bucket
  padding, is skipped: no network runs, its output is 0 logits / id 0); num_objects: [B] ids above it get -1e9 logits.
  With `encode` given, feats_seq is instead frames [B, T, H, W, 3] and each frame is encoded
  inside the scan step. Inputs are read with a dynamic index inside the step and outputs written
  into a preallocated buffer in the carry, so the only T-sized arrays are the inputs and the output
  (compiled temp memory is flat in T). `remat` rematerialises the per-frame network in BPTT.
  output: "logits" -> [B, T, H, W, max_objects+1] float32 (frame 0: the keyframe mask as +-10);
          "ids"    -> [B, T, H, W] int32 argmax (frame 0: keyframe_mask), 1/ids of the bytes.
  """
  if output not in ("logits", "ids"):
    raise ValueError(f"propagate: output must be 'logits' or 'ids', got {output!r}")
  if encode is not None:
    frames = feats_seq
    if frames.ndim != 5 or frames.shape[-1] != 3:
      raise ValueError(f"propagate: frames must be [B, T, H, W, 3], got shape {frames.shape}")
    t_len = frames.shape[1]
    get_feats = lambda t: list(encode(enc_params, _at(frames, t)))
  else:
    t_len = feats_seq[0].shape[1]
    get_feats = lambda t: [_at(f, t) for f in feats_seq]
  b, hh, ww = keyframe_mask.shape
  n_ids = model.max_objects + 1
  audio = _audio_tokens(audio)
  if audio.shape[1] != t_len:
    raise ValueError(f"propagate: audio has {audio.shape[1]} frames, the clip has {t_len}")
  if frame_valid is None:
    frame_valid = jnp.ones((b, t_len), bool)
  deterministic = not train
  rngs = lambda r: {"dropout": r} if train else {}
  if train and rng is None:
    raise ValueError("propagate: train=True needs a dropout `rng`")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  apply = functools.partial(model.apply, {"params": params})
  onehot = jax.nn.one_hot(keyframe_mask, n_ids, dtype=jnp.float32)
  id_mask = None
  if num_objects is not None:
    id_mask = jnp.arange(n_ids)[None, :] <= num_objects[:, None]  # [B, ids]

  # Reference frame.
  a0 = audio[:, 0]
  feats0 = apply(get_feats(0), a0, method=Propagator.embed)
  id0 = apply(onehot, a0, method=Propagator.id_embed)
  _, kvs0 = apply(feats0[3], None, id0, deterministic, method=Propagator.lstt,
                  rngs=rngs(jax.random.fold_in(rng, 0)))
  fused0 = apply(kvs0, id0, method=Propagator.fuse)
  s = memory_slots + 1
  long_k = [jnp.zeros((b, s) + k.shape[1:], k.dtype).at[:, 0].set(k) for k, _ in fused0]
  long_v = [jnp.zeros((b, s) + v.shape[1:], v.dtype).at[:, 0].set(v) for _, v in fused0]
  valid = jnp.zeros((b, s), bool).at[:, 0].set(True)
  mem0 = dict(long_k=long_k, long_v=long_v, valid=valid,
              short_k=[k for k, _ in fused0], short_v=[v for _, v in fused0],
              step=jnp.zeros((b,), jnp.int32), written=jnp.zeros((b,), jnp.int32))
  if output == "logits":
    out0 = jnp.zeros((b, t_len, hh, ww, n_ids), jnp.float32)
    out0 = jax.lax.dynamic_update_index_in_dim(out0, jnp.where(onehot > 0, 10.0, -10.0), 0, 1)
  else:
    out0 = jnp.zeros((b, t_len, hh, ww), jnp.int32)
    out0 = jax.lax.dynamic_update_index_in_dim(out0, keyframe_mask.astype(jnp.int32), 0, 1)

  def frame_step(mem, t):
    """One frame: (memory, t) -> (memory', logits [B,H,W,ids]). Never sees the output buffer."""
    a, fv = _at(audio, t), _at(frame_valid, t)
    r1, r2 = jax.random.split(jax.random.fold_in(rng, t))
    m = [(mem["long_k"][i], mem["long_v"][i], mem["valid"], mem["short_k"][i], mem["short_v"][i])
         for i in range(model.num_layers)]
    feats = apply(get_feats(t), a, method=Propagator.embed)
    outs, kvs = apply(feats[3], m, None, deterministic, method=Propagator.lstt, rngs=rngs(r1))
    logits = apply(outs, feats, (hh, ww), method=Propagator.decode, rngs=rngs(r2))
    if id_mask is not None:
      logits = jnp.where(id_mask[:, None, None, :], logits, NEG)
    pred = jax.lax.stop_gradient(jax.nn.one_hot(jnp.argmax(logits, -1), n_ids, dtype=jnp.float32))
    id_emb = apply(pred, a, method=Propagator.id_embed)
    fused = apply(kvs, id_emb, method=Propagator.fuse)
    step_i = mem["step"] + fv.astype(jnp.int32)
    write = fv & (step_i % mem_gap == 0)
    slot = 1 + mem["written"] % memory_slots
    sel = (jnp.arange(s)[None, :] == slot[:, None]) & write[:, None]  # [B, S]
    bsel = lambda nd: sel.reshape(sel.shape + (1,) * nd)
    new = dict(
        long_k=[jnp.where(bsel(k.ndim - 1), k[:, None], lk) for (k, _), lk in zip(fused, mem["long_k"])],
        long_v=[jnp.where(bsel(v.ndim - 1), v[:, None], lv) for (_, v), lv in zip(fused, mem["long_v"])],
        valid=mem["valid"] | sel,
        short_k=[jnp.where(fv[:, None, None], k, sk) for (k, _), sk in zip(fused, mem["short_k"])],
        short_v=[jnp.where(fv[:, None, None], v, sv) for (_, v), sv in zip(fused, mem["short_v"])],
        step=step_i, written=mem["written"] + write.astype(jnp.int32))
    return new, logits

  if remat:
    frame_step = jax.checkpoint(frame_step)

  def skip(mem, t):
    """A frame invalid for the whole batch (e.g. length-bucket padding): no network, memory kept."""
    return mem, jnp.zeros((b, hh, ww, n_ids), jnp.float32)

  def step(carry, t):
    mem, out = carry
    mem, logits = jax.lax.cond(jnp.any(_at(frame_valid, t)), frame_step, skip, mem, t)
    val = logits if output == "logits" else jnp.argmax(logits, -1).astype(jnp.int32)
    return (mem, jax.lax.dynamic_update_index_in_dim(out, val.astype(out.dtype), t, 1)), None

  (_, out), _ = jax.lax.scan(step, (mem0, out0), jnp.arange(1, t_len, dtype=jnp.int32))
  return out


def propagate(model: Propagator, params, keyframe_mask: Array, frames: Array, audio: Array,
              encode: Callable[[Any, Array], Sequence[Array]], frame_valid: Optional[Array] = None,
              **kw):
  """frames: [B, T, H, W, 3]; params = {"propagator": ..., "encoder": ...}; `encode(enc_params,
  images[N,H,W,3]) -> [f4, f8, f16, f16b]`. Each frame is encoded inside the scan step.
  Wrap in `jax.jit` with model/encode/static options via `make_propagate_fn`."""
  return propagate_features(model, params["propagator"], keyframe_mask, frames, audio, frame_valid,
                            encode=encode, enc_params=params.get("encoder"), **kw)


def bucket_length(t: int, length_bucket: int) -> int:
  """Clip length padded up to a multiple of `length_bucket` (0 or 1: unchanged)."""
  if length_bucket <= 1:
    return t
  return -(-t // length_bucket) * length_bucket


def make_propagate_fn(model: Propagator, encode, memory_slots=4, mem_gap=5, train=False, remat=False,
                      length_bucket: int = 0, output: str = "logits"):
  """(params, keyframe_mask, frames [B,T,H,W,3], audio, frame_valid=None, rng=None) -> output.

  The propagation is one `jax.jit` (attribute `.jitted`). With `length_bucket` > 1 the clip is
  padded (outside the jit) to the next multiple of it with `frame_valid` False on the padding,
  so every length in a bucket reuses one compiled executable; the output is cut back to T.
  """
  def fn(params, keyframe_mask, frames, audio, frame_valid, rng):
    return propagate(model, params, keyframe_mask, frames, audio, encode, frame_valid,
                     memory_slots=memory_slots, mem_gap=mem_gap, train=train, rng=rng, remat=remat,
                     output=output)
  jitted = jax.jit(fn)

  def run(params, keyframe_mask, frames, audio, frame_valid=None, rng=None):
    b, t = frames.shape[:2]
    if frame_valid is None:
      frame_valid = jnp.ones((b, t), bool)
    tp = bucket_length(t, length_bucket)
    if tp != t:
      pad = lambda x, v=0: jnp.pad(x, [(0, 0), (0, tp - t)] + [(0, 0)] * (x.ndim - 2), constant_values=v)
      frames, audio, frame_valid = pad(frames), pad(audio), pad(frame_valid, False)
    out = jitted(params, keyframe_mask, frames, audio, frame_valid, rng)
    return out[:, :t] if tp != t else out
  run.jitted = jitted
  return run


def make_propagate_fn_from_config(cfg, train: bool = False, output: str = "logits"):
  """`config.propagator` -> (model, encode, run) with run as in `make_propagate_fn`, using the
  config's encoder, memory_slots, mem_gap, remat and length_bucket. Params from `init(cfg, rng)`."""
  model = from_config(cfg)
  _, encode = build_encoder(cfg)
  run = make_propagate_fn(model, encode, cfg.memory_slots, cfg.mem_gap, train=train, remat=cfg.remat,
                          length_bucket=0 if train else cfg.length_bucket, output=output)
  return model, encode, run
