"""AVSBench readers over synthetic trees: round trip and every bad-input error."""
import pathlib

import numpy as np
import pytest
from PIL import Image

from data_pipelines import synthetic
from data_pipelines.avsbench import readers as R


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
  out = {}
  for layout in ("s4", "ms3", "avss"):
    d = tmp_path_factory.mktemp(layout)
    synthetic.write_dataset(d, layout, num_videos=5, size=24, seed=2)
    out[layout] = d
  return out


@pytest.mark.parametrize("layout", ["s4", "ms3", "avss"])
def test_round_trip_matches_generator(trees, layout):
  # Re-generate the same clips in memory (same rng stream as write_dataset).
  rng = np.random.default_rng(2)
  splits = synthetic._splits(5)
  clips = []
  for i in range(5):
    t = (10 if i % 3 == 2 else 5) if layout == "avss" else 5
    clips.append(synthetic.make_clip(rng, layout, 24, t))
  for split in ("train", "val", "test"):
    for rec in R.list_videos(trees[layout], layout, split):
      i = int(rec.video_id.split("_")[-1])
      assert splits[i] == split
      d = R.read_video(rec, num_classes=len(synthetic.AVSS_LABEL2IDX))
      c = clips[i]
      t = c["frames"].shape[0]
      gv = d["gt_valid"][:t]
      np.testing.assert_array_equal(d["masks"][:t][gv], c["masks"][gv])
      if layout != "avss":  # PNG frames are lossless
        np.testing.assert_array_equal(d["frames"], c["frames"])
      np.testing.assert_allclose(d["audio_logmel"][:t], c["audio_logmel"], atol=0.05)
      if layout == "avss":
        assert d["frames"].shape[0] == 10
        np.testing.assert_array_equal(d["frame_valid"], np.arange(10) < t)
        if split == "train" and rec.category == "v1s":
          np.testing.assert_array_equal(gv, np.arange(t) == 0)
      if layout == "s4" and split == "train":
        np.testing.assert_array_equal(d["gt_valid"], np.arange(5) == 0)


def _one(trees, layout, split="val"):
  return R.list_videos(trees[layout], layout, split)[0]


def test_missing_frame(trees, tmp_path):
  rec = _one(trees, "ms3")
  p = R.frame_paths(rec)[2]
  data = p.read_bytes()
  p.unlink()
  try:
    with pytest.raises(R.DataError, match="frame folder .*4 frames, expected 5"):
      R.read_video(rec)
  finally:
    p.write_bytes(data)


def test_unreadable_frame_mask_wav(trees):
  rec = _one(trees, "s4")
  for p, what in [(R.frame_paths(rec)[1], "frame"), (R.mask_paths(rec)[1], "mask"),
                  (R.wav_path(rec), "audio file")]:
    data = p.read_bytes()
    p.write_bytes(b"garbage")
    try:
      with pytest.raises(R.DataError, match=f"{what} .*{p.name}"):
        R.read_video(rec)
    finally:
      p.write_bytes(data)


def test_missing_mask_and_wav(trees):
  rec = _one(trees, "ms3")
  for p, pat in [(R.mask_paths(rec)[3], "mask .*does not exist"), (R.wav_path(rec), "does not exist")]:
    data = p.read_bytes()
    p.unlink()
    try:
      with pytest.raises(R.DataError, match=pat):
        R.read_video(rec)
    finally:
      p.write_bytes(data)


def test_mask_wrong_size_and_mode(trees):
  rec = _one(trees, "ms3")
  p = R.mask_paths(rec)[0]
  data = p.read_bytes()
  try:
    Image.new("P", (10, 10)).save(p)
    with pytest.raises(R.DataError, match="mask .*size 10x10, expected 24x24"):
      R.read_video(rec)
    Image.new("RGB", (24, 24)).save(p)
    with pytest.raises(R.DataError, match="mask .*mode 'RGB'"):
      R.read_video(rec)
  finally:
    p.write_bytes(data)


def test_malformed_csv_and_unknown_category(trees, tmp_path):
  meta = trees["s4"] / "Single-source" / "s4_meta_data.csv"
  text = meta.read_text()
  try:
    meta.write_text(text + "onlyonecolumn\n")
    with pytest.raises(R.DataError, match="s4_meta_data.csv: row 7 has 1 columns"):
      R.list_videos(trees["s4"], "s4", "train")
    meta.write_text(text + "vidX,0,spaceship,train\n")
    with pytest.raises(R.DataError, match="unknown category 'spaceship'"):
      R.list_videos(trees["s4"], "s4", "train", categories=synthetic.CLASS_NAMES)
    meta.write_text(text + "vidX,0,dog,training\n")
    with pytest.raises(R.DataError, match="split 'training'"):
      R.list_videos(trees["s4"], "s4", "train")
  finally:
    meta.write_text(text)
  meta = trees["avss"] / "metadata.csv"
  text = meta.read_text()
  try:
    meta.write_text(text + "vidY,v3,train\n")
    with pytest.raises(R.DataError, match="unknown label 'v3'"):
      R.list_videos(trees["avss"], "avss", "train")
  finally:
    meta.write_text(text)
