"""Whole-video pipeline (control points -> KPF -> propagation scan) on CPU, tiny models.

One module-scoped Segmenter (tiny KPF, tiny 2-layer propagator, stand-in encoder) serves every
default test: its propagation executable is compiled once (B=2, clips bucketed to 8 frames)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_base_config
from coprop_jax import pipeline as PL
from coprop_jax.eval import keyframe_masks as km
from coprop_jax.models import keyframe as kf_lib
from coprop_jax.models import propagator as P
from coprop_jax.train.state import FAST_COMPILE
from propagator_helpers import fake_encode, loop_reference, propagator_shapes, random_like

B, T, S = 2, 6, 64


def tiny_config(num_classes=1):
  c = get_base_config()
  k = c.keyframe
  k.backbone, k.backbone_depths, k.d_model, k.num_heads = "pvt_v2_b0", (1, 1, 1, 1), 32, 4
  k.num_encoder_layers, k.num_decoder_layers, k.num_classes = 1, 1, num_classes
  p = c.propagator
  p.num_layers, p.d_model, p.num_heads, p.ffn_dim, p.local_max_dis = 2, 32, 4, 64, 2
  p.memory_slots, p.mem_gap, p.length_bucket = 2, 1, 8  # the ring wraps inside a 6-frame clip
  return c


def tiny_params(cfg, seed=0):
  kpf = kf_lib.from_config(cfg.keyframe)
  kshapes = jax.eval_shape(kpf.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, S, S, 3), jnp.float32),
                           jax.ShapeDtypeStruct((1, 128), jnp.float32))
  pshapes = propagator_shapes(P.from_config(cfg.propagator), S, S)
  return {"keyframe": random_like(kshapes, seed), "propagator": random_like(pshapes, seed + 1),
          "encoder": {}}


def make_batch(seed=0, t=T, cp=None):
  rng = np.random.default_rng(seed)
  masks = np.zeros((B, t, S, S), np.int32)
  for b in range(B):
    for i in range(t):
      y, x = rng.integers(0, S // 2, 2)
      masks[b, i, y:y + S // 3, x:x + S // 3] = 1
  frames = rng.normal(size=(B, t, S, S, 3)).astype(np.float32) + masks[..., None]
  cp = np.zeros((B, t), np.int32) if cp is None else np.asarray(cp, np.int32)
  cp[:, 0] = 1
  return dict(frames=frames, masks=masks, gt_valid=np.ones((B, t), bool), frame_valid=np.ones((B, t), bool),
              audio_embed=rng.normal(size=(B, t, 128)).astype(np.float32), control_points=cp,
              video_id=np.array([f"vid{seed}_{b}" for b in range(B)]))


@pytest.fixture(scope="module")
def setup():
  cfg = tiny_config()
  seg = PL.make_segmenter(cfg, encode=fake_encode, keyframe_batch=4, compiler_options=FAST_COMPILE)
  return cfg, seg, tiny_params(cfg)


def test_gt_keyframes_at_every_frame_give_gt_back(setup):
  """KPF-off oracle: a control point at every frame with GT keyframes returns the GT (J = 1)."""
  _, seg, params = setup
  batch = make_batch(1, cp=np.ones((B, T)))
  out = seg.segment(params, batch, keyframes="gt")
  np.testing.assert_array_equal(out["masks"], batch["masks"])
  np.testing.assert_array_equal(out["object_ids"], batch["masks"])
  np.testing.assert_array_equal(out["fg_prob"], batch["masks"].astype(np.float32))
  assert out["is_keyframe"].all() and out["report"]["num_keyframes"] == B * T
  assert out["report"]["keyframes"] == "gt" and out["report"]["classes_dropped"] == 0


def test_pipeline_equals_kpf_and_propagator_segment_by_segment(setup):
  """Compiled pipeline (KPF batched over the keyframes, one scan with per-example resets) ==
  a plain Python loop: KPF on each keyframe, then the AOT engine frame by frame through each
  segment (tests/propagator_helpers.loop_reference). Clip 0 has one segment whose ring memory
  (2 slots, a write every frame) drops its oldest entry at frame 3: up to then it also equals
  AOT's unbounded memory, after that it drifts. Clip 1 is reset at frame 3."""
  cfg, seg, params = setup
  cp = np.array([[1, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0]])
  batch = make_batch(2, cp=cp)
  is_kf = cp == 1
  # Reference: the KPF applied to each keyframe alone (through the segmenter's jitted KPF for 4
  # frames, the keyframe repeated: no extra compile). Its last bias is shifted (exactly a logit
  # offset) so the random KPF's keyframe masks are about half foreground.
  def kpf_prob(kp, b, t):
    four = lambda x: np.repeat(x[b, t][None], 4, 0)
    return np.asarray(seg.kpf(kp, four(batch["frames"]), {"audio_embed": four(batch["audio_embed"])})["prob"][0])
  p0 = np.stack([kpf_prob(params["keyframe"], b, t) for b, t in np.argwhere(is_kf)])
  shift = np.median(np.log(p0 / (1 - p0)))
  kp = jax.tree_util.tree_map(lambda x: x, params["keyframe"])
  kp["params"]["head_out"] = dict(kp["params"]["head_out"], bias=kp["params"]["head_out"]["bias"] - shift)
  params = dict(params, keyframe=kp)
  prob = np.zeros((B, T, S, S), np.float32)
  for b, t in np.argwhere(is_kf):
    prob[b, t] = kpf_prob(kp, b, t)
  kf_masks = (prob > 0.5).astype(np.int32)
  assert 0.3 < kf_masks[is_kf].mean() < 0.7  # non-trivial keyframe masks
  out = seg.segment(params, batch)
  model, pp = seg.model, params["propagator"]
  ids, logits_ref = loop_reference(model, pp, batch["frames"], batch["audio_embed"], kf_masks, is_kf,
                                   np.ones((B, T), int), memory_slots=2, mem_gap=1)
  np.testing.assert_array_equal(out["is_keyframe"], is_kf)
  np.testing.assert_array_equal(out["masks"][is_kf], kf_masks[is_kf])
  np.testing.assert_allclose(out["fg_prob"][is_kf], prob[is_kf], atol=1e-5)
  assert np.mean(out["object_ids"] == ids) > 0.999
  assert out["masks"].max() <= 1  # binary data, AOT-L sized id bank (11 ids): num_objects = 1
  fg_ref = 1 - jax.nn.softmax(jnp.asarray(logits_ref), -1)[..., 0]
  np.testing.assert_allclose(out["fg_prob"][~is_kf], np.asarray(fg_ref)[~is_kf], atol=2e-4)
  # AOT (unbounded long-term memory) for clip 0: equal while writes <= memory_slots (frames <= 3).
  _, logits_aot = loop_reference(model, pp, batch["frames"][:1], batch["audio_embed"][:1], kf_masks[:1],
                                 is_kf[:1], np.ones((1, T), int), memory_slots=None, mem_gap=1)
  fg_aot = np.asarray(1 - jax.nn.softmax(jnp.asarray(logits_aot), -1)[..., 0])[0]
  np.testing.assert_allclose(out["fg_prob"][0, 1:4], fg_aot[1:4], atol=2e-4)
  assert np.abs(out["fg_prob"][0, 4:] - fg_aot[4:]).max() > 1e-4  # the ring dropped frame 1
  assert seg.propagate.jitted._cache_size() == 1


