"""TFDS builders `avsbench_s4`, `avsbench_ms3`, `avsbench_avss` writing ArrayRecord (no TensorFlow).

Configs: `default` (the real AVSBench manual download) and `synthetic` (a tree written by
`python -m data_pipelines.synthetic`); both read the same layout through `readers`.

  builder = AvsbenchMs3(config="synthetic", data_dir=..., file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...))

Features are plain tensors (uint8 frames [T,H,W,3], int32 masks [T,H,W], bool flags, float32
audio) so encoding needs only numpy. Options, set with `configure(...)` before preparing:
  control_points_file: RCPG JSONL ({"video_id":..., "flags":[...]} per line) -> `control_points`;
  control_points_fallback: "error" | "first_frame" | "gt" for ids missing from that file ("gt":
    `coprop_jax.rcpg.core.gt_control_points`, the rule RCPG's `gt` method uses);
  skip_bad: skip videos that fail to read (or CSV rows naming an unknown S4 category) instead of
    failing; each is reported in `builder.skipped` and logged. A split left without any video is
    reported in `builder.empty_splits` and not built; the other splits are;
  short_audio_tolerance_s: WAVs short by more than this are zero-padded with a warning (collected
    in `builder.audio_warnings`); shorter shortfalls are padded quietly.
"""
from __future__ import annotations

import json
import logging
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from coprop_jax.rcpg.core import BINARY_IOU_THRESHOLD, gt_control_points
from data_pipelines.avsbench import readers as R

log = logging.getLogger(__name__)

_INSTRUCTIONS = """\
Download AVSBench (https://github.com/OpenNLPLab/AVSBench; request access on the project page)
and unpack it so that `manual_dir` holds {what}. For the `synthetic` config, point manual_dir at
the output of `python -m data_pipelines.synthetic --out DIR --layout {layout}`.
"""


class ControlPoints:
  """RCPG control points joined by video id.

  binary: the masks are S4/MS3 0/1 masks (the GT rule then also looks at the foreground IoU);
  iou_threshold: that rule's threshold (see `coprop_jax.rcpg.core.gt_control_points`).
  """

  def __init__(self, path: str, fallback: str = "error", *, binary: bool,
               iou_threshold: float = BINARY_IOU_THRESHOLD):
    if fallback not in ("error", "first_frame", "gt"):
      raise ValueError(f"control_points_fallback must be error/first_frame/gt, got {fallback!r}")
    self.path, self.fallback, self.table = path, fallback, {}
    self.binary, self.iou_threshold = binary, iou_threshold
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
      if any(f not in (0, 1) for f in flags):
        raise R.DataError(f"control points file {p}: line {n} (video {vid!r}): flags must be 0/1, "
                          f"got {flags}")
      if vid in self.table:
        raise R.DataError(f"control points file {p}: line {n} repeats video {vid!r}")
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
    else:  # "gt": the one GT control-point rule (RCPG's `gt` method uses the same function)
      f = gt_control_points(np.asarray(clip["masks"])[:t], np.asarray(clip["gt_valid"])[:t],
                            binary=self.binary, iou_threshold=self.iou_threshold)
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
               skip_bad: bool = False, short_audio_tolerance_s: float = R.SHORT_AUDIO_TOLERANCE_S,
               **kwargs):
    self._cp_file, self._cp_fallback, self._skip_bad = (control_points_file,
                                                         control_points_fallback, skip_bad)
    self._short_audio = float(short_audio_tolerance_s)
    self.skipped: list[tuple[str, str]] = []
    self.empty_splits: list[str] = []
    self.audio_warnings: list[str] = []
    super().__init__(*args, **kwargs)

  def options(self) -> dict:
    """The builder options that change what is built (recorded by data_pipelines.prepare)."""
    return dict(control_points_file=self._cp_file, control_points_fallback=self._cp_fallback,
                skip_bad=self._skip_bad, short_audio_tolerance_s=self._short_audio)

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
    cp = (ControlPoints(self._cp_file, self._cp_fallback, binary=self.LAYOUT != "avss")
          if self._cp_file else None)
    cats = self.CATEGORIES if self.builder_config.name == "default" else None
    nc = self._num_classes(manual)
    out = {}
    for split in R.SPLITS:
      bad_rows = [] if self._skip_bad else None
      recs = R.list_videos(manual, self.LAYOUT, split, categories=cats, bad_rows=bad_rows)
      for vid, msg in bad_rows or []:
        self._skip(vid, msg)
      # Read up to the first good clip now, so that a split left empty (every video skipped) is
      # known before TFDS sees it: it is reported and left out; the other splits are built.
      first = None
      for i, rec in enumerate(recs):
        clip = self._read(rec, nc)
        if clip is not None:
          first = (i, rec, clip)
          break
      if first is None:
        self.empty_splits.append(split)
        log.warning("%s/%s: split %r left empty (%d videos listed, all skipped); building the "
                    "other splits", self.name, self.builder_config.name, split, len(recs))
        continue
      out[split] = self._generate_examples(recs[first[0] + 1:], first, nc, cp)
    if not out:
      raise R.DataError(f"{self.name}/{self.builder_config.name} in {manual}: no split has a "
                        f"readable video ({len(self.skipped)} skipped, e.g. {self.skipped[:2]})")
    return out

  def _num_classes(self, manual):
    if self.LAYOUT != "avss":
      return None
    return len(R.load_label2idx(R.layout_root(manual, "avss")))

  def _skip(self, vid, msg):
    self.skipped.append((vid, msg))
    log.warning("skip_bad: skipping video %s: %s", vid, msg)

  def _read(self, rec, nc):
    try:
      return R.read_video(rec, num_classes=nc, short_audio_tolerance_s=self._short_audio,
                          warnings=self.audio_warnings)
    except R.DataError as e:
      if not self._skip_bad:
        raise
      self._skip(rec.video_id, str(e))
      return None

  def _generate_examples(self, recs, first, nc, cp):
    def finish(rec, clip):
      t = clip["frames"].shape[0]
      if cp is not None:
        clip["control_points"] = cp.get(rec.video_id, t, clip)
        clip["has_control_points"] = True
      else:
        clip["control_points"] = (np.arange(t) == 0).astype(np.int32)
        clip["has_control_points"] = False
      return rec.video_id, clip

    yield finish(first[1], first[2])
    for rec in recs:
      clip = self._read(rec, nc)
      if clip is not None:
        yield finish(rec, clip)


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
  """Prepares the ArrayRecord files (reused when TFDS finds them: use data_pipelines.prepare to
  check they were built from the same source and options); returns the builder (its `skipped`,
  `empty_splits` and `audio_warnings` report the build)."""
  b = BUILDERS[layout](config="synthetic" if synthetic else "default", data_dir=str(data_dir),
                       file_format="array_record", **options)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return b
