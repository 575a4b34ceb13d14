"""Propagator inference benchmark: one JSON line per clip length.

python benchmarks/propagator.py [--frames 8,64,512] [--size 224] [--encoder mobilenet_v2]
    [--output logits] [--layers 3] [--dtype float32] [--run_frames 8] [--valid_frac 1.0]
AOT-L sized (3 LSTT layers, d_model 256, 8 heads, FFN 1024, 11 ids (num_objects 1), 4 memory
slots, gap 5), one control point at frame 0. --output logits also returns [B, T, H, W, 11] logits;
ids returns only the int32 ids and float32 foreground probability.
compile_s / temp_bytes / output_bytes / argument_bytes come from lowering and compiling for
each T (no execution); frames_per_s is measured (second run) only for T <= --run_frames, with
the first ceil(valid_frac * T) frames valid and the rest padding (skipped by the scan), counting
all T frames.
--encoder fake replaces the visual encoder with strided average pooling producing
MobileNetV2-shaped maps (24@1/4, 32@1/8, 96@1/16, 1280@1/16), to isolate the propagator.
--conv_impl: the propagator's convolution form (propagator.conv_impl; "auto" = by backend).
--d_model / --heads / --ffn shrink the LSTT (smoke runs; defaults AOT-L).
"""
import argparse, json, math, resource, time

import jax
import jax.numpy as jnp

from configs.parts.propagator import get_propagator_config
from coprop_jax import propagation
from coprop_jax.models import propagator as P


def fake_encoder(_, x):
  pool = lambda s: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, s, s, 1), (1, s, s, 1), "VALID") / (s * s)
  rep = lambda y, c: jnp.tile(y, (1, 1, 1, -(-c // 3)))[..., :c]
  return [rep(pool(4), 24), rep(pool(8), 32), rep(pool(16), 96), rep(pool(16), 1280)]


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--frames", default="8,64,512")
  ap.add_argument("--size", type=int, default=224)
  ap.add_argument("--encoder", default="mobilenet_v2", choices=["fake", "mobilenet_v2", "resnet50"])
  ap.add_argument("--output", default="logits", choices=["logits", "ids"])
  ap.add_argument("--layers", type=int, default=3)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--run_frames", type=int, default=8)
  ap.add_argument("--valid_frac", type=float, default=1.0,
                  help="fraction of leading valid frames in the timed run (rest = padding)")
  ap.add_argument("--conv_impl", default="auto", choices=["auto", "xla", "shift"])
  ap.add_argument("--d_model", type=int, default=256)
  ap.add_argument("--heads", type=int, default=8)
  ap.add_argument("--ffn", type=int, default=1024)
  a = ap.parse_args(argv)
  cfg = get_propagator_config()
  cfg.num_layers, cfg.dtype, cfg.conv_impl = a.layers, a.dtype, a.conv_impl
  cfg.d_model, cfg.num_heads, cfg.ffn_dim = a.d_model, a.heads, a.ffn
  cfg.encoder = "mobilenet_v2" if a.encoder == "fake" else a.encoder
  s = a.size
  m = P.from_config(cfg)
  if a.encoder == "fake":
    encode = fake_encoder
    frame = jnp.zeros((1, s, s, 3))
    params = {"propagator": jax.jit(lambda r: P.init_params(
        m, r, fake_encoder(None, frame), jnp.zeros((1, 128)),
        jax.nn.one_hot(jnp.zeros((1, s, s), jnp.int32), m.max_objects + 1)))(jax.random.PRNGKey(0))}
  else:
    _, encode = P.build_encoder(cfg)
    params = jax.jit(lambda r: P.init(cfg, r, (s, s)))(jax.random.PRNGKey(0))
  run = propagation.make_propagate_fn(m, encode, memory_slots=cfg.memory_slots, mem_gap=cfg.mem_gap,
                                      return_logits=a.output == "logits")
  memory = jax.eval_shape(lambda: propagation.empty_memory(
      m, encode, params.get("encoder"), (1, s, s, 3), jnp.float32, cfg.memory_slots))
  records = []
  for t in [int(x) for x in a.frames.split(",")]:
    sd = jax.ShapeDtypeStruct
    frames, audio = sd((1, t, s, s, 3), jnp.float32), sd((1, t, 128), jnp.float32)
    masks, fv = sd((1, t, s, s), jnp.int32), sd((1, t), jnp.bool_)
    is_kf, nobj = jnp.arange(t)[None] == 0, jnp.ones((1, t), jnp.int32)
    t0 = time.perf_counter()
    compiled = run.jitted.lower(params, frames, masks, is_kf, nobj, audio, None, None, fv,
                                memory).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    fps = None
    if t <= a.run_frames:
      n_valid = max(1, math.ceil(a.valid_frac * t))
      args = (params, jnp.zeros((1, t, s, s, 3)), jnp.zeros((1, t, s, s), jnp.int32), is_kf, nobj,
              jnp.zeros((1, t, 128)), None, None, jnp.arange(t)[None] < n_valid,
              jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), memory))
      jax.block_until_ready(compiled(*args))
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      fps = t / (time.perf_counter() - t0)
    rec = dict(frames=t, valid_frames=n_valid if fps is not None else None,
                          height=s, width=s, encoder=a.encoder, output=a.output,
                          conv_impl=m.conv_impl, dtype=a.dtype,
                          frames_per_s=None if fps is None else round(fps, 2),
                          compile_s=round(compile_s, 2),
                          temp_bytes=getattr(mem, "temp_size_in_bytes", None),
                          output_bytes=getattr(mem, "output_size_in_bytes", None),
                          argument_bytes=getattr(mem, "argument_size_in_bytes", None),
                          peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                          device=jax.devices()[0].platform)
    print(json.dumps(rec), flush=True)
    records.append(rec)
  return records


if __name__ == "__main__":
  main()
