"""Training and evaluation sections (`config.train`, `config.eval`). Read by coprop_jax/train."""
import ml_collections


def get_train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Which stage to train (coprop_jax/train/tasks): "kpf" (Keyframe Processor on all frames),
  # "kpf_finetune" (KPF on keyframes only: frames whose control point is 1 carry the loss; start
  # it from the kpf run with init_from) or "propagator" (stage 2, the Audio-insert Propagator
  # with AOT's recipe: tasks/propagator.py; configs/coprop.py:stage=propagator sets its optimizer).
  c.stage = "kpf"
  # Checkpoint root to take params (and non-trainable collections) from at the start of a fresh
  # run, e.g. "<kpf workdir>/checkpoints" or "<kpf workdir>/best"; "" for none. Must exist.
  c.init_from = ""
  # kpf_finetune trains on keyframes; without data.control_points_file the built dataset's
  # control points are frame 0 only, so that run is refused unless this is True.
  c.allow_finetune_without_control_points = False
  c.optimizer = "adam"       # "adam" | "adamw" | "sgd" (momentum 0.9); paper: Adam
  c.lr = 1e-4                # peak learning rate; paper: 1e-4 (constant)
  # "constant" (lr at every step, the paper's) or "poly" (aot-benchmark's: linear warm-up from
  # end_lr to lr over warmup_ratio of the run, then end_lr + (lr - end_lr) * (1 - progress) **
  # poly_power; coprop_jax.train.state.lr_schedule). end_lr is also the floor that parameter
  # groups with a learning-rate ratio scale towards (the propagator's encoder, AOT's rule).
  c.lr_schedule = "constant"
  c.end_lr = 0.0
  c.warmup_ratio = 0.0
  c.poly_power = 0.9
  c.weight_decay = 0.0
  c.grad_clip = 0.0          # global-norm gradient clipping; <= 0 disables
  c.num_epochs = 100         # paper: 100 epochs
  c.num_steps = -1           # if > 0, overrides num_epochs
  c.log_every = 50           # steps between train-metric logs (stdout + TensorBoard)
  c.checkpoint_every = 1000  # steps between rolling checkpoints (the last step is always saved)
  c.keep_checkpoints = 3     # rolling checkpoints kept (the best one is kept separately)
  # Compile with XLA's LLVM at -O0 (3-4x faster compiles, slower steps): tiny CPU runs only.
  c.fast_compile = False
  # Persistent XLA compilation cache directory ("" = off; "{workdir}" expands to --workdir):
  # a rerun or resume with the same shapes loads the compiled step instead of compiling it.
  c.compilation_cache_dir = ""
  # Device mesh ('data', 'fsdp') over every device of every host (coprop_jax/train/sharding.py).
  # The global batch (data.batch_size) is split over data x fsdp devices and must divide by
  # their number; parameter and optimizer-state leaves of >= fsdp_min_size elements (weight
  # matrices, conv kernels; never biases or norm scales) are split over 'fsdp', the rest
  # replicated. mesh_fsdp=1 is plain data parallelism. May change on resume (the checkpoint is
  # restored onto the new mesh).
  c.mesh_data = -1           # devices along 'data'; -1 = all devices not taken by 'fsdp'
  c.mesh_fsdp = 1            # devices along 'fsdp' (parameter sharding); 1 = replicated
  c.fsdp_min_size = 2 ** 14  # smallest leaf (elements) that is sharded over 'fsdp'
  # Multi-host runs (coprop_jax/train/distributed.py): jax.distributed.initialize() before the
  # first device is touched; each host then reads its own slice of the data (grain shards by
  # process index) and the trainer assembles global batches.
  c.distributed = ml_collections.ConfigDict()
  # "auto": initialize when the environment describes a multi-process cluster (a TPU pod slice
  # with several hosts, a SLURM job step with several tasks, Open MPI with several ranks,
  # JAX_COORDINATOR_ADDRESS) or coordinator_address is set; "off": one process, never
  # initialize; "on": always initialize (JAX detects the cluster; an error where none is found).
  c.distributed.mode = "auto"
  # Explicit cluster (all three, same on every host but process_id): "host:port" of process 0,
  # the number of processes and this process's index. "" / -1: from the environment.
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = -1
  c.distributed.process_id = -1
  # Loss weights (binary: BCE + IoU; AVSS: CE + Dice).
  c.loss = ml_collections.ConfigDict()
  c.loss.bce_weight = 1.0
  c.loss.iou_weight = 1.0
  return c


def get_eval_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Split evaluated during training ("val"; toy data: "val" or "test" held-out clips).
  c.split = "val"
  # Steps between evaluations during training (and at the last step); 0 = no evaluation.
  c.every_steps = 1000
  # Metric of the keep-best checkpoint (<workdir>/best), higher is better; "" = the stage's
  # default (kpf: J, or mIoU with several classes; kpf_finetune: J_keyframes / mIoU_keyframes).
  # kpf stages report J|mIoU, F and the same over keyframes only (J_keyframes, F_keyframes, ...).
  c.best_metric = ""
  # Videos shown as mask pictures (frame | GT | prediction) in TensorBoard at each evaluation.
  c.num_images = 2
  # Binary F-measure: beta^2 and number of thresholds, as AVSBench.
  c.f_beta2 = 0.3
  c.f_num_thresholds = 255
  # Alignment Rate (coprop_jax.eval.metrics; not in the paper: it defines the rate in words only).
  # A frame aligns when prediction and GT are both empty or, binary, the foreground IoU is
  # >= alignment_iou; semantic, the sets of classes covering >= alignment_min_area of the frame
  # agree and each of those classes has IoU >= alignment_iou.
  c.alignment_iou = 0.5
  c.alignment_min_area = 0.01
  # The MOC subset of the evaluation report: a file of video ids (one per line; the paper's 17
  # MS3 test videos whose sounding objects change), or "" = the videos whose GT sounding set
  # changes (the GT control-point rule puts a keyframe after frame 0), e.g. on synthetic data.
  c.moc_ids_file = ""
  # AVSS only: also score the padded frames of short clips (v1s/v1m: 5 real of 10) as AVSBench's
  # avss/test.py does (GT all background there; AVSBench's protocol, the default); False scores
  # real frames only (not AVSBench's protocol: an option).
  c.avss_score_padding = True
  return c
