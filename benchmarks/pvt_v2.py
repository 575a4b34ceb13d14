"""PVT-v2 forward throughput: our jitted Flax model vs transformers' PyTorch `PvtV2Model` (eager).

Both run the same randomly initialised weights (the PyTorch model's, converted through
`coprop_jax.convert.pvt_v2`). Prints one JSON object per variant:

  {"bench": "pvt_v2_forward", "variant": "b0", "batch": 8, "height": 224, "width": 224,
   "dtype": "float32", "jax_device": "cpu", "jax_images_per_s": ..., "jax_compile_s": ...,
   "torch_device": "cpu", "torch_images_per_s": ..., "ratio_jax_over_torch": ...}

Run (CPU here; on a GPU host both frameworks pick the GPU unless told otherwise):
  PYTHONPATH=$PWD python benchmarks/pvt_v2.py --variants b0,b2,b5 --batch 8 --size 224
  PYTHONPATH=$PWD python benchmarks/pvt_v2.py --dtype bfloat16 --iters 50   # accelerator
Flags: --torch-device {auto,cpu,cuda,none} (none: JAX only, random params), --iters/--warmup,
--size 224 or HxW (e.g. 384x640), --max-seconds bounds the timed loop per framework.
"""
from __future__ import annotations

import argparse
import json
import os
import time

# PyTorch shares the accelerator in this process: do not let JAX grab 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _timing import parse_size, time_loop  # noqa: E402

from coprop_jax.convert import pvt_v2 as cv  # noqa: E402
from coprop_jax.models import pvt_v2 as pm  # noqa: E402


def random_params(variant: str, seed: int = 0):
  """Random float32 params of the variant's shapes (no init compile; for --torch-device none)."""
  shapes = pm.init_shapes(variant)
  rng = np.random.default_rng(seed)
  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return np.ones(s.shape, np.float32)
    if "bias" in name:
      return np.zeros(s.shape, np.float32)
    return (0.02 * rng.standard_normal(s.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def bench_variant(variant: str, args) -> dict:
  h, w = parse_size(args.size)
  x = np.random.default_rng(0).standard_normal((args.batch, h, w, 3)).astype(np.float32)
  row = {"bench": "pvt_v2_forward", "variant": variant, "batch": args.batch, "height": h,
         "width": w, "dtype": args.dtype}

  torch_model = None
  if args.torch_device != "none":
    import torch
    from transformers import PvtV2Config, PvtV2Model
    dev = args.torch_device
    if dev == "auto":
      dev = "cuda" if torch.cuda.is_available() else "cpu"
    spec = pm.get_spec(variant)
    torch.manual_seed(0)
    torch_model = PvtV2Model(PvtV2Config(
        hidden_sizes=list(spec.hidden_sizes), depths=list(spec.depths),
        mlp_ratios=list(spec.mlp_ratios), linear_attention=spec.linear)).eval()
    params = cv.from_torch_state_dict(
        {k: v.numpy() for k, v in torch_model.state_dict().items()}, variant)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    torch_model = torch_model.to(device=dev, dtype=tdtype)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device=dev, dtype=tdtype)

    def torch_fwd():
      with torch.inference_mode():
        out = torch_model(tx, output_hidden_states=True).hidden_states
      if dev == "cuda":
        torch.cuda.synchronize()
      return out

    row["torch_device"] = dev
    row["torch_threads"] = torch.get_num_threads()
  else:
    params = random_params(variant)

  model = pm.build_model(variant, dtype=jnp.dtype(args.dtype))
  params = jax.device_put(params)
  xj = jax.device_put(jnp.asarray(x))
  fwd = jax.jit(model.apply)
  t0 = time.perf_counter()
  compiled = fwd.lower({"params": params}, xj).compile()
  row["jax_compile_s"] = round(time.perf_counter() - t0, 2)
  row["jax_device"] = str(jax.devices()[0].platform)

  def jax_fwd():
    return jax.block_until_ready(compiled({"params": params}, xj))

  if torch_model is not None and args.dtype == "float32":
    ref = torch_fwd()
    got = jax_fwd()
    row["max_abs_diff_vs_torch"] = float(max(
        np.max(np.abs(np.asarray(g) - r.permute(0, 2, 3, 1).float().cpu().numpy()))
        for g, r in zip(got, ref)))

  sec, n = time_loop(jax_fwd, args.iters, args.warmup, args.max_seconds)
  row["jax_ms_per_batch"] = round(sec * 1e3, 2)
  row["jax_images_per_s"] = round(args.batch / sec, 2)
  row["jax_timed_iters"] = n
  if torch_model is not None:
    sec_t, n_t = time_loop(torch_fwd, args.iters, args.warmup, args.max_seconds)
    row["torch_ms_per_batch"] = round(sec_t * 1e3, 2)
    row["torch_images_per_s"] = round(args.batch / sec_t, 2)
    row["torch_timed_iters"] = n_t
    row["ratio_jax_over_torch"] = round(sec_t / sec, 3)
  return row


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--variants", default="b0,b2,b5",
                 help="comma-separated, from " + ",".join(pm.VARIANTS))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--size", default="224", help="224 or HxW")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--torch-device", default="auto", choices=["auto", "cpu", "cuda", "none"])
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--max-seconds", type=float, default=60.0,
                 help="stop a timed loop after this long (at least one timed call)")
  args = p.parse_args(argv)
  for v in args.variants.split(","):
    print(json.dumps(bench_variant(v.strip(), args)), flush=True)


if __name__ == "__main__":
  main()
