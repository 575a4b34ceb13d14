"""Audio-insert Propagator section (`config.propagator`). Owned by coprop_jax/models/propagator.py."""
import ml_collections


def get_propagator_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Visual encoder of the propagator: "mobilenet_v2" (AOT-L, maps [24, 32, 96, 1280]) or
  # "resnet50" (R50-AOTL: conv1..layer3, maps [256, 512, 1024, 1024]); both output stride 16.
  c.encoder = "mobilenet_v2"
  # Number of LSTT layers (AOTT 1, AOTS 2, AOTB/AOTL 3).
  c.num_layers = 3
  # Transformer width, heads and FFN width (AOT: 256, 8, 1024).
  c.d_model = 256
  c.num_heads = 8
  c.ffn_dim = 1024
  # Encoder levels (0: 1/4, 1: 1/8, 2: 1/16, 3: 1/16 projected) that get the audio insert.
  # () = plain AOT, (3,) = 1-layer variant, (0, 1, 2, 3) = the paper's 4-layer variant.
  c.audio_insert_levels = (0, 1, 2, 3)
  # Combine the audio feature with the mask when making the identity embedding.
  c.identity_from_audio = True
  # Maximum objects (+1 background id): 1 for S4/MS3 binary, up to 10 for AVSS.
  c.max_objects = 1
  # Long-term memory: ring buffer of `memory_slots` frames (plus the pinned keyframe), a new
  # memory frame every `mem_gap` frames.
  c.memory_slots = 4
  c.mem_gap = 5
  # Short-term local attention max distance (window = 2 * local_max_dis + 1 = 15).
  c.local_max_dis = 7
  # Drop-path rate, the same in every layer, on the self-attention and FFN branches only (AOT's
  # defaults TRAIN_LSTT_DROPPATH=0.1, DROPPATH_SCALING=False, DROPPATH_LST=False).
  c.drop_path = 0.1
  # Rematerialise each scan step in training (saves memory in BPTT).
  c.remat = False
  # Compute dtype: "float32" or "bfloat16" (parameters stay float32).
  c.dtype = "float32"
  # Inference clip lengths are padded up to a multiple of this (frame_valid False on the padding,
  # output cut back) so one compiled scan serves many lengths; 0 = compile per length.
  # Used by propagator.make_propagate_fn_from_config (not in training).
  c.length_bucket = 32
  return c
