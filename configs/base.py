"""Shared base of every experiment config: one section per part of the system.

Not an experiment by itself: experiment files (`configs/coprop.py`, `configs/demo.py`, ...)
start from `get_base_config()` and change what they need. Each section is defined, with every
field documented, in `configs/parts/<section>.py`.
"""
import ml_collections

from configs.parts.data import get_data_config
from configs.parts.keyframe import get_keyframe_config
from configs.parts.propagator import get_propagator_config
from configs.parts.rcpg import get_rcpg_config
from configs.parts.train import get_eval_config, get_train_config


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                 # PRNG seed for initialisation, dropout and augmentation
  c.workdir = "/tmp/coprop"  # checkpoints, logs and predictions go here
  c.data = get_data_config()
  c.keyframe = get_keyframe_config()
  c.propagator = get_propagator_config()
  c.train = get_train_config()
  c.eval = get_eval_config()
  c.rcpg = get_rcpg_config()
  return c
