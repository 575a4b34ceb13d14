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

The visual encoder is pluggable: `propagate` takes `encode(images[B,H,W,3]) -> [f4, f8, f16, f16b]`
(channels e.g. [24, 32, 96, 1280] for MobileNetV2 as AOT uses it).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from coprop_jax.models.layers import DropPath, GroupNorm, LayerNorm, gelu_exact, sine_position_embedding_2d

Array = jax.Array
NEG = -1e9


# ----------------------------------------------------------------------------- attention kernels
def local_attention(q: Array, k: Array, v: Array, rel_k: Array, rel_v: Array, max_dis: int) -> Array:
  """Windowed attention of each query over a (2*max_dis+1)^2 window of k/v (AOT short-term).

  q, k, v: [B, h, w, H, D] (q already scaled); rel_k: [B, h, w, H, W2] relative-position logits;
  rel_v: [H, D, W2] relative value bias. Window positions outside the image are masked.
  Implemented with patch extraction (a gather of W2 shifted copies), never an (hw x hw) matrix.
  Returns [B, h, w, H, D].
  """
  b, h, w, nh, d = q.shape
  win = 2 * max_dis + 1

  def patches(x):  # [B,h,w,C] -> [B,h,w,C,W2], window index = (dy+md)*win + (dx+md)
    p = jax.lax.conv_general_dilated_patches(
        x, (win, win), (1, 1), [(max_dis, max_dis), (max_dis, max_dis)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return p.reshape(x.shape[:3] + (x.shape[3], win * win))

  kp = patches(k.reshape(b, h, w, nh * d)).reshape(b, h, w, nh, d, win * win)
  vp = patches(v.reshape(b, h, w, nh * d)).reshape(b, h, w, nh, d, win * win)
  valid = patches(jnp.ones((1, h, w, 1), jnp.float32))[..., 0, :] > 0.5  # [1,h,w,W2]
  logits = jnp.einsum("bhwnd,bhwndk->bhwnk", q, kp).astype(jnp.float32) + rel_k.astype(jnp.float32)
  logits = jnp.where(valid[:, :, :, None, :], logits, NEG)
  attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhwnk,bhwndk->bhwnd", attn, vp)
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
    """q_map (scaled), k_map, v_map: [B, h, w, C] -> [B, h, w, C] (after projection)."""
    b, h, w, c = q_map.shape
    nh, hd, w2 = self.num_heads, c // self.num_heads, (2 * self.max_dis + 1) ** 2
    rel_k = nn.Conv(nh * w2, (1, 1), feature_group_count=nh, dtype=self.dtype,
                    name="relative_emb_k")(q_map).reshape(b, h, w, nh, w2)
    rel_v = self.param("relative_emb_v", nn.initializers.zeros, (nh, hd, w2), jnp.float32)
    sp = lambda t: t.reshape(b, h, w, nh, hd)
    o = local_attention(sp(q_map), sp(k_map), sp(v_map), rel_k, rel_v, self.max_dis)
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
    st = self.short_term_attn(qs.reshape(b, h, w, c), short_k.astype(qs.dtype).reshape(b, h, w, c),
                              short_v.astype(qs.dtype).reshape(b, h, w, c))
    x = x + self.droppath(lt + st, deterministic)
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
    x = nn.Conv(self.features, (self.kernel, self.kernel), padding=self.kernel // 2, use_bias=False,
                dtype=self.dtype, name="conv")(x)
    return GroupNorm(8, dtype=self.dtype, name="gn")(x)


def _up2(x):
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear").astype(x.dtype)


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
    x = _up2(x)
    x = x[:, :shortcuts[1].shape[1], :shortcuts[1].shape[2]]
    x = nn.relu(ConvGN(d // 2, 3, dt, name="conv_8x")(x + nn.Conv(d, (1, 1), dtype=dt, name="adapter_8x")(shortcuts[1])))
    x = _up2(x)
    x = x[:, :shortcuts[0].shape[1], :shortcuts[0].shape[2]]
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
                             self.drop_path * (i + 1) / self.num_layers if self.num_layers > 1 else self.drop_path,
                             dt, name=f"layers_{i}") for i in range(self.num_layers)]
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
    pos = sine_position_embedding_2d(h, w, c // 2).reshape(h * w, c)
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
    return jax.image.resize(logits.astype(jnp.float32), (b,) + tuple(out_hw) + (logits.shape[-1],), "bilinear")

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


def propagate_features(model: Propagator, params, keyframe_mask: Array, feats_seq, audio: Array,
                       frame_valid: Optional[Array] = None, memory_slots: int = 4, mem_gap: int = 5,
                       train: bool = False, rng=None, remat: bool = False,
                       num_objects: Optional[Array] = None, encode=None, enc_params=None):
  """Propagates `keyframe_mask` (frame 0) through frames 1..T-1 with one `lax.scan`.

  keyframe_mask: [B, H, W] int32 ids in [0, max_objects]; feats_seq: list of encoder maps each
  [B, T, h, w, C]; audio: [B, T, C] or [B, T, Na, C]; frame_valid: [B, T] bool (invalid frames
  produce logits but leave the memory unchanged); num_objects: [B] ids above it get -inf logits.
  With `encode` given, feats_seq is instead frames [B, T, H, W, 3] and each frame is encoded
  inside the scan step (memory stays flat in T).
  Returns logits [B, T, H, W, max_objects+1] float32 (frame 0: the keyframe mask as +-10 logits).
  """
  if encode is not None:
    frames = feats_seq
    enc = lambda x: list(encode(enc_params, x))
    feats_seq = [frames]
  else:
    enc = lambda x: x
  b, hh, ww = keyframe_mask.shape
  t_len = feats_seq[0].shape[1]
  n_ids = model.max_objects + 1
  audio = _audio_tokens(audio)
  if frame_valid is None:
    frame_valid = jnp.ones((b, t_len), bool)
  deterministic = not train
  rngs = lambda r: {"dropout": r} if train else {}
  if train and rng is None:
    raise ValueError("propagate: train=True needs a dropout `rng`")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  hh_ww = keyframe_mask.shape[1:]
  apply = functools.partial(model.apply, {"params": params})
  onehot = jax.nn.one_hot(keyframe_mask, n_ids, dtype=jnp.float32)
  id_mask = None
  if num_objects is not None:
    id_mask = jnp.arange(n_ids)[None, :] <= num_objects[:, None]  # [B, ids]

  # Reference frame.
  f0 = enc(feats_seq[0][:, 0] if encode is not None else [f[:, 0] for f in feats_seq])
  r0, rng = jax.random.split(rng)
  feats0 = apply(f0, audio[:, 0], method=Propagator.embed)
  id0 = apply(onehot, audio[:, 0], method=Propagator.id_embed)
  _, kvs0 = apply(feats0[3], None, id0, deterministic, method=Propagator.lstt, rngs=rngs(r0))
  fused0 = apply(kvs0, id0, method=Propagator.fuse)
  s = memory_slots + 1
  long_k = [jnp.zeros((b, s) + k.shape[1:], k.dtype).at[:, 0].set(k) for k, _ in fused0]
  long_v = [jnp.zeros((b, s) + v.shape[1:], v.dtype).at[:, 0].set(v) for _, v in fused0]
  valid = jnp.zeros((b, s), bool).at[:, 0].set(True)
  carry0 = dict(long_k=long_k, long_v=long_v, valid=valid,
                short_k=[k for k, _ in fused0], short_v=[v for _, v in fused0],
                step=jnp.zeros((b,), jnp.int32), written=jnp.zeros((b,), jnp.int32))

  def step(carry, inp):
    f, a, fv, r = inp
    mem = [(carry["long_k"][i], carry["long_v"][i], carry["valid"], carry["short_k"][i],
            carry["short_v"][i]) for i in range(model.num_layers)]
    r1, r2 = jax.random.split(r)
    feats = apply(enc(f[0] if encode is not None else f), a, method=Propagator.embed)
    outs, kvs = apply(feats[3], mem, None, deterministic, method=Propagator.lstt, rngs=rngs(r1))
    logits = apply(outs, feats, (hh, ww), method=Propagator.decode, rngs=rngs(r2))
    if id_mask is not None:
      logits = jnp.where(id_mask[:, None, None, :], logits, NEG)
    pred = jax.lax.stop_gradient(jax.nn.one_hot(jnp.argmax(logits, -1), n_ids, dtype=jnp.float32))
    id_emb = apply(pred, a, method=Propagator.id_embed)
    fused = apply(kvs, id_emb, method=Propagator.fuse)
    step_i = carry["step"] + fv.astype(jnp.int32)
    write = fv & (step_i % mem_gap == 0)
    slot = 1 + carry["written"] % memory_slots
    sel = (jnp.arange(s)[None, :] == slot[:, None]) & write[:, None]  # [B, S]
    bsel = lambda x, nd: sel.reshape(sel.shape + (1,) * nd)
    new = dict(
        long_k=[jnp.where(bsel(None, k.ndim - 1), k[:, None], lk) for (k, _), lk in zip(fused, carry["long_k"])],
        long_v=[jnp.where(bsel(None, v.ndim - 1), v[:, None], lv) for (_, v), lv in zip(fused, carry["long_v"])],
        valid=carry["valid"] | sel,
        short_k=[jnp.where(fv[:, None, None], k, sk) for (k, _), sk in zip(fused, carry["short_k"])],
        short_v=[jnp.where(fv[:, None, None], v, sv) for (_, v), sv in zip(fused, carry["short_v"])],
        step=step_i, written=carry["written"] + write.astype(jnp.int32))
    return new, logits

  if remat:
    step = jax.checkpoint(step)
  xs = ([jnp.moveaxis(f[:, 1:], 1, 0) for f in feats_seq], jnp.moveaxis(audio[:, 1:], 1, 0),
        jnp.moveaxis(frame_valid[:, 1:], 1, 0), jax.random.split(rng, t_len - 1))
  _, logits = jax.lax.scan(step, carry0, xs)
  first = jnp.where(onehot > 0, 10.0, -10.0)[None]
  return jnp.moveaxis(jnp.concatenate([first, logits], 0), 0, 1)


def propagate(model: Propagator, params, keyframe_mask: Array, frames: Array, audio: Array,
              encode: Callable[[Any, Array], Sequence[Array]], frame_valid: Optional[Array] = None,
              **kw):
  """frames: [B, T, H, W, 3]; params = {"propagator": ..., "encoder": ...}; `encode(enc_params,
  images[N,H,W,3]) -> [f4, f8, f16, f16b]`. Each frame is encoded inside the scan step.
  Wrap in `jax.jit` with model/encode/static options via `make_propagate_fn`."""
  return propagate_features(model, params["propagator"], keyframe_mask, frames, audio, frame_valid,
                            encode=encode, enc_params=params.get("encoder"), **kw)


def make_propagate_fn(model: Propagator, encode, memory_slots=4, mem_gap=5, train=False, remat=False):
  """One jitted function (params, keyframe_mask, frames, audio, frame_valid, rng) -> logits."""
  def fn(params, keyframe_mask, frames, audio, frame_valid, rng=None):
    return propagate(model, params, keyframe_mask, frames, audio, encode, frame_valid,
                     memory_slots=memory_slots, mem_gap=mem_gap, train=train, rng=rng, remat=remat)
  return jax.jit(fn)
