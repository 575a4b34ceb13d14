"""Trainer pieces: loss masking, keyframe-only fine-tune, optimizer, checkpoints, multi-device,
NaN guard; the real data path (synthetic AVSBench tree -> TFDS -> grain -> KPF with VGGish on
log-mels) with one shared compiled step; the CLI two-stage run and the toy training runs
(audio-aware vs audio-blind) are slow."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from coprop_jax.train import keyframe_task, losses, loop, toy_data
from coprop_jax.train.checkpoint import Checkpointer
from coprop_jax.train.state import TrainState, make_optimizer, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_binary_loss_masks_frames_without_gt(rng):
  logits = jnp.asarray(rng.normal(size=(4, 8, 8)), jnp.float32)
  masks = rng.integers(0, 2, (4, 8, 8))
  w = losses.frame_weights(jnp.array([[1, 0], [1, 1]], bool), jnp.array([[1, 1], [1, 0]], bool))
  np.testing.assert_array_equal(np.asarray(w), [[1, 0], [1, 0]])
  w = w.reshape(-1)
  a = losses.binary_losses(logits, masks, w)
  masks2 = masks.copy()
  masks2[[1, 3]] = 1 - masks2[[1, 3]]
  b = losses.binary_losses(logits, masks2, w)
  assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-6)
  ref = losses.binary_losses(logits[jnp.array([0, 2])], masks[[0, 2]], jnp.ones(2))
  assert float(a["loss"]) == pytest.approx(float(ref["loss"]), rel=1e-6)
  # BCE against optax reference on the kept frames
  bce = np.mean(np.asarray(optax.sigmoid_binary_cross_entropy(logits[jnp.array([0, 2])],
                                                              masks[[0, 2]].astype(np.float32))))
  assert float(a["bce"]) == pytest.approx(bce, rel=1e-5)
  assert float(losses.binary_losses(logits, masks, jnp.zeros(4))["loss"]) == 0.0


def test_semantic_loss_masks_and_perfect_prediction(rng):
  c = 5
  masks = rng.integers(0, c, (3, 6, 6))
  perfect = jnp.asarray(np.eye(c)[masks] * 40.0, jnp.float32)
  out = losses.semantic_losses(perfect, masks, jnp.ones(3))
  assert float(out["ce"]) < 1e-6 and float(out["dice"]) < 0.05
  noisy = jnp.asarray(rng.normal(size=(3, 6, 6, c)), jnp.float32)
  w = jnp.array([1.0, 0.0, 1.0])
  m2 = masks.copy()
  m2[1] = 0
  assert float(losses.semantic_losses(noisy, masks, w)["loss"]) == pytest.approx(
      float(losses.semantic_losses(noisy, m2, w)["loss"]), rel=1e-6)
  with pytest.raises(ValueError, match="semantic_losses"):
    losses.semantic_losses(noisy[..., 0], masks, w)


def _cfg(lr=1e-3, num_classes=1):
  tc = ml_collections.ConfigDict(dict(optimizer="adam", lr=lr, weight_decay=0.0, grad_clip=0.0,
                                      loss=dict(bce_weight=1.0, iou_weight=1.0)))
  return tc


def _tiny_model(num_classes=1):
  from coprop_jax.models.keyframe import KeyframeProcessor
  return KeyframeProcessor(backbone="pvt_v2_b0", d_model=32, num_heads=4, num_encoder_layers=1,
                           num_decoder_layers=1, num_classes=num_classes,
                           backbone_depths=(1, 1, 1, 1))


# ---- real data path: synthetic MS3 tree -> TFDS build -> grain -> KPF (VGGish on log-mels) ----
# One KPF train step is compiled for the whole module (32 px, 2 clips x 5 frames, XLA -O0); the
# persistent compilation cache makes the CLI runs below reuse it instead of compiling again.

def _pipe_config(root, *extra, arg="dataset=synthetic_ms3"):
  from coprop_jax.utils.config import load_config
  return load_config(f"{ROOT}/configs/keyframe_tiny.py:{arg}", [
      f"data.manual_dir={root}/synthetic", f"data.data_dir={root}/tfds", "data.image_size=32",
      "data.batch_size=2", "data.synthetic.num_videos=6", "train.num_steps=2",
      "train.log_every=1", "train.lr=0.001", *extra])


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
  """(config, first host batch, initial state, compiled all-frames step)."""
  from jax.experimental.compilation_cache import compilation_cache as cc
  from coprop_jax.models import keyframe as kf
  from coprop_jax.train import __main__ as cli
  from coprop_jax.train.state import FAST_COMPILE
  root = tmp_path_factory.mktemp("kpf_pipe")
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(root / "xla_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  cc.reset_cache()
  try:
    config = _pipe_config(root)
    batches, _, _ = cli.make_batches(config)   # generates + builds the synthetic set
    first = next(batches)
    model = kf.from_config(config.keyframe)
    state = keyframe_task.init_state(model, config.train, first, config.seed, FAST_COMPILE)
    step = make_train_step(keyframe_task.make_loss_fn(model, config.train, False),
                           compiler_options=FAST_COMPILE)
    state = jax.tree.map(lambda x: jax.device_put(x, x.sharding), state)
    yield root, config, first, state, step
  finally:
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
    cc.reset_cache()


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))   # one program, not one per leaf


def _arrays(batch):
  return {k: v for k, v in batch.items() if k != "video_id"}


def test_pipeline_batch_has_logmel_and_vggish_is_frozen(pipe):
  _, _, first, state, step = pipe
  assert first["audio_logmel"].shape == (2, 5, 96, 64) and "audio_embed" not in first
  assert first["frames"].shape == (2, 5, 32, 32, 3) and first["gt_valid"].all()  # MS3: GT on all
  assert "vggish" in state.params
  s1, m1 = step(_copy(state), _arrays(first))
  assert float(m1["num_frames"]) == 10 and np.isfinite(float(m1["loss"]))
  for a, b in zip(jax.tree.leaves(s1.params["vggish"]), jax.tree.leaves(state.params["vggish"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # frozen: not updated
  moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
           zip(jax.tree.leaves(s1.params["head_out"]), jax.tree.leaves(state.params["head_out"]))]
  assert max(moved) > 0
  # no Adam moments kept for the frozen VGGish (the optimizer state is much smaller than params)
  n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
  n_vgg = sum(x.size for x in jax.tree.leaves(state.params["vggish"]))
  n_all = sum(x.size for x in jax.tree.leaves(state.params))
  assert n_opt < 2 * (n_all - n_vgg) + 100
  # the loss depends on the audio (through VGGish): swap the two clips' log-mels
  _, m2 = step(_copy(state), dict(_arrays(first), audio_logmel=first["audio_logmel"][::-1]))
  assert float(m2["loss"]) != float(m1["loss"])


def test_keyframe_only_step_ignores_non_keyframes(pipe):
  _, _, first, state, step = pipe
  cp = np.array([[1, 0, 1, 0, 0], [1, 0, 0, 0, 0]], np.int32)
  kb = keyframe_task.restrict_to_keyframes(dict(first, control_points=cp))
  np.testing.assert_array_equal(kb["gt_valid"], cp == 1)
  s1, m1 = step(_copy(state), _arrays(kb))
  assert float(m1["num_frames"]) == 3
  m = kb["masks"].copy()
  m[0, 1] = 1 - m[0, 1]
  m[1, 3] = 1 - m[1, 3]        # non-keyframes only: identical update
  s2, m2 = step(_copy(state), _arrays(dict(kb, masks=m)))
  assert float(m1["loss"]) == float(m2["loss"])
  for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  m[0, 2] = 1 - m[0, 2]        # a keyframe: the update moves
  _, m3 = step(_copy(state), _arrays(dict(kb, masks=m)))
  assert float(m3["loss"]) != float(m1["loss"])
  _, m4 = step(_copy(state), _arrays(dict(kb, gt_valid=np.zeros((2, 5), bool))))
  assert float(m4["loss"]) == 0.0 and float(m4["grad_norm"]) == 0.0   # no GT: no gradient
  with pytest.raises(ValueError, match="control_points"):
    keyframe_task.restrict_to_keyframes({"gt_valid": kb["gt_valid"]})


@pytest.mark.slow
def test_cli_trains_then_finetunes_on_keyframes_from_file(pipe):
  """All-frames run (2 steps, Orbax checkpoint) -> keyframe fine-tune from that checkpoint with
  control points read from an RCPG-style JSONL file, both through `coprop_jax.train.run`.
  Slow (~75 s on the 2-core box: two traces of init and step, 280 MB checkpoints with VGGish)."""
  import json
  from coprop_jax.train import __main__ as cli
  root, config, _, state, _ = pipe
  s1 = cli.run(config, str(root / "run1"))
  assert s1["final_step"] == 2 and [h["num_frames"] for h in s1["history"]] == [10, 10]
  ck1 = Checkpointer(s1["checkpoints"])
  assert ck1.latest_step() == 2
  p1 = ck1.restore_params(state)
  ck1.close()
  vids = [f"synms3_{i:05d}" for i in range(6)]
  cp_file = root / "control_points.jsonl"
  cp_file.write_text("".join(json.dumps({"video_id": v, "flags": [1, 0, 0, 1, 0]}) + "\n"
                             for v in vids))
  ft = _pipe_config(root, f"data.control_points_file={cp_file}",
                    f"train.init_from={s1['checkpoints']}", "seed=1",
                    arg="dataset=synthetic_ms3,finetune=True")
  assert ft.train.keyframes_only
  s2 = cli.run(ft, str(root / "run2"))
  assert s2["final_step"] == 2
  assert [h["num_frames"] for h in s2["history"]] == [4, 4]   # 2 clips x 2 keyframes
  ck2 = Checkpointer(s2["checkpoints"])
  p2 = ck2.restore_params(state)
  ck2.close()
  # started from run 1's params (seed=1 would give a different init): 2 Adam steps of lr 1e-3
  d = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
          for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
  assert 0 < d < 0.01, d
  bad = _pipe_config(root, f"data.control_points_file={root / 'missing.jsonl'}")
  with pytest.raises(Exception, match="missing.jsonl"):
    cli.make_batches(bad)


def test_load_pretrained_encoders(pipe, tmp_path):
  """keyframe.backbone_weights / vggish_weights: Orbax checkpoints from the converters land in
  params["backbone"] / params["vggish"]; a checkpoint that does not fit names the difference."""
  from coprop_jax.convert import pvt_v2 as cv
  from coprop_jax.convert.checkpoint_io import CheckpointError, save_params
  from coprop_jax.models.vggish import VGGish
  from test_pvt_v2 import hf_model, state_dict
  _, config, _, state, _ = pipe
  pvt = cv.from_torch_state_dict(state_dict(hf_model("b0", (1, 1, 1, 1))), "b0", depths=(1, 1, 1, 1))
  save_params(pvt, tmp_path / "pvt")
  shapes = jax.eval_shape(VGGish().init, jax.random.PRNGKey(0), jnp.zeros((1, 96, 64)))["params"]
  rs = np.random.default_rng(0)
  vgg = jax.tree.map(lambda s: rs.standard_normal(s.shape).astype(np.float32), shapes)
  save_params(vgg, tmp_path / "vgg")
  kc = ml_collections.ConfigDict(config.keyframe.to_dict())
  kc.backbone_weights, kc.vggish_weights = str(tmp_path / "pvt"), str(tmp_path / "vgg")
  got = keyframe_task.load_pretrained(state, kc)
  for want, have in ((pvt, got.params["backbone"]), (vgg, got.params["vggish"])):
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(have)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(got.params) == jax.tree.structure(state.params)
  bad = dict(pvt, extra_block={"kernel": np.zeros((1,), np.float32)})
  bad.pop("stage0_patch_embed")
  save_params(bad, tmp_path / "bad")
  kc.backbone_weights, kc.vggish_weights = str(tmp_path / "bad"), ""
  with pytest.raises(CheckpointError, match="(?s)not filled.*stage0_patch_embed.*not in the model.*extra_block"):
    keyframe_task.load_pretrained(state, kc)
  (tmp_path / "junk").mkdir()
  kc.backbone_weights = str(tmp_path / "junk")
  with pytest.raises(CheckpointError, match="junk"):
    keyframe_task.load_pretrained(state, kc)


@pytest.fixture(scope="module")
def kf_finetune():
  """One compiled keyframe-only train step on toy clips (2 clips x 4 frames, 32x32), shared."""
  model = _tiny_model()
  clips = toy_data.make_dataset(0, 16, size=32, frames=4)
  batches = toy_data.iterate_batches(clips, 2, 0)
  first = next(batches)
  state = keyframe_task.init_state(model, _cfg(), first)
  step = make_train_step(keyframe_task.make_loss_fn(model, _cfg(), keyframes_only=True))
  return model, batches, first, state, step


@pytest.mark.slow
def test_in_graph_keyframe_only_loss_matches_host_restriction(kf_finetune):
  _, _, first, state, step = kf_finetune
  arrays = dict(_arrays(first), control_points=np.array([[1, 0, 1, 0], [1, 0, 0, 0]], np.int32))
  _, m1 = step(_copy(state), arrays)
  assert float(m1["num_frames"]) == 3
  m = arrays["masks"].copy()
  m[0, 1] = 1 - m[0, 1]
  _, m2 = step(_copy(state), dict(arrays, masks=m))
  assert float(m1["loss"]) == float(m2["loss"])


@pytest.mark.slow
def test_short_keyframe_finetune_reduces_loss(kf_finetune):
  _, batches, _, state, step = kf_finetune
  _, hist = loop.train_loop(_copy(state), step, batches, 60, log_every=1, logger=lambda s: None)
  loss = [h["loss"] for h in hist]
  print("keyframe fine-tune loss first/last 10 steps:", np.mean(loss[:10]), np.mean(loss[-10:]))
  assert np.mean(loss[-10:]) < 0.6 * np.mean(loss[:10]), loss


def test_optimizer_config():
  tc = _cfg(lr=0.5)
  tx = make_optimizer(tc)
  p = {"w": jnp.ones(3)}
  u, _ = tx.update({"w": jnp.ones(3)}, tx.init(p), p)
  np.testing.assert_allclose(np.asarray(u["w"]), -0.5, rtol=1e-4)   # Adam's first step = -lr
  tx = make_optimizer(tc, frozen=("f",))
  p = {"w": jnp.ones(3), "f": {"k": jnp.ones(2)}}
  u, _ = tx.update(p, tx.init(p), p)
  np.testing.assert_allclose(np.asarray(u["w"]), -0.5, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(u["f"]["k"]), 0.0)
  tc.optimizer = "nope"
  with pytest.raises(ValueError, match="unknown 'nope'"):
    make_optimizer(tc)


def _quad_state():
  tx = optax.adam(0.1)
  return TrainState.create({"w": jnp.arange(4.0)}, tx)


def _quad_loss(params, extra, batch, rng):
  return jnp.sum((params["w"] - batch["x"].mean(0)) ** 2), {}


def test_checkpoint_restore_exact_with_grain_iterator(tmp_path):
  import grain.python as gp
  step = make_train_step(_quad_loss)
  state = _quad_state()
  ds = gp.MapDataset.range(100).map(lambda i: {"x": np.full((4,), i, np.float32)})
  it = iter(ds.to_iter_dataset())
  ckpt = Checkpointer(str(tmp_path / "ck"), keep=2)
  for s in range(5):
    b = next(it)
    state, _ = step(state, {"x": b["x"][None]})
    ckpt.save(state, it)
  ckpt.wait()
  assert ckpt.all_steps() == [4, 5]              # keep N
  after = [int(next(it)["x"][0]) for _ in range(3)]
  it2 = iter(ds.to_iter_dataset())
  target = _quad_state()
  restored = ckpt.restore(target, data_iter=it2)
  assert int(restored.step) == 5
  np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.asarray(state.params["w"]))
  for a, b in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(state.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [int(next(it2)["x"][0]) for _ in range(3)] == after == [5, 6, 7]
  ckpt.close()
  with pytest.raises(FileNotFoundError):
    Checkpointer(str(tmp_path / "empty")).restore(target)


def test_loop_logs_and_stops_on_nan(tmp_path):
  step = make_train_step(_quad_loss)
  batches = iter([{"x": np.ones((2, 4), np.float32)}] * 6)
  ckpt = Checkpointer(str(tmp_path / "ck"))
  state, hist = loop.train_loop(_quad_state(), step, batches, 6, checkpointer=ckpt,
                                checkpoint_every=4, log_every=2, logger=lambda s: None)
  assert [h["step"] for h in hist] == [2, 4, 6] and hist[-1]["loss"] < hist[0]["loss"]
  assert ckpt.all_steps() == [4, 6]
  bad = iter([{"x": np.full((2, 4), np.nan, np.float32)}] * 2)
  with pytest.raises(FloatingPointError, match="step 1"):
    loop.train_loop(_quad_state(), step, bad, 2, log_every=1, logger=lambda s: None)


def test_data_parallel_on_8_cpu_devices():
  code = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax, jax.numpy as jnp, numpy as np, optax
    from coprop_jax.train import sharding as shd, loop
    from coprop_jax.train.state import TrainState, make_train_step
    assert len(jax.devices()) == 8
    def loss(p, e, b, r):
      return jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2), {}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32); y = x @ np.arange(4.0, dtype=np.float32)
    batches = iter([{"x": x, "y": y}] * 3)
    init = lambda: TrainState.create({"w": jnp.zeros(4)}, optax.sgd(0.1))
    mesh = shd.make_mesh()
    s8, _ = loop.train_loop(init(), make_train_step(loss), batches, 3, mesh=mesh, log_every=1,
                            logger=lambda s: None)
    assert s8.params["w"].sharding.is_fully_replicated
    s1, _ = loop.train_loop(init(), make_train_step(loss), iter([{"x": x, "y": y}] * 3), 3,
                            log_every=1, logger=lambda s: None)
    np.testing.assert_allclose(np.asarray(s8.params["w"]), np.asarray(s1.params["w"]), rtol=1e-5)
    m2 = shd.make_mesh(num_model=2)
    sh = shd.fsdp_sharding(m2, {"big": jnp.zeros((256, 128)), "small": jnp.zeros(3)}, min_size=100)
    assert sh["big"].spec == jax.sharding.PartitionSpec("model", None) or sh["big"].spec[1] == "model"
    assert sh["small"].is_fully_replicated
    try:
      shd.shard_batch(mesh, {"x": np.zeros((3, 2))})
    except ValueError as e:
      assert "not divisible" in str(e)
    else:
      raise AssertionError("expected ValueError")
    print("OK8")
  """)
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0 and "OK8" in r.stdout, r.stderr[-3000:]


