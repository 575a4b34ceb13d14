"""Tiny KPF stage-1 run on in-memory toy clips (CPU, minutes).

  python -m coprop_jax.train --config configs/keyframe_tiny.py --workdir /tmp/kpf_tiny
  python -m coprop_jax.train --config configs/keyframe_tiny.py:finetune=True \
      --workdir /tmp/kpf_tiny_ft train.init_from=/tmp/kpf_tiny/checkpoints

Config string: `finetune` (bool) switches to the keyframe-only fine-tune; `semantic` (bool) uses
4 classes (background + 3) instead of binary.
"""
from configs.base import get_base_config
from coprop_jax.utils.config import parse_config_string


def get_config(arg=None):
  a = parse_config_string(arg, dict(finetune=False, semantic=False))
  c = get_base_config()
  c.workdir = "/tmp/kpf_tiny"
  c.data.name = "toy_kpf"
  c.data.image_size = 64
  c.data.num_frames = 5
  c.data.batch_size = 4
  c.data.synthetic.num_videos = 64
  c.keyframe.backbone = "pvt_v2_b0"
  c.keyframe.backbone_depths = (1, 1, 1, 1)
  c.keyframe.d_model = 32
  c.keyframe.num_heads = 4
  c.keyframe.num_encoder_layers = 1
  c.keyframe.num_decoder_layers = 1
  c.keyframe.num_classes = 4 if a.semantic else 1
  c.train.lr = 1e-3
  c.train.num_steps = 300
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  if a.finetune:
    c.train.keyframes_only = True
    c.train.lr = 2e-4
    c.train.num_steps = 100
  return c
