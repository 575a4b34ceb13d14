"""Propagator tests (CPU, tiny configs). One compiled scan (module fixture) serves the scan tests."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.parts.propagator import get_propagator_config
from coprop_jax.convert import aot as aot_convert
from coprop_jax.models import propagator as P

B, H, W = 1, 64, 64
ENC = (8, 8, 8, 16)  # channels of the fake encoder levels (1/4, 1/8, 1/16, 1/16)
SLOTS, GAP, BUCKET = 2, 1, 5
PROJ = [np.random.default_rng(i).standard_normal((3, c)).astype(np.float32) for i, c in enumerate(ENC)]


def fake_encode(_, x):
  """images [N, H, W, 3] -> 4 maps at 1/4, 1/8, 1/16, 1/16 (avg-pool + fixed projection)."""
  pool = lambda s: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, s, s, 1), (1, s, s, 1), "VALID") / (s * s)
  return [jnp.tanh(pool(s) @ p) for s, p in zip((4, 8, 16, 16), PROJ)]


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


def init(model, frames, audio, mask):
  return P.init_params(model, jax.random.PRNGKey(1), fake_encode(None, frames[:, 0]), audio[:, 0, None],
                       jax.nn.one_hot(mask, model.max_objects + 1))


def converted_params(model, seed=0):
  """Params without compiling an init: AOT weights from a synthetic state dict into the shape-only
  init; the audio parameters (absent from AOT) get random values so the audio paths are live."""
  frames, audio = clip(1)
  shapes = jax.eval_shape(lambda: init(model, frames, audio, keyframe_mask(model.max_objects)))
  p = aot_convert.from_torch_state_dict(aot_state_dict(seed=seed), shapes, model.num_layers,
                                        encoder=None)["propagator"]
  rng = np.random.default_rng(seed + 1)
  for k in p:
    if k.startswith("audio_insert") or k == "id_audio":
      p[k] = jax.tree_util.tree_map(lambda x: (0.1 * rng.standard_normal(x.shape)).astype(np.float32), p[k])
  return p


@pytest.fixture(scope="module")
def setup():
  m = tiny()
  mask = keyframe_mask(m.max_objects)
  params = {"propagator": converted_params(m)}
  run = P.make_propagate_fn(m, fake_encode, memory_slots=SLOTS, mem_gap=GAP, length_bucket=BUCKET)
  return m, params, mask, run


def loop_reference(m, params, mask, frames, audio, memory_slots, mem_gap, num_objects=None):
  """Un-jitted frame-by-frame AOT engine: long-term memory = reference + the last `memory_slots`
  memory frames (a Python list, concatenated), short-term = previous frame re-fused with its
  predicted mask; a memory frame every `mem_gap` frames."""
  ap = lambda *a, method: m.apply({"params": params}, *a, method=method)
  n_ids = m.max_objects + 1
  a0 = audio[:, 0, None]
  feats = ap(fake_encode(None, frames[:, 0]), a0, method=P.Propagator.embed)
  id0 = ap(jax.nn.one_hot(mask, n_ids), a0, method=P.Propagator.id_embed)
  _, kvs = ap(feats[3], None, id0, True, method=P.Propagator.lstt)
  ref = short = ap(kvs, id0, method=P.Propagator.fuse)
  mems, out = [], [np.where(np.asarray(jax.nn.one_hot(mask, n_ids)) > 0, 10.0, -10.0)]
  for t in range(1, frames.shape[1]):
    a = audio[:, t, None]
    feats = ap(fake_encode(None, frames[:, t]), a, method=P.Propagator.embed)
    long = [ref] + mems[max(0, len(mems) - memory_slots):]
    memory = [(jnp.stack([fr[i][0] for fr in long], 1), jnp.stack([fr[i][1] for fr in long], 1),
               jnp.ones((B, len(long)), bool), short[i][0], short[i][1]) for i in range(m.num_layers)]
    outs, kvs = ap(feats[3], memory, None, True, method=P.Propagator.lstt)
    logits = ap(outs, feats, (H, W), method=P.Propagator.decode)
    if num_objects is not None:
      logits = jnp.where(jnp.arange(n_ids) <= num_objects, logits, -1e9)
    pred = jax.nn.one_hot(jnp.argmax(logits, -1), n_ids)
    short = ap(kvs, ap(pred, a, method=P.Propagator.id_embed), method=P.Propagator.fuse)
    if t % mem_gap == 0:
      mems.append(short)
    out.append(np.asarray(logits))
  return np.stack(out, 1)


def test_scan_equals_python_loop(setup):
  """The compiled scan (ring-buffer memory, 2 slots, a write every frame: the ring wraps at
  frame 3) equals the un-jitted per-frame loop with list memory."""
  m, params, mask, run = setup
  frames, audio = clip(BUCKET, seed=3)
  got = np.asarray(run(params, mask, frames, audio))
  want = loop_reference(m, params["propagator"], mask, frames, audio, SLOTS, GAP)
  assert got.shape == (B, BUCKET, H, W, m.max_objects + 1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert np.isfinite(got).all()
  np.testing.assert_array_equal(np.argmax(got[:, 0], -1), np.asarray(mask))


def test_bucketing_and_frame_valid_share_one_compile(setup):
  """Lengths 3 and 5 run on one executable (padded to the bucket, cut back); an invalid frame
  leaves memory unchanged: dropping it from the clip gives the same later frames."""
  m, params, mask, run = setup
  frames, audio = clip(BUCKET, seed=5)
  fv = jnp.array([[True, True, False, True, True]])
  out = np.asarray(run(params, mask, frames, audio, fv))
  keep = jnp.array([0, 1, 3, 4])
  ref = np.asarray(run(params, mask, frames[:, keep], audio[:, keep]))  # T=4, padded to 5
  assert ref.shape[1] == 4
  np.testing.assert_allclose(out[:, 3:], ref[:, 2:], rtol=1e-4, atol=1e-4)
  assert np.all(out[:, 2] == 0)  # invalid for the whole batch: skipped, no network run
  short = run(params, mask, frames[:, :3], audio[:, :3])  # T=3
  assert short.shape == (B, 3, H, W, m.max_objects + 1)
  full = np.asarray(run(params, mask, frames, audio))  # T=5, all valid
  np.testing.assert_allclose(np.asarray(short), full[:, :3], rtol=1e-4, atol=1e-4)
  assert run.jitted._cache_size() == 1
  assert [P.bucket_length(t, 32) for t in (1, 32, 33)] == [32, 32, 64]
  assert P.bucket_length(7, 0) == 7


def test_ids_output_and_num_objects(setup):
  """output="ids" with num_objects=1 equals the argmax of the loop reference with ids > 1 masked."""
  m, params, mask, _ = setup
  frames, audio = clip(4, seed=2)
  ids = jax.jit(lambda p, f, a, n: P.propagate_features(
      m, p, mask, f, a, memory_slots=SLOTS, mem_gap=GAP, encode=fake_encode, output="ids",
      num_objects=n))(params["propagator"], frames, audio, jnp.array([1]))
  want = loop_reference(m, params["propagator"], mask, frames, audio, SLOTS, GAP, num_objects=1)
  assert ids.shape == (B, 4, H, W) and ids.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(ids[:, 0]), np.asarray(mask))
  assert np.mean(np.asarray(ids[:, 1:]) == np.argmax(want[:, 1:], -1)) > 0.999
  assert int(ids[:, 1:].max()) <= 1
  with pytest.raises(ValueError, match="output"):
    P.propagate_features(m, params["propagator"], mask, frames, audio, encode=fake_encode, output="probs")


def test_local_attention_equals_bruteforce():
  rng = np.random.default_rng(0)
  b, h, w, nh, d, md = 2, 5, 6, 2, 3, 2
  win = 2 * md + 1
  q, k, v = (rng.standard_normal((b, h, w, nh, d)).astype(np.float32) for _ in range(3))
  rel_k = rng.standard_normal((b, h, w, nh, win * win)).astype(np.float32)
  rel_v = rng.standard_normal((nh, d, win * win)).astype(np.float32)
  got = np.asarray(P.local_attention(*map(jnp.asarray, (q, k, v, rel_k, rel_v)), md))
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
  np.testing.assert_allclose(np.asarray(P.aot_position_embedding(h, w, f)), want, atol=1e-5)
  xm = np.random.default_rng(0).standard_normal((2, 4, 7, 3)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(xm).permute(0, 3, 1, 2), size=(9, 13),
                                         mode="bilinear", align_corners=True).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(P.resize_align_corners(jnp.asarray(xm), (9, 13))), want, atol=1e-5)


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
  """Converted AOT weights: the audio-insert model equals plain AOT (zero-init audio paths)."""
  sd = aot_state_dict()
  m_av = tiny(audio_insert_levels=(0, 1, 2, 3), identity_from_audio=True)
  m_v = tiny(audio_insert_levels=(), identity_from_audio=False)
  frames, audio = clip(2)
  mask = keyframe_mask(2)
  feats = fake_encode(None, frames[:, 0])
  p_av = aot_convert.from_torch_state_dict(sd, init(m_av, frames, audio, mask), 2, encoder=None)["propagator"]
  shapes_v = jax.eval_shape(lambda: init(m_v, frames, audio, mask))  # no audio params: shapes suffice
  p_v = aot_convert.from_torch_state_dict(sd, shapes_v, 2, encoder=None)["propagator"]
  np.testing.assert_array_equal(p_v["layers_1"]["linear1"]["kernel"],
                                sd["state_dict"]["module.LSTT.layers.1.linear1.weight"].T)
  oh = jax.nn.one_hot(mask, 3)
  o_av = m_av.apply({"params": p_av}, feats, audio[:, 0, None], oh)  # reference pass + one step
  o_v = m_v.apply({"params": p_v}, feats, audio[:, 0, None], oh)
  np.testing.assert_allclose(np.asarray(o_av), np.asarray(o_v), rtol=1e-5, atol=1e-5)


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


@pytest.mark.slow  # real MobileNetV2 compile on CPU
def test_propagate_from_config_real_encoder():
  cfg = get_propagator_config()
  cfg.num_layers, cfg.length_bucket = 1, 4
  params = P.init(cfg, jax.random.PRNGKey(0), (64, 64))
  model, _, run = P.make_propagate_fn_from_config(cfg)
  frames = jax.random.randint(jax.random.PRNGKey(1), (1, 3, 64, 64, 3), 0, 255).astype(jnp.uint8)
  out = run(params, keyframe_mask(1), frames, jnp.zeros((1, 3, 128)))
  assert out.shape == (1, 3, 64, 64, 2) and bool(jnp.isfinite(out).all())


@pytest.mark.slow  # ~2 min on the shared 2-core box (BPTT + remat compile)
def test_gradients_reach_every_parameter():
  m = tiny(audio_insert_levels=(0, 3), identity_from_audio=True)
  frames, audio = clip(3)
  mask = keyframe_mask(m.max_objects)
  params = init(m, frames, audio, mask)
  # Zero-init outputs block gradients to the parameters behind them at init; perturb them so
  # every parameter is reachable (at the exact zero-init only the projections themselves get grads).
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.05 if any(getattr(k, "key", "") in ("projection", "id_audio", "relative_emb_v")
                                      for k in path) else x, params)
  target = jax.nn.one_hot(jnp.broadcast_to(mask[:, None], (B, 3, H, W)), m.max_objects + 1)
  # Two audio tokens per frame: with a single token the audio softmax is constant 1, so the audio
  # query/key projections get exactly zero gradient (expected, not a bug).
  audio = jnp.stack([audio, 0.5 * audio + 1.0], axis=2)

  def loss(p):
    lg = P.propagate_features(m, p, mask, frames, audio, memory_slots=2, mem_gap=1, train=True,
                              rng=jax.random.PRNGKey(3), remat=True, encode=fake_encode)
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(lg[:, 1:]) * target[:, 1:], -1))

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
  assert (cfg.encoder, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.ffn_dim, cfg.max_objects,
          cfg.local_max_dis, tuple(cfg.audio_insert_levels)) == ("mobilenet_v2", 2, 32, 4, 64, 2, 2, (3,))
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