def _train_toy(steps, audio_mode, seed=0, size=32, num_clips=48):
  model = _tiny_model()
  clips = toy_data.make_dataset(seed, num_clips, size=size, frames=4)
  batches = toy_data.iterate_batches(clips, 4, seed)
  first = next(batches)
  tc = _cfg(lr=1e-3)
  state = keyframe_task.init_state(model, tc, first, seed)
  step = make_train_step(keyframe_task.make_loss_fn(model, tc, False, audio_mode))
  state, hist = loop.train_loop(state, step, batches, steps, log_every=10,
                                logger=lambda s: None)
  test = toy_data.make_dataset(seed + 100, 16, size=size, frames=4)
  tb = [{k: np.stack([c[k] for c in test[i:i + 4]]) for k in test[0]} for i in range(0, 16, 4)]
  pred = keyframe_task.make_predict_fn(model, audio_mode)
  res = keyframe_task.evaluate(pred, state.params, state.extra, tb, 1, keyframes_only=True)
  return hist, res


@pytest.mark.slow
def test_training_beats_audio_blind_model():
  hist, res = _train_toy(400, "normal")
  _, blind = _train_toy(400, "zero")
  print("audio-aware", hist[0]["loss"], hist[-1]["loss"], res, "audio-blind", blind)
  # observed (2-core CPU): loss 0.31 at step 100 -> 0.19 at 400; keyframe J 0.897 vs blind 0.316
  assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
  assert res["J"] > 0.75
  assert blind["J"] < 0.65
  assert res["J"] > blind["J"] + 0.15
