"""Train-step benchmark: compile time, step time, frames/s, FLOPs and FLOP utilisation.

  PYTHONPATH=$PWD python benchmarks/train_step.py --preset b0          # b0, 224x224, batch 4
  PYTHONPATH=$PWD python benchmarks/train_step.py --preset tiny        # seconds
  PYTHONPATH=$PWD python benchmarks/train_step.py --preset paper --steps 2   # PVT-v2-b5, 224
  PYTHONPATH=$PWD python benchmarks/train_step.py --preset b0 --platform gpu --dtype bfloat16
  PYTHONPATH=$PWD python benchmarks/train_step.py --stage propagator --preset tiny
  PYTHONPATH=$PWD python benchmarks/train_step.py --stage propagator --preset paper --steps 2
  PYTHONPATH=$PWD python benchmarks/train_step.py --stage propagator --preset tiny --formulation both

What is timed: one train step (`coprop_jax.train.state.make_train_step`: forward + backward +
Adam, state donated), lowered and compiled ahead of time from abstract shapes, then run `--steps`
times on device-resident inputs after one warm-up step.
  --stage kpf: the Keyframe Processor (`keyframe_task.make_loss_fn`) on `batch` frames;
  --stage propagator: stage 2 (`propagator_losses.make_loss_fn`: the AIP propagated through
    `batch` clips of `--frames` frames from a keyframe at frame 0, BPTT through the clip, AOT's
    top-k CE + soft Jaccard; teacher forcing, the first phase of AOT's recipe). "paper" is
    AOT-L sized (MobileNetV2 encoder, 3 LSTT layers, width 256, 224x224, AOT's 5-frame
    sequences); frames_per_s counts every frame of the clips. The optimizer is the stage's own
    (`PropagatorTask.make_optimizer`: AOT's frozen encoder stages, encoder rate ratio).
    --formulation new (default): the step as trained (encoder batched over all frames before
    the frame scan, `propagator.conv_impl` "auto", frozen parameters not differentiated);
    old: the step it replaced (encoder inside the scan with `lax.cond`, XLA convolutions, every
    parameter differentiated); both: old then new in the same process (one record each).

Prints JSON lines:
  {"what": "peak", ...}       the peak used for utilisation: on CPU the dense-matmul FLOP/s
                              measured in this process (jitted NxN float32 matmul, best of
                              several runs); on GPU/TPU the published dense bf16 peak of the
                              device kind (PEAK_BF16 below) unless --peak_tflops is given.
  {"what": "kpf_train_step" | "propagator_train_step", ...} compile_s (wall) and compile_cpu_s (CPU time of this process
                              over all its threads: on a shared box the wall time grows with
                              the load, the CPU time hardly), flops_per_step (XLA cost analysis, see below),
                              memory analysis (MiB), step_s (median), frames_per_s,
                              achieved_tflops (= flops_per_step / step_s), utilisation.

Utilisation on a CPU: the box may be shared, so every timed step is followed by a ~1 s burst of
the same matmul and `utilisation` is the median over steps of (step FLOP/s) / (burst FLOP/s):
load from other processes slows both alike. `utilisation_vs_peak` is the conservative figure:
fastest step against the fastest matmul rate seen in the run. On GPU/TPU: median step against
the published peak.

FLOPs: XLA's cost analysis counts a while loop's body once, whatever its trip count, so the
figure for a program with scanned layers would miss (depth - 1) layers. `flops_per_step` is
therefore the cost analysis of the same step lowered with the layers unrolled and without remat
(model FLOPs: what the network needs, not what rematerialisation recomputes), taken on the lowered
HLO (no compile); `compiled_flops` is the compiled program's own figure when the program has no
scanned layers. The propagator's scan over frames is unrolled for the count the same way (every
`lax.scan` traced with unroll=True while the reference is lowered).

--profile DIR writes a jax.profiler trace of the timed steps (TensorBoard / Perfetto); on CPU
`benchmarks/profile_summary.py DIR` groups its XLA ops.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


# Published dense (no sparsity) bfloat16 peak per chip, TFLOP/s, matched against
# `jax.devices()[0].device_kind` by substring (first match wins, so longer names come first).
PEAK_BF16 = (
    ("H100 PCIe", 756.0),
    ("H100", 989.4),          # SXM / HBM3
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("V100", 125.0),          # fp16 tensor cores (no bf16)
    ("TPU v6", 918.0),        # Trillium ("TPU v6 lite")
    ("TPU v5 lite", 197.0),   # v5e
    ("TPU v5", 459.0),        # v5p
    ("TPU v4", 275.0),
    ("TPU v3", 61.5),         # per core (JAX device = core)
    ("TPU v2", 22.5),         # per core
)

PROPAGATOR_PRESETS = {
    # name: (encoder, size, clips, frames, LSTT layers, d_model, heads, ffn)
    "paper": ("mobilenet_v2", 224, 2, 5, 3, 256, 8, 1024),    # AOT-L sized
    "tiny": ("mobilenet_v2", 64, 1, 3, 1, 64, 4, 128),
}

PRESETS = {
    # name: (backbone, size, batch, backbone_depths, d_model, num_heads, enc/dec layers)
    "paper": ("pvt_v2_b5", 224, 4, None, 256, 8, 2),
    "b0": ("pvt_v2_b0", 224, 4, None, 256, 8, 2),
    "tiny": ("pvt_v2_b0", 64, 2, (1, 1, 1, 1), 32, 4, 1),
}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--stage", default="kpf", choices=["kpf", "propagator"])
  p.add_argument("--preset", default="b0", choices=sorted(PRESETS),
                 help="kpf: paper = PVT-v2-b5 224 batch 4; b0: PVT-v2-b0 224 batch 4; tiny: 64 px. "
                      "propagator: paper = AOT-L sized, 224, 2 clips x 5 frames; tiny: 64 px")
  p.add_argument("--frames", type=int, default=None, help="propagator: frames per clip")
  p.add_argument("--layers", type=int, default=None, help="propagator: LSTT layers (override)")
  p.add_argument("--backbone", default=None, help="override the preset's backbone")
  p.add_argument("--size", type=int, default=None, help="override the preset's image size")
  p.add_argument("--batch", type=int, default=None,
                 help="frames (kpf) or clips (propagator) per step (override)")
  p.add_argument("--num_classes", type=int, default=1)
  p.add_argument("--formulation", default="new", choices=["new", "old", "both"],
                 help="propagator: the step as trained, the one it replaced, or both")
  p.add_argument("--conv_impl", default="auto", choices=["auto", "xla", "shift"],
                 help="propagator.conv_impl of the new formulation")
  p.add_argument("--encoder", default=None, choices=["mobilenet_v2", "resnet50", "standin"],
                 help="propagator: override the preset's encoder; standin = strided average "
                      "pooling to MobileNetV2's map shapes, no parameters (smoke runs)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--scan_layers", type=int, default=1, choices=[0, 1],
                 help="1: repeated layers as a scan over stacked params; 0: unrolled")
  p.add_argument("--remat", type=int, default=0, choices=[0, 1],
                 help="recompute each scanned layer in the backward pass")
  p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
  p.add_argument("--compile_only", action="store_true", help="no run: compile + FLOPs only")
  p.add_argument("--platform", default=None,
                 help="JAX platform (cpu, gpu, tpu); default: JAX's choice")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="peak to compare with (default: measured matmul on CPU, table on GPU/TPU)")
  p.add_argument("--matmul_n", type=int, default=2048, help="size of the CPU peak matmul")
  p.add_argument("--fast_compile", action="store_true",
                 help="XLA -O0 backend (coprop_jax.train.state.FAST_COMPILE; CPU tests)")
  p.add_argument("--xla_options", default="{}",
                 help='extra XLA compile options as JSON, e.g. \'{"xla_cpu_use_fusion_emitters": '
                      'false}\' (added to --fast_compile\'s)')
  p.add_argument("--profile", default=None, help="write a jax.profiler trace of the timed steps")
  a = p.parse_args(argv)
  if a.platform:
    os.environ["JAX_PLATFORMS"] = a.platform

  import jax
  import jax.numpy as jnp

  from coprop_jax.train.state import FAST_COMPILE

  dev = jax.devices()[0]
  peak = peak_flops(jax, jnp, dev, a)
  print(json.dumps(peak), flush=True)
  opts = dict(FAST_COMPILE if a.fast_compile else {}, **json.loads(a.xla_options)) or None
  records = []
  if a.stage == "propagator":
    if a.preset not in PROPAGATOR_PRESETS:
      sys.exit(f"train_step.py: --stage propagator has presets {sorted(PROPAGATOR_PRESETS)}")
    forms = ["old", "new"] if a.formulation == "both" else [a.formulation]
    setups = [propagator_setup(a, opts, f) for f in forms]
  else:
    setups = [kpf_setup(a, opts)]
  for build, host_batch, frames_per_step, rec in setups:
    rec.update(dtype=a.dtype, compiler_options=opts or {}, platform=dev.platform,
               device=dev.device_kind)
    records.append(run(a, build, host_batch, frames_per_step, rec, peak, dev))
  return records


def kpf_setup(a, opts):
  """(build(scan, remat) -> (init, step), host batch, frames per step, record) of the KPF step."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np

  from coprop_jax.models.keyframe import KeyframeProcessor
  from coprop_jax.train.tasks import kpf as keyframe_task
  from coprop_jax.train.state import TrainState, make_optimizer, make_train_step

  backbone, size, batch, depths, d_model, heads, layers = PRESETS[a.preset]
  backbone = a.backbone or backbone
  size = a.size or size
  batch = a.batch or batch

  def make_model(scan_layers: bool, remat: bool):
    return KeyframeProcessor(backbone=backbone, d_model=d_model, num_heads=heads,
                             num_encoder_layers=layers, num_decoder_layers=layers,
                             num_classes=a.num_classes, backbone_depths=depths,
                             dtype=jnp.dtype(a.dtype), scan_layers=scan_layers, remat=remat)

  tc = ml_collections.ConfigDict(dict(optimizer="adam", lr=1e-4, weight_decay=0.0, grad_clip=0.0,
                                      loss=dict(bce_weight=1.0, iou_weight=1.0)))
  rng = np.random.default_rng(0)
  host_batch = dict(
      frames=rng.normal(size=(batch, 1, size, size, 3)).astype(np.float32),
      masks=(rng.random((batch, 1, size, size)) > 0.5).astype(np.int32),
      gt_valid=np.ones((batch, 1), bool), frame_valid=np.ones((batch, 1), bool),
      audio_embed=rng.normal(size=(batch, 1, 128)).astype(np.float32),
      control_points=np.ones((batch, 1), np.int32))
  if a.num_classes > 1:
    host_batch["masks"] = rng.integers(0, a.num_classes, (batch, 1, size, size)).astype(np.int32)
  tx = make_optimizer(tc)
  one = keyframe_task.flatten_frames({k: v[:1] for k, v in host_batch.items()})

  def build_model(model):
    def init():
      v = dict(model.init(jax.random.PRNGKey(0), jnp.asarray(one["frames"]),
                          audio_embed=jnp.asarray(one["audio_embed"])))
      params = v.pop("params")
      return TrainState.create(params, tx, extra=v)
    step = make_train_step(keyframe_task.make_loss_fn(model, tc, keyframes_only=False),
                           compiler_options=opts)
    return init, step

  rec = dict(what="kpf_train_step", backbone=backbone, size=size, batch_frames=batch,
             d_model=d_model, layers=layers, backbone_depths=depths, scan_layers=a.scan_layers,
             remat=a.remat)
  return (lambda scan, remat: build_model(make_model(scan, remat))), host_batch, batch, rec