def test_one_control_point_equals_that_segment_alone(setup):
  """A reset at frame 3 == propagating frames 3.. as a clip of their own; different control
  point patterns and clip lengths (6, 3 -> bucket 8) share one executable."""
  _, seg, params = setup
  batch = make_batch(3, cp=[[1, 0, 0, 1, 0, 0], [1, 1, 0, 0, 0, 1]])
  full = seg.segment(params, batch, keyframes="gt")
  tail = {k: (v[:, 3:] if k != "video_id" else v) for k, v in batch.items()}
  tail["control_points"] = tail["control_points"].copy()
  tail["control_points"][:, 0] = 1
  alone = seg.segment(params, tail, keyframes="gt")
  np.testing.assert_array_equal(full["object_ids"][0, 3:], alone["object_ids"][0])
  np.testing.assert_allclose(full["fg_prob"][0, 3:], alone["fg_prob"][0], atol=1e-5)
  assert full["object_ids"].shape == (B, T, S, S) and alone["object_ids"].shape == (B, 3, S, S)
  assert seg.propagate.jitted._cache_size() == 1


def test_invalid_frames_keep_memory_and_skip(setup):
  """frame_valid False leaves the memory unchanged (dropping the frame gives the same later
  frames) and outputs 0; a frame invalid for the whole batch runs no network."""
  _, seg, params = setup
  batch = make_batch(4)
  batch["frame_valid"][:, 2] = False
  out = seg.segment(params, batch, keyframes="gt")
  keep = np.array([0, 1, 3, 4, 5])
  short = {k: (v[:, keep] if k != "video_id" else v) for k, v in batch.items()}
  ref = seg.segment(params, short, keyframes="gt")
  np.testing.assert_allclose(out["fg_prob"][:, keep], ref["fg_prob"], atol=1e-5)
  assert not out["masks"][:, 2].any() and not out["fg_prob"][:, 2].any()
  assert seg.propagate.jitted._cache_size() == 1
  assert [PL.propagation.bucket_length(t, 32) for t in (1, 32, 33)] == [32, 32, 64]


