"""Co-Prop on AVSBench S4 with the pvt_v2_b5 Keyframe Processor backbone.

  python -m coprop_jax.train --config configs/s4_pvt.py:stage=kpf --workdir /tmp/s4_pvt

Same as `configs/coprop.py:dataset=s4,backbone=pvt_v2_b5`; see that file for the expected results.
"""
from configs import coprop


def get_config(arg=None):
  base = "dataset=s4,backbone=pvt_v2_b5"
  return coprop.get_config(base + ("," + arg if arg else ""))
