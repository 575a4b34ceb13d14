"""RCPG preprocessing experiment: control points for AVSBench with Qwen2-Audio (paper Table 2b).

  python -m coprop_jax.rcpg --config configs/rcpg.py --method rcpg \
      --data /data/AVSBench --layout ms3 --split test --out cp_ms3_test.jsonl

`config string` picks the layout: `configs/rcpg.py:layout=s4`.
"""
from configs.base import get_base_config
from coprop_jax.utils.config import parse_config_string


def get_config(arg=None):
  opts = parse_config_string(arg, {"layout": "ms3", "split": "test"})
  c = get_base_config()
  c.rcpg.layout = opts.layout
  c.rcpg.split = opts.split
  c.rcpg.method = "rcpg"
  return c
