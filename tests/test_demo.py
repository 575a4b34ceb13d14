"""The demo (`python -m coprop_jax.demo`): MOC-like data, audio embedding, config, stages, and
(slow) the whole demo in its smoke variant plus notebooks/ablations.ipynb on the model it made."""
import json
import os
import pathlib

import numpy as np
import pytest

from coprop_jax import audio
from coprop_jax.rcpg.core import cosine_control_points, gt_control_points
from coprop_jax.utils.config import ConfigError, load_config
from data_pipelines import moc_synth, synthetic

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.py")


# ----------------------------------------------------------------------------- data
def _clips(n, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return [moc_synth.make_clip(rng, "ms3", size, 5, video_id=f"c{i}") for i in range(n)]


def test_moc_clips_switch_source_with_silent_distractors():
  clips = _clips(40)
  switching = 0
  for c in clips:
    s = c["sounding"]
    assert s.shape == (5, moc_synth.NUM_OBJECTS) and (s.sum(1) == 1).all()   # one source a frame
    # Control points: frame 0, then exactly where the source changes.
    want = np.r_[1, (s[1:] != s[:-1]).any(1)].astype(np.int32)
    np.testing.assert_array_equal(c["control_points"], want)
    switching += int(want[1:].any())
    for t in range(5):
      ids = np.unique(c["visible"][t])
      assert set(range(1, moc_synth.NUM_OBJECTS + 1)) <= set(ids.tolist())   # all objects seen
      src = int(np.flatnonzero(s[t])[0]) + 1
      # GT = the source's pixels exactly (objects never overlap); the others are silent.
      np.testing.assert_array_equal(c["masks"][t] > 0, c["visible"][t] == src)
  assert 0.6 <= switching / len(clips) <= 0.9      # MOC_FRACTION = 0.75


def test_gt_rule_and_cosine_method_recover_the_switches():
  """The two control-point methods the demo uses find the script's switches exactly."""
  for c in _clips(30, seed=1):
    np.testing.assert_array_equal(gt_control_points(c["masks"], c["gt_valid"], binary=True),
                                  c["control_points"])
    emb = audio.logmel_stats_embedding(c["audio_logmel"])
    np.testing.assert_array_equal(cosine_control_points(emb, 0.8), c["control_points"])


def test_ambiguous_clips_keep_the_schedule_and_make_some_frames_unreliable():
  """moc_ambiguous: the same one-source schedule and exact control points; unreliable frames are
  never control points and their audio embedding is far from their segment's ordinary frames;
  at least two objects stay visible (a fast one may occlude another); objects move and resize
  (the binary mask rule flags frames that are no switch)."""
  rng = np.random.default_rng(3)
  clips = [moc_synth.make_clip_ambiguous(rng, "ms3", 48, 5, video_id=f"a{i}") for i in range(40)]
  n_bad = false_rule = 0
  for c in clips:
    s = c["sounding"]
    want = np.r_[1, (s[1:] != s[:-1]).any(1)].astype(np.int32)
    np.testing.assert_array_equal(c["control_points"], want)
    assert not (c["unreliable"] & (want == 1)).any()
    n_bad += int(c["unreliable"].sum())
    for t in range(5):
      assert len(set(np.unique(c["visible"][t]).tolist()) - {0}) >= 2   # occlusion may hide one
    rule = gt_control_points(c["masks"], c["gt_valid"], binary=True)
    false_rule += int(((rule == 1) & (want == 0)).sum())
  frac = n_bad / sum(int((c["control_points"][1:] == 0).sum()) for c in clips)
  assert 0.2 <= frac <= 0.5                      # UNRELIABLE_FRACTION = 0.35 of non-switch frames
  assert false_rule > 0                          # fast resizing objects fool the IoU rule
  # Within a segment (same source), an unreliable frame's audio embedding is far from the
  # ordinary frames' while two ordinary frames stay close: that frame's audio alone misleads.
  cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))
  same, odd = [], []
  for c in clips:
    e = audio.logmel_stats_embedding(c["audio_logmel"])
    seg = np.cumsum(c["control_points"])
    for a in range(5):
      for b in range(a + 1, 5):
        if seg[a] == seg[b] and not c["unreliable"][a]:
          (odd if c["unreliable"][b] else same).append(cos(e[a], e[b]))
  assert np.mean(odd) < np.mean(same) - 0.1, (np.mean(odd), np.mean(same))


