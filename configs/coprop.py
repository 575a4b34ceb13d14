"""Co-Prop on AVSBench: one experiment file, selected by a config string.

  # stage 1: Keyframe Processor on all frames, then fine-tuned on keyframes (paper section 3.3)
  python -m coprop_jax.train --config configs/coprop.py:dataset=ms3,stage=kpf --workdir /tmp/kpf_ms3 \
      --config.data.manual_dir=/data/AVSBench --config.keyframe.backbone_weights=ckpt/pvt_v2_b5 \
      --config.keyframe.vggish_weights=ckpt/vggish
  python -m coprop_jax.train --config configs/coprop.py:dataset=ms3,stage=kpf_finetune \
      --workdir /tmp/kpf_ms3_ft --config.train.init_from=/tmp/kpf_ms3/best \
      --config.data.manual_dir=/data/AVSBench --config.data.control_points_file=cp_ms3_train.jsonl
  # stage 2: the Audio-insert Propagator from a converted AOT-L (AOT's recipe; same VGGish file)
  python -m coprop_jax.train --config configs/coprop.py:dataset=ms3,stage=propagator \
      --workdir /tmp/aip_ms3 --config.data.manual_dir=/data/AVSBench \
      --config.propagator.aot_weights=ckpt/aotl --config.keyframe.vggish_weights=ckpt/vggish
  # one model directory, then the evaluation report (Co-Prop, KPF only, GT keyframes, ...)
  python -m coprop_jax.export --config configs/coprop.py:dataset=ms3 --keyframe /tmp/kpf_ms3_ft \
      --propagator /tmp/aip_ms3 --out /tmp/coprop_ms3
  python -m coprop_jax.evaluate --config configs/coprop.py:dataset=ms3 --checkpoint /tmp/coprop_ms3 \
      --config.data.manual_dir=/data/AVSBench --out /tmp/eval_ms3
  # a CPU smoke test of the same experiment (tiny models, synthetic data under the workdir)
  python -m coprop_jax.train --config configs/coprop.py:dataset=ms3,runlocal=True --workdir /tmp/smoke

Config-string keys:
  dataset   s4 | ms3 | avss | toy      (AVSBench subset, paper's M3 is ms3; toy: in-memory clips)
  backbone  pvt_v2_b0..pvt_v2_b5, pvt_v2_b2_linear, resnet50   (Keyframe Processor encoder)
  insert    aot | 1layer | 4layer      (paper Table 5: audio-insert levels of the propagator)
  stage     kpf | kpf_finetune | propagator   (config.train.stage; see configs/parts/train.py)
  runlocal  True: the small-run variant (configs/base.py:apply_runlocal)
  aot       r50 (default: R50-AOTL, the paper's text) | mobilenet (AOT-L, its Table 5's channels)

Stage 2 on S4: S4's train split has GT on the first frame only, so there is nothing to learn
propagation from; `dataset=s4,stage=propagator` trains on MS3's train split (and evaluates on
MS3's val) instead, and the S4 results use that propagator.

Expected results (paper, PVT-v2-b5): S4 83.7 mJ / 90.9 mF, MS3 63.6 / 74.0, AVSS 39.6 / 44.4.
Needs the AVSBench manual download at `config.data.manual_dir`.
"""
from configs.base import apply_runlocal, get_base_config
from coprop_jax.models.propagator import INSERT_VARIANTS
from coprop_jax.utils.config import parse_config_string

_DATASETS = {
    # dataset: (data.name, frames per clip, KPF classes); propagator.max_objects stays AOT's 10
    "s4": ("avsbench_s4", 5, 1),
    "ms3": ("avsbench_ms3", 5, 1),
    "avss": ("avsbench_avss", 10, 71),
    "toy": ("toy_kpf", 5, 1),
}
_STAGES = ("kpf", "kpf_finetune", "propagator")
# Config-string `aot=`: the propagator's encoder (the AOT-L variant stage 2 starts from).
_AOT_ENCODERS = {"r50": "resnet50", "mobilenet": "mobilenet_v2"}


def get_config(arg=None):
  args = parse_config_string(arg, {"dataset": "s4", "backbone": "pvt_v2_b5", "insert": "4layer",
                                   "stage": "kpf", "runlocal": False, "aot": "r50"})
  if args.aot not in _AOT_ENCODERS:
    raise ValueError(f"aot must be one of {sorted(_AOT_ENCODERS)}, got '{args.aot}'")
  if args.dataset not in _DATASETS:
    raise ValueError(f"dataset must be one of {sorted(_DATASETS)}, got '{args.dataset}'")
  if args.insert not in INSERT_VARIANTS:
    raise ValueError(f"insert must be one of {sorted(INSERT_VARIANTS)}, got '{args.insert}'")
  if args.stage not in _STAGES:
    raise ValueError(f"stage must be one of {list(_STAGES)}, got '{args.stage}'")
  c = get_base_config()
  name, frames, classes = _DATASETS[args.dataset]
  c.data.name = name
  c.data.num_frames = frames
  c.keyframe.backbone = args.backbone
  c.keyframe.num_classes = classes
  c.propagator.update(INSERT_VARIANTS[args.insert])
  # The paper's text: stage 2 starts from "the pre-trained AOT-Large model with a ResNet-50
  # backbone" (R50-AOTL, the default here), while its Table 5 lists MobileNetV2 channels
  # [24, 32, 96, 256] (AOT-L). The paper contradicts itself; aot=mobilenet gives the latter.
  c.propagator.encoder = _AOT_ENCODERS[args.aot]
  c.train.stage = args.stage
  if args.stage == "kpf_finetune":
    c.train.num_epochs = 20   # not in the paper: its fine-tune length is not given
  if args.stage == "propagator":
    # not in the paper (it gives no stage-2 recipe): AOT's (aot-benchmark configs/default.py):
    # AdamW 2e-4, weight decay 0.07, poly decay (power 0.9) to 2e-5 (R50: 1e-5) after a 5%
    # warm-up, encoder at 0.1x (propagator.train.encoder_lr_ratio), gradient clip 5.
    t = c.train
    t.optimizer, t.lr, t.weight_decay, t.grad_clip = "adamw", 2e-4, 0.07, 5.0
    t.lr_schedule, t.warmup_ratio, t.poly_power = "poly", 0.05, 0.9
    t.end_lr = 1e-5 if c.propagator.encoder == "resnet50" else 2e-5
    # not in the paper: the stage-2 length. AOT's schedule (100k steps at batch 16) is its
    # pretraining on YouTube-VOS/DAVIS; stage 2 here fine-tunes a pretrained AOT on AVSBench's
    # small MS3 train split, so it keeps the experiment's 100 epochs at batch 4 (train.num_epochs,
    # ~7.4k steps on MS3) with AOT's optimizer and per-step schedule over that length.
    if args.dataset == "s4":
      # not in the paper: S4 train has GT on frame 1 only; stage 2 learns on MS3's train split.
      c.data.name = "avsbench_ms3"
  if args.runlocal:
    apply_runlocal(c)
  return c
