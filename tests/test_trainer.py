"""The generic trainer (coprop_jax.train.trainer / __main__) on toy data with a cheap stand-in
network (tests/trainer_helpers.py: the KPF task around a per-pixel MLP): exact resume after a
SIGKILL, NaN stops without checkpointing, config changes refused on resume, damaged checkpoints,
shape mismatches, init_from, CLI errors, TensorBoard and keep-best. The real KPF through the same
trainer: tests/test_train.py."""
import json
import logging
import os
import re
import shutil

import jax
import numpy as np
import pytest

import trainer_helpers as th
from coprop_jax.convert.checkpoint_io import CheckpointError
from coprop_jax.train import trainer
from coprop_jax.train.checkpoint import Checkpointer
from coprop_jax.utils.config import load_config

th.register()

# 8 steps over 12 toy clips, batch 2 (6 steps per epoch: the run crosses an epoch boundary).
BASE = ["train.stage=pixel", "train.num_steps=8", "train.checkpoint_every=2", "train.log_every=2",
        "train.keep_checkpoints=3", "eval.every_steps=0"]


def pixel_config(*overrides, config=th.CONFIG):
  return load_config(config, [*BASE, *overrides])


def final_params(workdir, step=None):
  ck = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  s = ck.latest_step() if step is None else step
  md = ck.manager.item_metadata(s)["state"]
  tree = getattr(md, "tree", md)
  import orbax.checkpoint as ocp
  out = ck.manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(
      jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree))))
  ck.close()
  return jax.tree.map(np.asarray, out["state"])


def ckpt_steps(directory) -> list[int]:
  return sorted(int(n) for n in os.listdir(directory))


def assert_same(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (p, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(p))


@pytest.fixture(scope="module")
def xla_cache(tmp_path_factory):
  return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 8-step run with evaluations at steps 4 and 8 (keep-best, TensorBoard)."""
  wd = tmp_path_factory.mktemp("pixel_ref")
  summary = trainer.train_and_evaluate(pixel_config("eval.every_steps=4"), str(wd))
  return wd, summary, final_params(wd)


def test_uninterrupted_run_writes_checkpoints_config_tensorboard_and_best(reference):
  wd, summary, state = reference
  assert summary["final_step"] == 8 and int(state["step"]) == 8
  assert ckpt_steps(wd / "checkpoints") == [4, 6, 8]      # keep_checkpoints=3
  assert json.loads((wd / "config.json").read_text())["train"]["stage"] == "pixel"
  assert [e["step"] for e in summary["evals"]] == [4, 8]
  values = [e["J"] for e in summary["evals"]]
  best_step = [4, 8][int(np.argmax(values))]           # strict improvement: the first maximum
  assert os.listdir(wd / "best") == [str(best_step)]
  ck = Checkpointer(str(wd / "best"), read_only=True)
  meta = ck.read_meta()
  ck.close()
  assert meta["step"] == best_step and meta["metric"] == "J" and meta["value"] == max(values)
  tags = th.read_event_tags(wd / "tensorboard")
  for t in ("train/loss", "train/lr", "train/grad_norm", "train/param_norm", "train/update_norm",
            "train/frames_per_s", "val/J", "val/F", "val/J_keyframes", "val/F_keyframes"):
    assert tags.get(t) == "scalar", (t, sorted(tags))
  assert any(k.startswith("val/masks/") and v == "image" for k, v in tags.items()), tags
  losses = [h["loss"] for h in summary["history"]]
  assert [h["step"] for h in summary["history"]] == [2, 4, 6, 8] and all(np.isfinite(losses))
  assert all(h["lr"] == pytest.approx(1e-3) for h in summary["history"])


def test_kill_after_checkpoint_then_rerun_resumes_exactly(reference, tmp_path, xla_cache):
  """SIGKILL once the step-4 checkpoint is on disk; the same command resumes from it (data
  iterator position included) and ends with the uninterrupted run's parameters, bit for bit."""
  ref_dir, _, ref = reference
  wd = tmp_path / "run"
  args = [*BASE, "train.lr=0.001"]          # passed as --config.train.lr=0.001 (documented form)
  r = th.run_cli(wd, *args, env=dict(COPROP_TEST_KILL_AFTER_SAVE="4"),
                 xla_cache=xla_cache)
  assert r.returncode == -9, r.stderr[-3000:]
  assert ckpt_steps(wd / "checkpoints") == [2, 4]
  # the step is compiled, and XLA's memory analysis logged, before step 1 runs
  assert r.stderr.index("compiled train step memory: argument=") < r.stderr.index("step 2/8:")
  r = th.run_cli(wd, *args, xla_cache=xla_cache)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from step 4" in r.stderr           # absl INFO lines reach the user
  assert "Traceback" not in r.stderr
  assert_same(final_params(wd), ref)


def test_nan_stops_with_one_message_keeps_last_good_checkpoint_and_rerun_resumes(
    reference, tmp_path, xla_cache):
  _, _, ref = reference
  wd = tmp_path / "run"
  r = th.run_cli(wd, *BASE, "train.stage=pixel_nan", env=dict(COPROP_TEST_NAN_STEP="5"),
                 xla_cache=xla_cache)
  assert r.returncode == 1
  errors = [l for l in r.stderr.splitlines() if l.startswith("E")]
  assert len(errors) == 1 and "not finite at step 5" in errors[0], r.stderr[-3000:]
  assert "step 4" in errors[0] and "Traceback" not in r.stderr
  # step 6 (a checkpoint step after the NaN) was never written; step 4 is the last good state
  assert ckpt_steps(wd / "checkpoints") == [2, 4]
  good = final_params(wd)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good["params"]))
  # the rerun (the NaN cause removed) resumes from step 4 and matches the uninterrupted run
  cfg = pixel_config()
  with pytest.raises(trainer.ConfigChangedError, match="train.stage: 'pixel_nan' -> 'pixel'"):
    trainer.train_and_evaluate(cfg, str(wd))
  trainer.train_and_evaluate(cfg, str(wd), allow_config_change=True)
  assert_same(final_params(wd), ref)