def test_tracking_clips_follow_one_object():
  rng = np.random.default_rng(4)
  for i in range(10):
    c = moc_synth.make_clip_tracking(rng, "ms3", 48, 5, video_id=f"t{i}")
    src = np.flatnonzero(c["sounding"][0])
    assert len(src) == 1 and (c["sounding"] == c["sounding"][0]).all()
    np.testing.assert_array_equal(c["control_points"], [1, 0, 0, 0, 0])
    for t in range(5):
      np.testing.assert_array_equal(c["masks"][t] > 0, c["visible"][t] == src[0] + 1)
  with pytest.raises(ValueError, match="data.synthetic.generator"):
    moc_synth.clip_fn_of("nope")


def test_true_control_points_are_the_scripts():
  truth = moc_synth.true_control_points("ms3", 10, 32, 5, "moc_ambiguous")
  clips = {c["video_id"]: (s, c) for s, c in moc_synth.clip_stream(
      "ms3", 10, 32, 5, clip_fn=moc_synth.make_clip_ambiguous)}
  assert set(truth) == set(clips)
  for vid, r in truth.items():
    s, c = clips[vid]
    assert r["split"] == s and r["flags"] == c["control_points"].tolist()
    assert r["categories"] == sorted(synthetic.CLASS_NAMES[int(c["object_classes"][o])]
                                     for o in np.flatnonzero(c["sounding"].any(0)))


def test_logmel_stats_embedding_matches_its_definition():
  x = np.random.default_rng(0).normal(size=(3, 96, 64)).astype(np.float32)
  e = audio.logmel_stats_embedding(x)
  assert e.shape == (3, 128) and e.dtype == np.float32
  for t in range(3):
    mean = [sum(float(x[t, k, b]) for k in range(96)) / 96 for b in range(64)]
    lo = min(mean)
    std = [np.sqrt(sum((float(x[t, k, b]) - mean[b]) ** 2 for k in range(96)) / 96) for b in range(64)]
    np.testing.assert_allclose(e[t], np.r_[np.array(mean) - lo, std], rtol=1e-4, atol=1e-5)
  with pytest.raises(audio.AudioError, match=r"expected \[T, 96, 64\]"):
    audio.logmel_stats_embedding(np.zeros((2, 96, 32)))
  with pytest.raises(audio.AudioError, match="logmel_stats"):
    audio.frame_embeddings(x, "vggish")


def test_moc_tree_is_written_read_and_embedded(tmp_path):
  """data.synthetic.generator='moc' writes the MOC tree (same ids/splits as the random one, the
  generator recorded), and data.audio_embed adds the embedding of each frame's log-mel."""
  from configs.parts.data import get_data_config
  from data_pipelines import input_pipeline, prepare
  c = get_data_config()
  c.name, c.image_size = "synthetic_ms3", 16
  c.manual_dir, c.data_dir = str(tmp_path / "src"), str(tmp_path / "tfds")
  c.synthetic.num_videos, c.synthetic.seed, c.synthetic.generator = 5, 2, "moc"
  c.audio_embed = "logmel_stats"
  b = prepare.prepare_dataset(c)
  stamp = json.loads((tmp_path / "src" / ".coprop_synthetic_ms3.json").read_text())
  assert stamp["script"] == "moc" and "moc_synth.py@" in stamp["generator"]
  batch = next(iter(input_pipeline.make_dataset(c, "test", train=False, builder=b)))
  assert batch["audio_embed"].shape == (1, 5, 128)
  np.testing.assert_allclose(batch["audio_embed"][0],
                             audio.logmel_stats_embedding(batch["audio_logmel"][0]), rtol=1e-6)
  # The tree holds the generator's clips (drawn again in memory by clip_stream).
  clips = [cl for s, cl in moc_synth.clip_stream("ms3", 5, 16, 2) if s == "test"]
  np.testing.assert_array_equal(batch["masks"][0] > 0, clips[0]["masks"] > 0)
  c.audio_embed = "vggish"
  with pytest.raises(ValueError, match="data.audio_embed"):
    input_pipeline.make_dataset(c, "test", train=False, builder=b)
  c.synthetic.generator = "nope"
  with pytest.raises(prepare.PrepareError, match="data.synthetic.generator"):
    prepare.prepare_dataset(c)


