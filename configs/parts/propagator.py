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
  # Paper Table 5 (coprop_jax.models.propagator.INSERT_VARIANTS): () = plain AOT ("aot"),
  # (3,) = "1layer", (0, 1, 2, 3) = the paper's "4layer".
  c.audio_insert_levels = (0, 1, 2, 3)
  # The identity embedding (ID bank output) cross-attends to the audio tokens (False for "aot").
  c.identity_from_audio = True
  # Audio tokens of the insert and the identity: "learned" (not in the paper: num_audio_tokens
  # learned projections of the frame's 128-d VGGish embedding, so different pixels attend
  # differently) or "paper" (eq. 6 verbatim: the embedding is the only key, the softmax is 1 and
  # the insert adds the same vector at every pixel -- a per-frame bias). "learned" is also the
  # paper experiment's setting (configs/coprop.py), because with the paper's single token eq. 6
  # cannot tell pixels apart; `--config.propagator.audio_tokens=paper` runs eq. 6 verbatim.
  c.audio_tokens = "learned"
  c.num_audio_tokens = 4
  # Object ids of the ID bank (+1 background): AOT's 10 for every dataset, so a converted AOT-L
  # checkpoint fits; binary data (S4/MS3) uses num_objects=1 per clip, AVSS up to 10 classes
  # per keyframe (ids above a clip's count are masked, as aot-benchmark's engine does).
  c.max_objects = 10
  # Long-term memory: ring buffer of `memory_slots` frames (plus the pinned keyframe), a new
  # memory frame every `mem_gap` frames (AOT-L tests with 5). Equals AOT (unbounded memory) while
  # a segment writes <= memory_slots frames, i.e. for segments up to memory_slots * mem_gap + 1
  # frames; longer ones drop the oldest entry (figures: benchmarks/RESULTS.md, memory ring).
  c.memory_slots = 4
  c.mem_gap = 5
  # Short-term local attention max distance (window = 2 * local_max_dis + 1 = 15).
  c.local_max_dis = 7
  # Drop-path rate, the same in every layer, on the self-attention and FFN branches only (AOT's
  # defaults TRAIN_LSTT_DROPPATH=0.1, DROPPATH_SCALING=False, DROPPATH_LST=False).
  c.drop_path = 0.1
  # Rematerialise each frame of the training scan in BPTT (saves memory: only the carry is kept
  # per frame, policy nothing_saveable; train/tasks/propagator.make_train_forward).
  c.remat = False
  # Compute dtype: "float32" or "bfloat16" (parameters stay float32).
  c.dtype = "float32"
  # Form of the propagator's convolutions and ID bank (same parameters and results either way):
  # "auto" = "shift" on CPU (matmul / shifted multiply-add forms, whose gradients XLA:CPU runs
  # far faster than its convolutions) and "xla" on GPU/TPU (XLA's convolutions); or either by
  # name. Read by models/propagator.from_config.
  c.conv_impl = "auto"
  # Inference clip lengths are padded up to a multiple of this (frame_valid False on the padding,
  # output cut back) so one compiled scan serves many lengths; 0 = compile per length.
  # Used by pipeline.Segmenter (inference only).
  c.length_bucket = 32
  # Converted AOT checkpoint (`python -m coprop_jax.convert aot`, an Orbax directory) loaded by
  # pipeline.init_params: every AOT weight incl. the ID bank (max_objects must match: AOT-L 10);
  # the audio parameters keep their no-op init. "" = random init.
  c.aot_weights = ""
  # Stage-2 training (AOT's recipe, aot-benchmark configs/default.py; read by
  # train/tasks/propagator.make_train_forward and coprop_jax.train.propagator_losses).
  c.train = ml_collections.ConfigDict()
  # Loss per propagated frame with GT: ce_weight * top-k CE + jaccard_weight * soft Jaccard.
  c.train.ce_weight = 0.5
  c.train.jaccard_weight = 0.5
  # Top-k CE keeps the hardest top_k_percent of pixels, ramped linearly from all pixels over the
  # first hard_mining_ratio of training (TRAIN_TOP_K_PERCENT_PIXELS, TRAIN_HARD_MINING_RATIO).
  c.train.top_k_percent = 0.15
  c.train.hard_mining_ratio = 0.5
  # From this fraction of training on, the short-term memory takes the model's own prediction
  # instead of the GT and the ID bank is frozen (TRAIN_SEQ_TRAINING_START_RATIO).
  c.train.seq_training_start = 0.5
  # Long-term memory gap in training (AOT-L's TRAIN_LONG_TERM_MEM_GAP = 2).
  c.train.mem_gap = 2
  # Random permutation of object ids 1..max_objects per clip (AOT's id shuffle).
  c.train.id_shuffle = True
  # Encoder stages never trained (TRAIN_ENCODER_FREEZE_AT = 2; models/*.aot_frozen_mask).
  c.train.encoder_freeze_at = 2
  # Learning-rate ratio of the trained encoder stages (TRAIN_LR_ENCODER_RATIO): their rate is
  # train.end_lr + encoder_lr_ratio * (rate - train.end_lr), as aot-benchmark's schedule.
  c.train.encoder_lr_ratio = 0.1
  return c
