"""Demo: synthetic AVSBench-layout data and tiny models, runs on a laptop CPU in minutes.

  python -m data_pipelines.demo            # builds + loads the synthetic dataset (see README)

Tiny everything: 64x64 frames, 5-frame clips, PVT-v2-b0-sized keyframe encoder at reduced
width, 1-layer propagator with 64 channels.
"""
from configs.base import get_base_config


def get_config(arg=None):
  del arg
  c = get_base_config()
  c.workdir = "/tmp/coprop_demo"
  c.data.name = "synthetic_ms3"
  c.data.manual_dir = "/tmp/coprop_demo/synthetic"
  c.data.data_dir = "/tmp/coprop_demo/tfds"
  c.data.image_size = 64
  c.data.num_frames = 5
  c.data.batch_size = 4
  c.data.synthetic.num_videos = 24
  c.keyframe.backbone = "pvt_v2_b0"
  c.keyframe.d_model = 64
  c.keyframe.num_heads = 4
  c.keyframe.num_encoder_layers = 1
  c.keyframe.num_decoder_layers = 1
  c.propagator.num_layers = 1
  c.propagator.d_model = 64
  c.propagator.num_heads = 4
  c.propagator.ffn_dim = 128
  c.propagator.memory_slots = 2
  c.propagator.mem_gap = 2
  c.propagator.local_max_dis = 3
  c.train.num_steps = 200
  c.train.log_every = 20
  c.rcpg.method = "gt"
  return c
