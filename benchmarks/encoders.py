"""CNN encoder forward throughput: our jitted Flax ResNet-50 / MobileNetV2 vs the PyTorch
transformers models (eager, `inference_mode`) with the same weights.

References: ResNet-50 = `ResNetModel(ResNetConfig())`; MobileNetV2 (AOT layout, output stride 16)
= `MobileNetV2Model(MobileNetV2Config(output_stride=16, tf_padding=False, layer_norm_eps=1e-5))`.
Weights: the PyTorch model's random init (BN statistics randomised), converted with
`coprop_jax.convert.{resnet,mobilenet_v2}`. Prints one JSON object per model:

  {"bench": "encoder_forward", "model": "resnet50", "batch": 8, "height": 224, "width": 224,
   "dtype": "float32", "jax_images_per_s": ..., "torch_images_per_s": ...,
   "ratio_jax_over_torch": ..., "max_abs_diff_vs_torch": ..., ...}

Run:  PYTHONPATH=$PWD python benchmarks/encoders.py --models resnet50,mobilenet_v2 --batch 8
Flags: --size 224 or HxW, --dtype {float32,bfloat16}, --torch-device {auto,cpu,cuda},
--iters/--warmup/--max-seconds (bounds each timed loop), --depthwise {shift,conv} (MobileNetV2).
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _timing import parse_size, time_loop  # noqa: E402


def _randomise_bn(model, torch):
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
        m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def build(name: str, dtype, depthwise: str):
  """-> (torch model, flax module, flax variables, torch outputs -> list of NCHW maps)."""
  import torch
  torch.manual_seed(0)
  if name == "resnet50":
    from transformers import ResNetConfig, ResNetModel
    from coprop_jax.convert import resnet as cv
    from coprop_jax.models.resnet import ResNet50
    tm = ResNetModel(ResNetConfig()).eval()
    _randomise_bn(tm, torch)
    variables = cv.from_torch_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    return tm, ResNet50(dtype=dtype), variables, lambda o: list(o.hidden_states[1:])
  if name == "mobilenet_v2":
    from transformers import MobileNetV2Config, MobileNetV2Model
    from coprop_jax.convert import mobilenet_v2 as cv
    from coprop_jax.models.mobilenet_v2 import MobileNetV2
    tm = MobileNetV2Model(MobileNetV2Config(output_stride=16, tf_padding=False,
                                            layer_norm_eps=1e-5), add_pooling_layer=False).eval()
    _randomise_bn(tm, torch)
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    variables = cv.from_torch_state_dict(cv.hf_to_torchvision_names(sd))
    return (tm, MobileNetV2(dtype=dtype, depthwise_impl=depthwise), variables,
            lambda o: [o.hidden_states[1], o.hidden_states[4], o.hidden_states[11],
                       o.last_hidden_state])
  raise ValueError(f"unknown model {name!r}; expected resnet50 or mobilenet_v2")


def bench(name: str, args) -> dict:
  import torch
  h, w = parse_size(args.size)
  x = np.random.default_rng(0).standard_normal((args.batch, h, w, 3)).astype(np.float32)
  row = {"bench": "encoder_forward", "model": name, "batch": args.batch, "height": h, "width": w,
         "dtype": args.dtype}
  if name == "mobilenet_v2":
    row["depthwise"] = args.depthwise
  tm, model, variables, taps = build(name, jnp.dtype(args.dtype), args.depthwise)
  dev = args.torch_device
  if dev == "auto":
    dev = "cuda" if torch.cuda.is_available() else "cpu"
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
  tm = tm.to(device=dev, dtype=tdtype)
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device=dev, dtype=tdtype)

  def torch_fwd():
    with torch.inference_mode():
      out = taps(tm(tx, output_hidden_states=True))
    if dev == "cuda":
      torch.cuda.synchronize()
    return out

  variables = jax.device_put(variables)
  xj = jax.device_put(jnp.asarray(x))
  t0 = time.perf_counter()
  compiled = jax.jit(model.apply).lower(variables, xj).compile()
  row["jax_compile_s"] = round(time.perf_counter() - t0, 2)
  row["jax_device"] = jax.devices()[0].platform
  row["torch_device"] = dev
  row["torch_threads"] = torch.get_num_threads()

  def jax_fwd():
    return jax.block_until_ready(compiled(variables, xj))

  if args.dtype == "float32":
    ref, got = torch_fwd(), jax_fwd()
    row["max_abs_diff_vs_torch"] = float(max(
        np.max(np.abs(np.asarray(g) - r.permute(0, 2, 3, 1).float().cpu().numpy()))
        for g, r in zip(got, ref)))
    row["max_abs_ref"] = float(max(r.abs().max() for r in ref))
  sec, n = time_loop(jax_fwd, args.iters, args.warmup, args.max_seconds)
  sec_t, n_t = time_loop(torch_fwd, args.iters, args.warmup, args.max_seconds)
  row.update(jax_ms_per_batch=round(sec * 1e3, 2), jax_images_per_s=round(args.batch / sec, 2),
             jax_timed_iters=n, torch_ms_per_batch=round(sec_t * 1e3, 2),
             torch_images_per_s=round(args.batch / sec_t, 2), torch_timed_iters=n_t,
             ratio_jax_over_torch=round(sec_t / sec, 3))
  return row


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="resnet50,mobilenet_v2")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--size", default="224", help="224 or HxW")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--torch-device", default="auto", choices=["auto", "cpu", "cuda"])
  p.add_argument("--depthwise", default="shift", choices=["shift", "conv"],
                 help="MobileNetV2 depthwise conv implementation")
  p.add_argument("--iters", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--max-seconds", type=float, default=60.0)
  args = p.parse_args(argv)
  for m in args.models.split(","):
    print(json.dumps(bench(m.strip(), args)), flush=True)


if __name__ == "__main__":
  main()
