"""Keyframe Processor train-step benchmark: frames/s, compiled memory, XLA FLOPs.

  python benchmarks/keyframe.py --backbone pvt_v2_b0 --size 224 --batch 4 --steps 5
  python benchmarks/keyframe.py --backbone pvt_v2_b5 --size 224 --batch 4 --compile-only

One train step = forward + backward + Adam update of the full KPF (paper widths: d_model 256,
8 heads, 2 encoder + 2 decoder layers) on `batch` frames (B=batch clips of T=1 frame: the KPF is
per frame). Prints one JSON object per line. Runs on any backend (sizes from flags).
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from coprop_jax.models.keyframe import KeyframeProcessor
from coprop_jax.train.tasks import kpf as keyframe_task
from coprop_jax.train.state import TrainState, make_optimizer, make_train_step


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--backbone", default="pvt_v2_b0")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--num_classes", type=int, default=1)
  p.add_argument("--d_model", type=int, default=256)
  p.add_argument("--depths", default="", help="backbone blocks per stage, e.g. 1,1,1,1 (default: the variant's)")
  p.add_argument("--layers", type=int, default=2, help="KPF encoder / decoder layers")
  p.add_argument("--fast_compile", action="store_true", help="XLA -O0 (state.FAST_COMPILE; smoke runs)")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--compile-only", action="store_true",
                 help="lower+compile from abstract shapes only (no params allocated, no run)")
  a = p.parse_args(argv)

  depths = tuple(int(x) for x in a.depths.split(",")) if a.depths else None
  model = KeyframeProcessor(backbone=a.backbone, d_model=a.d_model, num_classes=a.num_classes,
                            dtype=jnp.dtype(a.dtype), backbone_depths=depths,
                            num_encoder_layers=a.layers, num_decoder_layers=a.layers)
  tc = ml_collections.ConfigDict(dict(optimizer="adam", lr=1e-4, weight_decay=0.0, grad_clip=0.0,
                                      loss=dict(bce_weight=1.0, iou_weight=1.0)))
  b, s = a.batch, a.size
  rng = np.random.default_rng(0)
  batch = dict(frames=rng.normal(size=(b, 1, s, s, 3)).astype(np.float32),
               masks=(rng.random((b, 1, s, s)) > 0.5).astype(np.int32),
               gt_valid=np.ones((b, 1), bool), frame_valid=np.ones((b, 1), bool),
               audio_embed=rng.normal(size=(b, 1, 128)).astype(np.float32),
               control_points=np.ones((b, 1), np.int32))
  if a.num_classes > 1:
    batch["masks"] = rng.integers(0, a.num_classes, (b, 1, s, s)).astype(np.int32)
  tx = make_optimizer(tc)
  f = keyframe_task.flatten_frames({k: v[:1] for k, v in batch.items()})

  def init():
    v = dict(model.init(jax.random.PRNGKey(0), jnp.asarray(f["frames"]),
                        audio_embed=jnp.asarray(f["audio_embed"])))
    params = v.pop("params")
    return TrainState.create(params, tx, extra=v)

  abstract_state = jax.eval_shape(init)
  nparams = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_state.params)))
  from coprop_jax.train.state import FAST_COMPILE
  step = make_train_step(keyframe_task.make_loss_fn(model, tc, keyframes_only=False),
                         compiler_options=FAST_COMPILE if a.fast_compile else None)
  abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
  t0 = time.perf_counter()
  compiled = step.lower(abstract_state, abstract_batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  rec = dict(what="kpf_train_step", backbone=a.backbone, size=s, batch_frames=b,
             dtype=a.dtype, device=jax.devices()[0].device_kind, params=nparams,
             compile_s=round(compile_s, 1),
             flops_per_step=float(cost.get("flops", float("nan"))) if cost else None)
  if mem is not None:
    for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes"):
      rec[k.replace("_size_in_bytes", "_MiB")] = round(getattr(mem, k, 0) / 2 ** 20, 1)
  print(json.dumps(rec), flush=True)
  if a.compile_only:
    return
  state = jax.jit(init)()
  state, m = compiled(state, batch)
  jax.block_until_ready(m["loss"])
  t0 = time.perf_counter()
  for _ in range(a.steps):
    state, m = compiled(state, batch)
  jax.block_until_ready(m["loss"])
  dt = (time.perf_counter() - t0) / a.steps
  print(json.dumps(dict(what="kpf_train_step_run", backbone=a.backbone, size=s, batch_frames=b,
                        step_s=round(dt, 3), frames_per_s=round(b / dt, 2),
                        loss=float(m["loss"]))), flush=True)


if __name__ == "__main__":
  main()
