"""Reading PyTorch / Hugging Face checkpoints into numpy, and strict key matching.

Every converter in `coprop_jax.convert` follows the same recipe:

  state = load_state_dict(path)                      # {name: np.ndarray}, no model needed
  src = SourceDict(strip_prefixes(state, ...), what="PVT-v2 checkpoint")
  params = {... src.take("a.weight", linear) ...}    # each source key consumed at most once
  src.finish()                                       # raises on keys never consumed
  check_params_match(params, expected_shapes, what)  # raises on missing/extra/mis-shaped params

A downloaded checkpoint is untrusted input: pickles are only opened with
`torch.load(..., weights_only=True)`, which refuses to run code.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np


class CheckpointError(ValueError):
  """A checkpoint file could not be read or does not match the model it is loaded into."""


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into a flat `{name: np.ndarray}` dict.

  Supports `.safetensors` (read with numpy; bfloat16 via ml_dtypes) and PyTorch pickles
  (`.pth`, `.pt`, `.bin`, `.ckpt`, read with `torch.load(weights_only=True)`). Nested dicts
  (`{"state_dict": {...}}`, `{"model": {...}}`) are flattened with "." separators; the
  caller strips wrapper prefixes (`module.`, `backbone.`) with `strip_prefixes`.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise CheckpointError(f"checkpoint {path}: file does not exist")
  if not path.is_file():
    raise CheckpointError(f"checkpoint {path}: not a regular file")
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy before safetensors reads it)
    from safetensors.numpy import load_file
    try:
      return {k: np.asarray(v) for k, v in load_file(str(path)).items()}
    except Exception as e:  # safetensors raises its own error types
      raise CheckpointError(f"checkpoint {path}: not a readable safetensors file ({e})") from e
  if suffix in (".pth", ".pt", ".bin", ".ckpt", ".pkl"):
    try:
      import torch
    except ImportError as e:
      raise CheckpointError(f"checkpoint {path}: reading a PyTorch pickle needs torch installed; "
                            "convert it to .safetensors or `pip install torch`") from e
    try:
      obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
      raise CheckpointError(f"checkpoint {path}: not a readable PyTorch checkpoint "
                            f"(truncated, corrupt, or containing non-tensor objects): {e}") from e
    flat: dict[str, np.ndarray] = {}

    def visit(prefix: str, node: Any) -> None:
      if isinstance(node, torch.Tensor):
        t = node.detach().cpu()
        if t.dtype == torch.bfloat16:
          import ml_dtypes
          flat[prefix] = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
          flat[prefix] = t.numpy()
      elif isinstance(node, Mapping):
        for k, v in node.items():
          visit(f"{prefix}.{k}" if prefix else str(k), v)
      # Non-tensor leaves (epoch counters, optimizer hyper-parameters) are not weights.

    visit("", obj)
    if not flat:
      raise CheckpointError(f"checkpoint {path}: contains no tensors")
    return flat
  raise CheckpointError(f"checkpoint {path}: unknown format '{suffix}'; expected .safetensors, "
                        ".pth, .pt, .bin or .ckpt")


def strip_prefixes(state: Mapping[str, np.ndarray],
                   prefixes: Iterable[str]) -> dict[str, np.ndarray]:
  """Removes the first matching wrapper prefix (e.g. `state_dict.`, `module.`) from each key.

  Prefixes are tried in order, repeatedly, so `state_dict.module.backbone.x` with
  prefixes ("state_dict.", "module.", "backbone.") becomes `x`.
  """
  prefixes = tuple(prefixes)
  out = {}
  for k, v in state.items():
    changed = True
    while changed:
      changed = False
      for p in prefixes:
        if k.startswith(p):
          k = k[len(p):]
          changed = True
    out[k] = v
  return out


class SourceDict:
  """A source state dict whose keys must each be consumed exactly once.

  `take(key)` returns the array (optionally transformed) and records the key; `finish()`
  raises a `CheckpointError` listing keys that were never taken (unexpected weights), and
  `take` of an absent key raises listing the nearest available keys.
  """

  def __init__(self, state: Mapping[str, np.ndarray], what: str,
               ignore: Callable[[str], bool] = lambda k: False):
    self.state = dict(state)
    self.what = what
    self.ignore = ignore
    self.used: set[str] = set()
    self.missing: list[str] = []

  def __contains__(self, key: str) -> bool:
    return key in self.state

  def has_prefix(self, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in self.state)

  def take(self, key: str, fn: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> np.ndarray:
    if key not in self.state:
      self.missing.append(key)
      return np.zeros((0,), np.float32)
    self.used.add(key)
    arr = np.asarray(self.state[key])
    if arr.dtype != np.float32 and (arr.dtype.kind == "f" or arr.dtype.name == "bfloat16"):
      arr = arr.astype(np.float32)
    return fn(arr) if fn is not None else arr

  def finish(self) -> None:
    unexpected = sorted(k for k in self.state if k not in self.used and not self.ignore(k))
    if self.missing or unexpected:
      lines = [f"{self.what}: checkpoint does not match the model."]
      if self.missing:
        lines.append(f"  missing from the checkpoint ({len(self.missing)}): "
                     + ", ".join(self.missing[:20]) + (" ..." if len(self.missing) > 20 else ""))
      if unexpected:
        lines.append(f"  unexpected in the checkpoint ({len(unexpected)}): "
                     + ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else ""))
      raise CheckpointError("\n".join(lines))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
  else:
    out[prefix] = tree
  return out


def check_params_match(params: Any, expected: Any, what: str) -> None:
  """Checks that `params` has exactly the leaves of `expected` with the same shapes.

  `expected` is typically `jax.eval_shape(model.init, ...)["params"]`. Raises a
  `CheckpointError` listing missing, unexpected and mis-shaped parameters.
  """
  got, want = _flatten(params), _flatten(expected)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  bad = sorted(f"{k}: checkpoint {tuple(np.shape(got[k]))} vs model {tuple(want[k].shape)}"
               for k in set(got) & set(want) if tuple(np.shape(got[k])) != tuple(want[k].shape))
  if missing or extra or bad:
    lines = [f"{what}: converted parameters do not fit the model (wrong variant or config?)."]
    if bad:
      lines.append(f"  shape mismatches ({len(bad)}): " + "; ".join(bad[:20]))
    if missing:
      lines.append(f"  not filled ({len(missing)}): " + ", ".join(missing[:20]))
    if extra:
      lines.append(f"  not in the model ({len(extra)}): " + ", ".join(extra[:20]))
    raise CheckpointError("\n".join(lines))


# Layout helpers: PyTorch -> Flax.
def linear(w: np.ndarray) -> np.ndarray:
  """torch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
  return np.ascontiguousarray(w.T)


