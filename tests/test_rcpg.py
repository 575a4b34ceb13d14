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
  fc = [["dog"], ["dog"], ["dog", "man"], ["dog", "man"]]
  doc, counts = core.build_document([
      {"video_id": "b", "masks": m, "frame_categories": fc},
      {"video_id": "a", "masks": m, "frame_categories": fc, "frame_valid": np.array([1, 1, 1, 0], bool)},
      {"video_id": "c", "masks": m, "categories": ["male speech"]},
      # S4 train: one annotated frame carries no control-point information -> left out
      {"video_id": "s4", "masks": m, "categories": ["dog"], "gt_valid": np.array([1, 0, 0, 0], bool)},
      {"video_id": "nocat", "masks": m, "frame_categories": [[], [], None, []]}])
  assert counts == {"videos": 5, "entries": 3, "few_gt_frames": 1, "no_categories": 1}
  assert doc[0] == {"video_id": "b", "categories": ["dog", "man"], "flags": [1, 0, 1, 0],
                    "frame_categories": fc}
  assert doc[1]["flags"] == [1, 0, 1] and doc[2]["categories"] == ["male speech"]
  assert [d["video_id"] for d in core.retrieve_examples(doc, "dog", 5)] == ["a", "b"]
  # Same-length examples first: a 4-frame query prefers b (4 flags) over a (3 flags).
  assert [d["video_id"] for d in core.retrieve_examples(doc, "dog", 1, num_frames=4)] == ["b"]
  # A training video never retrieves itself.
  assert [d["video_id"] for d in core.retrieve_examples(doc, "dog", 5, exclude_id="a")] == ["b"]
  assert [d["video_id"] for d in core.retrieve_examples(doc, "a dog barking", 1)] == ["a"]
  assert [d["video_id"] for d in core.retrieve_examples(doc, "Man", 3)] == ["a", "b"]
  assert [d["video_id"] for d in core.retrieve_examples(doc, "Male  speech.", 3)] == ["c"]
  # Whole words only: "manual" does not contain the category "man".
  assert core.retrieve_examples(doc, "manual labour", 3) == []
  assert core.retrieve_examples(doc, "violin", 3) == [] and core.retrieve_examples(doc, None, 3) == []
  assert core.check_document(doc, "x") == doc
  with pytest.raises(ValueError, match="document D1: empty"):
    core.check_document([], "D1")
  with pytest.raises(ValueError, match="D2: no entry has a category"):
    core.check_document([{"video_id": "v", "categories": [], "flags": [1, 0]}], "D2")
  with pytest.raises(ValueError, match="D3: entry 'v' needs 'flags'.*0/1"):
    core.check_document([{"video_id": "v", "categories": ["dog"], "flags": [1, 2]}], "D3")


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
  # The cosine score is precision/recall of its flags against the gt file's, counted here from
  # the definition (frame 0 left out: it is always a control point).
  truth = {r["video_id"]: r["flags"] for r in recs}
  pred = {r["video_id"]: r["flags"] for r in jsonl.read_records(tmp_path / "c.jsonl")[0]}
  tp = sum(p == g == 1 for v in truth for p, g in zip(pred[v][1:], truth[v][1:]))
  fp = sum(p == 1 and g == 0 for v in truth for p, g in zip(pred[v][1:], truth[v][1:]))
  fn = sum(p == 0 and g == 1 for v in truth for p, g in zip(pred[v][1:], truth[v][1:]))
  assert res["precision"] == (tp / (tp + fp) if tp + fp else 1.0)
  assert res["recall"] == (tp / (tp + fn) if tp + fn else 1.0)
  assert res["exact_match"] == sum(pred[v] == truth[v] for v in truth) / len(truth)


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


# ---------------------------------------------------------------- issue 13: RCPG cases
import subprocess  # noqa: E402
import sys  # noqa: E402

from data_pipelines import synthetic  # noqa: E402


