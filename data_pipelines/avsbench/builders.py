"""TFDS builders `avsbench_s4`, `avsbench_ms3`, `avsbench_avss` writing ArrayRecord (no TensorFlow).

Configs: `default` (the real AVSBench manual download) and `synthetic` (a tree written by
`python -m data_pipelines.synthetic`); both read the same layout through `readers`.

  builder = AvsbenchMs3(config="synthetic", data_dir=..., file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...))

Features are plain tensors (uint8 frames [T,H,W,3], int32 masks [T,H,W], bool flags, float32
audio) so encoding needs only numpy. Options, set with `configure(...)` before preparing:
  control_points_file: RCPG JSONL ({"video_id":..., "flags":[...]} per line) -> `control_points`;
  control_points_fallback: "error" | "first_frame" | "gt" for ids missing from that file;
  skip_bad: skip (and report in `builder.skipped`) videos that fail to read instead of failing.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.avsbench import readers as R

_INSTRUCTIONS = """\
Download AVSBench (https://github.com/OpenNLPLab/AVSBench; request access on the project page)
and unpack it so that `manual_dir` holds {what}. For the `synthetic` config, point manual_dir at
the output of `python -m data_pipelines.synthetic --out DIR --layout {layout}`.
"""


class ControlPoints:
  """RCPG control points joined by video id."""

  def __init__(self, path: str, fallback: str = "error"):
    if fallback not in ("error", "first_frame", "gt"):
      raise ValueError(f"control_points_fallback must be error/first_frame/gt, got {fallback!r}")
    self.path, self.fallback, self.table = path, fallback, {}
    p = pathlib.Path(path)
    if not p.exists():
      raise R.DataError(f"control points file {p}: does not exist")
    for n, line in enumerate(p.read_text().splitlines(), start=1):
      if not line.strip():
        continue
      try:
        d = json.loads(line)
        vid, flags = str(d["video_id"]), [int(x) for x in d["flags"]]
      except Exception as e:
        raise R.DataError(f"control points file {p}: line {n} is not "
                          f'{{"video_id": ..., "flags": [...]}} ({e})') from e
      self.table[vid] = flags

  def get(self, video_id: str, t: int, clip: dict) -> np.ndarray:
    if video_id in self.table:
      f = np.zeros(t, np.int32)
      src = np.asarray(self.table[video_id], np.int32)[:t]
      f[:len(src)] = src
    elif self.fallback == "error":
      raise R.DataError(f"control points file {self.path}: no line for video {video_id!r}")
    elif self.fallback == "first_frame":
      f = np.zeros(t, np.int32)
    else:  # "gt": a control point wherever the GT mask changes between consecutive GT frames
      f = np.zeros(t, np.int32)
      m, gv = clip["masks"], clip["gt_valid"]
      for i in range(1, t):
        if gv[i] and gv[i - 1] and not np.array_equal(m[i], m[i - 1]):
          f[i] = 1
    f[0] = 1
    return f


class _AvsbenchBase(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="default", description="AVSBench manual download"),
      tfds.core.BuilderConfig(name="synthetic", description="synthetic tree (data_pipelines.synthetic)"),
  ]
  LAYOUT = ""
  NUM_FRAMES = 5
  CATEGORIES = None  # s4: allowed category names for the real data (None = any)

  def __init__(self, *args, control_points_file: str = "", control_points_fallback: str = "error",
               skip_bad: bool = False, **kwargs):
    self._cp_file, self._cp_fallback, self._skip_bad = (control_points_file,
                                                         control_points_fallback, skip_bad)
    self.skipped: list[tuple[str, str]] = []
    super().__init__(*args, **kwargs)

  def _info(self):
    t = self.NUM_FRAMES
    feats = {
        "frames": tfds.features.Tensor(shape=(t, None, None, 3), dtype=np.uint8, encoding="zlib"),
        "masks": tfds.features.Tensor(shape=(t, None, None), dtype=np.int32, encoding="zlib"),
        "gt_valid": tfds.features.Tensor(shape=(t,), dtype=np.bool_),
        "frame_valid": tfds.features.Tensor(shape=(t,), dtype=np.bool_),
        "waveform": tfds.features.Tensor(shape=(t * 16000,), dtype=np.float32),
        "audio_logmel": tfds.features.Tensor(shape=(t, 96, 64), dtype=np.float32),
        "control_points": tfds.features.Tensor(shape=(t,), dtype=np.int32),
        "has_control_points": tfds.features.Tensor(shape=(), dtype=np.bool_),
        "category": tfds.features.Text(),
        "video_id": tfds.features.Text(),
    }
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(feats),
                                          supervised_keys=None,
                                          homepage="https://github.com/OpenNLPLab/AVSBench")

  def _split_generators(self, dl_manager):
    manual = dl_manager.manual_dir
    cp = ControlPoints(self._cp_file, self._cp_fallback) if self._cp_file else None
    cats = self.CATEGORIES if self.builder_config.name == "default" else None
    return {split: self._generate_examples(manual, split, cp, cats) for split in R.SPLITS}

  def _num_classes(self, manual):
    if self.LAYOUT != "avss":
      return None
    return len(R.load_label2idx(R.layout_root(manual, "avss")))

  def _generate_examples(self, manual, split, cp, cats):
    nc = self._num_classes(manual)
    for rec in R.list_videos(manual, self.LAYOUT, split, categories=cats):
      try:
        clip = R.read_video(rec, num_classes=nc)
      except R.DataError as e:
        if not self._skip_bad:
          raise
        self.skipped.append((rec.video_id, str(e)))
        print(f"skip_bad: skipping video {rec.video_id}: {e}")
        continue
      t = clip["frames"].shape[0]
      if cp is not None:
        clip["control_points"] = cp.get(rec.video_id, t, clip)
        clip["has_control_points"] = True
      else:
        clip["control_points"] = (np.arange(t) == 0).astype(np.int32)
        clip["has_control_points"] = False
      yield rec.video_id, clip


class AvsbenchS4(_AvsbenchBase):
  """AVSBench single-source (S4): 5 frames, binary masks; train has only the first mask."""
  LAYOUT, NUM_FRAMES = "s4", 5
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(what="Single-source/s4_meta_data.csv", layout="s4")


class AvsbenchMs3(_AvsbenchBase):
  """AVSBench multi-source (MS3): 5 frames, binary masks on every frame."""
  LAYOUT, NUM_FRAMES = "ms3", 5
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(what="Multi-sources/ms3_meta_data.csv", layout="ms3")


class AvsbenchAvss(_AvsbenchBase):
  """AVSBench semantic (AVSS): 10 frames (v1 clips padded, frame_valid False), class masks."""
  LAYOUT, NUM_FRAMES = "avss", 10
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS.format(what="metadata.csv and label2idx.json", layout="avss")


BUILDERS = {"s4": AvsbenchS4, "ms3": AvsbenchMs3, "avss": AvsbenchAvss}


def build(layout: str, manual_dir, data_dir, synthetic: bool = False, **options):
  """Prepares the ArrayRecord files; returns the builder (its `skipped` lists skipped videos)."""
  b = BUILDERS[layout](config="synthetic" if synthetic else "default", data_dir=str(data_dir),
                       file_format="array_record", **options)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return b
