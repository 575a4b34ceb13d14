"""Co-Prop on AVSBench S4 with the resnet50 Keyframe Processor backbone.

  python -m coprop_jax.train --config configs/s4_r50.py:stage=kpf --workdir /tmp/s4_r50

Same as `configs/coprop.py:dataset=s4,backbone=resnet50`; see that file for the expected results.
"""
from configs import coprop


def get_config(arg=None):
  base = "dataset=s4,backbone=resnet50"
  return coprop.get_config(base + ("," + arg if arg else ""))