# ----------------------------------------------------------------------------- config, stages
def test_demo_config_is_strict_and_derives_the_stages(tmp_path):
  from coprop_jax import demo
  from coprop_jax.models.propagator import INSERT_VARIANTS
  c = load_config(DEMO)
  assert c.data.synthetic.generator == "moc_ambiguous" and c.data.audio_embed == "logmel_stats"
  assert load_config(DEMO + ":data=clean").data.synthetic.generator == "moc"
  with pytest.raises(ValueError, match="data must be one of"):
    load_config(DEMO + ":data=noisy")
  # ablate sets stage= and insert= per run on the demo's data
  a = load_config(DEMO + ":stage=propagator,insert=aot")
  assert a.train.stage == "propagator" and a.propagator.audio_insert_levels == ()
  assert a.data.synthetic.generator == "moc_ambiguous" and a.train.lr_schedule == "poly"
  with pytest.raises(ConfigError, match="demo.nope"):
    load_config(DEMO, ["demo.nope=1"])
  with pytest.raises(ConfigError, match="unknown config string key"):
    load_config(DEMO + ":tiny=True")
  smoke = load_config(DEMO + ":smoke=True")
  assert smoke.data.image_size < c.data.image_size and smoke.demo.kpf_steps < c.demo.kpf_steps
  wd = demo.prepare_workdir(str(tmp_path / "wd"))
  r = demo.resolve_config(c, wd)
  assert r.data.manual_dir == str(wd / "data" / "synthetic")
  assert r.train.compilation_cache_dir == str(wd / "xla_cache")
  s = demo.stage_configs(r, wd)
  assert list(s) == ["kpf", "kpf_finetune", "kpf_blind", "propagator_pretrain", "propagator",
                     "propagator_aot"]
  assert [s[k].train.stage for k in s] == ["kpf", "kpf_finetune", "kpf", "propagator",
                                           "propagator", "propagator"]
  # the tracking prior: plain propagator, its own "tracking" data, frame 0 the only reference;
  # both stage-2 runs start from its weights
  pre = s.pop("propagator_pretrain")
  assert pre.data.synthetic.generator == "tracking" and pre.data.control_points_file == ""
  assert pre.data.manual_dir != r.data.manual_dir and pre.train.num_steps == c.demo.pretrain_steps
  assert pre.propagator.audio_insert_levels == ()
  prior = str(wd / "runs" / "propagator_pretrain" / "prior_weights")
  assert s["propagator"].propagator.aot_weights == prior == s["propagator_aot"].propagator.aot_weights
  assert s["kpf"].propagator.aot_weights == ""
  with c.unlocked():
    c.demo.pretrain_steps = 0
  s0 = demo.stage_configs(demo.resolve_config(c, wd), wd)
  assert "propagator_pretrain" not in s0 and s0["propagator"].propagator.aot_weights == ""
  assert s["kpf"].train.num_steps == c.demo.kpf_steps
  assert s["kpf_finetune"].train.init_from == str(wd / "runs" / "kpf" / "checkpoints")
  assert s["kpf_blind"].keyframe.audio_mode == "zero" and s["kpf"].keyframe.audio_mode == "normal"
  assert tuple(s["propagator"].propagator.audio_insert_levels) == (0, 1, 2, 3)
  for k, v in INSERT_VARIANTS["aot"].items():
    assert s["propagator_aot"].propagator[k] == v
  assert all(x.data.control_points_file == str(wd / "control_points" / "gt.jsonl")
             for x in s.values())
  with pytest.raises(demo.DemoError, match="no `demo` section"):
    demo.resolve_config(load_config(str(ROOT / "configs" / "coprop.py")), wd)


def test_workdir_not_written_by_the_demo_is_refused(tmp_path):
  from coprop_jax import demo
  (tmp_path / "foreign").mkdir()
  (tmp_path / "foreign" / "thesis.tex").write_text("x")
  with pytest.raises(demo.DemoError, match="not written by the demo"):
    demo.prepare_workdir(str(tmp_path / "foreign"))
  assert (tmp_path / "foreign" / "thesis.tex").exists()
  wd = demo.prepare_workdir(str(tmp_path / "d"))
  (wd / "runs" / "kpf").mkdir(parents=True)
  (wd / "data").mkdir()
  (wd / "demo_summary.json").write_text("{}")
  demo.prepare_workdir(str(wd))          # a rerun: previous outputs go, the data stay
  assert not (wd / "runs").exists() and not (wd / "demo_summary.json").exists()
  assert (wd / "data").is_dir()
  assert demo.main(["--workdir", str(tmp_path / "foreign")]) == 1
  with pytest.raises(SystemExit):
    demo.main(["--workdir", str(tmp_path / "x"), "--bogus"])


