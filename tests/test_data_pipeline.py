"""TFDS builders -> ArrayRecord -> grain batches, sharding, resume, augmentation, control points."""
import json

import numpy as np
import pytest

from configs.parts.data import get_data_config
from data_pipelines import input_pipeline as ip
from data_pipelines import synthetic
from data_pipelines.avsbench import builders as B
from data_pipelines.avsbench import readers as R

T = {"s4": 5, "ms3": 5, "avss": 10}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = {}
  for layout in ("s4", "ms3", "avss"):
    root = tmp_path_factory.mktemp(layout)
    synthetic.write_dataset(root / "src", layout, num_videos=8, size=24, seed=4)
    b = B.build(layout, root / "src", root / "tfds", synthetic=True)
    out[layout] = (root, b)
  return out


def _cfg(layout, root, bs=2, size=32):
  c = get_data_config()
  c.name, c.data_dir, c.image_size, c.batch_size, c.eval_batch_size = (
      f"synthetic_{layout}", str(root / "tfds"), size, bs, 1)
  return c


def test_no_tensorflow():
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401


@pytest.mark.parametrize("layout", ["s4", "ms3", "avss"])
def test_batches_shapes_dtypes_flags(built, layout):
  root, b = built[layout]
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 6, "val": 1, "test": 1}
  t = T[layout]
  batch = next(ip.make_iterator(_cfg(layout, root), "train", True))
  assert batch["frames"].shape == (2, t, 32, 32, 3) and batch["frames"].dtype == np.float32
  assert batch["masks"].shape == (2, t, 32, 32) and batch["masks"].dtype == np.int32
  assert batch["audio_logmel"].shape == (2, t, 96, 64) and batch["audio_logmel"].dtype == np.float32
  assert batch["gt_valid"].dtype == bool and batch["frame_valid"].dtype == bool
  assert (batch["control_points"][:, 0] == 1).all()
  assert batch["video_id"].shape == (2,)
  if layout == "s4":
    np.testing.assert_array_equal(batch["gt_valid"], np.tile(np.arange(5) == 0, (2, 1)))
  # Eval: all GT for s4/ms3; AVSS v1 clips padded with frame_valid False.
  for ex in ip.make_dataset(_cfg(layout, root), "val", False):
    if layout == "avss":
      n = ex["frame_valid"][0].sum()
      assert n in (5, 10) and (ex["gt_valid"][0] == ex["frame_valid"][0]).all()
      assert (ex["frames"][0, n:] == 0).all()
    else:
      assert ex["gt_valid"].all() and ex["frame_valid"].all()


def test_values_match_reader(built):
  root, _ = built["ms3"]
  c = _cfg("ms3", root, size=24)
  ds = ip.make_dataset(c, "val", False, normalize=False)
  recs = {r.video_id: r for r in R.list_videos(root / "src", "ms3", "val")}
  for ex in ds:
    d = R.read_video(recs[ex["video_id"][0]])
    np.testing.assert_array_equal(ex["frames"][0], d["frames"])
    np.testing.assert_array_equal(ex["masks"][0], d["masks"])
    np.testing.assert_allclose(ex["audio_logmel"][0], d["audio_logmel"])


def test_augmentation_keeps_frames_and_masks_aligned():
  rng = np.random.default_rng(0)
  clip = synthetic.make_clip(rng, "ms3", 48, 5)
  # Paint the mask into the frames' red channel so alignment is checkable after augmentation.
  fr = clip["frames"].copy()
  fr[..., 0] = np.where(clip["masks"] > 0, 255, 0)
  fr[..., 1:] = 0
  for seed in range(5):
    f2, m2 = ip.augment_clip(fr, clip["masks"], np.random.default_rng(seed), color_jitter=0.0)
    assert f2.shape == fr.shape and m2.shape == clip["masks"].shape
    assert set(np.unique(m2)) <= set(np.unique(clip["masks"]))  # nearest: no new labels
    agree = ((f2[..., 0] > 127) == (m2 > 0)).mean()
    assert agree > 0.97, agree


