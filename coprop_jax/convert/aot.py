"""aot-benchmark checkpoint -> Propagator params (REFERENCE section 2 key families).

Every source key under the propagator families is consumed, every target parameter filled and
shape-checked. Audio parameters (insert, identity-from-audio, audio tokens) do not exist in AOT: they
keep their zero-effect initialisation (zero output projections), so the converted network equals AOT.
`encoder.*` keys go to `coprop_jax.convert.mobilenet_v2.convert` (AOT-L and smaller) or
`coprop_jax.convert.resnet.convert_aot` (R50-AOTL: conv1..layer3, no layer4); with `encoder=None`
they are skipped explicitly. `num_batches_tracked` buffers and the unused `LSTT.mask_token`
are ignored.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import jax
import numpy as np

from coprop_jax.convert.checkpoint_io import (CheckpointError, SourceDict, check_params_match, conv,
                                              linear)


def _unwrap(sd: Mapping[str, Any]) -> dict:
  """The network's weights from an AOT checkpoint: nested `{"state_dict": ...}` or, as
  `load_state_dict` flattens files, `state_dict.*` / `model.*` keys (optimizer state and other
  entries beside them are dropped), without DataParallel's `module.` prefix."""
  if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
    sd = sd["state_dict"]
  sd = dict(sd)
  for wrapper in ("state_dict.", "model."):
    inner = {k[len(wrapper):]: v for k, v in sd.items() if k.startswith(wrapper)}
    if inner:
      sd = inner
      break
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  return sd


def _dense(src, key):
  return {"kernel": src.take(key + ".weight", linear), "bias": src.take(key + ".bias")}


def _conv(src, key, bias=True):
  out = {"kernel": src.take(key + ".weight", conv)}
  if bias:
    out["bias"] = src.take(key + ".bias")
  return out


def _norm(src, key):
  return {"scale": src.take(key + ".weight"), "bias": src.take(key + ".bias")}


def convert(src: SourceDict, init_params: Any, num_layers: int, prefix: str = "") -> dict:
  """Fills AOT weights into a copy of `init_params` (the Propagator's own init, whose audio params
  stay as initialised). Keys taken from `src` (prefix e.g. "" or "module.")."""
  # Shape-only inits (jax.eval_shape) are accepted: their leaves become zeros of that shape.
  leaf = lambda x: np.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x)
  p = dict(jax.tree_util.tree_map(leaf, jax.device_get(init_params)))  # fresh dicts: init untouched
  q = prefix
  p["encoder_projector"] = _conv(src, q + "encoder_projector")
  p["patch_wise_id_bank"] = _conv(src, q + "patch_wise_id_bank")
  for l in range(num_layers):
    k = f"{q}LSTT.layers.{l}."
    lay = {}
    for n in ("norm1", "norm2", "norm3"):
      lay[n] = _norm(src, k + n)
    for n in ("linear_Q", "linear_V", "linear1", "linear2"):
      lay[n] = _dense(src, k + n)
    lay["self_attn"] = {n: _dense(src, k + "self_attn." + n)
                        for n in ("linear_Q", "linear_K", "linear_V", "projection")}
    lay["long_term_attn"] = {"projection": _dense(src, k + "long_term_attn.projection")}
    rel_v = src.take(k + "short_term_attn.relative_emb_v")
    rel_v = rel_v.reshape(rel_v.shape[-3:])  # [(1,) H, D, W2]
    lay["short_term_attn"] = {"relative_emb_k": _conv(src, k + "short_term_attn.relative_emb_k"),
                              "relative_emb_v": rel_v,
                              "projection": _dense(src, k + "short_term_attn.projection")}
    lay["activation"] = {"gn": _norm(src, k + "activation.gn"),
                         "conv": _conv(src, k + "activation.conv", bias=False)}
    p[f"layers_{l}"] = lay
    p[f"decoder_norms_{l}"] = _norm(src, f"{q}LSTT.decoder_norms.{l}")
  dec = {}
  for n in ("conv_in", "conv_16x", "conv_8x", "conv_4x"):
    dec[n] = {"conv": _conv(src, f"{q}decoder.{n}.conv"), "gn": _norm(src, f"{q}decoder.{n}.gn")}
  for n in ("adapter_16x", "adapter_8x", "adapter_4x", "conv_out"):
    dec[n] = _conv(src, f"{q}decoder.{n}")
  p["decoder"] = dec
  return p