def _cli(*args, timeout=120):
  env = dict(os.environ, PYTHONPATH=os.getcwd(), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "coprop_jax.rcpg", *args], capture_output=True,
                        text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
  d = tmp_path_factory.mktemp("rcpg_trees")
  synthetic.write_dataset(d / "avss", "avss", num_videos=9, size=16, seed=3)
  synthetic.write_dataset(d / "ms3", "ms3", num_videos=5, size=16, seed=3)
  return d


def test_document_from_avss_tree_has_categories_per_frame(trees):
  """D from an AVSS train split: the class names in each video's GT (regenerated in memory from
  the generator, independent of the readers) and the GT control points; v1s train videos (one GT
  frame) are left out."""
  cfg = _cfg()
  cfg.document_avss_dir = str(trees / "avss")
  doc, where = runner.load_document(cfg, str(trees / "ms3"), "ms3")
  assert where == str(trees / "avss")
  rng = np.random.default_rng(3)
  splits = synthetic._splits(9)
  want = {}
  for i in range(9):
    label = ("v1s", "v1m", "v2")[i % 3]
    clip = synthetic.make_clip(rng, "avss", 16, 10 if label == "v2" else 5)
    if splits[i] == "train" and label != "v1s":
      cats = {synthetic.CLASS_NAMES[v - 1] for v in np.unique(clip["masks"]) if v > 0}
      want[f"synavss_{i:05d}"] = (sorted(cats), core.gt_control_points(clip["masks"]).tolist())
  assert {d["video_id"]: (d["categories"], d["flags"]) for d in doc} == want
  assert all(set(d["categories"]) <= set(synthetic.CLASS_NAMES) for d in doc)


def test_document_errors_are_loud(trees, tmp_path):
  cfg = _cfg()
  # MS3 alone has no categories: an error, never a silent 3step.
  with pytest.raises(ValueError, match="layout 'ms3'.*rcpg.document_file.*rcpg.document_avss_dir"):
    runner.load_document(cfg, str(trees / "ms3"), "ms3")
  # Old-style lines ("category" only) or lines without any category.
  old = tmp_path / "old.jsonl"
  old.write_text(json.dumps({"video_id": "v", "category": "v1m", "flags": [1, 0, 1]}) + "\n")
  cfg.document_file = str(old)
  with pytest.raises(jsonl.RecordsError, match=f"{old}.*'v'.*'categories'"):
    runner.load_document(cfg, "", "ms3")
  empty = tmp_path / "nocats.jsonl"
  empty.write_text(json.dumps({"video_id": "v", "categories": [], "flags": [1, 0, 1]}) + "\n")
  cfg.document_file = str(empty)
  with pytest.raises(ValueError, match=f"{empty}: no entry has a category"):
    runner.load_document(cfg, "", "ms3")
  # `--method gt` on an AVSS train split writes a usable document (categories, num_gt_frames).
  gt = tmp_path / "gt_train.jsonl"
  runner.run(_cfg(), "gt", str(gt), data_dir=str(trees / "avss"), layout="avss", split="train",
             progress=False)
  cfg.document_file = str(gt)
  doc, _ = runner.load_document(cfg, "", "ms3")
  cfg2 = _cfg()
  cfg2.document_avss_dir = str(trees / "avss")
  assert doc == [{k: d[k] for k in ("video_id", "categories", "flags")}
                 for d in runner.load_document(cfg2, "", "ms3")[0]]


def test_prompt_carries_paper_sentence_and_one_step_has_same_content():
  from coprop_jax.rcpg import qwen
  t = qwen.load_templates()
  paper = ("The audio frames are evenly divided into ten frames, keyframes are marked as 1, and "
           "non-key frames are marked as 0. Please output the categories of these ten frames in "
           "order from the first frame to the tenth frame in the format of a list.")
  assert paper in t["list"].format(**qwen.prompt_fields(10))
  assert ("evenly divided into five frames" in t["list"].format(**qwen.prompt_fields(5))
          and "to the fifth frame" in t["list"].format(**qwen.prompt_fields(5)))
  assert qwen.number_words(21) == ("twenty-one", "twenty-first")
  assert qwen.number_words(12) == ("twelve", "twelfth") and qwen.number_words(100) == ("100", "100th")
  three = [t[k].format(**qwen.prompt_fields(5)) for k in ("describe", "category", "list")]
  assert qwen.one_step_text(t, 5) == " ".join(three)