def test_two_host_sharding_disjoint_and_covering(built):
  import grain
  root, _ = built["ms3"]
  c = _cfg("ms3", root, bs=1)
  seen = []
  for host in range(2):
    so = grain.sharding.ShardOptions(shard_index=host, shard_count=2, drop_remainder=False)
    seen.append([ex["video_id"][0] for ex in ip.make_dataset(c, "train", False, shard_options=so)])
  assert not set(seen[0]) & set(seen[1])
  all_ids = {ex["video_id"][0] for ex in ip.make_dataset(c, "train", False)}
  assert set(seen[0]) | set(seen[1]) == all_ids and len(all_ids) == 6


def test_iterator_state_restore(built):
  root, _ = built["s4"]
  c = _cfg("s4", root)
  it = ip.make_iterator(c, "train", True)
  for _ in range(3):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  it2 = ip.make_iterator(c, "train", True)
  it2.set_state(state)
  for a, b in zip(want, [next(it2) for _ in range(3)]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_control_points_and_skip_bad(tmp_path):
  synthetic.write_dataset(tmp_path / "src", "ms3", num_videos=5, size=16, seed=1)
  vids = [r.video_id for s in R.SPLITS for r in R.list_videos(tmp_path / "src", "ms3", s)]
  cp = tmp_path / "cp.jsonl"
  cp.write_text("\n".join(json.dumps({"video_id": v, "flags": [1, 0, 1, 0, 0]}) for v in vids[1:]))
  with pytest.raises(R.DataError, match=f"no line for video '{vids[0]}'"):
    B.build("ms3", tmp_path / "src", tmp_path / "t1", synthetic=True, control_points_file=str(cp))
  assert not list((tmp_path / "t1").rglob("*.array_record*"))
  b = B.build("ms3", tmp_path / "src", tmp_path / "t2", synthetic=True, control_points_file=str(cp),
              control_points_fallback="first_frame")
  c = get_data_config()
  c.name, c.data_dir, c.image_size = "synthetic_ms3", str(tmp_path / "t2"), 16
  got = {ex["video_id"][0]: ex["control_points"][0].tolist()
         for s in R.SPLITS for ex in ip.make_dataset(c, s, False, builder=b)}
  assert got[vids[0]] == [1, 0, 0, 0, 0] and got[vids[1]] == [1, 0, 1, 0, 0]
  # data.control_points_file is joined at read time: a new file takes effect on an existing build.
  cp2 = tmp_path / "cp2.jsonl"
  cp2.write_text("\n".join(json.dumps({"video_id": v, "flags": [1, 1, 0, 0, 1]}) for v in vids[:-1]))
  c.control_points_file, c.control_points_fallback = str(cp2), "first_frame"
  got = {ex["video_id"][0]: ex["control_points"][0].tolist()
         for s in R.SPLITS for ex in ip.make_dataset(c, s, False, builder=b)}
  assert got[vids[0]] == [1, 1, 0, 0, 1] and got[vids[-1]] == [1, 0, 0, 0, 0]
  c.control_points_fallback = "error"
  with pytest.raises(R.DataError, match=f"no line for video '{vids[-1]}'"):
    [ex for s in R.SPLITS for ex in ip.make_dataset(c, s, False, builder=b)]
  # A broken WAV: the build fails naming it; with skip_bad the video is skipped and reported.
  rec = R.list_videos(tmp_path / "src", "ms3", "train")[0]
  R.wav_path(rec).write_bytes(b"nope")
  with pytest.raises(R.DataError, match="audio file .*wav"):
    B.build("ms3", tmp_path / "src", tmp_path / "t3", synthetic=True)
  b = B.build("ms3", tmp_path / "src", tmp_path / "t4", synthetic=True, skip_bad=True)
  assert [v for v, _ in b.skipped] == [rec.video_id] and "audio file" in b.skipped[0][1]
  assert b.info.splits["train"].num_examples == len(R.list_videos(tmp_path / "src", "ms3", "train")) - 1


def test_to_global_array(built):
  import jax
  root, _ = built["ms3"]
  batch = next(ip.make_iterator(_cfg("ms3", root), "train", True))
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  g = ip.to_global_array(batch, mesh, "data")
  assert g["frames"].shape == batch["frames"].shape
  assert g["frames"].sharding.spec[0] == "data"
  np.testing.assert_array_equal(np.asarray(g["masks"]), batch["masks"])
  assert g["video_id"] is batch["video_id"]


# ---------------------------------------------------------------- issue 13: data cases
def test_empty_split_after_skip_bad_builds_the_rest(tmp_path):
  synthetic.write_dataset(tmp_path / "src", "s4", num_videos=5, size=16, seed=1)
  val = R.list_videos(tmp_path / "src", "s4", "val")
  assert len(val) == 1
  R.wav_path(val[0]).write_bytes(b"not a wav")
  meta = tmp_path / "src" / "Single-source" / "s4_meta_data.csv"
  meta.write_text(meta.read_text() + "vidQ,0,no_such_category,train\n")
  with pytest.raises(R.DataError, match="unknown category 'no_such_category'"):
    B.build("s4", tmp_path / "src", tmp_path / "t0", synthetic=True)
  b = B.build("s4", tmp_path / "src", tmp_path / "t1", synthetic=True, skip_bad=True)
  assert b.empty_splits == ["val"]
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {"train": 3, "test": 1}
  assert sorted(v for v, _ in b.skipped) == sorted([val[0].video_id, "vidQ"])
  c = _cfg("s4", tmp_path / "x")
  c.data_dir = str(tmp_path / "t1")
  with pytest.raises(R.DataError, match="split 'val' was not built.*'test', 'train'"):
    ip.make_dataset(c, "val", False, builder=b)
  assert len(list(ip.make_dataset(c, "test", False, builder=b))) == 1


def test_gt_fallback_is_the_rcpg_rule(tmp_path):
  """One GT control-point rule: a moving object is no keyframe (array_equal of consecutive masks
  made every such frame one), a switch to another object is."""
  from coprop_jax.rcpg import core
  m = np.zeros((5, 16, 16), np.int32)
  for t in range(3):
    m[t, 2 + t:8 + t, 2:8] = 1          # the same object moving
  m[3:, 10:15, 10:15] = 1               # another object
  cp_file = tmp_path / "cp.jsonl"
  cp_file.write_text("")
  cp = B.ControlPoints(str(cp_file), "gt", binary=True)
  clip = dict(masks=m, gt_valid=np.ones(5, bool))
  assert cp.get("v", 5, clip).tolist() == [1, 0, 0, 1, 0]
  assert cp.get("v", 5, clip).tolist() == core.gt_control_points(m, binary=True).tolist()
  # On a built dataset: the fallback equals RCPG's gt method on the clip's own GT masks.
  synthetic.write_dataset(tmp_path / "src", "ms3", num_videos=4, size=16, seed=5)
  b = B.build("ms3", tmp_path / "src", tmp_path / "t", synthetic=True,
              control_points_file=str(cp_file), control_points_fallback="gt")
  c = get_data_config()
  c.name, c.data_dir, c.image_size = "synthetic_ms3", str(tmp_path / "t"), 16
  for s in R.SPLITS:
    recs = {r.video_id: r for r in R.list_videos(tmp_path / "src", "ms3", s)}
    for ex in ip.make_dataset(c, s, False, builder=b):
      d = R.read_video(recs[ex["video_id"][0]])
      assert ex["control_points"][0].tolist() == core.gt_control_points(
          d["masks"], d["gt_valid"], binary=True).tolist()
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"video_id": "a", "flags": [1, 2, 0]}\n')
  with pytest.raises(R.DataError, match=f"{bad}: line 1 \\(video 'a'\\): flags must be 0/1"):
    B.ControlPoints(str(bad), binary=True)