ENCODERS = ("mobilenet_v2", "resnet50")


def convert_encoder(src: SourceDict, encoder: str, prefix: str = "encoder.") -> dict:
  """AOT `encoder.*` keys -> {"params", "batch_stats"} of `propagator.build_encoder`'s module."""
  if encoder == "mobilenet_v2":
    from coprop_jax.convert.mobilenet_v2 import convert as conv_enc
  elif encoder == "resnet50":
    from coprop_jax.convert.resnet import convert_aot as conv_enc
  else:
    raise CheckpointError(f"AOT converter: encoder must be one of {ENCODERS} or None, got {encoder!r}")
  return conv_enc(src, prefix=prefix)


def from_torch_state_dict(state_dict: Mapping[str, Any], init_params: Any, num_layers: int,
                          encoder: Optional[str] = "mobilenet_v2",
                          init_encoder: Any = None) -> dict:
  """AOT checkpoint dict -> {"propagator": params, "encoder": variables or None}.

  `init_params`: the Propagator's params for the target config (gives the audio params their
  zero-effect init and the shapes to check), or `propagator.init(cfg, rng)`'s whole dict, whose
  "encoder" entry is then used as `init_encoder`. `encoder`: "mobilenet_v2", "resnet50" or None
  (None: `encoder.*` keys are skipped; nothing else may remain). With `init_encoder` given the
  encoder variables are shape-checked too. Raises `CheckpointError` naming missing/extra keys.
  """
  if isinstance(init_params, Mapping) and "propagator" in init_params:
    init_encoder = init_params.get("encoder") if init_encoder is None else init_encoder
    init_params = init_params["propagator"]
  sd = {k: np.asarray(v) for k, v in _unwrap(state_dict).items()}
  # LSTT.mask_token is a parameter AOT creates but never uses (its mask_out call is commented out).
  src = SourceDict(sd, "AOT checkpoint",
                   ignore=lambda k: (k.endswith("num_batches_tracked") or k == "LSTT.mask_token"
                                     or (encoder is None and k.startswith("encoder."))))
  params = convert(src, init_params, num_layers)
  enc_vars = convert_encoder(src, encoder) if encoder is not None else None
  src.finish()
  check_params_match(params, init_params, "AOT propagator")
  if enc_vars is not None and init_encoder is not None:
    check_params_match(enc_vars, jax.device_get(init_encoder), f"AOT encoder ({encoder})")
  return {"propagator": params, "encoder": enc_vars}


def report(state_dict: Mapping[str, Any]) -> str:
  """One line per key family with counts, for the CLI's report."""
  sd = _unwrap(state_dict)
  fam: dict[str, int] = {}
  for k in sd:
    f = k.split(".")[0] if not k.startswith("LSTT.") else ".".join(k.split(".")[:2])
    fam[f] = fam.get(f, 0) + 1
  return "\n".join(f"{f}: {n} tensors" for f, n in sorted(fam.items()))


