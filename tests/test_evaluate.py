"""`python -m coprop_jax.evaluate` on the synthetic MS3 test split with a random runlocal model:
bad inputs (control-points file missing a video, keyframe masks missing a keyframe, a model of
another config, a training run given as the model, an --out holding another experiment) are
one-line errors before any network runs and nothing is written; (slow) the CLI end to end with
four methods, whose GT-keyframe methods score keyframes exactly."""
import csv
import json
import os

import jax
import numpy as np
import pytest

from coprop_jax import evaluate as E
from coprop_jax import model_io
from coprop_jax.eval import keyframe_masks as km
from coprop_jax.eval.report import EvalReport
from coprop_jax.rcpg.core import gt_control_points
from coprop_jax.utils.config import load_config
from propagator_helpers import random_like

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = f"{ROOT}/configs/coprop.py:dataset=ms3,runlocal=True"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """(workdir with the synthetic data, model directory, config, the test split's host batches)."""
  work = tmp_path_factory.mktemp("evaluate")
  cfg = load_config(SPEC)
  shapes = model_io.expected_shapes(cfg, cfg.data.image_size)
  model = model_io.save_model(work / "model", cfg, random_like(shapes, seed=0))
  _, batches = E.eval_batches(cfg, "test", 2, str(work))
  return work, model, cfg, list(batches)


def run(env, out, *args):
  work, model, _, _ = env
  return E.main(["--config", SPEC, "--checkpoint", str(model), "--workdir", str(work),
                 "--out", str(out), *args])


def videos(env):
  return [str(v) for b in env[3] for v in b["video_id"] if v]


def gt_keyframe_masks(env, skip=None):
  """{(video, t): GT mask} at the GT control points (the default --control_points gt)."""
  out = {}
  for b in env[3]:
    for i, v in enumerate(b["video_id"]):
      if not v:
        continue
      valid = np.asarray(b["gt_valid"][i], bool) & np.asarray(b["frame_valid"][i], bool)
      cp = gt_control_points(np.asarray(b["masks"][i]), valid, binary=True)
      cp[np.flatnonzero(np.asarray(b["frame_valid"][i]))[0]] = 1
      for t in np.flatnonzero(cp):
        if (str(v), int(t)) != skip:
          out[(str(v), int(t))] = np.asarray(b["masks"][i, t], np.uint8)
  return out


def test_control_points_file_missing_a_video_is_refused(env, tmp_path, capsys):
  vids = videos(env)
  assert len(vids) >= 2
  f = tmp_path / "cp.jsonl"
  f.write_text(json.dumps({"video_id": vids[0], "flags": [1, 0, 0, 0, 0]}) + "\n")
  assert run(env, tmp_path / "out", "--control_points", str(f)) == 1
  err = capsys.readouterr().err
  assert str(f) in err and "no line for 1 of the" in err and vids[1] in err, err
  assert not (tmp_path / "out").exists()


def test_keyframe_masks_missing_a_keyframe_is_refused(env, tmp_path, capsys):
  masks = gt_keyframe_masks(env)
  vid, t = sorted(masks)[-1]
  km.write_npz(str(tmp_path / "kf.npz"), gt_keyframe_masks(env, skip=(vid, t)))
  assert run(env, tmp_path / "out", "--methods", "external_keyframes", "--keyframe_masks",
             str(tmp_path / "kf.npz")) == 1
  err = capsys.readouterr().err
  assert "kf.npz" in err and f"video {vid!r} frame {t}" in err, err
  assert not (tmp_path / "out").exists()