def test_keyframe_mask_source_and_its_errors(setup, tmp_path):
  """Plug-and-play masks (an .npz) give what GT keyframes give; a missing keyframe names the
  video and the frame."""
  _, seg, params = setup
  batch = make_batch(5, cp=[[1, 0, 1, 0, 0, 0], [1, 0, 0, 0, 1, 0]])
  masks = {(batch["video_id"][b], t): batch["masks"][b, t] for b, t in np.argwhere(batch["control_points"])}
  km.write_npz(str(tmp_path / "kf.npz"), masks)
  got = seg.segment(params, batch, keyframes=km.KeyframeMaskSource(str(tmp_path / "kf.npz")))
  want = seg.segment(params, batch, keyframes="gt")
  np.testing.assert_array_equal(got["object_ids"], want["object_ids"])
  del masks[(batch["video_id"][1], 4)]
  km.write_npz(str(tmp_path / "missing.npz"), masks)
  with pytest.raises(KeyError, match=r"video 'vid5_1' frame 4"):
    seg.segment(params, batch, keyframes=km.KeyframeMaskSource(str(tmp_path / "missing.npz")))


def test_bad_inputs_give_clear_errors(setup):
  _, seg, params = setup
  batch = make_batch(6)
  bad = dict(batch, masks=batch["masks"] * 2)  # binary data with id 2: never silent background
  with pytest.raises(ValueError, match=r"video 'vid6_0' frame 0: value 2 outside 0..1"):
    seg.segment(params, bad, keyframes="gt")
  with pytest.raises(ValueError, match=r"object id 11, outside 0..num_objects \(10; max_objects 10\)"):
    seg.propagate({"propagator": params["propagator"]}, batch["frames"], batch["masks"] * 11,
                  batch["control_points"] == 1, np.full(B, 10), audio_embed=batch["audio_embed"])
  with pytest.raises(ValueError, match=r"object id 3, outside 0..num_objects \(2"):
    seg.propagate({"propagator": params["propagator"]}, batch["frames"], batch["masks"] * 3,
                  batch["control_points"] == 1, np.full(B, 2), audio_embed=batch["audio_embed"])
  with pytest.raises(ValueError, match=r"frames'\]: expected \[B, T, H, W, 3\]"):
    seg.segment(params, dict(batch, frames=batch["frames"][:, 0]))
  with pytest.raises(ValueError, match=r"control_points'\]: expected \[B, T\]"):
    seg.segment(params, dict(batch, control_points=batch["control_points"][:, :3]))
  with pytest.raises(ValueError, match="first valid frame 0 is 0"):
    seg.segment(params, dict(batch, control_points=np.zeros((B, T), np.int32)))
  with pytest.raises(ValueError, match=r"audio_embed: expected \[B, T, ...\]"):
    seg.segment(params, dict(batch, audio_embed=batch["audio_embed"][:, :2]), keyframes="gt")
  with pytest.raises(ValueError, match="gt_valid False"):
    seg.segment(params, dict(batch, gt_valid=np.zeros((B, T), bool)), keyframes="gt")
  with pytest.raises(ValueError, match="expected 'kpf', 'gt' or a KeyframeMaskSource"):
    seg.segment(params, batch, keyframes="oracle")


