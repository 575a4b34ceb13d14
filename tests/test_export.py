"""`python -m coprop_jax.export`: a part from the wrong stage, a run made with another network
config, a directory without checkpoints or without its config.json are refused naming the thing;
nothing is written. (The success path runs in the ablation test and on real runs: see RESULTS.)"""
import json
import os

import jax.numpy as jnp
import optax
import pytest

from coprop_jax import export as X
from coprop_jax.train.checkpoint import Checkpointer
from coprop_jax.train.state import TrainState
from coprop_jax.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = f"{ROOT}/configs/coprop.py:dataset=ms3,runlocal=True"


def fake_run(path, stage, *overrides):
  """A run directory: config.json of `stage` and one (meaningless) checkpoint at step 3."""
  path.mkdir(parents=True)
  cfg = load_config(f"{ROOT}/configs/coprop.py:dataset=ms3,runlocal=True,stage={stage}", list(overrides))
  (path / "config.json").write_text(json.dumps(cfg.to_dict(), default=list))
  ck = Checkpointer(str(path / "checkpoints"))
  ck.save(TrainState.create({"w": jnp.zeros(2)}, optax.sgd(1.0), extra={}).replace(step=jnp.asarray(3)))
  ck.wait()
  ck.close()
  return path


def test_resolve_run_forms(tmp_path):
  run = fake_run(tmp_path / "kpf", "kpf")
  for p in (run, run / "checkpoints", run / "checkpoints" / "3"):
    root, step, cfg = X.resolve_run(p)
    assert (root, step, cfg) == (run / "checkpoints", 3, run / "config.json")
  with pytest.raises(X.ExportError, match="does not exist"):
    X.resolve_run(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(X.ExportError, match="holds no training checkpoint"):
    X.resolve_run(tmp_path / "empty")
  (run / "config.json").unlink()
  with pytest.raises(X.ExportError, match="config.json .* is missing"):
    X.resolve_run(run)


def test_mismatched_parts_are_refused_and_nothing_written(tmp_path, capsys):
  kpf = fake_run(tmp_path / "kpf", "kpf")
  prop = fake_run(tmp_path / "prop", "propagator")
  other = fake_run(tmp_path / "prop32", "propagator", "propagator.d_model=32")
  out = tmp_path / "model"
  # the parts swapped: each is a checkpoint of the other stage
  assert X.main(["--config", SPEC, "--keyframe", str(prop), "--propagator", str(kpf), "--out", str(out)]) == 1
  err = capsys.readouterr().err
  assert "--keyframe" in err and "stage 'propagator'" in err and "kpf / kpf_finetune" in err, err
  # a propagator made with another network config: the field is named
  assert X.main(["--config", SPEC, "--keyframe", str(kpf), "--propagator", str(other), "--out", str(out)]) == 1
  err = capsys.readouterr().err
  assert "--propagator" in err and "propagator.d_model: 32 -> 64" in err, err
  assert not out.exists()
