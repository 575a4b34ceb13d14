"""Co-Prop on AVSBench AVSS with the resnet50 Keyframe Processor backbone.

  python -m coprop_jax.train --config configs/avss_r50.py:stage=kpf --workdir /tmp/avss_r50

Same as `configs/coprop.py:dataset=avss,backbone=resnet50`; see that file for the expected results.
"""
from configs import coprop


def get_config(arg=None):
  base = "dataset=avss,backbone=resnet50"
  return coprop.get_config(base + ("," + arg if arg else ""))
