"""RCPG control-point preprocessing section (`config.rcpg`). Owned by coprop_jax/rcpg/."""
import ml_collections


def get_rcpg_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # "gt", "cosine", "1step", "3step" or "rcpg" (paper Table 2b).
  c.method = "rcpg"
  # Cosine baseline: keyframe where consecutive audio-embedding cosine similarity < threshold.
  c.cosine_threshold = 0.8
  # Hugging Face model id or local path of the audio LLM (never downloaded in tests).
  c.model_name_or_path = "Qwen/Qwen2-Audio-7B-Instruct"
  c.torch_dtype = "bfloat16"
  c.device = "cuda"
  c.max_new_tokens = 64
  # Fallback when a reply cannot be parsed: "first_frame" or "cosine".
  c.fallback = "first_frame"
  return c