def test_chunked_streaming_equals_one_shot_segment(setup):
  """`segment_chunk` over 3 consecutive 2-frame chunks (padded to the same 8-frame bucket: one
  executable) == one `segment` call on the 6-frame clips: the memory (ring position included: it
  wraps in clip 0), the open segment and its object count are carried; clip 1 gets a keyframe
  inside the second chunk and the last chunk has no keyframe at all (no keyframe masks needed)."""
  _, seg, params = setup
  batch = make_batch(7, cp=[[1, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0]])
  whole = seg.segment(params, batch, keyframes="gt")
  state, parts = None, []
  for a in range(0, T, 2):
    chunk = {k: (v[:, a:a + 2] if k != "video_id" else v) for k, v in batch.items()}
    out, state = seg.segment_chunk(params, chunk, state, keyframes="gt")
    parts.append(out)
    assert state.started.all() and out["report"]["num_keyframes"] == int(chunk["control_points"].sum())
  cat = lambda k: np.concatenate([p[k] for p in parts], axis=1)
  np.testing.assert_array_equal(cat("masks"), whole["masks"])
  np.testing.assert_array_equal(cat("object_ids"), whole["object_ids"])
  np.testing.assert_allclose(cat("fg_prob"), whole["fg_prob"], atol=1e-5)
  np.testing.assert_array_equal(cat("num_objects"), whole["num_objects"])
  assert 0 < whole["masks"][:, 1:].mean() < 1   # something propagated
  assert seg.propagate.jitted._cache_size() == 1
  # A first chunk must start with a keyframe; a state for other clips is refused.
  with pytest.raises(ValueError, match="first valid frame 0 is 0"):
    seg.segment_chunk(params, dict(batch, control_points=np.zeros((B, T), np.int32)))
  with pytest.raises(ValueError, match="state is for 2 clips, the batch has 1"):
    seg.segment_chunk(params, {k: v[:1] for k, v in batch.items()}, state)


def classes_to_ids_reference(mask, max_objects):
  """numpy, from the definition: classes by area (desc), ties by class id; ids 1..max_objects."""
  cls, area = np.unique(mask[mask > 0], return_counts=True)
  order = sorted(zip(-area, cls))
  kept = [int(c) for _, c in order[:max_objects]]
  ids = np.zeros_like(mask)
  for i, c in enumerate(kept):
    ids[mask == c] = i + 1
  return ids, kept, len(order) - len(kept)


def test_semantic_identity_largest_first_and_dropped_counted():
  rng = np.random.default_rng(0)
  masks = rng.integers(0, 9, size=(5, 12, 12)).astype(np.int32)
  masks[0] = 0                                    # no class at all
  masks[1, :6], masks[1, 6:] = 3, 5               # a tie: lower class id first
  ident = jax.jit(PL.classes_to_object_ids, static_argnums=(1, 2), compiler_options=FAST_COMPILE)
  out = jax.tree_util.tree_map(np.asarray, ident(jnp.asarray(masks), 9, 4))
  for i, m in enumerate(masks):
    ids, kept, dropped = classes_to_ids_reference(m, 4)
    np.testing.assert_array_equal(out["ids"][i], ids)
    assert out["id_to_class"][i, 1:len(kept) + 1].tolist() == kept and not out["id_to_class"][i, len(kept) + 1:].any()
    assert out["num_objects"][i] == len(kept) and out["dropped"][i] == dropped
    np.testing.assert_array_equal(out["id_to_class"][i][out["ids"][i]], np.where(ids > 0, m, 0))
  assert out["id_to_class"][1, 1:3].tolist() == [3, 5]
  # Training targets: each frame through its segment's mapping; unknown classes ignored.
  seq = jnp.asarray(np.stack([masks[2], masks[2], masks[3]])[None])
  tgt, nobj = jax.jit(PL.segment_targets, static_argnums=(2, 3), compiler_options=FAST_COMPILE)(
      seq, jnp.array([[True, False, False]]), 9, 4)
  ids2, kept2, _ = classes_to_ids_reference(masks[2], 4)
  np.testing.assert_array_equal(np.asarray(tgt[0, 1]), np.where((masks[2] > 0) & (ids2 == 0), 255, ids2))
  want = np.zeros_like(masks[3])
  for i, c in enumerate(kept2):
    want[masks[3] == c] = i + 1
  want[(masks[3] > 0) & ~np.isin(masks[3], kept2)] = 255
  np.testing.assert_array_equal(np.asarray(tgt[0, 2]), want)
  assert int(nobj[0, 0]) == len(kept2)


