"""Convert a PyTorch / Hugging Face checkpoint into an Orbax checkpoint for coprop_jax.

Usage:
  python -m coprop_jax.convert MODEL --src FILE --out DIR [--variant V] [--force]

MODEL is one of: pvt_v2 (needs --variant, e.g. b5), resnet (alias resnet50), mobilenet_v2
(alias mobilenetv2), vggish, aot. For aot (an aot-benchmark AOTT/S/B/L or R50-AOTL checkpoint),
--variant is the audio insert to add (aot | 1layer | 4layer, default 4layer, the paper's); the
propagator configuration is read off the checkpoint and printed as config overrides, and the
checkpoint holds {"propagator": ..., "encoder": ...}.
FILE is a .safetensors, .pth, .pt or .bin state dict (pickles are read with
torch.load(weights_only=True), so a checkpoint cannot run code). DIR must not exist unless
--force is given (and --force only replaces an existing Orbax checkpoint directory); it is
written to a temporary sibling directory and renamed into place when complete. Restore with
coprop_jax.convert.checkpoint_io.restore_params(DIR).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from coprop_jax.convert.checkpoint_io import (CheckpointError, check_output_dir, load_state_dict,
                                              save_params)

MODELS = ("pvt_v2", "resnet", "mobilenet_v2", "vggish", "aot")
ALIASES = {"resnet50": "resnet", "mobilenetv2": "mobilenet_v2"}  # AOT's MODEL_ENCODER names


def convert_file(model: str, src: str, variant: str | None = None):
  """Loads `src` and converts it with `coprop_jax.convert.<model>.from_torch_state_dict`."""
  model = ALIASES.get(model, model)
  if model not in MODELS:
    raise CheckpointError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
  try:
    mod = importlib.import_module(f"coprop_jax.convert.{model}")
  except ModuleNotFoundError as e:
    raise CheckpointError(f"converter coprop_jax.convert.{model} is not available: {e}") from e
  sd = load_state_dict(src)
  if model == "aot":
    cfg, params = mod.load(sd, insert=variant or "4layer")
    print("propagator config: " + " ".join(
        f"propagator.{k}={tuple(v) if isinstance(v, (list, tuple)) else v!r}".replace(" ", "")
        for k, v in sorted(cfg.items())
        if k in ("encoder", "num_layers", "d_model", "num_heads", "ffn_dim", "max_objects",
                 "local_max_dis", "audio_insert_levels", "identity_from_audio")))
    return params
  if model == "pvt_v2":
    if not variant:
      raise CheckpointError("pvt_v2 needs --variant (b0, b1, b2, b2_linear, b3, b4, b5)")
    return mod.from_torch_state_dict(sd, variant)
  if variant:
    return mod.from_torch_state_dict(sd, variant)
  return mod.from_torch_state_dict(sd)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m coprop_jax.convert",
                               description=__doc__.split("\n\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter,
                               epilog=__doc__.split("\n\n", 1)[1])
  ap.add_argument("model", choices=MODELS + tuple(ALIASES), help="which network the checkpoint holds")
  ap.add_argument("--src", required=True, help="source checkpoint (.safetensors/.pth/.pt/.bin)")
  ap.add_argument("--out", required=True, help="output Orbax checkpoint directory")
  ap.add_argument("--variant", default=None, help="model variant (pvt_v2: b0..b5, b2_linear; aot: aot|1layer|4layer audio insert)")
  ap.add_argument("--force", action="store_true", help="overwrite --out if it exists")
  args = ap.parse_args(argv)
  try:
    check_output_dir(args.out, args.force)  # fail before a long conversion
    params = convert_file(args.model, args.src, args.variant)
    out = save_params(params, args.out, force=args.force)
  except (CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.model} checkpoint to {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
