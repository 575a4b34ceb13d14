"""Model directories (coprop_jax.model_io): round trip, refusals, nothing half-written."""
import json
import os

import jax
import numpy as np
import pytest

from coprop_jax import model_io
from coprop_jax.convert.checkpoint_io import CheckpointError
from coprop_jax.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(*overrides):
  return load_config(f"{ROOT}/configs/coprop.py:dataset=ms3,runlocal=True", list(overrides))


def _params(config, seed=0):
  """Random params of the right shapes, without compiling an init."""
  rng = np.random.default_rng(seed)
  shapes = model_io.expected_shapes(config, config.data.image_size)
  return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """One model directory for the module (a save writes the KPF's 72M VGGish weights)."""
  tmp = tmp_path_factory.mktemp("model_io")
  cfg = _config()
  params = _params(cfg)
  return cfg, params, model_io.save_model(tmp / "model", cfg, params, sources={"keyframe": "run/best"})


def test_roundtrip_and_config_checks(saved):
  cfg, params, out = saved
  tmp_path = out.parent
  assert sorted(os.listdir(out)) == ["config.json", "model.json", "params"]
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]   # no temp left
  got_cfg, got = model_io.load_model(out)
  assert got_cfg.is_locked and got_cfg.propagator.audio_insert_levels == cfg.propagator.audio_insert_levels
  assert got_cfg.to_dict() == cfg.to_dict()
  flat_a, flat_b = jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(got)
  assert len(flat_a) == len(flat_b) and all(np.array_equal(a, b) for a, b in zip(flat_a, flat_b))
  assert json.loads((out / "model.json").read_text())["sources"] == {"keyframe": "run/best"}
  # Inference-only and data fields may differ; architecture fields may not.
  model_io.load_model(out, expect=_config("propagator.memory_slots=8", "data.batch_size=1"))
  with pytest.raises(CheckpointError, match=r"propagator.num_layers: 1 -> 2"):
    model_io.load_model(out, expect=_config("propagator.num_layers=2"))


def test_refusals_leave_existing_files_alone(saved):
  cfg, params, out = saved
  tmp_path = out.parent
  before = sorted(os.listdir(out))
  with pytest.raises(FileExistsError, match="already exists"):
    model_io.save_model(out, cfg, params)
  (tmp_path / "notes").mkdir()
  with pytest.raises(FileExistsError, match="not a Co-Prop model directory"):
    model_io.save_model(tmp_path / "notes", cfg, params, force=True)
  # Params of another config are refused before anything is written.
  with pytest.raises(CheckpointError, match="shape mismatches|not filled"):
    model_io.save_model(tmp_path / "other", _config("propagator.num_layers=2"), params)
  assert not (tmp_path / "other").exists() and sorted(os.listdir(out)) == before
  # force replaces a model directory with a complete new one.
  params2 = _params(cfg, seed=1)
  model_io.save_model(out, cfg, params2, force=True)
  _, got = model_io.load_model(out)
  assert np.array_equal(jax.tree_util.tree_leaves(got)[0], jax.tree_util.tree_leaves(params2)[0])
  with pytest.raises(CheckpointError, match="not a Co-Prop model directory"):
    model_io.load_model(tmp_path / "notes")
  with pytest.raises(CheckpointError, match="does not exist"):
    model_io.load_model(tmp_path / "missing")
