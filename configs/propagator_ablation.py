"""Paper Table 5 ablation of the Audio-insert Propagator: config string insert=aot|1layer|4layer.

The settings are `coprop_jax.models.propagator.INSERT_VARIANTS` (defined once, in the library):
  aot     audio_insert_levels=()           identity_from_audio=False (plain AOT: no audio anywhere)
  1layer  audio_insert_levels=(3,)         identity_from_audio=True
  4layer  audio_insert_levels=(0, 1, 2, 3) identity_from_audio=True (the paper's model)
Usage: load_config("configs/propagator_ablation.py:insert=1layer").
"""
from configs import base
from coprop_jax.models.propagator import INSERT_VARIANTS
from coprop_jax.utils.config import parse_config_string


def get_config(arg: str = "insert=4layer"):
  insert = parse_config_string(arg, {"insert": "4layer"}).insert
  if insert not in INSERT_VARIANTS:
    raise ValueError(f"propagator_ablation: insert must be one of {sorted(INSERT_VARIANTS)}, got {insert!r}")
  config = base.get_base_config()
  config.propagator.update(INSERT_VARIANTS[insert])
  return config
