"""RCPG preprocessing experiment: control points for AVSBench with Qwen2-Audio (paper Table 2b).

  python -m coprop_jax.rcpg --config configs/rcpg.py --method rcpg \
      --data /data/AVSBench --layout ms3 --split test --out cp_ms3_test.jsonl \
      --config.rcpg.document_avss_dir=/data/AVSBench-semantic

The retrieval document D (training videos with categories and control points) comes from
rcpg.document_file (JSONL) or an AVSS tree (rcpg.document_avss_dir; for layout avss, the data
itself); S4/MS3 masks carry no categories, so for them one of the two must be set.
`config string` picks the layout and split: `configs/rcpg.py:layout=s4,split=val`.
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
