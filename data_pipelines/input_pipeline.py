"""grain input pipelines over the TFDS ArrayRecord files of the avsbench_* builders.

  it = make_iterator(config.data, split="train", train=True)   # checkpointable grain iterator
  batch = next(it)              # host batch dict (DESIGN.md vocabulary), see `Preprocess`
  state = it.get_state(); ...; it.set_state(state)             # resume exactly
  global_batch = to_global_array(batch, mesh, "data")          # jax.Array sharded over `data`

Pipeline: ArrayRecordDataSource (TFDS files) -> per-host shard (ShardByJaxProcess or explicit
ShardOptions) -> deterministic shuffle (seeded, re-shuffled every epoch) -> decode -> clip-consistent
augmentation (train only) -> resize to image_size -> ImageNet normalisation -> batch.
"""
from __future__ import annotations

import os

import grain
import numpy as np
from PIL import Image

from coprop_jax import audio as audio_lib
from coprop_jax import images
from data_pipelines.avsbench import builders as B
from data_pipelines.avsbench import readers as R

# ImageNet statistics on the 0..255 scale (host-side numpy normalisation of uint8 frames).
IMAGENET_MEAN = images.IMAGENET_MEAN * 255
IMAGENET_STD = images.IMAGENET_STD * 255
HOST_KEYS = ("video_id", "category")


def dataset_builder(name: str, data_dir: str):
  """`avsbench_ms3` -> AvsbenchMs3(config='default'); `synthetic_ms3` -> config 'synthetic'."""
  kind, _, layout = name.partition("_")
  if kind not in ("avsbench", "synthetic") or layout not in B.BUILDERS:
    raise ValueError(f"dataset name must be avsbench_/synthetic_ + s4/ms3/avss, got {name!r}")
  return B.BUILDERS[layout](config="default" if kind == "avsbench" else "synthetic",
                            data_dir=os.path.expanduser(data_dir), file_format="array_record")


def _resize(a: np.ndarray, size: int, nearest: bool) -> np.ndarray:
  """[T,H,W,(3)] -> [T,size,size,(3)], bilinear for frames, nearest for masks."""
  if a.shape[1] == size and a.shape[2] == size:
    return a
  res = Image.NEAREST if nearest else Image.BILINEAR
  if nearest:
    return np.stack([np.asarray(Image.fromarray(x.astype(np.int32), mode="I").resize((size, size), res))
                     for x in a]).astype(a.dtype)
  return np.stack([np.asarray(Image.fromarray(x).resize((size, size), res)) for x in a])


def augment_clip(frames: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                 scale=(0.5, 1.0), flip_prob=0.5, color_jitter=0.2):
  """Same random resized crop / flip / colour jitter for every frame and mask of a clip.

  frames uint8 [T,H,W,3], masks int [T,H,W] -> same shapes and dtypes (crop resized back to H,W;
  masks nearest-neighbour so labels stay labels).
  """
  t, h, w = masks.shape
  area = rng.uniform(*scale) * h * w
  ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
  ch = int(round(min(h, np.sqrt(area / ratio))))
  cw = int(round(min(w, np.sqrt(area * ratio))))
  y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
  fr = frames[:, y0:y0 + ch, x0:x0 + cw]
  ms = masks[:, y0:y0 + ch, x0:x0 + cw]
  fr = np.stack([np.asarray(Image.fromarray(x).resize((w, h), Image.BILINEAR)) for x in fr])
  ms = np.stack([np.asarray(Image.fromarray(x.astype(np.int32), mode="I").resize((w, h), Image.NEAREST))
                 for x in ms]).astype(masks.dtype)
  if rng.random() < flip_prob:
    fr, ms = fr[:, :, ::-1], ms[:, :, ::-1]
  if color_jitter > 0:
    b, c, s = 1 + rng.uniform(-color_jitter, color_jitter, 3)
    x = fr.astype(np.float32) * b
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = (x - mean) * c + mean
    gray = x.mean(axis=-1, keepdims=True)
    x = (x - gray) * s + gray
    fr = np.clip(x, 0, 255).astype(np.uint8)
  return np.ascontiguousarray(fr), np.ascontiguousarray(ms)


