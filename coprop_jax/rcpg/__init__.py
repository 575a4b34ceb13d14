"""RCPG control-point preprocessing (paper section 3.2, Algorithm 1).

core: gt_control_points, build_document, retrieve_examples, cosine_control_points, parse_flags,
evaluate. qwen: QwenPrompter (transformers Qwen2-Audio; 1step/3step/rcpg). runner: run,
evaluate_files. jsonl: resumable JSONL output, merge. CLI: `python -m coprop_jax.rcpg`.
"""
from coprop_jax.rcpg.core import (  # noqa: F401
    build_document, cosine_control_points, evaluate, gt_control_points, parse_flags,
    retrieve_examples)
