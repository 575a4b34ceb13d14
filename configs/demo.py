"""The demo, the README's first command: Co-Prop end to end on a CPU in minutes.

  pip install -e . && python -m coprop_jax.demo [--workdir /tmp/coprop_demo]
  python -m coprop_jax.demo --config configs/demo.py:smoke=True --workdir /tmp/demo_smoke  # tests

Data: MOC-like synthetic MS3-layout clips (data_pipelines/moc_synth.py: three objects, one
sounding at a time, the source switching inside 3 of 4 clips, silent distractors); by default the
"moc_ambiguous" script (a frame's audio is often faint and masked by an off-screen sound, objects
move and resize fast, distractors look alike), `data=clean` the plain "moc" script; with the
weight-free per-frame audio embedding `logmel_stats` instead of VGGish (no weights to download).
Models: the small-run sizes of configs/base.py:apply_runlocal (PVT-v2-b0 with one block per stage,
width 32, for the KPF; a one-layer, width-64 propagator on MobileNetV2), at 64x64.
Stages and what they write: coprop_jax/demo.py. The targets it checks (demo.target_*) were set on
the clean data; measured figures and times of both variants: benchmarks/RESULTS.md, "Demo on both
data variants".

Config-string keys:
  smoke   True: the same code path with tiny data and a few steps (tests/test_demo.py)
  data    "ambiguous" (default: data.synthetic.generator="moc_ambiguous") or "clean" ("moc")
  stage, insert   as configs/coprop.py's (python -m coprop_jax.ablate sets them per run, so the
                  paper's tables run on the demo's data: --config configs/demo.py)
"""
from configs import coprop
from configs.parts.demo import get_demo_config
from coprop_jax.utils.config import parse_config_string

# Config-string `data=` -> data.synthetic.generator (data_pipelines/moc_synth.py).
DATA_VARIANTS = {"ambiguous": "moc_ambiguous", "clean": "moc"}


def get_config(arg=None):
  args = parse_config_string(arg, {"smoke": False, "data": "ambiguous", "stage": "kpf",
                                   "insert": "4layer"})
  if args.data not in DATA_VARIANTS:
    raise ValueError(f"configs/demo.py: data must be one of {sorted(DATA_VARIANTS)}, got {args.data!r}")
  # the small-run sizes, synthetic MS3
  c = coprop.get_config(f"dataset=ms3,runlocal=True,stage={args.stage},insert={args.insert}")
  d = c.data
  d.synthetic.generator = DATA_VARIANTS[args.data]
  d.audio_embed = "logmel_stats"
  d.image_size = 64
  d.batch_size = 4
  d.synthetic.num_videos = 120          # 72 train / 24 val / 24 test
  d.control_points_fallback = "gt"      # coprop_jax.demo writes the GT control points file
  d.augment.random_resized_crop_scale = (0.7, 1.0)
  c.rcpg.method = "cosine"              # control points of the evaluation (no audio LLM here):
                                        # on the data's audio_embed (coprop_jax.demo)
  c.train.lr = 2e-3
  # Optimised XLA code: a first compile takes minutes on 2 busy cores, but steps run ~5x (KPF) to
  # ~10x (stage 2's convolutions) faster than at -O0, whose stage-2 compile is no shorter; the
  # stages share compiles through the cache below.
  c.train.fast_compile = False
  c.train.log_every = 25
  c.train.checkpoint_every = 0          # the last step only (always saved)
  c.train.keep_checkpoints = 1
  c.train.compilation_cache_dir = "{workdir}/xla_cache"   # the demo's workdir: shared by the stages
  c.eval.every_steps = 0                # coprop_jax.demo evaluates once, at the end
  c.demo = get_demo_config()
  if args.smoke:
    d.image_size = 32
    d.batch_size = 2
    d.synthetic.num_videos = 10         # 6 / 2 / 2
    dm = c.demo
    dm.kpf_steps, dm.finetune_steps, dm.blind_steps, dm.propagator_steps = 4, 2, 2, 2
    dm.pretrain_steps = 2
    dm.num_shown = 1
    c.train.fast_compile = True         # -O0 compiles: a few steps only
  return c
