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


# ---------------------------------------------------------------- issue 13: data cases
import logging  # noqa: E402

import soundfile as sf  # noqa: E402


def test_short_wav_quiet_within_tolerance_warned_past_it(trees, caplog):
  rec = _one(trees, "ms3")
  p = R.wav_path(rec)
  data = p.read_bytes()
  wave, _ = sf.read(p, dtype="float32")
  try:
    sf.write(p, wave[:5 * 16000 - 480], 16000, subtype="PCM_16")     # 0.03 s short: AVSBench-like
    caplog.clear()
    warn = []
    with caplog.at_level(logging.WARNING):
      clip = R.read_video(rec, warnings=warn)
    assert warn == [] and "audio file" not in caplog.text
    assert clip["waveform"].shape == (5 * 16000,) and (clip["waveform"][-480:] == 0).all()
    np.testing.assert_allclose(clip["waveform"][:-480], wave[:5 * 16000 - 480], atol=1 / 32768)
    sf.write(p, wave[:int(3.5 * 16000)], 16000, subtype="PCM_16")     # 1.5 s short
    with caplog.at_level(logging.WARNING):
      R.read_video(rec, warnings=warn)
    assert len(warn) == 1 and str(p) in warn[0] and "56000 samples (3.500 s)" in warn[0]
    assert "need 80000 (5.000 s)" in warn[0] and str(p) in caplog.text
    # The threshold is a setting: 2 s of tolerance makes it quiet again.
    R.read_video(rec, short_audio_tolerance_s=2.0, warnings=warn)
    assert len(warn) == 1
    # Cut inside the data with the header intact: the warning says the file is truncated.
    sf.write(p, wave, 16000, subtype="PCM_16")
    full = p.read_bytes()
    p.write_bytes(full[:len(full) // 2])
    R.read_video(rec, warnings=warn)
    assert len(warn) == 2 and "header declares 80000 samples, so the file is truncated" in warn[1]
  finally:
    p.write_bytes(data)


def test_unknown_s4_category_names_the_csv_row(trees):
  meta = trees["s4"] / "Single-source" / "s4_meta_data.csv"
  text = meta.read_text()
  n_rows = len(text.strip().splitlines())
  try:
    meta.write_text(text + "vidZ,0,spaceship,val\n")
    with pytest.raises(R.DataError, match=f"{meta}: row {n_rows + 1}: video 'vidZ' has unknown "
                                          "category 'spaceship' \\(no folder .*visual_frames/val/spaceship"):
      R.list_videos(trees["s4"], "s4", "val")
    bad = []
    recs = R.list_videos(trees["s4"], "s4", "val", bad_rows=bad)
    assert [v for v, _ in bad] == ["vidZ"] and "row" in bad[0][1]
    assert "vidZ" not in [r.video_id for r in recs] and recs
  finally:
    meta.write_text(text)
