"""Paper Table 5 ablation of the Audio-insert Propagator: config string insert=aot|1layer|4layer.

  aot     audio_insert_levels=()           identity_from_audio=False (plain AOT)
  1layer  audio_insert_levels=(3,)         identity_from_audio=True
  4layer  audio_insert_levels=(0, 1, 2, 3) identity_from_audio=True (the paper's model)
Usage: load_config("configs/propagator_ablation.py:insert=1layer").
"""
from configs import base
from coprop_jax.utils.config import parse_config_string

INSERTS = {"aot": ((), False), "1layer": ((3,), True), "4layer": ((0, 1, 2, 3), True)}


def get_config(arg: str = "insert=4layer"):
  insert = parse_config_string(arg, {"insert": "4layer"}).insert
  if insert not in INSERTS:
    raise ValueError(f"propagator_ablation: insert must be one of {sorted(INSERTS)}, got {insert!r}")
  config = base.get_base_config()
  config.propagator.audio_insert_levels, config.propagator.identity_from_audio = INSERTS[insert]
  return config
