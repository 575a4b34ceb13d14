"""data_pipelines.prepare: one entry point that never silently reuses a stale tree or build."""
import logging
import os
import pathlib

import numpy as np
import pytest
import soundfile as sf

from configs.parts.data import get_data_config
from data_pipelines import prepare, synthetic
from data_pipelines.avsbench import readers as R


def _cfg(tmp, name="synthetic_ms3", n=5, size=16):
  c = get_data_config()
  c.name, c.num_frames, c.image_size = name, 5, size
  c.manual_dir, c.data_dir = str(tmp / "src"), str(tmp / "tfds")
  c.synthetic.num_videos, c.synthetic.seed = n, 1
  return c


def _arrays(b):
  return {p.name: p.stat().st_mtime_ns for p in pathlib.Path(b.data_path).glob("*array_record*")}


def _counts(b):
  return {k: v.num_examples for k, v in b.info.splits.items()}


def test_synthetic_tree_and_build_follow_the_settings(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="data_pipelines.prepare")
  c = _cfg(tmp_path)
  b = prepare.prepare_dataset(c)
  assert b.prepare_action == "built" and _counts(b) == {"train": 3, "val": 1, "test": 1}
  files = _arrays(b)
  b2 = prepare.prepare_dataset(c)
  assert b2.prepare_action == "reused" and _arrays(b2) == files
  assert "reusing synthetic ms3 tree" in caplog.text
  # Another video count: the tree is regenerated and the build rebuilt, saying why.
  caplog.clear()
  c.synthetic.num_videos = 7
  b3 = prepare.prepare_dataset(c)
  assert b3.prepare_action == "rebuilt" and _counts(b3) == {"train": 5, "val": 1, "test": 1}
  assert "num_videos: 5 -> 7" in caplog.text and "rebuilding TFDS build" in caplog.text
  assert len(R.list_videos(c.manual_dir, "ms3", "train")) == 5
  # Another image size: regenerated; the frames really are the new size.
  c.image_size = 24
  b4 = prepare.prepare_dataset(c)
  assert b4.prepare_action == "rebuilt"
  rec = R.list_videos(c.manual_dir, "ms3", "val")[0]
  assert R.read_video(rec)["frames"].shape[1:3] == (24, 24)
  # Only a builder option changes: the tree is reused, the build redone.
  caplog.clear()
  c.skip_bad = True
  assert prepare.prepare_dataset(c).prepare_action == "rebuilt"
  assert "reusing synthetic ms3 tree" in caplog.text and "options.skip_bad: False -> True" in caplog.text


def test_foreign_tree_and_bad_fields_are_refused(tmp_path):
  synthetic.write_dataset(tmp_path / "src", "ms3", num_videos=3, size=16, seed=0)
  c = _cfg(tmp_path)
  with pytest.raises(prepare.PrepareError, match=f"{tmp_path / 'src'}: holds an AVSBench ms3 tree.*"
                                                  "did not write"):
    prepare.prepare_dataset(c)
  assert (tmp_path / "src" / "Multi-sources").is_dir() and not (tmp_path / "tfds").exists()
  c.num_frames = 10
  with pytest.raises(prepare.PrepareError, match="data.num_frames=10"):
    prepare.prepare_dataset(c)
  c.num_frames, c.name = 5, "synthetic_xyz"
  with pytest.raises(prepare.PrepareError, match="data.name"):
    prepare.prepare_dataset(c)


def test_real_build_refused_when_the_download_changed(tmp_path):
  # A "real" download (the avsbench_ builder's default config) made of synthetic files.
  synthetic.write_dataset(tmp_path / "src", "ms3", num_videos=4, size=16, seed=2)
  c = _cfg(tmp_path, name="avsbench_ms3")
  b = prepare.prepare_dataset(c)
  assert b.prepare_action == "built" and b.builder_config.name == "default"
  files = _arrays(b)
  stamp = next((tmp_path / "tfds" / prepare.STAMP_DIR).glob("*.json"))
  stamp_text = stamp.read_text()
  # A WAV replaced by a shorter one: refused, naming what changed; nothing deleted.
  rec = R.list_videos(c.manual_dir, "ms3", "train")[0]
  wav = R.wav_path(rec)
  sf.write(wav, np.zeros(16000 * 4, np.float32), 16000)
  with pytest.raises(prepare.PrepareError, match="changed under: Multi-sources/ms3_data.*delete"):
    prepare.prepare_dataset(c)
  assert _arrays(prepare._make_builder("ms3", False, c.data_dir, {})) == files
  assert stamp.read_text() == stamp_text
  # A deliberate rebuild: delete the build, as the message says.
  import shutil
  shutil.rmtree(b.data_path)
  b = prepare.prepare_dataset(c)
  assert b.prepare_action == "built"
  # Same names and sizes, another mtime (a copy or a touch): refused, saying it is only that.
  os.utime(wav, ns=(10**18, 10**18))
  with pytest.raises(prepare.PrepareError, match="same names and sizes, other modification times"):
    prepare.prepare_dataset(c)
  # A builder option only (source unchanged since the last build): derived data, rebuilt.
  shutil.rmtree(b.data_path)
  (tmp_path / "tfds" / prepare.STAMP_DIR).joinpath(stamp.name).unlink()
  assert prepare.prepare_dataset(c).prepare_action == "built"
  c.short_audio_tolerance_s = 0.5
  assert prepare.prepare_dataset(c).prepare_action == "rebuilt"