def infer_config(state_dict: Mapping[str, Any], insert: str = "4layer") -> dict:
  """The `config.propagator` fields an AOT checkpoint fixes, read off its key names and shapes.

  Returns a dict to apply to a `config.propagator` (e.g. `cfg.propagator.update(fields)`):
  num_layers (count of `LSTT.layers.*`), encoder (`encoder.features.*` -> mobilenet_v2,
  `encoder.layer1.*` -> resnet50), d_model / max_objects (id bank [d, ids, 17, 17]), num_heads
  (relative_emb_v [heads, d/heads, W2]), local_max_dis (W2 = (2 md + 1)^2), ffn_dim (linear1),
  and audio_insert_levels / identity_from_audio from `insert` (paper Table 5,
  `propagator.INSERT_VARIANTS`: "aot" | "1layer" | "4layer").
  Raises CheckpointError naming the key it needed when the dict is not an AOT checkpoint.
  """
  from coprop_jax.models.propagator import INSERT_VARIANTS
  if insert not in INSERT_VARIANTS:
    raise CheckpointError(f"AOT converter: insert must be one of {sorted(INSERT_VARIANTS)}, got {insert!r}")
  sd = _unwrap(state_dict)

  def need(key):
    if key not in sd:
      raise CheckpointError(f"not an aot-benchmark checkpoint: key {key!r} is missing "
                            f"({len(sd)} keys, e.g. {sorted(sd)[:3]})")
    return np.shape(sd[key])

  d, ids = need("patch_wise_id_bank.weight")[:2]
  layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("LSTT.layers.")})
  if layers != list(range(len(layers))) or not layers:
    raise CheckpointError(f"AOT checkpoint: LSTT layer indices {layers} are not 0..N-1")
  heads, _, w2 = need("LSTT.layers.0.short_term_attn.relative_emb_v")[-3:]
  md = (int(round(math.sqrt(w2))) - 1) // 2
  if (2 * md + 1) ** 2 != w2:
    raise CheckpointError(f"AOT checkpoint: relative_emb_v window {w2} is not a square of an odd size")
  if any(k.startswith("encoder.features.") for k in sd):
    encoder = "mobilenet_v2"
  elif any(k.startswith("encoder.layer1.") for k in sd):
    encoder = "resnet50"
  else:
    raise CheckpointError("AOT checkpoint: no encoder.features.* (MobileNetV2) or encoder.layer1.* "
                          "(ResNet-50) keys; cannot tell the encoder")
  return dict(encoder=encoder, num_layers=len(layers), d_model=int(d), num_heads=int(heads),
              ffn_dim=int(need("LSTT.layers.0.linear1.weight")[0]), max_objects=int(ids) - 1,
              local_max_dis=md, **INSERT_VARIANTS[insert])


def load(state_dict: Mapping[str, Any], insert: str = "4layer", rng=None):
  """AOT checkpoint dict -> (config.propagator fields (`infer_config`), {"propagator", "encoder"}).

  Parameters AOT lacks (audio insert, identity-from-audio, audio tokens) take the Propagator's
  initial values (other fields at the module defaults, e.g. audio_tokens="learned"), whose zero
  output projections make the converted model compute exactly what AOT computes.
  """
  import jax.numpy as jnp
  from coprop_jax.models import propagator
  fields = infer_config(state_dict, insert)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  model = propagator.Propagator(**{k: v for k, v in fields.items() if k != "encoder"})
  enc_module, _ = propagator.encoder_by_name(fields["encoder"])
  hw = 32  # parameters do not depend on the image size; small keeps the init compile short
  feats = [jnp.zeros((1, hw // s, hw // s, c)) for s, c in
           zip((4, 8, 16, 16), propagator.ENCODER_CHANNELS[fields["encoder"]])]
  mask = jnp.zeros((1, hw, hw, model.max_objects + 1))
  params = jax.jit(lambda r: propagator.init_params(model, r, feats, jnp.zeros((1, 128)), mask))(rng)
  # The encoder's weights all come from the checkpoint: its shapes suffice for the check.
  enc_shapes = jax.eval_shape(enc_module.init, rng, jnp.zeros((1, hw, hw, 3)))
  return fields, from_torch_state_dict(state_dict, params, model.num_layers, encoder=fields["encoder"],
                                       init_encoder=enc_shapes)
