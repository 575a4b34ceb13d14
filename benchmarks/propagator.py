"""Propagator inference benchmark: one JSON line per clip length.

python benchmarks/propagator.py [--frames 8,64,512] [--size 224] [--layers 3] [--d_model 256]
    [--dtype float32] [--run_frames 8]
temp_bytes comes from the compiled executable's memory analysis (lower/compile, no execution);
frames_per_s is measured only for T <= --run_frames. The encoder is a fixed stand-in producing
MobileNetV2-shaped maps (24@1/4, 32@1/8, 96@1/16, 1280@1/16) from strided average pooling, so the
figures cover the propagator itself.
"""
import argparse, json, resource, time

import jax
import jax.numpy as jnp

from coprop_jax.models import propagator as P


def fake_encoder(_, x):
  pool = lambda s: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, s, s, 1), (1, s, s, 1), "VALID") / (s * s)
  rep = lambda y, c: jnp.tile(y, (1, 1, 1, -(-c // 3)))[..., :c]
  return [rep(pool(4), 24), rep(pool(8), 32), rep(pool(16), 96), rep(pool(16), 1280)]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--frames", default="8,64,512")
  ap.add_argument("--size", type=int, default=224)
  ap.add_argument("--layers", type=int, default=3)
  ap.add_argument("--d_model", type=int, default=256)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--run_frames", type=int, default=8)
  a = ap.parse_args()
  m = P.Propagator(num_layers=a.layers, d_model=a.d_model, ffn_dim=4 * a.d_model, max_objects=1,
                   dtype=jnp.dtype(a.dtype))
  s = a.size
  frame = jnp.zeros((1, s, s, 3))
  mask = jnp.zeros((1, s, s), jnp.int32)
  params = jax.jit(lambda r: P.init_params(m, r, fake_encoder(None, frame), jnp.zeros((1, 1, 128)),
                                           jax.nn.one_hot(mask, 2)))(jax.random.PRNGKey(0))
  fn = jax.jit(lambda p, mk, f, au: P.propagate(m, {"propagator": p}, mk, f, au, fake_encoder))
  for t in [int(x) for x in a.frames.split(",")]:
    frames = jax.ShapeDtypeStruct((1, t, s, s, 3), jnp.float32)
    audio = jax.ShapeDtypeStruct((1, t, 128), jnp.float32)
    t0 = time.perf_counter()
    compiled = fn.lower(params, mask, frames, audio).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    fps = None
    if t <= a.run_frames:
      args = (params, mask, jnp.zeros((1, t, s, s, 3)), jnp.zeros((1, t, 128)))
      compiled(*args).block_until_ready()
      t0 = time.perf_counter()
      compiled(*args).block_until_ready()
      fps = t / (time.perf_counter() - t0)
    print(json.dumps(dict(frames=t, height=s, width=s, frames_per_s=fps, compile_s=round(compile_s, 2),
                          temp_bytes=getattr(mem, "temp_size_in_bytes", None),
                          peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                          device=jax.devices()[0].platform)), flush=True)


if __name__ == "__main__":
  main()
