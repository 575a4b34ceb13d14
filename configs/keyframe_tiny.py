"""Tiny KPF stage-1 run (CPU, minutes): in-memory toy clips or the synthetic AVSBench pipeline.

  python -m coprop_jax.train --config configs/keyframe_tiny.py --workdir /tmp/kpf_tiny
  python -m coprop_jax.train --config configs/keyframe_tiny.py:finetune=True \
      --workdir /tmp/kpf_tiny_ft train.init_from=/tmp/kpf_tiny/checkpoints
  # real data path: synthetic MS3 tree -> TFDS build -> grain -> KPF with VGGish on log-mels
  python -m coprop_jax.train --config configs/keyframe_tiny.py:dataset=synthetic_ms3 \
      --workdir /tmp/kpf_tiny_ms3

Config string: `dataset` (toy | synthetic_s4 | synthetic_ms3 | synthetic_avss); `finetune`
(bool) switches to the keyframe-only fine-tune; `semantic` (bool, toy only) uses 4 classes
(background + 3) instead of binary (synthetic_avss is always semantic, 7 classes).
Synthetic data is written to `<workdir>/synthetic` and built into `<workdir>/tfds` unless
data.manual_dir / data.data_dir are overridden.
"""
from configs.base import get_base_config
from coprop_jax.utils.config import parse_config_string

DATASETS = ("toy", "synthetic_s4", "synthetic_ms3", "synthetic_avss")


def get_config(arg=None):
  a = parse_config_string(arg, dict(finetune=False, semantic=False, dataset="toy"))
  if a.dataset not in DATASETS:
    raise ValueError(f"configs/keyframe_tiny.py: dataset must be one of {DATASETS}, "
                     f"got {a.dataset!r}")
  c = get_base_config()
  c.workdir = "/tmp/kpf_tiny" + ("" if a.dataset == "toy" else "_" + a.dataset)
  c.data.image_size = 64
  c.data.num_frames = 5
  c.data.batch_size = 4
  c.keyframe.backbone = "pvt_v2_b0"
  c.keyframe.backbone_depths = (1, 1, 1, 1)
  c.keyframe.d_model = 32
  c.keyframe.num_heads = 4
  c.keyframe.num_encoder_layers = 1
  c.keyframe.num_decoder_layers = 1
  c.keyframe.num_classes = 4 if a.semantic else 1
  if a.dataset == "toy":
    c.data.name = "toy_kpf"
    c.data.synthetic.num_videos = 64
  else:
    c.data.name = a.dataset
    c.data.manual_dir = c.workdir + "/synthetic"
    c.data.data_dir = c.workdir + "/tfds"
    c.data.synthetic.num_videos = 16
    if a.dataset == "synthetic_avss":
      c.data.num_frames = 10
      c.keyframe.num_classes = 7   # synthetic AVSS: background + 6 classes
  c.train.fast_compile = True
  c.train.lr = 1e-3
  c.train.num_steps = 300
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  if a.finetune:
    c.train.keyframes_only = True
    c.train.lr = 2e-4
    c.train.num_steps = 100
  return c