class Preprocess:
  """Decodes one ArrayRecord record and (train) augments it; picklable for grain workers.

  Output (unbatched): frames float32 [T,S,S,3] ImageNet-normalised (uint8 when normalize=False),
  masks int32 [T,S,S], gt_valid/frame_valid bool [T], audio_logmel float32 [T,96,64],
  (with `audio_embed`, see configs/parts/data.py) audio_embed float32 [T,128],
  control_points int32 [T], video_id str.
  """

  def __init__(self, features, image_size: int, train: bool, augment=None, normalize=True,
               control_points=None, audio_embed: str = ""):
    self.features, self.size, self.train, self.normalize = features, image_size, train, normalize
    # data.audio_embed: "" or a coprop_jax.audio.AUDIO_EMBEDDINGS name (adds audio_embed [T,128]).
    if audio_embed and audio_embed not in audio_lib.AUDIO_EMBEDDINGS:
      raise ValueError(f"data.audio_embed: expected '' or one of {audio_lib.AUDIO_EMBEDDINGS}, "
                       f"got {audio_embed!r}")
    self.audio_embed = audio_embed
    # builders.ControlPoints joined at read time (by video id), overriding the built dataset's.
    self.control_points = control_points
    a = augment or {}
    self.aug = dict(enabled=a.get("enabled", True), scale=tuple(a.get("random_resized_crop_scale", (0.5, 1.0))),
                    flip_prob=a.get("flip_prob", 0.5), color_jitter=a.get("color_jitter", 0.2))

  def __call__(self, record: bytes, rng: np.random.Generator | None = None) -> dict:
    ex = self.features.deserialize_example_np(record)
    frames, masks = ex["frames"], ex["masks"].astype(np.int32)
    if self.train and self.aug["enabled"] and rng is not None:
      frames, masks = augment_clip(frames, masks, rng, self.aug["scale"], self.aug["flip_prob"],
                                   self.aug["color_jitter"])
    frames = _resize(frames, self.size, nearest=False)
    masks = _resize(masks, self.size, nearest=True)
    if self.normalize:
      frames = (frames.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
      frames[~ex["frame_valid"].astype(bool)] = 0.0  # padding frames stay exactly zero
    vid = ex["video_id"]
    vid = vid.decode() if isinstance(vid, bytes) else str(vid)
    cp = ex["control_points"]
    if self.control_points is not None:  # from the clip's own (un-augmented) GT masks if needed
      cp = self.control_points.get(vid, len(cp), dict(masks=ex["masks"], gt_valid=ex["gt_valid"]))
    out = dict(frames=frames, masks=masks, gt_valid=ex["gt_valid"].astype(bool),
               frame_valid=ex["frame_valid"].astype(bool),
               audio_logmel=ex["audio_logmel"].astype(np.float32),
               control_points=np.asarray(cp, np.int32), video_id=vid)
    if self.audio_embed:
      out["audio_embed"] = audio_lib.frame_embeddings(out["audio_logmel"], self.audio_embed)
    return out


def _batch(items: list[dict]) -> dict:
  out = {}
  for k in items[0]:
    if k == "video_id":
      out[k] = np.array([x[k] for x in items], dtype=object)
    else:
      out[k] = np.stack([x[k] for x in items])
  return out


def make_dataset(data_cfg, split: str, train: bool, shard_options=None, batch_size=None,
                 normalize=True, builder=None) -> grain.MapDataset:
  """Builds the grain MapDataset of batches for this host (see module docstring).

  shard_options: grain.sharding.ShardOptions; default ShardByJaxProcess (each host its slice).
  batch_size: per-host batch size; default data_cfg.batch_size (or eval_batch_size) // hosts.
  """
  b = builder or dataset_builder(data_cfg.name, data_cfg.data_dir)
  if split not in b.info.splits:
    raise R.DataError(
        f"{b.data_path}: split {split!r} was not built (splits there: {sorted(b.info.splits)}); "
        "every video of it was skipped or none is listed (see the build's report)")
  files = [os.path.join(b.data_path, f) for f in b.info.splits[split].filenames]
  src = grain.sources.ArrayRecordDataSource(files)
  so = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=train)
  n = len(src)
  per = n // so.shard_count if so.drop_remainder else None
  if per is not None:
    start = so.shard_index * per
    ds = grain.MapDataset.source(src)[start:start + per]
  else:
    ds = grain.MapDataset.source(src)[so.shard_index::so.shard_count]
  cp = None
  if data_cfg.get("control_points_file"):
    # Joined here, at read time, so that a changed file takes effect without rebuilding the
    # dataset (a build reuses existing ArrayRecords and would keep the old control points).
    cp = B.ControlPoints(data_cfg.control_points_file, data_cfg.get("control_points_fallback", "error"),
                         binary=not data_cfg.name.endswith("_avss"))
  pre = Preprocess(b.info.features, data_cfg.image_size, train, dict(data_cfg.augment), normalize, cp,
                   data_cfg.get("audio_embed", ""))
  gbs = batch_size or max(1, (data_cfg.batch_size if train else data_cfg.eval_batch_size) // so.shard_count)
  if train:
    ds = ds.seed(data_cfg.shuffle_seed).shuffle().repeat()
    ds = ds.random_map(lambda rec, rng: pre(rec, rng))
  else:
    ds = ds.map(pre)
  return ds.batch(gbs, drop_remainder=train, batch_fn=_batch)


def make_iterator(data_cfg, split: str = "train", train: bool = True, **kw):
  """Checkpointable iterator (get_state/set_state) over host batches; prefetches with workers."""
  ds = make_dataset(data_cfg, split, train, **kw).to_iter_dataset()
  if getattr(data_cfg, "num_workers", 0):
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
  return iter(ds)


def to_global_array(batch: dict, mesh, data_axis: str = "data") -> dict:
  """Host-local batch -> dict of global jax.Arrays sharded along `data_axis` (dim 0).

  `data_axis`: a mesh axis name or a tuple of them (the trainer splits over ("data", "fsdp")).
  Host-only keys (video_id, category) stay numpy. Each host passes its own slice; the global
  batch size is local * number of processes.
  """
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  out = {}
  for k, v in batch.items():
    if k in HOST_KEYS or v.dtype == object:
      out[k] = v
      continue
    sh = NamedSharding(mesh, P(data_axis, *([None] * (v.ndim - 1))))
    out[k] = jax.make_array_from_process_local_data(sh, v)
  return out
