"""Shared base of every experiment config: one section per part of the system.

Not an experiment by itself: experiment files (`configs/coprop.py`, `configs/demo.py`, ...)
start from `get_base_config()` and change what they need. Each section is defined, with every
field documented, in `configs/parts/<section>.py`. `apply_runlocal` is the one definition of the
small-run variant (tiny models, tiny synthetic data) that `configs/coprop.py:runlocal=True`,
`configs/demo.py` and the tests use.
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
  c.data = get_data_config()
  c.keyframe = get_keyframe_config()
  c.propagator = get_propagator_config()
  c.train = get_train_config()
  c.eval = get_eval_config()
  c.rcpg = get_rcpg_config()
  return c


def apply_runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The small-run variant (big_vision's `runlocal`): a CPU smoke test of the same experiment.

  AVSBench data becomes the synthetic AVSBench-layout set of the same layout, generated and
  built under the run's workdir (`{workdir}/data`); toy data stays toy data. Models shrink to a
  PVT-v2-b0 with one block per stage and width 32 (KPF) and a one-layer, width-64 propagator;
  32x32 frames, batch 2, 20 steps with an evaluation and a checkpoint every 10.
  """
  d = c.data
  if d.name.startswith("avsbench_"):
    d.name = "synthetic_" + d.name[len("avsbench_"):]
    if d.name == "synthetic_avss":
      c.keyframe.num_classes = 7           # synthetic AVSS: background + 6 classes
  d.manual_dir = "{workdir}/data/synthetic"
  d.data_dir = "{workdir}/data/tfds"
  d.image_size = 32
  d.batch_size = 2
  d.synthetic.num_videos = 12
  k = c.keyframe
  k.backbone = "pvt_v2_b0"
  k.backbone_depths = (1, 1, 1, 1)
  k.d_model = 32
  k.num_heads = 4
  k.num_encoder_layers = 1
  k.num_decoder_layers = 1
  p = c.propagator
  p.encoder = "mobilenet_v2"
  p.num_layers = 1
  p.d_model = 64
  p.num_heads = 4
  p.ffn_dim = 128
  p.memory_slots = 2
  p.mem_gap = 2
  p.local_max_dis = 3
  t = c.train
  t.fast_compile = True
  t.lr = 1e-3
  t.num_steps = 20
  t.log_every = 5
  t.checkpoint_every = 10
  c.eval.every_steps = 10
  c.eval.num_images = 1
  return c