def conv(w: np.ndarray) -> np.ndarray:
  """torch Conv2d weight (out, in/groups, kh, kw) -> Flax Conv kernel (kh, kw, in/groups, out)."""
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _is_orbax_dir(path: pathlib.Path) -> bool:
  return path.is_dir() and ((path / "_CHECKPOINT_METADATA").exists()
                            or (path / "_METADATA").exists())


def save_params(params: Any, out_dir: str | os.PathLike, force: bool = False) -> pathlib.Path:
  """Writes a params pytree as an Orbax (PyTree) checkpoint at `out_dir`.

  The checkpoint is written into a hidden sibling temporary directory and renamed onto
  `out_dir` only once complete, so an interrupted or failed save leaves `out_dir` as it was.
  Refuses an existing `out_dir` unless `force`; even with `force` it only replaces an existing
  Orbax checkpoint directory (never a file or an unrelated directory).
  """
  import shutil
  import uuid

  import orbax.checkpoint as ocp
  out = pathlib.Path(out_dir).resolve()
  check_output_dir(out, force)
  out.parent.mkdir(parents=True, exist_ok=True)
  tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
  tmp = out.parent / f".{out.name}.tmp-{tag}"
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp, params)
      ckptr.wait_until_finished()
    if out.exists():
      old = out.parent / f".{out.name}.old-{tag}"
      os.replace(out, old)
      os.replace(tmp, out)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return out


def check_output_dir(out_dir: str | os.PathLike, force: bool = False) -> None:
  """Raises `FileExistsError` unless `save_params(..., out_dir, force)` may write there."""
  out = pathlib.Path(out_dir).resolve()
  if not out.exists():
    return
  if not force:
    raise FileExistsError(f"{out} already exists; pass force=True (--force) to overwrite")
  if not _is_orbax_dir(out):
    raise FileExistsError(f"{out} exists and is not an Orbax checkpoint directory; refusing to "
                          "replace it even with --force (choose a new --out)")


def restore_params(ckpt_dir: str | os.PathLike, target: Any = None) -> Any:
  """Reads a params pytree written by `save_params` (optionally onto an abstract target).

  Without a target, trees saved in an older parameter layout come back in the current one
  (`upgrade_layouts`): e.g. a PVT-v2 converted before its blocks were stacked.
  """
  import orbax.checkpoint as ocp
  path = pathlib.Path(ckpt_dir).resolve()
  if not path.exists():
    raise CheckpointError(f"Orbax checkpoint {path}: directory does not exist")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      if target is not None:
        return ckptr.restore(path, target)
      tree = ckptr.restore(path)
  except Exception as e:  # orbax raises its own types for a non-checkpoint or damaged directory
    raise CheckpointError(f"Orbax checkpoint {path}: not readable ({type(e).__name__}: {e})") from e
  try:
    return upgrade_layouts(tree)
  except ValueError as e:
    raise CheckpointError(f"Orbax checkpoint {path}: {e}") from e


def upgrade_layouts(tree: Any) -> Any:
  """`tree` with every subtree in an older parameter layout converted to the current one.

  Known upgrades: PVT-v2 per-block params (`stage{i}_block{j}` beside `stage0_patch_embed`,
  written by coprop_jax.convert before the scan layout) -> stacked `stage{i}_blocks`
  (`coprop_jax.models.pvt_v2.upgrade_layout`). Other subtrees are returned as they are.
  """
  from coprop_jax.models import pvt_v2
  if not isinstance(tree, Mapping):
    return tree
  if pvt_v2.is_per_block_layout(tree):
    return pvt_v2.upgrade_layout(tree)
  return {k: upgrade_layouts(v) for k, v in tree.items()}