def test_prompt_templates_file_errors(tmp_path):
  from coprop_jax.rcpg import qwen
  t = qwen.load_templates()
  p = tmp_path / "p.json"
  p.write_text(json.dumps(dict(t, one_step="old key")))
  with pytest.raises(ValueError, match=f"{p}.*unknown keys \\['one_step'\\]"):
    qwen.load_templates(str(p))
  p.write_text(json.dumps(dict(t, list="{N} frames")))
  with pytest.raises(ValueError, match="'list' uses an unknown placeholder"):
    qwen.load_templates(str(p))


def test_device_defaults_to_available_and_errors_name_the_field():
  from coprop_jax.rcpg import qwen
  torch = pytest.importorskip("torch")
  assert get_rcpg_config().device == "auto"
  assert qwen.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
  assert qwen.resolve_device("cpu") == "cpu"
  with pytest.raises(ValueError, match="rcpg.device='gpu0'"):
    qwen.resolve_device("gpu0")
  if not torch.cuda.is_available():
    with pytest.raises(ValueError, match="rcpg.device='cuda'.*no CUDA device"):
      qwen.resolve_device("cuda")


def test_cli_device_error_leaves_no_output(wavdir, tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "sub" / "cp.jsonl"
  r = _cli("--config", "configs/rcpg.py:layout=ms3", "--layout", "wavdir", "--data", str(wavdir),
           "--method", "1step", "--out", str(out), "--no_progress",
           "--config.rcpg.device=cuda:7", timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "rcpg.device='cuda:7'" in r.stderr
  assert not out.exists() and not out.parent.exists()


def test_out_holding_another_split_or_shard_is_refused(trees, tmp_path):
  out = tmp_path / "gt.jsonl"
  kw = dict(data_dir=str(trees / "avss"), layout="avss", progress=False)
  runner.run(_cfg(), "gt", str(out), split="train", **kw)
  before = out.read_bytes()
  with pytest.raises(jsonl.RecordsError, match=f"{out}.*split 'train'.*split 'test'"):
    runner.run(_cfg(), "gt", str(out), split="test", **kw)
  with pytest.raises(jsonl.RecordsError, match=r"shard \[0, 1\].*shard \[1, 2\]"):
    runner.run(_cfg(), "gt", str(out), split="train", shard_index=1, num_shards=2, **kw)
  assert out.read_bytes() == before
  recs, _ = jsonl.read_records(out)
  assert {r["split"] for r in recs} == {"train"} and {r["layout"] for r in recs} == {"avss"}


def test_merge_without_config_uses_shard_fields(wavdir, tmp_path):
  cfg = _cfg()
  shards = []
  for i in range(3):
    p = tmp_path / f"s{i}.jsonl"
    runner.run(cfg, "cosine", str(p), data_dir=str(wavdir), layout="wavdir", split="",
               shard_index=i, num_shards=3, progress=False)
    shards.append(str(p))
  assert [r["video_id"] for r in jsonl.merge(shards, tmp_path / "all.jsonl")] == [
      f"vid{i:02d}" for i in range(7)]
  out = tmp_path / "m.jsonl"
  r = _cli("merge", "--out", str(out), shards[0], shards[2])
  assert r.returncode == 2 and "shard 1 of 3: 0 of 2 videos" in r.stderr, r.stderr
  assert not out.exists()
  # An unfinished shard (a line lost) is caught the same way.
  lines = pathlib_read_lines(shards[1])
  (tmp_path / "s1_short.jsonl").write_text(lines[0])
  with pytest.raises(jsonl.RecordsError, match="shard 1 of 3: 1 of 2 videos"):
    jsonl.merge([shards[0], str(tmp_path / "s1_short.jsonl"), shards[2]], out)
  r = _cli("merge", "--out", str(out), *shards)
  assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["checked_shards"] is True


def pathlib_read_lines(p):
  with open(p) as f:
    return f.readlines()


def test_evaluate_rejects_flags_other_than_0_1(tmp_path):
  gt = tmp_path / "gt.jsonl"
  pred = tmp_path / "pred.jsonl"
  gt.write_text(json.dumps({"video_id": "a", "flags": [1, 0, 1]}) + "\n")
  pred.write_text(json.dumps({"video_id": "a", "flags": [1, 2, 2]}) + "\n")
  r = _cli("evaluate", "--pred", str(pred), "--gt", str(gt))
  assert r.returncode == 2 and f"{pred}: video 'a' has flags [1, 2, 2]" in r.stderr, r.stderr
  pred.write_text(json.dumps({"video_id": "a", "flags": [1, 0, 1]}) + "\n"
                  + json.dumps({"video_id": "a", "flags": [1, 0, 0]}) + "\n")
  with pytest.raises(jsonl.RecordsError, match="'a' appears twice"):
    runner.evaluate_files(str(pred), str(gt))
  with pytest.raises(ValueError, match="gt: video 'a' has flags \\[1, True"):
    core.evaluate({"a": [1, 0]}, {"a": [1, True]})


@pytest.mark.slow   # ~6 s on an idle 2-core CPU (a 72M-parameter network saved, restored, run)
def test_cosine_default_vggish_path(tmp_path):
  """embedding='vggish' (the default) end to end: params restored from an Orbax dir, embeddings of
  each frame's log-mel patch, cosine flags. Reference: torchvggish's front end, the Flax VGGish
  applied to it (its parity with torchvggish is tests/test_vggish.py), and a loop of cosines."""
  import jax
  import jax.numpy as jnp
  import soundfile as sf
  torchvggish_input = pytest.importorskip("torchvggish.vggish_input")
  from coprop_jax.convert import checkpoint_io
  from coprop_jax.models import vggish
  shapes = jax.eval_shape(vggish.VGGish().init, jax.random.PRNGKey(0), jnp.zeros((1, 96, 64)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: ((rng.random(s.shape, np.float32) - np.float32(0.5))
                                   * np.float32(np.sqrt(24.0 / max(1, np.prod(s.shape[:-1]))))),
                        shapes["params"])
  checkpoint_io.save_params(params, tmp_path / "vggish")
  assert get_rcpg_config().embedding == "vggish"
  cfg = get_rcpg_config()
  cfg.vggish_params, cfg.cosine_threshold = str(tmp_path / "vggish"), 0.9
  wav = tmp_path / "wavs"
  wav.mkdir()
  t = np.arange(16000) / 16000
  wave = np.concatenate([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 440 * t),
                         0.3 * rng.standard_normal(16000)]).astype(np.float32)
  sf.write(wav / "clip.wav", wave, 16000, subtype="FLOAT")
  out = tmp_path / "cos.jsonl"
  runner.run(cfg, "cosine", str(out), data_dir=str(wav), layout="wavdir", split="", progress=False)
  flags = jsonl.read_records(out)[0][0]["flags"]
  patches = torchvggish_input.waveform_to_examples(wave, 16000, return_tensor=False)[:3]
  emb = np.asarray(vggish.VGGish().apply({"params": params}, jnp.asarray(patches)), np.float64)
  cos = [np.dot(emb[i], emb[i - 1]) / (np.linalg.norm(emb[i]) * np.linalg.norm(emb[i - 1]))
         for i in (1, 2)]
  assert cos[0] > 0.9 > cos[1]          # same tone, then noise: the reference has one change
  assert flags == [1] + [int(c < 0.9) for c in cos] == [1, 0, 1]
