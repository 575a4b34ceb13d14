"""Mesh and data-parallel sharding helpers.

One mesh axis `data` by default (optionally a second `model` axis for FSDP-style parameter
sharding). Batches are split over `data` along their leading axis; parameters are replicated,
or sharded by `fsdp_sharding` (largest dimension divisible by the `model` axis size).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(num_data: Optional[int] = None, num_model: int = 1,
              devices: Optional[list] = None) -> Mesh:
  """Mesh ('data', 'model') over `devices` (default all); num_data defaults to n / num_model."""
  devices = jax.devices() if devices is None else devices
  n = len(devices)
  num_data = n // num_model if num_data is None else num_data
  if num_data * num_model != n:
    raise ValueError(f"make_mesh: data {num_data} x model {num_model} != {n} devices")
  return Mesh(np.asarray(devices).reshape(num_data, num_model), ("data", "model"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P("data", *([None] * (ndim - 1))))


def fsdp_sharding(mesh: Mesh, tree: Any, min_size: int = 2 ** 14) -> Any:
  """Per-leaf shardings: the largest dim divisible by the 'model' axis is sharded on it
  (leaves smaller than min_size stay replicated)."""
  m = mesh.shape["model"]

  def one(x):
    shape = getattr(x, "shape", ())
    if m == 1 or int(np.prod(shape)) < min_size:
      return replicated(mesh)
    for ax in np.argsort(shape)[::-1]:
      if shape[ax] % m == 0:
        spec = [None] * len(shape)
        spec[ax] = "model"
        return NamedSharding(mesh, P(*spec))
    return replicated(mesh)

  return jax.tree.map(one, tree)


def device_arrays(batch: dict) -> dict:
  """The entries of a host batch that go to the device (numeric arrays; not video ids)."""
  return {k: v for k, v in batch.items()
          if isinstance(v, (np.ndarray, jax.Array)) and v.dtype.kind not in "OSU"}


def shard_batch(mesh: Mesh, batch: dict) -> dict:
  """Put this host's batch (numpy arrays, leading axis = this host's share of the global batch)
  onto the mesh, split over 'data' (`jax.make_array_from_process_local_data`). Non-array entries
  (e.g. video ids) are dropped. Raises if the global batch does not divide over 'data'."""
  n = mesh.shape["data"]
  out = {}
  for k, v in device_arrays(batch).items():
    if (v.shape[0] * jax.process_count()) % n:
      raise ValueError(f"shard_batch: '{k}' batch {v.shape[0]} not divisible by data axis {n}")
    out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), np.asarray(v))
  return out
