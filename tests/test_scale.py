"""Scale-out: multi-host start rules, the FSDP sharding rules, and ONE subprocess on 8 simulated
CPU devices that runs the trainer on a (data=4, fsdp=2) mesh and checks it against one device,
reads the per-device memory of the compiled step under FSDP, and restores the sharded checkpoint
onto another mesh. A real two-process run (jax.distributed over localhost) is slow."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from coprop_jax.train import distributed
from coprop_jax.train import sharding as shd
from coprop_jax.utils.config import ConfigError, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = f"{ROOT}/configs/coprop.py:dataset=toy,runlocal=True"


def _dist(**kw):
  cfg = load_config(CONFIG, [f"train.distributed.{k}={v}" for k, v in kw.items()])
  return cfg.train.distributed


def test_cluster_detection_from_environment():
  assert distributed.cluster_from_env({}) is None
  assert distributed.cluster_from_env({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
  assert distributed.cluster_from_env({"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "4"}) == "slurm"
  assert distributed.cluster_from_env({"TPU_WORKER_HOSTNAMES": "localhost"}) is None  # one VM
  assert distributed.cluster_from_env({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}) == "tpu_pod"
  assert distributed.cluster_from_env({"OMPI_COMM_WORLD_SIZE": "2"}) == "ompi"
  assert distributed.cluster_from_env({"JAX_COORDINATOR_ADDRESS": "h:1"}) == "coordinator"
  # what jax.distributed.initialize gets
  assert distributed.initialize_args(_dist(), {}) is None                    # single host
  assert distributed.initialize_args(_dist(), {"OMPI_COMM_WORLD_SIZE": "2"}) == {}
  assert distributed.initialize_args(_dist(mode="off"), {"OMPI_COMM_WORLD_SIZE": "2"}) is None
  assert distributed.initialize_args(_dist(mode="on"), {}) == {}
  assert distributed.initialize_args(
      _dist(coordinator_address="h0:1234", num_processes=2, process_id=1), {}) == dict(
          coordinator_address="h0:1234", num_processes=2, process_id=1)
  assert distributed.initialize(_dist(), {}) is False          # nothing started here
  with pytest.raises(ConfigError, match="process_id set without coordinator_address, "
                                        "num_processes"):
    distributed.initialize_args(_dist(process_id=0), {})
  with pytest.raises(ConfigError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
    distributed.initialize_args(_dist(coordinator_address="h:1", num_processes=2, process_id=2))
  with pytest.raises(ConfigError, match="train.distributed.mode"):
    distributed.initialize_args(_dist(mode="maybe"), {})


def test_fsdp_rules_by_name_and_shape():
  spec = lambda name, shape, fsdp=2, m=100: shd.leaf_spec(    # noqa: E731
      (type("K", (), {"key": name})(),), shape, fsdp, m)
  assert spec("kernel", (64, 256)) == P(None, "fsdp")          # larger trailing dim
  assert spec("kernel", (3, 3, 64, 32)) == P(None, None, "fsdp", None)   # conv: in channels
  assert spec("kernel", (4, 48, 96), fsdp=4) == P(None, None, "fsdp")    # stacked layers: never L
  assert spec("kernel", (4, 3, 9), fsdp=2) == P()              # no trailing dim divides
  assert spec("bias", (4, 4096)) == P()                        # names never sharded
  assert spec("scale", (4096, 8)) == P()
  assert spec("kernel", (8, 8)) == P()                         # below min_size
  assert spec("kernel", (64, 256), fsdp=1) == P()              # no fsdp axis: replicated
  assert spec("embedding", (10, 300), fsdp=3) == P(None, "fsdp")


def test_train_step_on_8_devices_fsdp_matches_one_device_and_restores_onto_another_mesh():
  """On 8 simulated CPU devices, through the trainer (config train.mesh_data=4, mesh_fsdp=2): the
  losses and params of 2 steps equal the same steps on one device (rtol 1e-5, atol 1e-6:
  float32, only the reduction order differs); the per-device parameter + optimizer-state bytes
  of the compiled step's memory analysis are those of the rules' shards and fall to ~1/2
  (fsdp=2) and ~1/8 (fsdp=8) of the whole state's (what every device holds replicated); the sharded checkpoint restores onto a (data=2, fsdp=4) mesh with the
  rules' shardings; eval runs with all-gathered params; train.compilation_cache_dir fills."""
  code = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, "tests")
    import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
    import trainer_helpers as th
    from coprop_jax.train import sharding as shd, trainer
    from coprop_jax.train.state import lr_schedule, make_train_step
    from coprop_jax.train.checkpoint import Checkpointer
    from coprop_jax.utils.config import ConfigError, load_config
    assert len(jax.devices()) == 8

    class WideNet(nn.Module):    # per-pixel MLP with one 128x128 kernel (most of the bytes)
      num_classes: int = 1
      @nn.compact
      def __call__(self, images, audio_embed=None, audio_logmel=None, train=False):
        a = audio_embed if audio_embed is not None else audio_logmel.mean(axis=1)
        a = nn.Dense(4)(a)
        a = jnp.broadcast_to(a[:, None, None, :], images.shape[:3] + (4,))
        x = nn.relu(nn.Dense(128)(jnp.concatenate([images, a], axis=-1)))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(self.num_classes)(x)

    class WideTask(th.PixelTask):
      name = "wide"
      def build_model(self):
        return WideNet(1)

    th.register()
    trainer.tasks_lib.TASKS["wide"] = WideTask
    base = ["train.stage=wide", "data.batch_size=8", "data.image_size=16", "data.num_frames=2",
            "train.num_steps=2", "train.log_every=1", "eval.every_steps=2",
            "train.fsdp_min_size=256"]
    cfg = load_config(th.CONFIG, base + ["train.mesh_data=4", "train.mesh_fsdp=2",
                                         "train.compilation_cache_dir={workdir}/xla_cache"])
    wd = sys.argv[1]
    try:
      trainer.train_and_evaluate(load_config(th.CONFIG, base + ["train.mesh_data=3"]), wd)
    except ConfigError as e:
      assert "train.mesh_data=3 x train.mesh_fsdp=1 != 8 devices" in str(e), e
    else:
      raise AssertionError("expected ConfigError")
    summary = trainer.train_and_evaluate(cfg, wd)
    losses8 = [h["loss"] for h in summary["history"]]
    assert os.listdir(os.path.join(wd, "xla_cache")), "persistent compilation cache not written"
    assert len(losses8) == 2 and summary["evals"], summary
    task = trainer.tasks_lib.get_task(cfg)
    first = shd.device_arrays(next(trainer.prepare_data(cfg, wd).train))

    # restore the (4, 2) checkpoint onto a (2, 4) mesh: every leaf in its rule's sharding
    mesh24 = shd.make_mesh(2, 4)
    abstract24, _ = trainer.create_train_state(task, cfg, mesh24, trainer.abstract_batch(mesh24, first))
    ck = Checkpointer(os.path.join(wd, "checkpoints"), read_only=True)
    s24 = ck.restore(abstract24)
    ck.close()
    k = s24.params["Dense_2"]["kernel"]
    assert k.shape == (128, 128) and k.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)  # tie: input dim
    assert {sh.data.shape for sh in k.addressable_shards} == {(32, 128)}
    mu = s24.opt_state[0].mu["Dense_2"]["kernel"]
    assert mu.sharding.spec == k.sharding.spec
    assert s24.params["Dense_2"]["bias"].sharding.is_fully_replicated
    for a, b in zip(jax.tree.leaves(s24.params), jax.tree.leaves(abstract24.params)):
      assert a.sharding == b.sharding

    # the same two steps on one device
    mesh1 = shd.make_mesh(devices=jax.devices()[:1])
    _, init = trainer.create_train_state(task, cfg, mesh1, trainer.abstract_batch(mesh1, first))
    s1 = init(shd.shard_batch(mesh1, first))
    step = make_train_step(task.loss_fn, lr_fn=lr_schedule(cfg.train))
    data = trainer.prepare_data(cfg, wd)
    losses1 = []
    for _ in range(2):
      s1, m = step(s1, shd.shard_batch(mesh1, shd.device_arrays(next(data.train))))
      losses1.append(float(m["loss"]))
    np.testing.assert_allclose(losses8, losses1, rtol=1e-5)
    assert int(s24.step) == 2
    for a, b in zip(jax.tree.leaves((s24.params, s24.opt_state)), jax.tree.leaves((s1.params, s1.opt_state))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    # per-device argument bytes of the compiled step = state shards + this device's batch slice;
    # a replicated state would put all of its bytes on every device
    full = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract24))
    def state_bytes(d, f):
      mesh = shd.make_mesh(d, f)
      batch = trainer.abstract_batch(mesh, first)
      abstract, _ = trainer.create_train_state(task, cfg, mesh, batch)
      mem = trainer.compile_train_step(task, cfg, abstract, batch).memory_analysis()
      batch_bytes = sum(v.size * v.dtype.itemsize for v in batch.values()) // 8
      rules = sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
                  for x in jax.tree.leaves(abstract))
      assert abs(mem.argument_size_in_bytes - batch_bytes - rules) <= 0.01 * rules, (mem, rules)
      return mem.argument_size_in_bytes - batch_bytes
    half, eighth = state_bytes(4, 2), state_bytes(1, 8)
    print("STATE_BYTES", full, half, eighth, half / full, eighth / full)
    assert 0.49 < half / full < 0.52 and 0.12 < eighth / full < 0.15, (full, half, eighth)

    try:
      shd.shard_batch(mesh24, {"x": np.zeros((3, 2))})
    except ValueError as e:
      assert "not divisible by the 8 batch shards" in str(e)
    else:
      raise AssertionError("expected ValueError")
    print("OK8")
  """)
  import tempfile
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env.pop("XLA_FLAGS", None)
  with tempfile.TemporaryDirectory() as wd:
    r = subprocess.run([sys.executable, "-c", code, wd], env=env, capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
  assert r.returncode == 0 and "OK8" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
  line = [x for x in r.stdout.splitlines() if x.startswith("STATE_BYTES")]
  assert line


@pytest.mark.slow
def test_two_processes_through_jax_distributed(tmp_path):
  """Two processes (2 CPU devices each) on localhost started through the config's explicit
  coordinator: one global (data=2, fsdp=2) mesh over 4 devices, each process reading its own
  half of the toy clips; both finish with the same losses and the checkpoint they wrote together
  restores in a single process."""
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  code = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, "tests")
    import trainer_helpers as th
    from coprop_jax.train import trainer
    from coprop_jax.utils.config import load_config
    pid, port, wd = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    th.register()
    cfg = load_config(th.CONFIG, [
        "train.stage=pixel", "data.batch_size=8", "data.image_size=16", "data.num_frames=2",
        "train.num_steps=2", "train.log_every=1", "eval.every_steps=2", "train.mesh_fsdp=2",
        "train.fsdp_min_size=16", f"train.distributed.coordinator_address=localhost:{port}",
        "train.distributed.num_processes=2", f"train.distributed.process_id={pid}"])
    s = trainer.train_and_evaluate(cfg, wd)
    import jax
    assert jax.process_count() == 2 and jax.device_count() == 4
    print("LOSSES", json.dumps([h["loss"] for h in s["history"]]))
  """)
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, "-c", code, str(i), str(port), str(tmp_path / "run")],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  losses = [[x for x in out.splitlines() if x.startswith("LOSSES")][0] for out, _ in outs]
  assert losses[0] == losses[1]
  assert (tmp_path / "run/checkpoints/2").is_dir() and (tmp_path / "run/config.json").is_file()
  # the 2-process checkpoint restores in this single process (one device)
  import jax
  import trainer_helpers as th
  from coprop_jax.train import trainer
  from coprop_jax.train.checkpoint import Checkpointer
  th.register()
  cfg = load_config(th.CONFIG, ["train.stage=pixel", "data.batch_size=8", "data.image_size=16",
                                "data.num_frames=2"])
  task = trainer.tasks_lib.get_task(cfg)
  mesh = shd.make_mesh(devices=jax.devices()[:1])
  first = shd.device_arrays(next(trainer.prepare_data(cfg, str(tmp_path)).train))
  abstract, _ = trainer.create_train_state(task, cfg, mesh, trainer.abstract_batch(mesh, first))
  ck = Checkpointer(str(tmp_path / "run/checkpoints"), read_only=True)
  state = ck.restore(abstract)
  ck.close()
  assert int(state.step) == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