def test_config_change_on_resume_is_refused_listing_fields(reference, tmp_path, xla_cache):
  ref_dir, _, _ = reference
  wd = tmp_path / "run"
  shutil.copytree(ref_dir, wd)
  # logging/length fields may change; lr and batch size may not
  changed = pixel_config("train.num_steps=10", "train.log_every=1", "train.lr=0.01",
                         "data.batch_size=4")
  with pytest.raises(trainer.ConfigChangedError) as e:
    trainer.train_and_evaluate(changed, str(wd))
  msg = str(e.value)
  assert "train.lr: 0.001 -> 0.01" in msg and "data.batch_size: 2 -> 4" in msg
  assert "log_every" not in msg and "num_steps" not in msg and "--allow_config_change" in msg
  assert ckpt_steps(wd / "checkpoints") == [4, 6, 8]   # nothing touched
  # the CLI flag accepts the change deliberately, keeping the old config file
  r = th.run_cli(wd, *BASE, "train.num_steps=10", "train.lr=0.01",
                 extra_flags=["--allow_config_change"], xla_cache=xla_cache)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "config changed on resume" in r.stderr and "train.lr: 0.001 -> 0.01" in r.stderr
  assert "resumed from step 8" in r.stderr
  assert any(n.startswith("config.before_") for n in os.listdir(wd))
  assert json.loads((wd / "config.json").read_text())["train"]["lr"] == 0.01
  assert ckpt_steps(wd / "checkpoints") == [6, 8, 10]


def test_damaged_latest_checkpoint_falls_back_to_previous(reference, tmp_path, caplog):
  ref_dir, _, ref = reference
  wd = tmp_path / "run"
  shutil.copytree(ref_dir, wd)
  for f in (wd / "checkpoints/8/state/d").iterdir():       # flip bytes in step 8's array data
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
  caplog.set_level(logging.INFO)
  trainer.train_and_evaluate(pixel_config(), str(wd))
  assert "checkpoint step 8" in caplog.text and "damaged" in caplog.text
  assert "falling back to the previous finalized checkpoint" in caplog.text
  assert "resumed from step 6" in caplog.text
  assert (wd / "checkpoints.damaged/8").is_dir()            # moved aside, not deleted
  assert_same(final_params(wd), ref)                        # steps 7-8 redone exactly


def test_shape_mismatch_on_restore_names_parameter_and_shapes(reference):
  """Restoring the 1-class run into a 3-class model (what a resume or init_from with another
  config would do) names the parameter and both shapes."""
  ref_dir, _, _ = reference
  cfg = pixel_config("keyframe.num_classes=3")
  task = trainer.tasks_lib.get_task(cfg)
  mesh = trainer.shd.make_mesh()
  data = trainer.prepare_data(cfg, str(ref_dir))
  batch = trainer.abstract_batch(mesh, trainer.shd.device_arrays(next(data.train)))
  abstract, _ = trainer.create_train_state(task, cfg, mesh, batch)    # traced, not compiled
  ck = Checkpointer(str(ref_dir / "checkpoints"), read_only=True)
  with pytest.raises(CheckpointError, match=r"params/Dense_2/kernel: checkpoint \(8, 1\) vs "
                                            r"model \(8, 3\)"):
    ck.restore(abstract)
  with pytest.raises(CheckpointError, match=r"params/Dense_2/bias: checkpoint \(1,\) vs "
                                            r"model \(3,\)"):
    ck.restore_variables(abstract.params, abstract.extra)
  ck.close()


