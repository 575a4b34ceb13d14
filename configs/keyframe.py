"""KPF stage-1 training on AVSBench (paper: PVT-v2-b5 or ResNet-50, Adam 1e-4, batch 4).

  # 1) all frames
  python -m coprop_jax.train --config configs/keyframe.py:dataset=s4 --workdir /tmp/kpf_s4
  # 2) keyframe-only fine-tune from run 1 (control points from GT masks or an RCPG JSONL file
  #    given as data.control_points_file)
  python -m coprop_jax.train --config configs/keyframe.py:dataset=s4,finetune=True \
      --workdir /tmp/kpf_s4_ft train.init_from=/tmp/kpf_s4/checkpoints

Config string: dataset (s4 | ms3 | avss), backbone (pvt_v2_b5 | resnet50 | pvt_v2_b0 ...),
finetune (bool).
"""
from configs.base import get_base_config
from coprop_jax.utils.config import parse_config_string


def get_config(arg=None):
  a = parse_config_string(arg, dict(dataset="s4", backbone="pvt_v2_b5", finetune=False))
  if a.dataset not in ("s4", "ms3", "avss"):
    raise ValueError(f"configs/keyframe.py: dataset must be s4, ms3 or avss, got {a.dataset!r}")
  c = get_base_config()
  c.workdir = f"/tmp/kpf_{a.dataset}_{a.backbone}" + ("_ft" if a.finetune else "")
  c.data.name = f"avsbench_{a.dataset}"
  c.data.num_frames = 10 if a.dataset == "avss" else 5
  c.keyframe.backbone = a.backbone
  c.keyframe.num_classes = 71 if a.dataset == "avss" else 1
  c.train.keyframes_only = bool(a.finetune)
  if a.finetune:
    c.train.num_epochs = 20
  return c
