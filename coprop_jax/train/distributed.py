"""Multi-host start: `jax.distributed.initialize()` when the run spans several processes.

  from coprop_jax.train import distributed
  distributed.initialize(config.train.distributed)   # before anything touches a device

The trainer calls it first thing; a single-host run is the same code with one process (nothing
is initialized). After it, `jax.devices()` lists every host's devices, `jax.process_index()` /
`process_count()` say which slice of the data this host reads (grain's `ShardByJaxProcess`, the
toy data's `ClipBatches(process_index=..., process_count=...)`), and the trainer builds global
batches from the hosts' slices (`sharding.shard_batch`).

Launch (the same command on every host):
  TPU pod slice:  gcloud compute tpus tpu-vm ssh NAME --worker=all --command "python -m coprop_jax.train ..."
  SLURM:          srun --ntasks=<hosts> --ntasks-per-node=1 python -m coprop_jax.train ...
  explicit:       python -m coprop_jax.train ... --config.train.distributed.coordinator_address=host0:1234
                    --config.train.distributed.num_processes=2 --config.train.distributed.process_id=<i>
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
from absl import logging

from coprop_jax.utils.config import ConfigError

MODES = ("auto", "on", "off")


def _count(value: Optional[str]) -> int:
  try:
    return int(value) if value else 0
  except ValueError:
    return 0


def cluster_from_env(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """Which multi-process cluster the environment describes, or None for a single process:
  "coordinator" (JAX_COORDINATOR_ADDRESS), "tpu_pod" (TPU_WORKER_HOSTNAMES /
  TPU_PROCESS_ADDRESSES listing several hosts, or a multislice MEGASCALE_COORDINATOR_ADDRESS),
  "slurm" (a job step with several tasks), "ompi" (mpirun with several ranks)."""
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return "coordinator"
  hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get("TPU_WORKER_HOSTNAMES") or ""
  if len([h for h in hosts.split(",") if h.strip()]) > 1 or \
      environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu_pod"
  if environ.get("SLURM_JOB_ID") and _count(environ.get("SLURM_STEP_NUM_TASKS",
                                                        environ.get("SLURM_NTASKS"))) > 1:
    return "slurm"
  if _count(environ.get("OMPI_COMM_WORLD_SIZE")) > 1:
    return "ompi"
  return None


def initialize_args(dc: Any, environ: Mapping[str, str] = os.environ) -> Optional[dict]:
  """The keyword arguments of `jax.distributed.initialize` for `config.train.distributed`, or
  None when this is a single-process run. Bad settings are a ConfigError naming the field."""
  mode = dc.mode
  if mode not in MODES:
    raise ConfigError(f"train.distributed.mode: expected one of {MODES}, got {mode!r}")
  explicit = dict(coordinator_address=dc.coordinator_address or None,
                  num_processes=None if dc.num_processes < 0 else int(dc.num_processes),
                  process_id=None if dc.process_id < 0 else int(dc.process_id))
  given = [k for k, v in explicit.items() if v is not None]
  if mode == "off":
    if given:
      raise ConfigError(f"train.distributed.mode='off' but train.distributed.{given[0]} is set")
    return None
  if given and len(given) != 3:
    missing = sorted(set(explicit) - set(given))
    raise ConfigError(f"train.distributed: {', '.join(given)} set without "
                      f"{', '.join(missing)}; give all three (or none, to read the cluster from "
                      "the environment)")
  if given:
    if not 0 <= explicit["process_id"] < explicit["num_processes"]:
      raise ConfigError(f"train.distributed.process_id={explicit['process_id']} must be in "
                        f"[0, num_processes={explicit['num_processes']})")
    return explicit
  if mode == "on" or cluster_from_env(environ):
    return {}       # JAX reads the cluster from the environment
  return None


def initialize(dc: Any, environ: Mapping[str, str] = os.environ) -> bool:
  """Starts JAX's distributed runtime when `initialize_args` says so (once per process).
  Returns True when this process is part of a multi-process run."""
  args = initialize_args(dc, environ)
  if args is None:
    return False
  if not jax.distributed.is_initialized():
    logging.info("jax.distributed.initialize(%s) (cluster: %s)", args or "from the environment",
                 cluster_from_env(environ) or "explicit")
    jax.distributed.initialize(**args)
  logging.info("process %d of %d; %d local and %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
