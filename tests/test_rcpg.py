"""RCPG: GT control points, cosine baseline, reply parser, evaluation, resume, shard + merge, CLI."""
import json
import os

import numpy as np
import pytest

from configs.parts.rcpg import get_rcpg_config
from coprop_jax import audio as audio_lib
from coprop_jax.rcpg import core, inputs, jsonl, runner
from coprop_jax.rcpg import __main__ as cli


# ---------------------------------------------------------------- GT control points
def _blob(h, w, y0, x0, s):
  m = np.zeros((h, w), np.int32)
  m[y0:y0 + s, x0:x0 + s] = 1
  return m


def test_gt_control_points_id_sets():
  m = np.zeros((6, 16, 16), np.int32)
  m[0, :4, :4] = 1
  m[1, 1:5, 1:5] = 1           # same id, moved: no keyframe
  m[2, 1:5, 1:5] = 1
  m[2, 10:, 10:] = 2           # id 2 appears
  m[3, 10:, 10:] = 2           # id 1 vanished
  m[4, 10:, 10:] = 2
  m[5] = 0                     # silence
  np.testing.assert_array_equal(core.gt_control_points(m), [1, 0, 1, 1, 0, 1])


def test_gt_control_points_binary_iou_and_gt_valid():
  a, b = _blob(32, 32, 2, 2, 10), _blob(32, 32, 18, 18, 10)
  m = np.stack([a, np.roll(a, 1, 1), b, b, np.zeros_like(a), b])
  # Motion (IoU 0.82) is no keyframe; switching to another object (IoU 0) and (dis)appearing are.
  np.testing.assert_array_equal(core.gt_control_points(m, binary=True), [1, 0, 1, 0, 1, 1])
  # Without the binary rule the id set {1} never changes while objects switch.
  np.testing.assert_array_equal(core.gt_control_points(m), [1, 0, 0, 0, 1, 1])
  # Frames without GT are never keyframes and are skipped when comparing.
  gv = np.array([1, 0, 0, 1, 0, 1], bool)
  np.testing.assert_array_equal(core.gt_control_points(m, gv, binary=True), [1, 0, 0, 1, 0, 0])
  with pytest.raises(ValueError, match="gt_valid"):
    core.gt_control_points(m, gv[:3])
  with pytest.raises(ValueError, match=r"\[T, H, W\]"):
    core.gt_control_points(m[0])


def test_build_document_and_retrieval():
  m = np.zeros((4, 8, 8), np.int32)
  m[2:, :2, :2] = 3
  doc = core.build_document([
      {"video_id": "b", "category": "Dog", "masks": m},
      {"video_id": "a", "category": "dog", "masks": m, "frame_valid": np.array([1, 1, 1, 0], bool)},
      {"video_id": "c", "category": "male speech", "masks": m}])
  assert doc[0] == {"video_id": "b", "category": "Dog", "flags": [1, 0, 1, 0]}
  assert doc[1]["flags"] == [1, 0, 1]
  assert [d["video_id"] for d in core.retrieve_examples(doc, "dog", 5)] == ["a", "b"]
  assert [d["video_id"] for d in core.retrieve_examples(doc, "a dog barking", 1)] == ["a"]
  assert [d["video_id"] for d in core.retrieve_examples(doc, "Male  speech.", 3)] == ["c"]
  assert core.retrieve_examples(doc, "violin", 3) == [] and core.retrieve_examples(doc, None, 3) == []


# ---------------------------------------------------------------- cosine baseline
def _tone(freq, seconds):
  t = np.arange(int(seconds * 16000)) / 16000
  return 0.3 * np.sin(2 * np.pi * freq * t)


