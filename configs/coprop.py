"""Co-Prop on AVSBench: one experiment file, selected by a config string.

  python -m coprop_jax.train --config configs/coprop.py:dataset=ms3,backbone=pvt_v2_b5
  python -m coprop_jax.train --config configs/coprop.py:dataset=avss,backbone=resnet50 \
      --config.propagator.audio_insert_levels='(3,)'

Config-string keys:
  dataset   s4 | ms3 | avss            (AVSBench subset; paper's M3 is ms3)
  backbone  pvt_v2_b0..pvt_v2_b5, pvt_v2_b2_linear, resnet50   (Keyframe Processor encoder)
  insert    aot | 1layer | 4layer      (paper Table 5: audio-insert levels of the propagator)

Expected results (paper, PVT-v2-b5): S4 83.7 mJ / 90.9 mF, MS3 63.6 / 74.0, AVSS 39.6 / 44.4.
Needs the AVSBench manual download at `config.data.manual_dir`.
"""
from configs.base import get_base_config
from coprop_jax.models.propagator import INSERT_VARIANTS
from coprop_jax.utils.config import parse_config_string

_DATASETS = {
    # dataset: (TFDS name, frames per clip, KPF classes); propagator.max_objects stays AOT's 10
    "s4": ("avsbench_s4", 5, 1),
    "ms3": ("avsbench_ms3", 5, 1),
    "avss": ("avsbench_avss", 10, 71),
}


def get_config(arg=None):
  args = parse_config_string(arg, {"dataset": "s4", "backbone": "pvt_v2_b5", "insert": "4layer"})
  if args.dataset not in _DATASETS:
    raise ValueError(f"dataset must be one of {sorted(_DATASETS)}, got '{args.dataset}'")
  if args.insert not in INSERT_VARIANTS:
    raise ValueError(f"insert must be one of {sorted(INSERT_VARIANTS)}, got '{args.insert}'")
  c = get_base_config()
  name, frames, classes = _DATASETS[args.dataset]
  c.data.name = name
  c.data.num_frames = frames
  c.keyframe.backbone = args.backbone
  c.keyframe.num_classes = classes
  c.propagator.update(INSERT_VARIANTS[args.insert])
  if args.backbone == "resnet50":
    c.propagator.encoder = "resnet50"
  return c