def test_model_of_another_config_or_a_training_run_is_refused(env, tmp_path, capsys):
  work, model, _, _ = env
  assert E.main(["--config", SPEC, "--checkpoint", str(model), "--workdir", str(work), "--out",
                 str(tmp_path / "out"), "--config.propagator.d_model=32"]) == 1
  err = capsys.readouterr().err
  assert "propagator.d_model" in err and "64" in err and "32" in err, err
  run_dir = tmp_path / "run"
  (run_dir / "checkpoints").mkdir(parents=True)
  (run_dir / "config.json").write_text("{}")
  assert E.main(["--config", SPEC, "--checkpoint", str(run_dir), "--workdir", str(work), "--out",
                 str(tmp_path / "out")]) == 1
  assert "a training run, not a model directory" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_out_holding_another_experiment_is_refused_and_left_alone(env, tmp_path, capsys):
  out = tmp_path / "out"
  rep = EvalReport("binary")
  gt = np.zeros((5, 32, 32), np.int32)
  rep.add_video("v", gt=gt, gt_valid=np.ones(5, bool), frame_valid=np.ones(5, bool),
                is_keyframe=np.eye(5, dtype=bool)[0], probs=np.zeros((5, 32, 32), np.float32))
  rep.write(out, "coprop", dict(experiment=dict(dataset="synthetic_ms3", split="val")))
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  assert run(env, out) == 1
  err = capsys.readouterr().err
  assert "holds results of another experiment" in err, err
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_control_point_sources(env):
  """Every method's control points: the first valid frame is always a keyframe; a file's flags
  are used as given; padded clips (empty video id) get none."""
  _, _, cfg, batches = env
  ev = E.Evaluator(cfg)
  m = E.Model(cfg, None, "random")
  b = batches[0]
  fv = np.asarray(b["frame_valid"], bool)
  assert (ev.control_points(E.Method("a", m, control_points="every_frame"), b) == fv).all()
  first = ev.control_points(E.Method("a", m, control_points="first_frame"), b)
  assert (first.sum(1) == fv.any(1)).all() and (first[fv.any(1), 0] == 1).all()
  gt = ev.control_points(E.Method("a", m, control_points="gt"), b)
  for i in range(len(fv)):
    if fv[i].any():
      want = gt_control_points(np.asarray(b["masks"][i]), np.asarray(b["gt_valid"][i], bool) & fv[i],
                               binary=True)
      want[0] = 1
      np.testing.assert_array_equal(gt[i], want)
  with pytest.raises(E.EvaluateError, match="unknown control points"):
    ev.control_points(E.Method("a", m, control_points="bogus"), b)


@pytest.mark.slow  # ~3-4 min here: KPF + propagation compiles of the runlocal model
def test_cli_end_to_end(env, tmp_path):
  """Four methods in one report; external keyframes = the GT masks, so they equal the oracle."""
  out = tmp_path / "out"
  km.write_npz(str(tmp_path / "kf.npz"), gt_keyframe_masks(env))
  args = ["--methods", "coprop,kpf_only", "gt_keyframes", "external_keyframes",
          "--keyframe_masks", str(tmp_path / "kf.npz"), "--batch_size", "2"]
  assert run(env, out, *args) == 0
  comp = json.loads((out / "comparison.json").read_text())
  assert comp["methods"] == ["coprop", "kpf_only", "gt_keyframes", "external_keyframes"]
  fig = comp["figures"]
  for k in ("J", "F", "alignment_rate"):
    assert fig["external_keyframes"]["all"][k] == pytest.approx(fig["gt_keyframes"]["all"][k])
  assert fig["gt_keyframes"]["keyframes"]["J"] == pytest.approx(1.0)
  assert fig["kpf_only"]["all"]["J"] == pytest.approx(fig["kpf_only"]["keyframes"]["J"])
  table = (out / "comparison.md").read_text()
  assert "Co-Prop" in table and "KPF only" in table and "| Method |" in table
  rows = list(csv.DictReader(open(out / "coprop.per_video.csv")))
  assert sorted(r["video_id"] for r in rows) == sorted(videos(env))
  # the same command again: accepted (same experiment and settings), files rewritten
  assert run(env, out, *args) == 0
  assert json.loads((out / "comparison.json").read_text())["figures"] == fig
