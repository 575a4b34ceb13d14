"""Training and evaluation sections (`config.train`, `config.eval`). Owned by coprop_jax/train, eval."""
import ml_collections


def get_train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Which stage to train: "keyframe" (KPF on all frames or on keyframes) or "propagator".
  c.stage = "keyframe"
  # Train only on keyframes (control point == 1): the paper's KPF fine-tuning stage.
  c.keyframes_only = False
  # Checkpoint to initialise from (an Orbax directory of a previous run), "" for none.
  c.init_from = ""
  c.optimizer = "adam"       # paper: Adam
  c.lr = 1e-4                # paper: 1e-4
  c.weight_decay = 0.0
  c.grad_clip = 0.0          # global-norm gradient clipping; <= 0 disables
  c.num_epochs = 100         # paper: 100 epochs
  c.num_steps = -1           # if > 0, overrides num_epochs
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  # Compile with XLA's LLVM at -O0 (3-4x faster compiles, slower steps): tiny CPU runs only.
  c.fast_compile = False
  # Loss weights (binary: BCE + IoU; AVSS: CE + Dice).
  c.loss = ml_collections.ConfigDict()
  c.loss.bce_weight = 1.0
  c.loss.iou_weight = 1.0
  return c


def get_eval_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Splits to evaluate and how often (in steps) during training.
  c.split = "test"
  c.every_steps = 1000
  # Binary F-measure: beta^2 and number of thresholds, as AVSBench.
  c.f_beta2 = 0.3
  c.f_num_thresholds = 255
  return c