def test_cosine_baseline_on_source_changes():
  # Source changes at frames 3 (tone -> noise) and 7 (noise -> low tone). AVSBench framing puts
  # patch i at [0.96 i, 0.96 (i + 1)) s, so the changes sit at 2.88 s and 6.72 s.
  rng = np.random.default_rng(0)
  wave = np.concatenate([_tone(2000, 2.88), 0.3 * rng.standard_normal(int(3.84 * 16000)),
                         _tone(300, 3.28)])
  logmel = audio_lib.waveform_to_frame_patches(wave.astype(np.float32), 10)
  emb = inputs.logmel_mean_embedding(logmel)
  flags = core.cosine_control_points(emb, 0.9)
  np.testing.assert_array_equal(flags, [1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
  assert core.cosine_control_points(emb, -1.0).tolist() == [1] + [0] * 9
  assert core.cosine_control_points(emb, 1.01).tolist() == [1] * 10
  with pytest.raises(ValueError, match=r"\[T, D\]"):
    core.cosine_control_points(emb[0], 0.5)


# ---------------------------------------------------------------- reply parser
PARSER_TABLE = [
    ("[1, 0, 0, 1, 0]", [1, 0, 0, 1, 0]),
    ("The keyframes are: [1,0,0,0,1].", [1, 0, 0, 0, 1]),
    ("1 0 1 0 0", [1, 0, 1, 0, 0]),
    ("Answer: 0, 0, 1, 0, 0", [1, 0, 1, 0, 0]),              # frame 0 forced to 1
    ("10010", [1, 0, 0, 1, 0]),
    ("Sure! Here is the list:\n[1, 0, 0, 0, 0]\nFrame 1 is the start.", [1, 0, 0, 0, 0]),
    ("In 5 seconds: [1; 0; 1; 1; 0]", [1, 0, 1, 1, 0]),
    ("Frame 1: keyframe\nFrame 2: not\nFrame 3: keyframe\nFrame 4: no\nFrame 5: no",
     [1, 0, 1, 0, 0]),
    ("Keyframes: 1, 4", [1, 0, 0, 1, 0]),
    ("keyframes are at frames 2 and 5", [1, 1, 0, 0, 1]),
    ("[2, 0, 0, 1, 0] no wait [1, 0, 0, 1, 0]", [1, 0, 0, 1, 0]),
    # malformed
    ("[1, 0, 0]", None),                                     # too short
    ("[1, 0, 0, 1, 0, 0, 1]", None),                         # too long
    ("I cannot determine keyframes from this audio.", None),
    ("Keyframes: 1, 9", None),                               # index out of range
    ("", None),
    ("ÿ\x00\ufffd<|im_end|> 3.14 2 2 2 2 2", None),
]


@pytest.mark.parametrize("reply,expected", PARSER_TABLE)
def test_parse_flags_table(reply, expected):
  got = core.parse_flags(reply, 5)
  if expected is None:
    assert got is None
  else:
    assert got.dtype == np.int32 and got.tolist() == expected


def test_parse_flags_ten_frames_and_bad_types():
  assert core.parse_flags("1 0 0 0 0 1 0 0 0 0", 10).tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0]
  assert core.parse_flags(None, 5) is None
  assert core.parse_flags("[1]", 0) is None


# ---------------------------------------------------------------- evaluation
def test_evaluate():
  gt = {"a": [1, 0, 1, 0], "b": [1, 1, 0, 0]}
  pred = {"a": [1, 0, 1, 1], "b": [1, 1, 0, 0], "extra": [1]}
  r = core.evaluate(pred, gt)
  # frame 0 excluded: tp=2 (a2, b1), fp=1 (a3), fn=0
  assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == 1.0
  assert r["f1"] == pytest.approx(0.8) and r["exact_match"] == 0.5 and r["num_videos"] == 2
  with pytest.raises(ValueError, match="no prediction"):
    core.evaluate({"a": [1, 0, 1, 0]}, gt)
  with pytest.raises(ValueError, match="'a'"):
    core.evaluate({"a": [1, 0], "b": [1, 1, 0, 0]}, gt)


# ---------------------------------------------------------------- runner: resume, shard, merge
@pytest.fixture
def wavdir(tmp_path):
  import soundfile as sf
  d = tmp_path / "wavs"
  d.mkdir()
  rng = np.random.default_rng(0)
  for i in range(7):
    sf.write(d / f"vid{i:02d}.wav", (0.2 * rng.standard_normal(16000 * 4 + 300)), 16000)
  return d


def _cfg():
  c = get_rcpg_config()
  c.embedding = "logmel_mean"
  return c


def test_resume_after_torn_line(wavdir, tmp_path):
  out = tmp_path / "cp.jsonl"
  cfg = _cfg()
  full = runner.run(cfg, "cosine", str(out), data_dir=str(wavdir), layout="wavdir", split="",
                    progress=False)
  assert full == {"total": 7, "skipped": 0, "written": 7, "fallbacks": 0}
  ref = out.read_text()
  # Simulate an interruption: 3 complete lines, then half of the 4th.
  lines = ref.splitlines(keepends=True)
  out.write_text("".join(lines[:3]) + lines[3][:20])
  stats = runner.run(cfg, "cosine", str(out), data_dir=str(wavdir), layout="wavdir", split="",
                     progress=False)
  assert stats == {"total": 7, "skipped": 3, "written": 4, "fallbacks": 0}
  assert out.read_text() == ref
  recs, _ = jsonl.read_records(out)
  assert [r["video_id"] for r in recs] == [f"vid{i:02d}" for i in range(7)]
  assert all(r["num_frames"] == 4 and len(r["flags"]) == 4 and r["flags"][0] == 1 for r in recs)
  # Rerun of a finished file writes nothing; a different method into the same file is refused.
  assert runner.run(cfg, "cosine", str(out), data_dir=str(wavdir), layout="wavdir", split="",
                    progress=False)["written"] == 0
  with pytest.raises(jsonl.RecordsError, match="method"):
    runner.run(cfg, "1step", str(out), data_dir=str(wavdir), layout="wavdir", split="",
               progress=False)
  # A corrupt line that is not the last one is an error, never silently dropped.
  out.write_text(lines[0] + "{oops\n" + lines[2])
  with pytest.raises(jsonl.RecordsError, match="line 2"):
    jsonl.open_resumable(out)


def test_shard_and_merge(wavdir, tmp_path):
  cfg = _cfg()
  shards = []
  for i in range(3):
    p = tmp_path / f"shard{i}.jsonl"
    runner.run(cfg, "cosine", str(p), data_dir=str(wavdir), layout="wavdir", split="",
               shard_index=i, num_shards=3, progress=False)
    shards.append(p)
  sizes = [len(jsonl.read_records(p)[0]) for p in shards]
  assert sizes == [3, 2, 2]
  ids = [f"vid{i:02d}" for i in range(7)]
  merged = jsonl.merge(shards, tmp_path / "all.jsonl", ids)
  assert [r["video_id"] for r in merged] == ids
  single = tmp_path / "single.jsonl"
  runner.run(cfg, "cosine", str(single), data_dir=str(wavdir), layout="wavdir", split="",
             progress=False)
  assert ({r["video_id"]: r["flags"] for r in jsonl.read_records(single)[0]}
          == {r["video_id"]: r["flags"] for r in merged})
  with pytest.raises(jsonl.RecordsError, match="missing"):
    jsonl.merge(shards[:2], tmp_path / "x.jsonl", ids)
  with pytest.raises(jsonl.RecordsError, match="duplicate.*vid00"):
    jsonl.merge([shards[0], shards[0], shards[1], shards[2]], tmp_path / "x.jsonl", ids)
  assert not (tmp_path / "x.jsonl").exists()
  with pytest.raises(ValueError, match="shard_index"):
    inputs.shard([], 3, 3)


def test_cli_gt_cosine_merge_evaluate_on_avsbench_tree(tmp_path, capsys):
  synthetic = pytest.importorskip("data_pipelines.synthetic")
  root = tmp_path / "avss"
  synthetic.write_dataset(root, "avss", num_videos=6, size=32, seed=1)
  base = ["--config", "configs/rcpg.py:layout=avss", "--data", str(root), "--split", "train",
          "--no_progress", "--config.rcpg.embedding=logmel_mean"]
  gt = tmp_path / "gt.jsonl"
  assert cli.main(base + ["--method", "gt", "--out", str(gt)]) == 0
  recs, _ = jsonl.read_records(gt)
  assert recs and all(r["method"] == "gt" and r["flags"][0] == 1 and r["category"] for r in recs)
  for i in range(2):
    assert cli.main(base + ["--method", "cosine", "--out", str(tmp_path / f"c{i}.jsonl"),
                            "--shard_index", str(i), "--num_shards", "2"]) == 0
  capsys.readouterr()
  assert cli.main(["merge", "--out", str(tmp_path / "c.jsonl"), str(tmp_path / "c0.jsonl"),
                   str(tmp_path / "c1.jsonl"), "--config", "configs/rcpg.py:layout=avss",
                   "--data", str(root), "--split", "train"]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["merged"] == len(recs)
  assert cli.main(["evaluate", "--pred", str(tmp_path / "c.jsonl"), "--gt", str(gt)]) == 0
  res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(res) == {"precision", "recall", "f1", "exact_match", "num_videos"}
  assert res["num_videos"] == len(recs)
  # GT vs itself is perfect.
  assert runner.evaluate_files(str(gt), str(gt))["exact_match"] == 1.0


def test_bad_inputs(tmp_path, wavdir):
  cfg = _cfg()
  with pytest.raises(ValueError, match="needs GT masks"):
    runner.run(cfg, "gt", str(tmp_path / "o.jsonl"), data_dir=str(wavdir), layout="wavdir",
               split="", progress=False)
  with pytest.raises(FileNotFoundError, match="no \\*.wav"):
    inputs.list_sources(str(tmp_path / "wavs2" if (tmp_path / "wavs2").mkdir() is None else ""),
                        "wavdir")
  cfg.fallback = "random"
  with pytest.raises(ValueError, match="fallback"):
    runner.run(cfg, "cosine", str(tmp_path / "o.jsonl"), data_dir=str(wavdir), layout="wavdir",
               split="", progress=False)
  cfg.fallback, cfg.document_file = "first_frame", ""
  with pytest.raises(ValueError, match="document_file"):
    runner.load_document(cfg, str(wavdir), "wavdir")
  cfg.embedding = "vggish"
  try:
    import coprop_jax.models.vggish  # noqa: F401
    match = "vggish_params"
  except ImportError:
    match = "branch cnn"
  with pytest.raises((ValueError, ImportError), match=match):
    inputs.make_embed_fn(cfg)