def test_init_from(reference, tmp_path, caplog):
  ref_dir, _, ref = reference
  missing = tmp_path / "typo" / "checkpoints"
  wd = tmp_path / "run"
  with pytest.raises(CheckpointError, match=re.escape(f"train.init_from {missing}: directory "
                                                      "does not exist")):
    trainer.train_and_evaluate(pixel_config(f"train.init_from={missing}"), str(wd))
  assert not (tmp_path / "typo").exists() and not wd.exists()    # nothing created
  caplog.set_level(logging.INFO)
  # lr 0: the one step leaves the params as initialised, i.e. the source run's step-8 params
  trainer.train_and_evaluate(pixel_config(f"train.init_from={ref_dir / 'checkpoints'}",
                                          "train.num_steps=1", "train.lr=0.0"), str(wd))
  assert f"initialised params from {ref_dir / 'checkpoints'} (step 8)" in caplog.text
  assert_same(final_params(wd)["params"], ref["params"])


def test_cli_errors_are_one_clear_line(tmp_path):
  wd = tmp_path / "run"
  r = th.run_cli(wd, "train.stage=bogus")         # propagator is a stage now: a made-up one
  assert r.returncode == 1
  assert "train.stage='bogus'" in r.stderr and "kpf, kpf_finetune" in r.stderr
  assert "Traceback" not in r.stderr and not wd.exists()
  r = th.run_cli(wd, "train.fast_compile=ture")     # absl's bool parser: not silently False
  assert r.returncode != 0 and "ture" in r.stderr and not wd.exists()


def test_train_step_skips_nonfinite_updates():
  import jax.numpy as jnp
  import ml_collections
  from coprop_jax.train.state import TrainState, make_optimizer, make_train_step
  tc = ml_collections.ConfigDict(dict(optimizer="adam", lr=0.1, weight_decay=0.0, grad_clip=0.0))

  def loss(p, e, b, r, step):
    return jnp.sum((p["w"] - b["x"]) ** 2), {"step_seen": step.astype(jnp.float32)}

  step = make_train_step(loss)
  s = TrainState.create({"w": jnp.zeros(3)}, make_optimizer(tc))
  s, m = step(s, {"x": jnp.ones(3)})
  assert int(s.step) == 1 and int(s.nonfinite_step) == 0 and float(m["step_seen"]) == 0
  before = jax.tree.map(np.asarray, s)
  s, m = step(s, {"x": jnp.full(3, jnp.nan)})                   # step 2 is NaN: skipped
  assert int(s.nonfinite_step) == 2 and not np.isfinite(float(m["loss"]))
  s, _ = step(s, {"x": jnp.ones(3)})                              # sticky: nothing applied after
  after = jax.tree.map(np.asarray, s)
  assert int(s.nonfinite_step) == 2
  for k in ("step", "params", "opt_state", "rng"):
    assert_same(getattr(after, k), getattr(before, k))


@pytest.mark.slow
@pytest.mark.parametrize("stage,dataset", [("pixel", "ms3"), ("kpf", "toy")])
def test_kill_and_resume_exact_for_every_data_source(stage, dataset, tmp_path, xla_cache):
  """As the default test, for the grain pipeline (synthetic MS3 tree -> TFDS -> grain, built
  under each workdir) and for the real KPF on toy data."""
  config = f"{th.ROOT}/configs/coprop.py:dataset={dataset},runlocal=True"
  args = [*BASE, f"train.stage={stage}", "data.synthetic.num_videos=10"]
  ref = tmp_path / "ref"
  r = th.run_cli(ref, *args, config=config, xla_cache=xla_cache)
  assert r.returncode == 0, r.stderr[-3000:]
  wd = tmp_path / "run"
  r = th.run_cli(wd, *args, config=config, env=dict(COPROP_TEST_KILL_AFTER_SAVE="4"),
                 xla_cache=xla_cache)
  assert r.returncode == -9, r.stderr[-3000:]
  r = th.run_cli(wd, *args, config=config, xla_cache=xla_cache)
  assert r.returncode == 0 and "resumed from step 4" in r.stderr, r.stderr[-3000:]
  if dataset != "toy":
    assert "reusing synthetic ms3 tree" in r.stderr
  assert_same(final_params(wd), final_params(ref))
