"""Stage 2 (train.stage=propagator) through the one trainer: AOT's learning-rate schedule and
parameter groups against a reference written from aot-benchmark's `adjust_learning_rate`, a
checkpoint of another stage refused before anything compiles, and (slow) the loss falling on
synthetic clips with gradients in the insert's query/key, and an exact resume after SIGKILL.

The network is the real propagator task around a one-layer width-32 propagator with the stand-in
encoder (tests/propagator_task_helpers.py), so its BPTT step compiles in about a minute here."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import propagator_task_helpers as H
from coprop_jax.train.state import TrainState, group_schedule, lr_schedule
from coprop_jax.utils.config import load_config


def config(*overrides, base=H.CONFIG):
  return load_config(base, [f"--config.{o}" for o in (*H.TINY, *overrides)])


def aot_lr(base_lr, p, itr, max_itr, warm_up_steps, min_lr, encoder_lr_ratio=1.0):
  """aot-benchmark utils/learning.py adjust_learning_rate (poly, no restart), written from its
  definition: (group rate of a non-encoder param, of an encoder param)."""
  if itr < warm_up_steps:
    now = min_lr + (base_lr - min_lr) * itr / warm_up_steps
  else:
    itr, max_itr = itr - warm_up_steps, max_itr - warm_up_steps
    now = min_lr + (base_lr - min_lr) * (1 - itr / (max_itr + 1)) ** p
  return now, (now - min_lr) * encoder_lr_ratio + min_lr


def test_poly_schedule_and_encoder_rate_match_aot():
  # AOT-L (MobileNetV2) decays to 2e-5, R50-AOTL to 1e-5 (aot-benchmark's configs).
  assert config("train.num_steps=50", base=H.CONFIG + ",aot=r50").train.end_lr == 1e-5
  c = config("train.num_steps=50", base=H.CONFIG + ",aot=mobilenet")
  tc = c.train
  assert (tc.lr_schedule, tc.optimizer, tc.end_lr, tc.warmup_ratio) == ("poly", "adamw", 2e-5, 0.05)
  total = 50
  main, enc = lr_schedule(tc, total), group_schedule(tc, 0.1, total)
  for step in range(total):
    want = aot_lr(tc.lr, tc.poly_power, step, total, tc.warmup_ratio * total, tc.end_lr, 0.1)
    np.testing.assert_allclose([float(main(step)), float(enc(step))], want, rtol=1e-5)
  with pytest.raises(ValueError, match="total number of steps"):
    lr_schedule(tc)


def test_optimizer_groups_encoder_ratio_frozen_stages_and_id_bank():
  """The task's optimizer: the propagator at the schedule's rate, AOT's trained encoder stages at
  end_lr + 0.1 (rate - end_lr), frozen stages never move, the ID bank stops at the switch to
  sequential training; weight decay skips 1-D params and AOT's exempt names."""
  from coprop_jax.train.tasks.propagator import decay_mask
  c = config("train.num_steps=10", "train.grad_clip=0.0")
  task = H.StandinPropagatorTask(c)
  task.set_total_steps(10)
  assert task.switch_step == int(c.propagator.train.seq_training_start * 10)
  # MobileNetV2 parameter names (models/mobilenet_v2.py), a few of each kind.
  enc = {"features_0": {"conv": {"kernel": jnp.zeros((3, 3, 3, 4))}, "bn": {"scale": jnp.zeros(4)}},
         "features_4": {"expand": {"conv": {"kernel": jnp.zeros((1, 1, 4, 8))}}},
         "features_18": {"bn": {"scale": jnp.zeros(8)}}}
  params = {"propagator": {"patch_wise_id_bank": {"kernel": jnp.zeros((2, 2))},
                           "decoder": {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)},
                           "pos": {"absolute_pos_embed": jnp.zeros((2, 2))}},
            "encoder": enc}
  dm = decay_mask(params)
  assert dm["propagator"]["decoder"]["kernel"] and not dm["propagator"]["decoder"]["bias"]
  assert not dm["propagator"]["pos"]["absolute_pos_embed"]
  tx = task.make_optimizer(params)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)   # Adam's first steps move by ~ the rate itself
  total, tc = 10, c.train
  for step in range(6):
    upd, state = tx.update(grads, state, params)
    want_main, want_enc = aot_lr(tc.lr, tc.poly_power, step, total, tc.warmup_ratio * total,
                                 tc.end_lr, c.propagator.train.encoder_lr_ratio)
    np.testing.assert_allclose(-float(upd["propagator"]["decoder"]["kernel"][0, 0]), want_main, rtol=1e-3)
    np.testing.assert_allclose(-float(upd["encoder"]["features_4"]["expand"]["conv"]["kernel"].ravel()[0]),
                               want_enc, rtol=1e-3)
    assert float(jnp.abs(upd["encoder"]["features_0"]["conv"]["kernel"]).max()) == 0.0   # frozen stage
    assert float(jnp.abs(upd["encoder"]["features_18"]["bn"]["scale"]).max()) == 0.0      # BN affine
    bank = float(jnp.abs(upd["propagator"]["patch_wise_id_bank"]["kernel"]).max())
    assert (bank > 0) == (step < task.switch_step), (step, bank)


