"""Mesh and sharding rules: data parallelism plus FSDP (fully sharded parameters).

The mesh has two axes, `data` and `fsdp` (`make_mesh`, sizes from `config.train.mesh_data` /
`mesh_fsdp`). Every device holds a different slice of the batch: batches are split over BOTH
axes (`batch_sharding`), so an FSDP group is data parallel too, as in maxtext / big_vision.
Parameters and optimizer state are sharded by name and shape (`state_shardings`): a weight
matrix or convolution kernel of at least `min_size` elements is split over `fsdp` along the
larger of its two trailing (input/output channel) dimensions that the axis size divides; biases,
norm scales, scalars, small leaves and leaves no trailing dimension of which divides stay
replicated. XLA all-gathers a sharded weight where the step uses it and reduce-scatters its
gradient, so each device stores ~1/fsdp of the large parameters and of their Adam moments.
With `mesh_fsdp=1` this is plain data parallelism (everything replicated).

Multi-host: the same code. `make_mesh` spans every process's devices; each host passes its own
slice of the global batch to `shard_batch` (`data_pipelines.input_pipeline.to_global_array`).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from data_pipelines.input_pipeline import to_global_array

# not in the paper: batches split over data x fsdp (an FSDP group is data parallel too) and the
# FSDP rule below (trailing dims only, names never sharded, `train.fsdp_min_size`).
BATCH_AXES = ("data", "fsdp")
# Leaf names that are never sharded whatever their size (vectors per channel, norm statistics).
REPLICATED_NAMES = ("bias", "scale", "mean", "var")


def make_mesh(num_data: int = -1, num_fsdp: int = 1, devices: Optional[list] = None) -> Mesh:
  """Mesh ('data', 'fsdp') over `devices` (default: every device of every process). num_data
  -1 takes the devices left over by fsdp; a product that does not match the device count is a
  ValueError naming the config fields."""
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  if num_fsdp < 1 or n % num_fsdp:
    raise ValueError(f"train.mesh_fsdp={num_fsdp} must be >= 1 and divide the {n} devices")
  num_data = n // num_fsdp if num_data in (-1, None) else num_data
  if num_data * num_fsdp != n:
    raise ValueError(f"train.mesh_data={num_data} x train.mesh_fsdp={num_fsdp} != {n} devices "
                     "(use mesh_data=-1 for the rest)")
  from jax.experimental import mesh_utils   # device order that follows the interconnect
  try:
    grid = mesh_utils.create_device_mesh((num_data, num_fsdp), devices)
  except (ValueError, NotImplementedError, AssertionError):  # e.g. a subset of a TPU slice
    grid = np.asarray(devices).reshape(num_data, num_fsdp)
  return Mesh(grid, ("data", "fsdp"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp; other axes whole."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh) -> int:
  """How many slices a global batch is split into (devices along data x fsdp)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def _leaf_name(path: tuple) -> str:
  for k in reversed(path):
    for attr in ("key", "name"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
  return ""


def leaf_spec(path: tuple, shape: tuple, fsdp: int, min_size: int) -> P:
  """The partition rule of one parameter / optimizer-state leaf (see module docstring)."""
  shape = tuple(shape)
  if (fsdp == 1 or len(shape) < 2 or int(np.prod(shape)) < min_size
      or _leaf_name(path) in REPLICATED_NAMES):
    return P()
  trailing = sorted(range(len(shape) - 2, len(shape)), key=lambda a: -shape[a])
  for ax in trailing:
    if shape[ax] % fsdp == 0:
      spec = [None] * len(shape)
      spec[ax] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, tree: Any, min_size: int) -> Any:
  """Per-leaf NamedShardings of a pytree (params, a TrainState, an Orbax metadata tree) by the
  name/shape rules; the optimizer's moments get the rule of the parameter they mirror (same
  leaf name, same shape)."""
  fsdp = mesh.shape["fsdp"]

  def one(path, x):
    shape = x.shape if hasattr(x, "shape") else np.shape(x)
    return NamedSharding(mesh, leaf_spec(path, shape, fsdp, min_size))

  return jax.tree_util.tree_map_with_path(one, tree)


def device_arrays(batch: dict) -> dict:
  """The entries of a host batch that go to the device (numeric arrays; not video ids)."""
  return {k: v for k, v in batch.items()
          if isinstance(v, (np.ndarray, jax.Array)) and v.dtype.kind not in "OSU"}


def shard_batch(mesh: Mesh, batch: dict) -> dict:
  """This host's batch (numpy arrays, leading axis = this host's share of the global batch) ->
  global jax.Arrays split over data x fsdp (`to_global_array`). Non-array entries (e.g. video
  ids) are dropped. Raises if the global batch does not divide over the mesh."""
  n = batch_shards(mesh)
  arrays = device_arrays(batch)
  for k, v in arrays.items():
    if (v.shape[0] * jax.process_count()) % n:
      raise ValueError(f"shard_batch: '{k}' global batch {v.shape[0] * jax.process_count()} not "
                       f"divisible by the {n} batch shards (mesh data x fsdp); set "
                       "data.batch_size to a multiple of it")
  return to_global_array(arrays, mesh, BATCH_AXES)