@pytest.mark.slow  # ~1 min: a semantic KPF compile and its own propagation executable
def test_semantic_pipeline_maps_ids_back_to_classes(tmp_path):
  """AVSS-style: GT class keyframes at every frame come back exactly; with fewer ids than
  classes the smallest classes are dropped (background) and counted in the report."""
  cfg = tiny_config(num_classes=7)
  cfg.propagator.max_objects = 2
  seg = PL.make_segmenter(cfg, encode=fake_encode, compiler_options=FAST_COMPILE)
  params = tiny_params(cfg)
  batch = make_batch(7, cp=np.ones((B, T)))
  batch["masks"] = batch["masks"] * 4
  batch["masks"][:, :, :8, :8] = 6                # a second class
  out = seg.segment(params, batch, keyframes="gt")
  np.testing.assert_array_equal(out["masks"], batch["masks"])
  batch["masks"][:, :, -4:, -4:] = 2               # a third, smallest class: no id left
  out = seg.segment(params, batch, keyframes="gt")
  assert out["report"]["classes_dropped"] == B * T
  np.testing.assert_array_equal(out["masks"], np.where(batch["masks"] == 2, 0, batch["masks"]))
  out = seg.segment(params, dict(batch, control_points=np.eye(1, T, dtype=np.int32).repeat(B, 0)))
  assert out["masks"].shape == (B, T, S, S) and set(np.unique(out["masks"])) <= {0, 1, 2, 3, 4, 5, 6}
  # Streaming: each segment's id -> class table is carried into the chunks without a keyframe.
  cp = np.array([[1, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0]], np.int32)
  batch = dict(batch, control_points=cp)
  batch["masks"][1, 3:] = np.where(batch["masks"][1, 3:] == 4, 5, batch["masks"][1, 3:])  # new classes
  whole = seg.segment(params, batch, keyframes="gt")
  state, parts = None, []
  for a in range(0, T, 2):
    o, state = seg.segment_chunk(params, {k: (v[:, a:a + 2] if k != "video_id" else v)
                                          for k, v in batch.items()}, state, keyframes="gt")
    parts.append(o["masks"])
  np.testing.assert_array_equal(np.concatenate(parts, 1), whole["masks"])
  assert whole["masks"][:, 4:].any()   # the last chunk (no keyframe) maps propagated ids to classes
  assert set(np.unique(whole["masks"][0, 1:])) <= {0, 4, 6} and set(np.unique(whole["masks"][1, 4:])) <= {0, 5, 6}


@pytest.mark.slow  # real MobileNetV2 + tiny PVT compiles on CPU
def test_segment_with_real_encoders_and_init_params():
  cfg = tiny_config()
  cfg.propagator.num_layers = 1
  params = PL.init_params(cfg, jax.random.PRNGKey(0), S, audio_logmel=True)
  assert set(params) == {"keyframe", "propagator", "encoder"} and "vggish" in params["keyframe"]["params"]
  seg = PL.make_segmenter(cfg, compiler_options=FAST_COMPILE)
  batch = make_batch(8, t=3)
  batch = dict(batch, frames=np.random.default_rng(0).integers(0, 255, (B, 3, S, S, 3)).astype(np.uint8),
               audio_logmel=np.zeros((B, 3, 96, 64), np.float32))
  del batch["audio_embed"]
  out = seg.segment(params, batch)
  assert out["masks"].shape == (B, 3, S, S) and np.isfinite(out["fg_prob"]).all()