def _fake_checkpoint(run, stage):
  """A run directory holding one checkpoint of another network and its config.json."""
  from coprop_jax.train.checkpoint import Checkpointer
  run.mkdir()
  cfg = load_config(f"{H.ROOT}/configs/coprop.py:dataset=toy,stage={stage},runlocal=True")
  (run / "config.json").write_text(json.dumps(cfg.to_dict(), default=list))
  ck = Checkpointer(str(run / "checkpoints"))
  ck.save(TrainState.create({"kpf": {"kernel": jnp.zeros((3, 3))}}, optax.sgd(1.0), extra={}))
  ck.wait()
  ck.close()


def test_init_from_a_checkpoint_of_another_stage_is_refused(tmp_path):
  from coprop_jax.convert.checkpoint_io import CheckpointError
  from coprop_jax.train.trainer import train_and_evaluate
  H.register()
  _fake_checkpoint(tmp_path / "kpf_run", "kpf")
  work = tmp_path / "prop"
  c = config(f"train.init_from={tmp_path / 'kpf_run' / 'checkpoints'}")
  with pytest.raises(CheckpointError, match="stage 'kpf'") as e:
    train_and_evaluate(c, str(work))
  assert "this run trains stage 'propagator_standin'" in str(e.value)
  assert not (work / "checkpoints").exists()       # nothing trained or saved


def _toy_batches(c, n):
  from coprop_jax.train.trainer import prepare_data
  data = prepare_data(c, "/nonexistent")            # toy data lives in memory
  return [next(data.train) for _ in range(n)]


@pytest.mark.slow  # ~7 min on the loaded 2-core box: BPTT compile of the stage-2 step + 30 updates
def test_task_loss_falls_and_reaches_the_insert_query_key():
  from coprop_jax.train.state import FAST_COMPILE
  c = config("train.num_steps=30", "train.lr=2e-3", "train.end_lr=2e-4")
  task = H.StandinPropagatorTask(c)
  task.set_total_steps(30)
  batches = [task.prepare_batch(b) for b in _toy_batches(c, 4)]
  params, extra = jax.jit(task.init_variables)(batches[0], jax.random.PRNGKey(0))
  tx = task.make_optimizer(params)

  def step(params, opt, batch, rng, i):
    (loss, aux), g = jax.value_and_grad(task.loss_fn, has_aux=True)(params, extra, batch, rng, i)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss, aux, g

  step = jax.jit(step, compiler_options=FAST_COMPILE)
  opt = tx.init(params)

  def loss_at_start(p):
    """Mean loss over the 4 batches at update 0 (all pixels, teacher forcing): the ramp and the
    switch to sequential training change the loss over the run, so compare at one setting."""
    return np.mean([float(step(p, opt, b, jax.random.PRNGKey(0), 0)[2]) for b in batches])

  before = loss_at_start(params)
  losses = []
  for i in range(30):
    params, opt, loss, aux, g = step(params, opt, batches[i % 4], jax.random.PRNGKey(i), i)
    losses.append(float(loss))
    # The insert's output projection starts at zero (an exact no-op), so its query/key get
    # gradient once the first update has moved it.
    if i == 3:
      ins = [k for k in g["propagator"] if k.startswith("audio_insert")]
      assert ins, sorted(g["propagator"])
      for k in ins:
        for n in ("query", "key"):
          assert np.abs(np.asarray(g["propagator"][k][n]["kernel"])).max() > 0, (k, n)
  assert float(aux["seq_training"]) == 1
  assert all(np.isfinite(losses)), losses
  after = loss_at_start(params)
  assert after < 0.85 * before, (before, after, losses)


@pytest.mark.slow  # ~13 min on the loaded 2-core box: three CLI runs (one XLA cache)
def test_kill_after_checkpoint_then_rerun_resumes_exactly(tmp_path):
  """SIGKILL right after the step-4 checkpoint of an 8-step run, rerun: the final params equal
  those of an uninterrupted run bit for bit (the loss ramps, the switch to sequential training
  at step 4 and the ID-bank freeze count all come back from the checkpoint)."""
  from coprop_jax.train.checkpoint import Checkpointer
  cache = tmp_path / "xla"
  o = ("train.num_steps=8", "train.checkpoint_every=4", "eval.every_steps=8", "train.log_every=4")
  ref = H.run_cli(tmp_path / "ref", *o, xla_cache=cache, timeout=900)
  assert ref.returncode == 0, ref.stderr[-3000:]
  killed = H.run_cli(tmp_path / "run", *o, env={"COPROP_TEST_KILL_AFTER_SAVE": "4"}, xla_cache=cache,
                     timeout=900)
  assert killed.returncode == -9, killed.stderr[-3000:]
  again = H.run_cli(tmp_path / "run", *o, xla_cache=cache, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resumed from step 4" in again.stderr

  def final(d):
    import orbax.checkpoint as ocp
    ck = Checkpointer(str(d / "checkpoints"), read_only=True)
    md = ck.manager.item_metadata(8)["state"]
    tree = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), getattr(md, "tree", md))
    out = ck.manager.restore(8, args=ocp.args.Composite(state=ocp.args.StandardRestore(tree)))
    ck.close()
    return jax.tree.map(np.asarray, out["state"])

  a, b = final(tmp_path / "ref"), final(tmp_path / "run")
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [k for k, _ in la] == [k for k, _ in lb]
  for (k, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(k))
  s = json.loads((tmp_path / "run" / "train_summary.json").read_text())
  assert s["final_step"] == 8 and os.path.isdir(tmp_path / "run" / "best")
