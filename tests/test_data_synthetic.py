"""Synthetic AVSBench-layout data: paths, determinism, audio alignment, audio dependence."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from data_pipelines import synthetic


def test_make_clip_shapes_and_determinism():
  a = synthetic.make_clip(np.random.default_rng(3), "ms3", 32, 5)
  b = synthetic.make_clip(np.random.default_rng(3), "ms3", 32, 5)
  assert a["frames"].shape == (5, 32, 32, 3) and a["frames"].dtype == np.uint8
  assert a["masks"].shape == (5, 32, 32) and a["masks"].dtype == np.int32
  assert a["waveform"].shape == (5 * 16000,) and a["audio_logmel"].shape == (5, 96, 64)
  assert a["control_points"][0] == 1
  for k in ("frames", "masks", "waveform", "control_points"):
    np.testing.assert_array_equal(a[k], b[k])


def test_task_needs_audio():
  """The union of visible objects differs clearly from the sounding GT (silent distractors)."""
  rng = np.random.default_rng(0)
  ious = []
  for _ in range(10):
    c = synthetic.make_clip(rng, "ms3", 48, 5)
    assert (~c["sounding"]).any(axis=1).all()  # >= 1 silent object each frame
    vis, gt = c["visible"] > 0, c["masks"] > 0
    assert not (gt & ~vis).any()
    ious.append((gt & vis).sum() / max(1, (gt | vis).sum()))
  assert np.mean(ious) < 0.75


def test_audio_lines_up_with_frames():
  """The log-mel patch of frame t carries energy at the tone of the class sounding at t."""
  from coprop_jax import audio
  mel = audio.mel_matrix()  # [257, 64]
  freqs = np.linspace(0, 8000, 257)
  rng = np.random.default_rng(1)
  on, off = [], []
  for _ in range(20):
    c = synthetic.make_clip(rng, "s4", 32, 5)
    for t in range(5):
      for o, cls in enumerate(c["object_classes"]):
        name, _, _, kind, (lo, _) = synthetic.CLASSES[cls]
        if kind != "tone":
          continue
        band = int(np.argmax(mel[np.argmin(np.abs(freqs - lo))]))
        level = c["audio_logmel"][t, 10:86, band].mean()
        if c["sounding"][t, o]:
          on.append(level)
        elif not c["sounding"][max(t - 1, 0), o]:
          off.append(level)
  assert len(on) > 5 and len(off) > 5
  assert np.mean(on) > np.mean(off) + 2.0, (np.mean(on), np.mean(off))
  assert np.mean(np.array(on)[:, None] > np.array(off)[None, :]) > 0.9


@pytest.mark.parametrize("layout", ["s4", "ms3", "avss"])
def test_layout_matches_avsbench_paths(tmp_path, layout):
  synthetic.write_dataset(tmp_path, layout, num_videos=5, size=24, seed=0)
  if layout == "s4":
    root = tmp_path / "Single-source"
    rows = list(csv.reader(open(root / "s4_meta_data.csv")))
    assert "split" in rows[0]
    for r in rows[1:]:
      name, cat, split = r[0], r[2], r[rows[0].index("split")]
      assert cat in synthetic.CLASS_NAMES
      for i in range(1, 6):
        assert (root / f"s4_data/visual_frames/{split}/{cat}/{name}/{name}_{i}.png").exists()
        m = root / f"s4_data/gt_masks/{split}/{cat}/{name}/{name}_{i}.png"
        assert m.exists() == (split != "train" or i == 1)
      assert (root / f"s4_data/audio_wav/{split}/{cat}/{name}.wav").exists()
  elif layout == "ms3":
    root = tmp_path / "Multi-sources"
    rows = list(csv.reader(open(root / "ms3_meta_data.csv")))
    for r in rows[1:]:
      name, split = r[0], r[rows[0].index("split")]
      for i in range(1, 6):
        assert (root / f"ms3_data/visual_frames/{name}/{name}.mp4_{i}.png").exists()
        m = Image.open(root / f"ms3_data/gt_masks/{split}/{name}/{name}_{i}.png")
        assert m.mode == "P"
      assert (root / f"ms3_data/audio_wav/{split}/{name}.wav").exists()
  else:
    rows = list(csv.DictReader(open(tmp_path / "metadata.csv")))
    l2i = json.load(open(tmp_path / "label2idx.json"))
    assert l2i["background"] == 0
    cmap = synthetic.voc_colormap()
    for r in rows:
      d = tmp_path / r["label"] / r["uid"]
      t = 10 if r["label"] == "v2" else 5
      assert len(list((d / "frames").glob("*.jpg"))) == t
      n_masks = len(list((d / "labels_rgb").glob("*.png")))
      assert n_masks == (1 if (r["split"] == "train" and r["label"] == "v1s") else t)
      m = np.asarray(Image.open(d / "labels_rgb/0.png").convert("RGB")).reshape(-1, 3)
      known = {tuple(cmap[i]) for i in range(len(l2i))}
      assert {tuple(p) for p in np.unique(m, axis=0)} <= known
      assert (d / "audio.wav").exists()


def test_write_is_deterministic_and_refuses_overwrite(tmp_path):
  synthetic.write_dataset(tmp_path / "a", "ms3", 4, 24, seed=5)
  synthetic.write_dataset(tmp_path / "b", "ms3", 4, 24, seed=5)
  fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
  fb = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
  assert fa == fb
  for p in fa:
    assert (tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes()
  with pytest.raises(FileExistsError):
    synthetic.write_dataset(tmp_path / "a", "ms3", 4, 24, seed=5)
