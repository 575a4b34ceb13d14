"""Co-Prop on AVSBench MS3 with the pvt_v2_b5 Keyframe Processor backbone.

  python -m coprop_jax.train --config configs/ms3_pvt.py:stage=kpf --workdir /tmp/ms3_pvt

Same as `configs/coprop.py:dataset=ms3,backbone=pvt_v2_b5`; see that file for the expected results.
"""
from configs import coprop


def get_config(arg=None):
  base = "dataset=ms3,backbone=pvt_v2_b5"
  return coprop.get_config(base + ("," + arg if arg else ""))
