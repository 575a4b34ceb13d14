"""Co-Prop on AVSBench MS3 with the resnet50 Keyframe Processor backbone.

  python -m coprop_jax.train --config configs/ms3_r50.py:stage=kpf --workdir /tmp/ms3_r50

Same as `configs/coprop.py:dataset=ms3,backbone=resnet50`; see that file for the expected results.
"""
from configs import coprop


def get_config(arg=None):
  base = "dataset=ms3,backbone=resnet50"
  return coprop.get_config(base + ("," + arg if arg else ""))