def propagator_setup(a, opts, formulation: str = "new"):
  """(build(scan, remat) -> (init, step), host batch, frames per step, record) of the stage-2
  step (see the module docstring) in `formulation` "new" or "old"."""
  import jax
  import numpy as np

  from configs.base import get_base_config
  from coprop_jax.models import propagator as prop_lib
  from coprop_jax.train import propagator_losses
  from coprop_jax.train.state import TrainState, make_train_step
  from coprop_jax.train.tasks.propagator import PropagatorTask

  encoder, size, clips, frames, layers, d_model, heads, ffn = PROPAGATOR_PRESETS[a.preset]
  size, clips, frames = a.size or size, a.batch or clips, a.frames or frames
  encoder = a.encoder or encoder
  standin = encoder == "standin"
  encoder = "mobilenet_v2" if standin else encoder
  layers = a.layers or layers
  cfg = get_base_config()
  p = cfg.propagator
  p.encoder, p.num_layers, p.d_model, p.num_heads, p.ffn_dim = encoder, layers, d_model, heads, ffn
  p.dtype = a.dtype
  p.conv_impl = "xla" if formulation == "old" else a.conv_impl
  cfg.keyframe.num_classes = 1
  cfg.train.num_steps = 1000
  rng = np.random.default_rng(0)
  host_batch = dict(
      frames=rng.normal(size=(clips, frames, size, size, 3)).astype(np.float32),
      masks=(rng.random((clips, frames, size, size)) > 0.5).astype(np.int32),
      gt_valid=np.ones((clips, frames), bool), frame_valid=np.ones((clips, frames), bool),
      audio_embed=rng.normal(size=(clips, frames, 128)).astype(np.float32),
      control_points=np.eye(1, frames, dtype=np.int32).repeat(clips, 0))
  task = PropagatorTask(cfg)
  task.set_total_steps(cfg.train.num_steps)

  encode = standin_encode if standin else None

  def init_params():
    if standin:
      model = prop_lib.from_config(p)
      img = jax.numpy.zeros((1, size, size, 3))
      prop = prop_lib.init_params(model, jax.random.PRNGKey(0), standin_encode(None, img),
                                  jax.numpy.zeros((1, 128)),
                                  jax.nn.one_hot(jax.numpy.zeros((1, size, size), "int32"),
                                                 model.max_objects + 1))
      return {"propagator": prop, "encoder": {}}, {"encoder": {}}
    v = prop_lib.init(p, jax.random.PRNGKey(0), (size, size))
    enc = dict(v["encoder"])
    return {"propagator": v["propagator"], "encoder": enc.pop("params")}, {"encoder": enc}

  params_shape = jax.eval_shape(init_params)[0]
  if standin:
    tx = __import__("optax").adam(1e-4)
    trainable = None
  else:
    tx = task.make_optimizer(params_shape)
    trainable = task.trainable(params_shape) if formulation == "new" else None

  def build(scan: bool, remat: bool):
    del scan          # the LSTT layers are a Python loop (no scan variant)
    p.remat = bool(remat)

    def init():
      params, extra = init_params()
      return TrainState.create(params, tx, extra=extra)

    loss = propagator_losses.make_loss_fn(
        cfg, encode=encode, formulation="per_frame" if formulation == "old" else "batched")
    step = make_train_step(loss, compiler_options=opts, trainable=trainable)
    return init, step

  rec = dict(what="propagator_train_step", formulation=formulation,
             conv_impl=prop_lib.resolve_conv_impl(p.conv_impl),
             encoder="standin" if standin else encoder, size=size,
             clips=clips, frames_per_clip=frames, layers=layers, d_model=d_model, remat=a.remat)
  return build, host_batch, clips * frames, rec


