"""Full-pipeline inference benchmark: control points -> KPF on keyframes -> propagation.

  PYTHONPATH=$PWD python benchmarks/inference.py                         # tiny models, 64 px
  PYTHONPATH=$PWD python benchmarks/inference.py --preset paper --lengths 10,100,1000
  PYTHONPATH=$PWD python benchmarks/inference.py --preset paper --platform gpu --dtype bfloat16

For each clip length T in --lengths, one clip of T random frames (control point every
--keyframe_every frames, frame 0 always) goes through the public API,
`coprop_jax.pipeline.make_segmenter(config).segment(params, batch, keyframes="kpf")`: the KPF
runs once, batched over the keyframes (chunks of at most `keyframe_batch`), then ONE compiled scan
propagates through all frames (clip padded to a multiple of propagator.length_bucket).

Prints one JSON line per T: first_call_s (includes compiling), frames_per_s (median of --repeats
calls after the first, whole `segment` incl. host work), and the compiled memory of the two
executables (XLA memory analysis, MiB): the propagation scan (`prop_*`) and the KPF chunk
(`kpf_*`). `prop_temp_MiB` is the working memory of the scan: it must not grow with T (the
memory ring holds `memory_slots` frames whatever the length); the KPF chunk's grows with the
number of keyframes up to --keyframe_batch, then stays; `peak_temp_MiB` is the larger of the two
(they run one after the other). Arguments and outputs grow with T because they ARE the clip
(frames in, masks/probabilities out). A persistent compilation cache
(a temporary directory) lets the memory analysis reuse the executables `segment` compiled.

Presets: tiny = the runlocal models (PVT-v2-b0 with one block per stage, width 32; one LSTT
layer of width 64) at 64 px; paper = PVT-v2-b5 KPF (width 256) + AOT-L sized propagator
(MobileNetV2, 3 LSTT layers, width 256) at 224 px.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--preset", default="tiny", choices=["tiny", "paper"])
  p.add_argument("--size", type=int, default=None, help="image size (default: preset's)")
  p.add_argument("--lengths", default="10,100,1000", help="clip lengths T, comma-separated")
  p.add_argument("--keyframe_every", type=int, default=10, help="a control point every N frames")
  p.add_argument("--repeats", type=int, default=2, help="timed calls after the first")
  p.add_argument("--keyframe_batch", type=int, default=16,
                 help="most keyframes per KPF call (Segmenter's keyframe_batch)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--platform", default=None, help="JAX platform (cpu, gpu, tpu)")
  a = p.parse_args(argv)
  if a.platform:
    os.environ["JAX_PLATFORMS"] = a.platform

  import jax
  import numpy as np

  from configs.base import apply_runlocal, get_base_config
  from coprop_jax import pipeline

  cache = tempfile.mkdtemp(prefix="coprop_inference_cache_")
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  cfg = get_base_config()
  if a.preset == "tiny":
    apply_runlocal(cfg)
    size = a.size or 64
  else:
    cfg.keyframe.backbone = "pvt_v2_b5"
    size = a.size or 224
  cfg.keyframe.dtype = a.dtype
  cfg.propagator.dtype = a.dtype
  seg = pipeline.make_segmenter(cfg, keyframe_batch=a.keyframe_batch)
  params = pipeline.init_params(cfg, jax.random.PRNGKey(0), size, audio_logmel=False)
  dev = jax.devices()[0]
  rng = np.random.default_rng(0)

  for t in [int(x) for x in a.lengths.split(",")]:
    cp = np.zeros((1, t), np.int32)
    cp[0, ::a.keyframe_every] = 1
    batch = dict(frames=rng.integers(0, 256, (1, t, size, size, 3), dtype=np.uint8),
                 control_points=cp, audio_embed=rng.normal(size=(1, t, 128)).astype(np.float32))
    t0 = time.perf_counter()
    out = seg.segment(params, batch)
    first = time.perf_counter() - t0
    times = []
    for _ in range(a.repeats):
      t0 = time.perf_counter()
      out = seg.segment(params, batch)
      times.append(time.perf_counter() - t0)
    dt = float(np.median(times))
    rec = dict(what="inference", preset=a.preset, size=size, T=t, keyframes=int(cp.sum()),
               platform=dev.platform, device=dev.device_kind, dtype=a.dtype,
               first_call_s=round(first, 2), segment_s=round(dt, 3),
               frames_per_s=round(t / dt, 2), masks_shape=list(out["masks"].shape))
    rec.update(memory(seg, params, batch, cfg, size))
    print(json.dumps(rec), flush=True)


def memory(seg, params, batch, cfg, size) -> dict:
  """Compiled memory (MiB) of the propagation scan and the KPF chunk for this batch's shapes."""
  import jax
  import numpy as np

  from coprop_jax import propagation
  b, t = batch["control_points"].shape
  tp = propagation.bucket_length(t, int(cfg.propagator.length_bucket))
  sds = jax.ShapeDtypeStruct
  pp = {"propagator": params["propagator"], "encoder": params["encoder"]}
  from coprop_jax.models import propagator as prop_lib
  mem0 = jax.eval_shape(lambda: propagation.empty_memory(
      seg.model, prop_lib.build_encoder(cfg.propagator)[1], pp["encoder"], (b, size, size, 3), np.uint8,
      int(cfg.propagator.memory_slots)))
  pargs = (pp, sds((b, tp, size, size, 3), np.uint8), sds((b, tp, size, size), np.int32),
           sds((b, tp), bool), sds((b, tp), np.int32), sds((b, tp, 128), np.float32), None, None,
           sds((b, tp), bool), mem0)
  out = {}
  prop = seg.propagate.jitted.lower(*pargs).compile().memory_analysis()
  k = min(seg.keyframe_batch, 1 << (int(batch["control_points"].sum()) - 1).bit_length())
  kpf = seg.kpf.lower(params["keyframe"], sds((k, size, size, 3), np.float32),
                      {"audio_embed": sds((k, 128), np.float32)}).compile().memory_analysis()
  for name, mem in (("prop", prop), ("kpf", kpf)):
    for f in ("argument", "output", "temp"):
      out[f"{name}_{f}_MiB"] = round(getattr(mem, f"{f}_size_in_bytes") / 2 ** 20, 2)
  # the two executables run one after the other: the call's peak working memory is the larger
  out["peak_temp_MiB"] = max(out["prop_temp_MiB"], out["kpf_temp_MiB"])
  out["padded_T"] = tp
  return out


if __name__ == "__main__":
  main()
