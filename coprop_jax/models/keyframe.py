"""Keyframe Processor (KPF): audio-guided single-frame segmentation (paper section 3.3).

Pipeline (all per frame; frames of a clip are flattened into the batch axis by the caller):
1. Image encoder (PVT-v2 any variant, or ResNet-50) -> four maps at 1/4, 1/8, 1/16, 1/32.
2. Audio: a 128-d VGGish embedding per frame (precomputed, as AVSBench ships), or the VGGish net
   on the frame's log-mel patch; projected to `num_audio_tokens` tokens of width d_model.
3. Each stage: 1x1 projection to d_model + GroupNorm, then multi-head cross-attention from the
   pixels (queries) to the audio tokens (keys/values), added residually (paper eq. 6 pattern).
4. The fused 1/16 and 1/32 maps are flattened, given 2-D sine position + level embeddings, and
   concatenated with the audio tokens (plus a type embedding) into a pre-norm transformer encoder.
5. Audio-queried decoder (CATR-style): `num_queries` queries derived from the audio embedding
   (plus learned query embeddings) self-attend, then cross-attend to the encoded pixel tokens.
6. FPN-style mask head: top-down over the encoded 1/32, 1/16 and fused 1/8, 1/4 maps; per-query
   mask maps (query embedding . pixel embedding) are concatenated with the pixel features and a
   small conv head gives `num_classes` logits at 1/4, bilinearly upsampled to the input size.

Output logits: [N, H, W, num_classes] (num_classes 1: binary S4/MS3 logit; 71: AVSS classes).
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from coprop_jax.models import layers

Array = jax.Array


def build_backbone(name: str, dtype: Any, depths: Optional[Sequence[int]] = None,
                   source: str = "hf", module_name: Optional[str] = None,
                   scan_layers: bool = True, remat: bool = False,
                   attention_impl: str = "auto") -> nn.Module:
  """"pvt_v2_b0".."pvt_v2_b5", "pvt_v2_b2_linear" or "resnet50" -> a Linen module returning 4 maps.

  `depths` overrides PVT-v2 block counts (tiny test models only); `source` ("hf", "original",
  "mmseg") sets PVT-v2's LayerNorm epsilons to those of the checkpoint its weights come from;
  `scan_layers`, `remat` and `attention_impl` go to PVT-v2 (`coprop_jax.models.pvt_v2.PVTv2`).
  """
  if name.startswith("pvt_v2_"):
    from coprop_jax.models import pvt_v2
    return pvt_v2.build_model(name[len("pvt_v2_"):], source=source, dtype=dtype,
                              depths=tuple(depths) if depths else None, name=module_name,
                              scan_layers=scan_layers, remat=remat,
                              attention_impl=attention_impl)
  if name == "resnet50":
    from coprop_jax.models import resnet
    return resnet.ResNet50(output_stride=32, frozen_bn=True, dtype=dtype, name=module_name)
  raise ValueError(f"KPF: unknown backbone {name!r}; expected pvt_v2_b0..b5, pvt_v2_b2_linear or "
                   "resnet50")


class EncoderLayer(nn.Module):
  """Pre-norm transformer layer: x + MHA(LN(x)) ; x + MLP(LN(x)). x: [N, L, D]."""
  num_heads: int
  mlp_ratio: float = 4.0
  attention_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, pos: Array) -> Array:
    h = layers.LayerNorm(1e-5, dtype=self.dtype, name="norm1")(x)
    x = x + layers.MultiHeadAttention(self.num_heads, attention_impl=self.attention_impl,
                                      dtype=self.dtype, name="self_attn")(
        h + pos, h + pos, h)
    h = layers.LayerNorm(1e-5, dtype=self.dtype, name="norm2")(x)
    return x + layers.Mlp(int(x.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)


class DecoderLayer(nn.Module):
  """Pre-norm decoder layer: query self-attention, cross-attention to memory, MLP."""
  num_heads: int
  mlp_ratio: float = 4.0
  attention_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q: Array, qpos: Array, memory: Array, mpos: Array) -> Array:
    h = layers.LayerNorm(1e-5, dtype=self.dtype, name="norm1")(q)
    q = q + layers.MultiHeadAttention(self.num_heads, attention_impl=self.attention_impl,
                                      dtype=self.dtype, name="self_attn")(
        h + qpos, h + qpos, h)
    h = layers.LayerNorm(1e-5, dtype=self.dtype, name="norm2")(q)
    q = q + layers.MultiHeadAttention(self.num_heads, attention_impl=self.attention_impl,
                                      dtype=self.dtype, name="cross_attn")(
        h + qpos, memory + mpos, memory)
    h = layers.LayerNorm(1e-5, dtype=self.dtype, name="norm3")(q)
    return q + layers.Mlp(int(q.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp")(h)


class ConvGN(nn.Module):
  """Conv (k x k, "SAME", no bias; `layers.Conv`) + GroupNorm + ReLU on NHWC."""
  features: int
  kernel: int = 3
  groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = layers.Conv(self.features, self.kernel, use_bias=False, dtype=self.dtype, name="conv")(x)
    x = layers.GroupNorm(min(self.groups, self.features), dtype=self.dtype, name="norm")(x)
    return nn.relu(x)


def _resize(x: Array, hw: tuple[int, int]) -> Array:
  if x.shape[1:3] == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], hw[0], hw[1], x.shape[3]), "bilinear").astype(x.dtype)


class KeyframeProcessor(nn.Module):
  """The KPF. See the module docstring.

  Attributes:
    backbone: image encoder name (see `build_backbone`).
    d_model / num_heads: width and heads of fusion, transformer encoder and decoder.
    num_encoder_layers / num_decoder_layers: transformer depths.
    num_queries: audio-derived decoder queries.
    num_audio_tokens: tokens the 128-d audio embedding is expanded into.
    num_classes: 1 (binary) or K (semantic, background = class 0).
    backbone_depths: optional PVT-v2 block counts override (tiny test models).
    backbone_source: checkpoint family of the PVT-v2 weights ("hf", "original", "mmseg"), which
      fixes its LayerNorm epsilons. Params: the backbone is `params["backbone"]`, VGGish
      `params["vggish"]` (see `coprop_jax.train.keyframe_task.load_pretrained`).
    freeze_vggish: no gradient flows into the VGGish net (AVSBench keeps its pretrained audio
      extractor frozen); pair with `make_optimizer(..., frozen=("vggish",))`.
    scan_layers: repeated layers (PVT-v2 stage blocks, transformer encoder and decoder layers)
      run as `nn.scan` over stacked params (compile once per stack); False unrolls them. Same
      params and outputs either way.
    remat: recompute those layers' activations in the backward pass (memory for compute).
    attention_impl: "auto" (cuDNN fused attention on a GPU in bfloat16, XLA otherwise), "xla"
      or "cudnn" (`coprop_jax.models.layers.dot_product_attention`).
    dtype: compute dtype (params, norm statistics, softmax and the output logits float32).

  Parameter layout: `encoder_layers` / `decoder_layers` hold the transformer layers with every
  leaf stacked on a leading layer axis, `backbone` the encoder (PVT-v2: `stage{i}_blocks`
  stacked the same way); `upgrade_layout` converts trees of the older per-layer layout
  (`encoder{j}`, `decoder{j}`, `backbone/stage{i}_block{j}`).
  Call:
    images: [N, H, W, 3] normalised, H and W divisible by 32;
    audio_embed: [N, 128] VGGish embeddings, or audio_logmel: [N, 96, 64] (runs VGGish);
    train: enables backbone drop-path (needs a "dropout" rng when its rate > 0).
  Returns: logits [N, H, W, num_classes] float32.
  """
  backbone: str = "pvt_v2_b5"
  d_model: int = 256
  num_heads: int = 8
  num_encoder_layers: int = 2
  num_decoder_layers: int = 2
  num_queries: int = 1
  num_audio_tokens: int = 4
  num_classes: int = 1
  backbone_depths: Optional[tuple[int, ...]] = None
  backbone_source: str = "hf"
  freeze_vggish: bool = True
  scan_layers: bool = True
  remat: bool = False
  attention_impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: Array, audio_embed: Optional[Array] = None,
               audio_logmel: Optional[Array] = None, train: bool = False) -> Array:
    layers.check_image(images, "KPF images")
    n, h, w, _ = images.shape
    if h % 32 or w % 32:
      raise ValueError(f"KPF images: H and W must be divisible by 32, got {h}x{w}")
    d = self.d_model
    if audio_embed is None:
      if audio_logmel is None:
        raise ValueError("KPF: give audio_embed [N, 128] or audio_logmel [N, 96, 64]")
      from coprop_jax.models import vggish  # cnn branch
      audio_embed = vggish.VGGish(dtype=self.dtype, name="vggish")(audio_logmel)
      if self.freeze_vggish:
        audio_embed = jax.lax.stop_gradient(audio_embed)
    if audio_embed.shape != (n, 128):
      raise ValueError(f"KPF audio_embed: expected [{n}, 128], got {tuple(audio_embed.shape)}")

    feats = build_backbone(self.backbone, self.dtype, self.backbone_depths, self.backbone_source,
                           module_name="backbone", scan_layers=self.scan_layers,
                           remat=self.remat, attention_impl=self.attention_impl)(
                               images, train=train)
    if isinstance(feats, tuple) and len(feats) == 2 and isinstance(feats[0], (list, tuple)):
      feats = feats[0]

    # Audio tokens [N, A, d] and a pooled audio vector [N, d].
    a = audio_embed.astype(self.dtype)
    a = nn.gelu(nn.Dense(d, dtype=self.dtype, name="audio_proj")(a))
    audio_tokens = nn.Dense(d * self.num_audio_tokens, dtype=self.dtype, name="audio_tokens")(a)
    audio_tokens = audio_tokens.reshape(n, self.num_audio_tokens, d)
    audio_tokens = layers.LayerNorm(1e-5, dtype=self.dtype, name="audio_norm")(audio_tokens)

    # Stage-wise projection + audio cross-attention fusion.
    fused = []
    for i, f in enumerate(feats):
      x = layers.Conv(d, 1, dtype=self.dtype, name=f"lateral{i}")(f)
      x = layers.GroupNorm(min(32, d), dtype=self.dtype, name=f"lateral{i}_norm")(x)
      hh, ww = x.shape[1:3]
      tok = x.reshape(n, hh * ww, d)
      q = layers.LayerNorm(1e-5, dtype=self.dtype, name=f"fuse{i}_norm")(tok)
      tok = tok + layers.MultiHeadAttention(self.num_heads, attention_impl=self.attention_impl,
                                            dtype=self.dtype, name=f"fuse{i}_attn")(
                                                q, audio_tokens)
      fused.append(tok.reshape(n, hh, ww, d))

    # Transformer encoder over [1/16 tokens, 1/32 tokens, audio tokens].
    toks, poss, shapes = [], [], []
    for lvl, i in enumerate((2, 3)):
      x = fused[i]
      hh, ww = x.shape[1:3]
      shapes.append((hh, ww))
      pos = layers.sine_position_embedding_2d(hh, ww, d // 2, dtype=self.dtype).reshape(hh * ww, d)
      lvl_emb = self.param(f"level_embed{lvl}", nn.initializers.normal(0.02), (d,))
      toks.append(x.reshape(n, hh * ww, d))
      poss.append(jnp.broadcast_to(pos + lvl_emb.astype(self.dtype), (n, hh * ww, d)))
    type_emb = self.param("audio_type_embed", nn.initializers.normal(0.02),
                          (self.num_audio_tokens, d))
    toks.append(audio_tokens)
    poss.append(jnp.broadcast_to(type_emb.astype(self.dtype), audio_tokens.shape))
    mem = jnp.concatenate(toks, axis=1)
    mpos = jnp.concatenate(poss, axis=1)
    encoder = EncoderLayer(self.num_heads, attention_impl=self.attention_impl, dtype=self.dtype,
                           name="encoder_layers")
    mem = layers.scan_layers(encoder, mem, mpos, length=self.num_encoder_layers,
                             scan=self.scan_layers, remat=self.remat)
    mem = layers.LayerNorm(1e-5, dtype=self.dtype, name="encoder_norm")(mem)
    n16 = shapes[0][0] * shapes[0][1]
    n32 = shapes[1][0] * shapes[1][1]
    enc16 = mem[:, :n16].reshape(n, *shapes[0], d)
    enc32 = mem[:, n16:n16 + n32].reshape(n, *shapes[1], d)
    pix_mem, pix_pos = mem[:, :n16 + n32], mpos[:, :n16 + n32]

    # Audio-queried decoder.
    queries = nn.Dense(d * self.num_queries, dtype=self.dtype, name="query_from_audio")(a)
    queries = queries.reshape(n, self.num_queries, d)
    qpos = self.param("query_embed", nn.initializers.normal(0.02), (self.num_queries, d))
    qpos = jnp.broadcast_to(qpos.astype(self.dtype), queries.shape)
    decoder = DecoderLayer(self.num_heads, attention_impl=self.attention_impl, dtype=self.dtype,
                           name="decoder_layers")
    queries = layers.scan_layers(decoder, queries, qpos, pix_mem, pix_pos,
                                 length=self.num_decoder_layers, scan=self.scan_layers,
                                 remat=self.remat)
    queries = layers.LayerNorm(1e-5, dtype=self.dtype, name="decoder_norm")(queries)

    # FPN top-down: 1/32 (encoded) -> 1/16 (encoded) -> 1/8 -> 1/4 (fused).
    p = ConvGN(d, dtype=self.dtype, name="fpn3")(enc32)
    for i, lat in ((2, enc16), (1, fused[1]), (0, fused[0])):
      p = ConvGN(d, dtype=self.dtype, name=f"fpn{i}")(lat + _resize(p, lat.shape[1:3]))
    pix = layers.Conv(d, 1, dtype=self.dtype, name="pixel_embed")(p)      # [N, H/4, W/4, d]
    mask_embed = layers.Mlp(d, out_features=d, dtype=self.dtype, name="mask_embed")(queries)
    qmasks = jnp.einsum("nhwd,nqd->nhwq", pix, mask_embed) / jnp.sqrt(float(d)).astype(self.dtype)
    x = jnp.concatenate([p, qmasks], axis=-1)
    x = ConvGN(d, dtype=self.dtype, name="head_conv")(x)
    logits = layers.Conv(self.num_classes, 1, dtype=self.dtype, name="head_out")(x)
    logits = logits + nn.Dense(self.num_classes, dtype=self.dtype, name="query_bias")(
        queries.mean(axis=1))[:, None, None, :]
    return _resize(logits.astype(jnp.float32), (h, w))


_LAYER_KEY = re.compile(r"^(encoder|decoder)(\d+)$")


def upgrade_layout(params: Mapping[str, Any]) -> dict[str, Any]:
  """KPF params in the current layout from either layout (big_vision-style `load` helper).

  Older trees have one subtree per transformer layer (`encoder{j}`, `decoder{j}`) and, for a
  PVT-v2 backbone, per block (`backbone/stage{i}_block{j}`); they are stacked into
  `encoder_layers` / `decoder_layers` and `backbone/stage{i}_blocks` (numpy arrays). Trees
  already in the current layout come back unchanged. Works on `params` (Adam moments of the
  optimizer state have the same structure and stack the same way).
  """
  from coprop_jax.models import pvt_v2
  out: dict[str, Any] = {}
  groups: dict[str, dict[int, Any]] = {}
  for k, v in params.items():
    m = _LAYER_KEY.match(str(k))
    if m:
      groups.setdefault(m.group(1), {})[int(m.group(2))] = v
    elif k == "backbone" and pvt_v2.is_per_block_layout(v):
      out[k] = pvt_v2.upgrade_layout(v)
    else:
      out[k] = v
  for kind, layers_ in groups.items():
    if f"{kind}_layers" in out:
      raise ValueError(f"KPF params: both {kind}_layers and {kind}0.. present")
    if sorted(layers_) != list(range(len(layers_))):
      raise ValueError(f"KPF params: {kind} layers numbered {sorted(layers_)}; expected "
                       f"0..{len(layers_) - 1}")
    out[f"{kind}_layers"] = layers.stack_layer_params(
        [layers_[j] for j in range(len(layers_))], f"KPF params: {kind} layers")
  return out


def from_config(kc: Any, backbone_depths: Optional[Sequence[int]] = None) -> KeyframeProcessor:
  """Build the KPF from `config.keyframe` (see configs/parts/keyframe.py)."""
  depths = backbone_depths or (tuple(kc.backbone_depths) if kc.get("backbone_depths") else None)
  return KeyframeProcessor(
      backbone=kc.backbone, d_model=kc.d_model, num_heads=kc.num_heads,
      num_encoder_layers=kc.num_encoder_layers, num_decoder_layers=kc.num_decoder_layers,
      num_queries=kc.num_queries, num_audio_tokens=kc.get("num_audio_tokens", 4),
      num_classes=kc.num_classes, backbone_depths=depths,
      backbone_source=kc.get("backbone_source", "hf"),
      freeze_vggish=bool(kc.get("freeze_vggish", True)),
      scan_layers=bool(kc.get("scan_layers", True)), remat=bool(kc.get("remat", False)),
      attention_impl=_attention_impl(kc.get("attention_impl", "auto")),
      dtype=_compute_dtype(kc.dtype))


def _attention_impl(name: str) -> str:
  if name not in layers.ATTENTION_IMPLS:
    raise ValueError(f"keyframe.attention_impl: expected one of {layers.ATTENTION_IMPLS}, "
                     f"got {name!r}")
  return name


def _compute_dtype(name: str) -> Any:
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"keyframe.dtype: expected 'float32' or 'bfloat16', got {name!r}")
  return jnp.dtype(name)