def test_audio_blind_kpf_zeroes_the_host_batches():
  from coprop_jax.train.tasks import get_task
  c = load_config(DEMO, ["keyframe.audio_mode=zero"])
  task = get_task(c)
  b = dict(frames=np.ones((1, 5, 8, 8, 3), np.float32), audio_embed=np.ones((1, 5, 128), np.float32),
           audio_logmel=np.ones((1, 5, 96, 64), np.float32), gt_valid=np.ones((1, 5), bool),
           control_points=np.array([[1, 0, 1, 0, 0]]))
  out = task.prepare_batch(b)
  assert not out["audio_embed"].any() and not out["audio_logmel"].any() and out["frames"].all()
  assert get_task(load_config(DEMO)).prepare_batch(b)["audio_embed"].all()
  with pytest.raises(ValueError, match="keyframe.audio_mode"):
    get_task(load_config(DEMO, ["keyframe.audio_mode=muted"]))


# ----------------------------------------------------------------------------- the whole demo
@pytest.fixture(scope="module")
def smoke_demo(tmp_path_factory):
  """`python -m coprop_jax.demo --config configs/demo.py:smoke=True` once: tiny data and sizes,
  a few steps per stage, every stage of the real command."""
  from coprop_jax import demo
  wd = tmp_path_factory.mktemp("demo")
  assert demo.main(["--workdir", str(wd), "--config", DEMO + ":smoke=True"]) == 0
  return wd


@pytest.mark.slow
def test_smoke_demo_writes_table_pictures_logs_and_model(smoke_demo, capsys):
  from coprop_jax import model_io
  wd = smoke_demo
  s = json.loads((wd / "demo_summary.json").read_text())
  comp = json.loads((wd / "eval" / "comparison.json").read_text())
  assert comp["methods"] == ["coprop", "coprop_gt_cp", "kpf_only", "kpf_blind", "aot", "coprop_aot"]
  for m in comp["methods"]:
    for sub in ("all", "keyframes", "normal", "moc"):
      f = comp["figures"][m][sub]
      assert {"J", "F", "alignment_rate"} <= set(f)
    assert 0.0 <= comp["figures"][m]["all"]["J"] <= 1.0
  table = (wd / "eval" / "comparison.md").read_text()
  assert "| Co-Prop |" in table and "MOC Align." in table and "without audio" in table
  # The audio-blind KPF is scored on zeroed audio, KPF only on every frame: all frames keyframes.
  assert comp["figures"]["kpf_only"]["normal"]["num_frames"] == 0
  assert comp["figures"]["aot"]["keyframes"]["num_videos"] == comp["figures"]["aot"]["all"]["num_videos"]
  assert [t["name"] for t in s["targets"]] == ["Co-Prop J", "Co-Prop Alignment Rate",
                                               "audio-blind KPF J", "plain AOT Alignment Rate"]
  assert 0.0 <= s["control_points"]["vs_gt"]["f1"] <= 1.0
  assert set(s["control_points"]["gt_rule_vs_truth"]) >= {"precision", "recall"}
  assert (wd / "runs" / "propagator_pretrain" / "prior_weights").is_dir()
  for p in s["files"]["pictures"]:
    for k in ("overlay", "timeline", "timeline_aot"):
      assert pathlib.Path(p[k]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  for name, tb in s["files"]["tensorboard"].items():
    assert any(f.name.startswith("events.out.tfevents") for f in pathlib.Path(tb).iterdir()), name
  config, params = model_io.load_model(wd / "model")
  assert config.data.audio_embed == "logmel_stats" and "vggish" not in params["keyframe"]["params"]
  assert set(s["seconds"]) >= {"data", "train_kpf", "train_propagator_aot",
                               "train_propagator_pretrain", "evaluate", "total"}


@pytest.mark.slow
def test_ablations_notebook_runs_on_the_demo_model(smoke_demo):
  import nbformat
  from nbclient import NotebookClient
  path = ROOT / "notebooks" / "ablations.ipynb"
  nb = nbformat.read(path, as_version=4)
  assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells
             if c.cell_type == "code"), "saved with outputs"
  src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  assert "def " in src and "coprop_jax" in src
  old = {k: os.environ.get(k) for k in ("COPROP_MODEL_DIR", "PYTHONPATH")}
  os.environ["COPROP_MODEL_DIR"] = str(smoke_demo / "model")
  os.environ["PYTHONPATH"] = str(ROOT)      # the kernel imports this checkout's library
  try:
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
  assert "insert at level 3 only" in text and "trained without audio" in text
  assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