def standin_encode(_, x):
  """Stand-in visual encoder (no parameters): strided average pooling of the image to
  MobileNetV2's four maps (24@1/4, 32@1/8, 96@1/16, 1280@1/16), channels tiled."""
  import jax
  import jax.numpy as jnp
  x = x.astype(jnp.float32)
  pool = lambda s: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, s, s, 1), (1, s, s, 1), "VALID") / (s * s)
  rep = lambda y, c: jnp.tile(y, (1, 1, 1, -(-c // 3)))[..., :c]
  return [rep(pool(4), 24), rep(pool(8), 32), rep(pool(16), 96), rep(pool(16), 1280)]


class _unrolled_scans:
  """While active, every `jax.lax.scan` is traced fully unrolled (for FLOP counting only)."""

  def __enter__(self):
    import functools
    import jax
    self.orig = jax.lax.scan
    jax.lax.scan = functools.partial(self.orig, unroll=True)

  def __exit__(self, *exc):
    import jax
    jax.lax.scan = self.orig


def run(a, build, host_batch, batch, rec, peak, dev):
  """Lowers, compiles, times and prints one record (see the module docstring)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  init, step = build(bool(a.scan_layers), bool(a.remat))
  abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host_batch)
  abstract_state = jax.eval_shape(init)
  nparams = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_state.params)))

  # Model FLOPs from the unrolled, remat-free lowering (see the module docstring).
  t0 = time.perf_counter()
  ref_init, ref_step = build(False, False)
  with _unrolled_scans():
    flops_lowered = cost_flops(ref_step.lower(jax.eval_shape(ref_init), abstract_batch))
  flops_s = time.perf_counter() - t0
  init, step = build(bool(a.scan_layers), bool(a.remat))

  t0 = time.perf_counter()
  lowered = step.lower(abstract_state, abstract_batch)
  lower_s = time.perf_counter() - t0
  t0, c0 = time.perf_counter(), time.process_time()
  compiled = lowered.compile()
  compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
  rec.update(params=nparams, lower_s=round(lower_s, 2), compile_s=round(compile_s, 2),
             compile_cpu_s=round(compile_cpu_s, 2),
             flops_per_step=flops_lowered, flops_lowering_s=round(flops_s, 2))
  if not a.scan_layers and rec["what"] == "kpf_train_step":
    rec["compiled_flops"] = cost_flops(compiled)
  mem = compiled.memory_analysis()
  if mem is not None:
    for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes"):
      rec[k.replace("_size_in_bytes", "_MiB")] = round(getattr(mem, k, 0) / 2 ** 20, 1)
  if a.compile_only:
    print(json.dumps(rec), flush=True)
    return rec

  state = jax.jit(init)()
  dbatch = jax.device_put(host_batch)
  state, m = compiled(state, dbatch)          # warm-up
  jax.block_until_ready(m["loss"])
  burst = matmul_burst(jax, jnp, a.matmul_n) if dev.platform == "cpu" else None
  if a.profile:
    os.makedirs(a.profile, exist_ok=True)
    with open(os.path.join(a.profile, "step.hlo.txt"), "w") as f:   # for profile_summary.py
      f.write(compiled.as_text())
    jax.profiler.start_trace(a.profile)
  times, rates = [], []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    state, m = compiled(state, dbatch)
    jax.block_until_ready(m["loss"])
    times.append(time.perf_counter() - t0)
    if burst is not None and not a.profile:
      rates.append(burst())    # the shared box's matmul rate right after this step
  if a.profile:
    jax.profiler.stop_trace()
  dt = float(np.median(times))
  if flops_lowered is None:   # XLA:GPU returns no cost analysis for the lowered HLO
    flops_lowered = rec.get("compiled_flops") or float("nan")
  achieved = flops_lowered / dt
  rec.update(step_s=round(dt, 3), step_s_all=[round(t, 3) for t in times],
             frames_per_s=round(batch / dt, 3), achieved_tflops=round(achieved / 1e12, 5),
             peak_tflops=peak["peak_tflops"], loss=float(m["loss"]))
  if rates:
    # CPU: each step is paired with a matmul burst run right after it, so load from other
    # processes on the box slows both alike; utilisation = median over steps of the ratio.
    ratios = [flops_lowered / t / r for t, r in zip(times, rates)]
    rec.update(matmul_tflops_interleaved=[round(r / 1e12, 5) for r in rates],
               utilisation=round(float(np.median(ratios)), 4),
               utilisation_vs_peak=round(flops_lowered / min(times) / 1e12
                                         / max(peak["peak_tflops"], max(rates) / 1e12), 4))
  else:
    rec["utilisation"] = round(achieved / (peak["peak_tflops"] * 1e12), 4)
  if dev.platform != "cpu":
    stats = dev.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      rec["peak_memory_MiB"] = round(stats["peak_bytes_in_use"] / 2 ** 20, 1)
  print(json.dumps(rec), flush=True)
  return rec


def matmul_burst(jax, jnp, n: int, seconds: float = 1.0):
  """A function timing back-to-back jitted n x n float32 matmuls for about `seconds`, returning
  FLOP/s."""
  x = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  mm = jax.jit(lambda u: u @ u)
  jax.block_until_ready(mm(x))
  t0 = time.perf_counter()
  jax.block_until_ready(mm(x))
  reps = max(1, int(seconds / max(time.perf_counter() - t0, 1e-4)))

  def run() -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
      y = mm(x)
    jax.block_until_ready(y)
    return reps * 2 * n ** 3 / (time.perf_counter() - t0)

  return run


def cost_flops(obj) -> float | None:
  cost = obj.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) if cost and "flops" in cost else None


def peak_flops(jax, jnp, dev, a) -> dict:
  """The peak to compare with (see the module docstring)."""
  if a.peak_tflops is not None:
    return dict(what="peak", source="--peak_tflops", device=dev.device_kind,
                peak_tflops=a.peak_tflops)
  if dev.platform == "cpu":
    n = a.matmul_n
    x = jnp.asarray(jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32))
    mm = jax.jit(lambda u, v: u @ v)
    jax.block_until_ready(mm(x, x))
    best = float("inf")
    for _ in range(5):
      t0 = time.perf_counter()
      jax.block_until_ready(mm(x, x))
      best = min(best, time.perf_counter() - t0)
    return dict(what="peak", source=f"measured jitted {n}x{n} float32 matmul (best of 5)",
                device=dev.device_kind, peak_tflops=round(2 * n ** 3 / best / 1e12, 5))
  for name, tflops in PEAK_BF16:
    if name.lower() in dev.device_kind.lower():
      return dict(what="peak", source=f"published dense bf16 peak ({name})",
                  device=dev.device_kind, peak_tflops=tflops)
  sys.exit(f"train_step.py: no published peak for device kind {dev.device_kind!r}; "
           "pass --peak_tflops")


if __name__ == "__main__":
  main()
