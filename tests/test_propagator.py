"""Propagator modules (CPU, tiny configs, nothing compiled but eager applies): AOT kernels, the
audio insert, AOT checkpoint conversion. The scan / pipeline tests are in tests/test_pipeline.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.parts.propagator import get_propagator_config
from coprop_jax.convert import aot as aot_convert
from coprop_jax.models import layers as L
from coprop_jax.models import propagator as P
from coprop_jax.train.state import FAST_COMPILE
from propagator_helpers import ENC, fake_encode, propagator_shapes, random_like

B, H, W = 1, 64, 64


def tiny(**kw):
  args = dict(num_layers=2, d_model=32, num_heads=4, ffn_dim=64, max_objects=2, local_max_dis=2,
              drop_path=0.1)
  args.update(kw)
  return P.Propagator(**args)


def clip(t, seed=0):
  frames = jax.random.normal(jax.random.PRNGKey(seed), (B, t, H, W, 3))
  audio = jax.random.normal(jax.random.PRNGKey(seed + 7), (B, t, 128))
  return frames, audio


def keyframe_mask(max_objects):
  mask = jnp.zeros((B, H, W), jnp.int32).at[:, 10:30, 12:40].set(1)
  return mask.at[:, 40:60, 30:60].set(max_objects) if max_objects > 1 else mask


@pytest.mark.parametrize("h,w,md,dense", [(5, 6, 2, None), (5, 6, 2, False), (9, 8, 1, None),
                                          (9, 8, 1, True)])
def test_local_attention_equals_bruteforce(h, w, md, dense):
  """Both forms (patch gather; dense masked attention, the default for small maps)."""
  rng = np.random.default_rng(0)
  b, nh, d = 2, 2, 3
  win = 2 * md + 1
  q, k, v = (rng.standard_normal((b, h, w, nh, d)).astype(np.float32) for _ in range(3))
  rel_k = rng.standard_normal((b, h, w, nh, win * win)).astype(np.float32)
  rel_v = rng.standard_normal((nh, d, win * win)).astype(np.float32)
  got = np.asarray(L.local_attention(*map(jnp.asarray, (q, k, v, rel_k, rel_v)), md, dense))
  want = np.zeros_like(got)
  for bi in range(b):
    for y in range(h):
      for x in range(w):
        for n in range(nh):
          logits, vals = [], []
          for yy in range(h):
            for xx in range(w):
              dy, dx = yy - y, xx - x
              if abs(dy) <= md and abs(dx) <= md:
                j = (dy + md) * win + (dx + md)
                logits.append(q[bi, y, x, n] @ k[bi, yy, xx, n] + rel_k[bi, y, x, n, j])
                vals.append(v[bi, yy, xx, n] + rel_v[n, :, j])
          a = np.exp(np.array(logits) - max(logits))
          a /= a.sum()
          want[bi, y, x, n] = (a[:, None] * np.array(vals)).sum(0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_aot_helpers_match_torch_semantics():
  """Position embedding as AOT's PositionEmbeddingSine(normalize=True); align-corners resize as
  torch F.interpolate(bilinear, align_corners=True)."""
  torch = pytest.importorskip("torch")
  import math
  h, w, f = 3, 5, 8
  gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
  y = gy[None].float() / (gy[None].float()[:, -1:, :] + 1e-6) * 2 * math.pi
  x = gx[None].float() / (gx[None].float()[:, :, -1:] + 1e-6) * 2 * math.pi
  dim_t = 10000 ** (2 * (torch.arange(f, dtype=torch.float32) // 2) / f)
  px, py = x[..., None] / dim_t, y[..., None] / dim_t
  px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), 4).flatten(3)
  py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), 4).flatten(3)
  want = torch.cat((py, px), 3)[0].numpy()
  np.testing.assert_allclose(np.asarray(L.aot_position_embedding(h, w, f)), want, atol=1e-5)
  xm = np.random.default_rng(0).standard_normal((2, 4, 7, 3)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(xm).permute(0, 3, 1, 2), size=(9, 13),
                                         mode="bilinear", align_corners=True).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(L.resize_align_corners(jnp.asarray(xm), (9, 13))), want, atol=1e-5)


# ----------------------------------------------------------------------------- AOT checkpoints
MBV2 = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))  # t, c, n


def _bn_keys(sd, key, c, r):
  sd[key + ".weight"], sd[key + ".bias"] = 1 + r(c), r(c)
  sd[key + ".running_mean"], sd[key + ".running_var"] = r(c), 1 + np.abs(r(c))


def mobilenet_v2_keys(r):
  """AOT networks/encoders/mobilenetv2.py names (torchvision layout) under `encoder.features.`."""
  sd, f = {}, "encoder.features."
  sd[f + "0.0.weight"] = r(32, 3, 3, 3)
  _bn_keys(sd, f + "0.1", 32, r)
  idx, inp = 1, 32
  for t, c, n in MBV2:
    for _ in range(n):
      hid, b = inp * t, f"{f}{idx}.conv."
      if t != 1:
        sd[b + "0.0.weight"] = r(hid, inp, 1, 1)
        _bn_keys(sd, b + "0.1", hid, r)
      dw = "1" if t != 1 else "0"
      sd[f"{b}{dw}.0.weight"] = r(hid, 1, 3, 3)
      _bn_keys(sd, f"{b}{dw}.1", hid, r)
      pj = int(dw) + 1
      sd[f"{b}{pj}.weight"] = r(c, hid, 1, 1)
      _bn_keys(sd, f"{b}{pj + 1}", c, r)
      idx, inp = idx + 1, c
  sd[f + "18.0.weight"] = r(1280, 320, 1, 1)
  _bn_keys(sd, f + "18.1", 1280, r)
  return sd


def resnet50_aot_keys(r):
  """AOT networks/encoders/resnet.py names (conv1, bn1, layer1..3; no layer4) under `encoder.`."""
  sd = {"encoder.conv1.weight": r(64, 3, 7, 7)}
  _bn_keys(sd, "encoder.bn1", 64, r)
  inp = 64
  for i, (planes, n) in enumerate(zip((64, 128, 256), (3, 4, 6))):
    for j in range(n):
      b = f"encoder.layer{i + 1}.{j}."
      sd[b + "conv1.weight"] = r(planes, inp, 1, 1)
      sd[b + "conv2.weight"] = r(planes, planes, 3, 3)
      sd[b + "conv3.weight"] = r(planes * 4, planes, 1, 1)
      for k, c in (("bn1", planes), ("bn2", planes), ("bn3", planes * 4)):
        _bn_keys(sd, b + k, c, r)
      if j == 0:
        sd[b + "downsample.0.weight"] = r(planes * 4, inp, 1, 1)
        _bn_keys(sd, b + "downsample.1", planes * 4, r)
      inp = planes * 4
  return sd


def aot_state_dict(layers=2, d=32, heads=4, ffn=64, ids=3, md=2, enc=ENC, encoder=None, seed=0):
  """Synthetic aot-benchmark state dict: AOT's key names and torch shapes."""
  rng = np.random.default_rng(seed)
  r = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)
  w2 = (2 * md + 1) ** 2
  sd = {"encoder_projector.weight": r(d, enc[3], 1, 1), "encoder_projector.bias": r(d),
        "patch_wise_id_bank.weight": r(d, ids, 17, 17), "patch_wise_id_bank.bias": r(d),
        "LSTT.mask_token": r(1, 1, d)}  # exists in AOT checkpoints, unused
  for l in range(layers):
    k = f"LSTT.layers.{l}."
    for n in ("norm1", "norm2", "norm3"):
      sd[k + n + ".weight"], sd[k + n + ".bias"] = 1 + r(d), r(d)
    for n in ("linear_Q", "linear_V", "self_attn.linear_Q", "self_attn.linear_K", "self_attn.linear_V",
              "self_attn.projection", "long_term_attn.projection", "short_term_attn.projection"):
      sd[k + n + ".weight"], sd[k + n + ".bias"] = r(d, d), r(d)
    sd[k + "linear1.weight"], sd[k + "linear1.bias"] = r(ffn, d), r(ffn)
    sd[k + "linear2.weight"], sd[k + "linear2.bias"] = r(d, ffn), r(d)
    sd[k + "short_term_attn.relative_emb_k.weight"] = r(heads * w2, d // heads, 1, 1)
    sd[k + "short_term_attn.relative_emb_k.bias"] = r(heads * w2)
    sd[k + "short_term_attn.relative_emb_v"] = r(heads, d // heads, w2)
    sd[k + "activation.gn.weight"], sd[k + "activation.gn.bias"] = 1 + r(ffn), r(ffn)
    sd[k + "activation.conv.weight"] = r(ffn, 1, 5, 5)
    sd[f"LSTT.decoder_norms.{l}.weight"], sd[f"LSTT.decoder_norms.{l}.bias"] = 1 + r(d), r(d)
  dec_in = {"conv_in": (d, d * (layers + 1), 1), "conv_16x": (d, d, 3), "conv_8x": (d // 2, d, 3),
            "conv_4x": (d // 2, d // 2, 3)}
  for n, (o, i, kk) in dec_in.items():
    sd[f"decoder.{n}.conv.weight"], sd[f"decoder.{n}.conv.bias"] = r(o, i, kk, kk), r(o)
    sd[f"decoder.{n}.gn.weight"], sd[f"decoder.{n}.gn.bias"] = 1 + r(o), r(o)
  for n, (o, i) in {"adapter_16x": (d, enc[2]), "adapter_8x": (d, enc[1]), "adapter_4x": (d // 2, enc[0]),
                    "conv_out": (ids, d // 2)}.items():
    sd[f"decoder.{n}.weight"], sd[f"decoder.{n}.bias"] = r(o, i, 1, 1), r(o)
  if encoder == "mobilenet_v2":
    sd.update(mobilenet_v2_keys(r))
  elif encoder == "resnet50":
    sd.update(resnet50_aot_keys(r))
  else:
    sd["encoder.features.0.0.weight"] = r(4, 3, 3, 3)  # stands in for the encoder family
  return {"state_dict": {"module." + k: v for k, v in sd.items()}}


def test_aot_conversion_and_zero_effect_audio_insert():
  """Converted AOT weights: the default audio-insert model (4 levels, identity from audio,
  learned audio tokens) equals plain AOT (INSERT_VARIANTS["aot"], no audio parameters at all)
  on a reference pass + one propagation step, because every audio path starts at zero."""
  sd = aot_state_dict()
  m_av = tiny()
  m_v = tiny(**P.INSERT_VARIANTS["aot"])
  frames, audio = clip(2)
  mask = keyframe_mask(2)
  feats = fake_encode(None, frames[:, 0])
  p_av = aot_convert.from_torch_state_dict(sd, propagator_shapes(m_av, H, W), 2, encoder=None)["propagator"]
  p_v = aot_convert.from_torch_state_dict(sd, propagator_shapes(m_v, H, W), 2, encoder=None)["propagator"]
  assert not any(k.startswith("audio") or k == "id_audio" for k in p_v)  # plain AOT: no audio
  assert {"audio_insert_0", "audio_insert_3", "id_audio", "audio_token_proj"} <= set(p_av)
  np.testing.assert_array_equal(p_v["layers_1"]["linear1"]["kernel"],
                                sd["state_dict"]["module.LSTT.layers.1.linear1.weight"].T)
  oh = jax.nn.one_hot(mask, 3)
  run = lambda m, p: jax.jit(m.apply, compiler_options=FAST_COMPILE)({"params": p}, feats, audio[:, 0], oh)
  o_av, o_v = run(m_av, p_av), run(m_v, p_v)  # reference pass + one propagation step
  np.testing.assert_allclose(np.asarray(o_av), np.asarray(o_v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["learned", "paper"])
def test_audio_insert_per_pixel_attention(mode):
  """Default ("learned", K audio tokens): the insert's output varies over pixels and W_Q / W_K
  get gradients; the identity-from-audio term varies over pixels. "paper" (one token, eq. 6 as
  written): the softmax over one key is 1, the insert adds one vector to every pixel and W_Q /
  W_K get exactly zero gradient; identity-from-audio is constant over pixels too."""
  m = tiny(audio_insert_levels=(0, 3), identity_from_audio=True, audio_tokens=mode)
  p = random_like(propagator_shapes(m, H, W), seed=3)
  frames, audio = clip(1, seed=4)
  feats, a = fake_encode(None, frames[:, 0]), audio[:, 0]
  no_insert = jax.tree_util.tree_map(lambda x: x, p)
  for k in ("audio_insert_0", "audio_insert_3", "id_audio"):
    no_insert[k] = dict(p[k], projection=jax.tree_util.tree_map(np.zeros_like, p[k]["projection"]))
  emb_fn = lambda q: m.apply({"params": q}, feats, a, method=P.Propagator.embed)
  emb = jax.jit(emb_fn, compiler_options=FAST_COMPILE)
  for level in (0, 3):
    delta = np.asarray(emb(p)[level] - emb(no_insert)[level])  # [1, h, w, C]: the insert's output
    spread = np.abs(delta - delta[:, :1, :1]).max()
    assert np.abs(delta).max() > 1e-3
    assert (spread > 1e-3) if mode == "learned" else (spread < 1e-5), (level, spread)
  oh = jax.nn.one_hot(keyframe_mask(2), 3)
  ide_fn = lambda q: m.apply({"params": q}, oh, a, method=P.Propagator.id_embed)
  ide = jax.jit(ide_fn, compiler_options=FAST_COMPILE)
  delta = np.asarray(ide(p) - ide(no_insert))  # [1, N, C]
  spread = np.abs(delta - delta[:, :1]).max()
  assert (spread > 1e-3) if mode == "learned" else (spread < 1e-5), spread
  r = jax.random.normal(jax.random.PRNGKey(0), emb(p)[3].shape)
  g = jax.jit(jax.grad(lambda q: jnp.sum(emb_fn(q)[3] * r) + jnp.sum(ide_fn(q))),
              compiler_options=FAST_COMPILE)(p)
  for k in ("audio_insert_3", "id_audio"):
    gq, gk = (np.abs(np.asarray(g[k][n]["kernel"])).max() for n in ("query", "key"))
    if mode == "learned":
      assert gq > 1e-6 and gk > 1e-6, (k, gq, gk)
    else:
      assert gq == 0 and gk == 0, (k, gq, gk)


def test_frame_step_id_shuffle_is_a_relabelling():
  """AOT's id shuffle in `Propagator.frame`: object j drawn as bank entry perm[j], logits read
  back in the original ids. It must equal the network whose ID-bank inputs and decoder outputs
  are permuted, run without a shuffle (a reset example and a propagated one, teacher forcing on
  the second)."""
  m = tiny(max_objects=3)
  p = random_like(propagator_shapes(m, H, W), seed=7)
  frames, audio = clip(1, seed=8)
  feats, a = fake_encode(None, jnp.concatenate([frames[:, 0]] * 2)), jnp.concatenate([audio[:, 0]] * 2)
  mask = jnp.concatenate([keyframe_mask(3)] * 2)
  oh = jax.nn.one_hot(mask, 4)
  n, c = feats[3].shape[1] * feats[3].shape[2], m.d_model
  rng = np.random.default_rng(0)
  mem = [(jnp.asarray(rng.normal(size=(2, 3, n, c)), jnp.float32), jnp.asarray(rng.normal(size=(2, 3, n, c)), jnp.float32),
          jnp.array([[True, True, False]] * 2), jnp.asarray(rng.normal(size=(2, n, c)), jnp.float32),
          jnp.asarray(rng.normal(size=(2, n, c)), jnp.float32)) for _ in range(2)]
  frame = jax.jit(lambda q, perm: m.apply({"params": q}, feats, a, mem, oh, jnp.array([True, False]),
                                          jnp.array([3, 2]), short_onehot=oh, use_short_onehot=jnp.array([False, True]),
                                          id_perm=perm, method=P.Propagator.frame), compiler_options=FAST_COMPILE)
  perm = np.array([0, 3, 1, 2])
  got = frame(p, jnp.asarray(np.stack([perm, perm])))
  q = jax.tree_util.tree_map(lambda x: x, p)
  q["patch_wise_id_bank"] = dict(p["patch_wise_id_bank"], kernel=p["patch_wise_id_bank"]["kernel"][:, :, perm])
  q["decoder"] = dict(p["decoder"], conv_out={"kernel": p["decoder"]["conv_out"]["kernel"][..., perm],
                                               "bias": p["decoder"]["conv_out"]["bias"][perm]})
  want = frame(q, jnp.asarray(np.stack([np.arange(4)] * 2)))
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)


def test_insert_variants_and_config_wiring():
  """Table 5 settings live once in the library; configs and the converter read them."""
  from coprop_jax.utils.config import load_config
  assert P.INSERT_VARIANTS["aot"] == dict(audio_insert_levels=(), identity_from_audio=False)
  for name, fields in P.INSERT_VARIANTS.items():
    for spec in (f"configs/coprop.py:insert={name}", f"configs/propagator_ablation.py:insert={name}"):
      c = load_config(spec)
      assert (tuple(c.propagator.audio_insert_levels), c.propagator.identity_from_audio) == \
          (fields["audio_insert_levels"], fields["identity_from_audio"]), spec
  for ds in ("s4", "ms3", "avss"):
    assert load_config(f"configs/coprop.py:dataset={ds}").propagator.max_objects == 10
  with pytest.raises(ValueError, match="audio_tokens"):
    propagator_shapes(tiny(audio_tokens="many"), H, W)


def test_load_aot_weights_keeps_the_id_bank_and_the_audio_params():
  """Stage-2 init from a converted AOT checkpoint: every AOT weight (ID bank included) replaces
  the initial value, the audio parameters keep theirs; an ID bank of another size is an error
  naming max_objects."""
  from configs.base import get_base_config
  from coprop_jax import pipeline as PL
  from coprop_jax.convert.checkpoint_io import CheckpointError
  cfg = get_base_config()
  p = cfg.propagator
  p.num_layers, p.d_model, p.num_heads, p.ffn_dim, p.local_max_dis, p.max_objects = 2, 32, 4, 64, 2, 2
  shapes = propagator_shapes(P.from_config(p), H, W)
  mine = {"keyframe": {}, "propagator": random_like(shapes, seed=5), "encoder": {}}
  sd = aot_state_dict(ids=3)
  aot = dict(aot_convert.from_torch_state_dict(sd, shapes, 2, encoder=None), encoder={})
  got = PL.load_aot_weights(cfg, mine, aot)["propagator"]
  np.testing.assert_array_equal(got["patch_wise_id_bank"]["kernel"],
                                np.transpose(sd["state_dict"]["module.patch_wise_id_bank.weight"], (2, 3, 1, 0)))
  np.testing.assert_array_equal(got["audio_insert_0"]["query"]["kernel"],
                                mine["propagator"]["audio_insert_0"]["query"]["kernel"])
  p.max_objects = 10
  big = {"keyframe": {}, "propagator": random_like(propagator_shapes(P.from_config(p), H, W)), "encoder": {}}
  with pytest.raises(CheckpointError, match="set propagator.max_objects=10"):
    PL.load_aot_weights(cfg, big, aot)


@pytest.mark.parametrize("encoder", ["mobilenet_v2", "resnet50"])
def test_aot_full_size_checkpoint_names(encoder):
  """AOT-L / R50-AOTL sized state dict (3 layers, 256 wide, 11 ids, encoder.*) converts with
  every key consumed and every parameter shape-checked (shape-only init, nothing compiled);
  a stray or a missing key is reported by name."""
  cfg = get_propagator_config()
  cfg.encoder, cfg.max_objects = encoder, 10
  want = jax.eval_shape(lambda r: P.init(cfg, r, (64, 64)), jax.random.PRNGKey(0))
  sd = aot_state_dict(layers=3, d=256, heads=8, ffn=1024, ids=11, md=7,
                      enc=P.ENCODER_CHANNELS[encoder], encoder=encoder)
  out = aot_convert.from_torch_state_dict(sd, want, 3, encoder=encoder)
  key = ("module.encoder.features.18.0.weight" if encoder == "mobilenet_v2"
         else "module.encoder.layer3.5.conv3.weight")
  got = (out["encoder"]["params"]["features_18"]["conv"]["kernel"] if encoder == "mobilenet_v2"
         else out["encoder"]["params"]["layer3_5"]["conv3"]["kernel"])
  np.testing.assert_array_equal(got, np.transpose(sd["state_dict"][key], (2, 3, 1, 0)))
  bad = {"state_dict": dict(sd["state_dict"], **{"module.LSTT.extra": np.zeros(1, np.float32),
                                                 "module.encoder.layer4.0.conv1.weight": np.zeros(1)})}
  with pytest.raises(aot_convert.CheckpointError, match="LSTT.extra") as e:
    aot_convert.from_torch_state_dict(bad, want, 3, encoder=encoder)
  assert "encoder.layer4.0.conv1.weight" in str(e.value)
  short = {"state_dict": {k: v for k, v in sd["state_dict"].items()
                          if "conv_out.bias" not in k and not k.endswith("bn1.running_var")
                          and not k.endswith("features.3.conv.0.1.running_var")}}
  with pytest.raises(aot_convert.CheckpointError, match="conv_out.bias"):
    aot_convert.from_torch_state_dict(short, want, 3, encoder=encoder)
  with pytest.raises(aot_convert.CheckpointError, match="encoder must be one of"):
    aot_convert.from_torch_state_dict(sd, want, 3, encoder="vgg")


def test_build_encoder_shapes_and_errors():
  """Encoder maps per AOT: MobileNetV2 [24,32,96,1280], R50 [256,512,1024,1024] at 1/4,1/8,1/16,1/16."""
  cfg = get_propagator_config()
  for name, chans in P.ENCODER_CHANNELS.items():
    cfg.encoder = name
    module, encode = P.build_encoder(cfg)
    v = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    maps = jax.eval_shape(encode, v, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.uint8))
    assert [tuple(x.shape) for x in maps] == [(2, 16, 16, chans[0]), (2, 8, 8, chans[1]),
                                              (2, 4, 4, chans[2]), (2, 4, 4, chans[3])], name
  cfg.encoder = "vgg"
  with pytest.raises(ValueError, match="propagator.encoder"):
    P.build_encoder(cfg)


@pytest.mark.slow  # ~2 min on the shared 2-core box (BPTT + remat compile)
def test_gradients_reach_every_parameter():
  """Training forward of the scan (drop-path, remat, a reset mid-clip): every parameter gets a
  gradient once the zero-initialised output projections are perturbed."""
  from coprop_jax import propagation
  m = tiny(audio_insert_levels=(0, 3), identity_from_audio=True)
  frames, audio = clip(4)
  mask = keyframe_mask(m.max_objects)
  params = jax.jit(lambda r: P.init_params(m, r, fake_encode(None, frames[:, 0]), audio[:, 0],
                                           jax.nn.one_hot(mask, 3)))(jax.random.PRNGKey(1))
  # Zero-init outputs block gradients to the parameters behind them at init; perturb them so
  # every parameter is reachable (at the exact zero-init only the projections themselves get grads).
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 if any(getattr(k, "key", "") in ("projection", "relative_emb_v")
                                      for k in path) else x, params)
  kf = jnp.broadcast_to(mask[:, None], (B, 4, H, W))
  target = jax.nn.one_hot(kf, m.max_objects + 1)
  is_kf = jnp.array([[True, False, True, False]])

  def loss(p):
    out = propagation.propagate(m, {"propagator": p}, frames, kf, is_kf, jnp.full((B, 4), 2),
                                encode=fake_encode, audio_embed=audio, memory_slots=2, mem_gap=1,
                                train=True, rng=jax.random.PRNGKey(3), remat=True, return_logits=True)
    lg = out["logits"][:, jnp.array([1, 3])]
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(lg) * target[:, jnp.array([1, 3])], -1))

  g = jax.jit(jax.grad(loss))(params)
  flat = jax.tree_util.tree_flatten_with_path(g)[0]
  zero = [jax.tree_util.keystr(k) for k, v in flat if not np.any(np.asarray(v))]
  assert not zero, zero


def test_aot_cli_infers_config_and_converts(tmp_path, capsys):
  """`python -m coprop_jax.convert aot`: the config is read off the checkpoint, the audio insert
  is added as a no-op, and the Orbax checkpoint restores to the converted weights."""
  from coprop_jax.convert.__main__ import main
  from coprop_jax.convert.checkpoint_io import restore_params
  import torch
  sd = aot_state_dict(layers=2, d=32, heads=4, ffn=64, ids=3, md=2,
                      enc=P.ENCODER_CHANNELS["mobilenet_v2"], encoder="mobilenet_v2")
  cfg = aot_convert.infer_config(sd, insert="1layer")
  assert cfg == dict(encoder="mobilenet_v2", num_layers=2, d_model=32, num_heads=4, ffn_dim=64,
                     max_objects=2, local_max_dis=2, audio_insert_levels=(3,), identity_from_audio=True)
  src = tmp_path / "aot.pth"
  torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd["state_dict"].items()}}, src)
  assert main(["aot", "--src", str(src), "--out", str(tmp_path / "out"), "--variant", "1layer"]) == 0
  out = capsys.readouterr().out
  assert "propagator.num_layers=2" in out and "propagator.audio_insert_levels=(3,)" in out
  got = restore_params(tmp_path / "out")
  np.testing.assert_array_equal(got["propagator"]["layers_1"]["linear1"]["kernel"],
                                sd["state_dict"]["module.LSTT.layers.1.linear1.weight"].T)
  assert np.all(np.asarray(got["propagator"]["audio_insert_3"]["projection"]["kernel"]) == 0)
  no_enc = {k: v for k, v in sd["state_dict"].items() if ".encoder." not in k}
  with pytest.raises(aot_convert.CheckpointError, match="cannot tell the encoder"):
    aot_convert.infer_config(no_enc)
  with pytest.raises(aot_convert.CheckpointError, match="patch_wise_id_bank.weight"):
    aot_convert.infer_config({"conv1.weight": np.zeros((64, 3, 7, 7))})
