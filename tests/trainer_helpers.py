"""A cheap stand-in stage for trainer tests: the real KPF task (loss, host-side batches, metrics,
images) around a per-pixel network that compiles in about a second, so trainer behaviour (resume,
NaN, config checks, checkpoints) is tested through the CLI without compiling the KPF each time.

Run as a script it is `python -m coprop_jax.train` with these stages registered ("pixel",
"pixel_nan") and two test hooks read from the environment:
  COPROP_TEST_NAN_STEP=k           the "pixel_nan" loss is NaN at step k (1-based)
  COPROP_TEST_KILL_AFTER_SAVE=k    SIGKILL this process once the rolling checkpoint of step k is
                                   finalized (a kill at an arbitrary point after a checkpoint)
"""
from __future__ import annotations

import os
import pathlib
import signal
import struct
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp

from coprop_jax.train import tasks
from coprop_jax.train.tasks.kpf import KpfTask

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = f"{ROOT}/configs/coprop.py:dataset=toy,runlocal=True"


class PixelNet(nn.Module):
  """logits[n, y, x] = MLP(frame pixel, audio code of frame n); called like the KPF."""
  num_classes: int = 1
  freeze_vggish: bool = False

  @nn.compact
  def __call__(self, images, audio_embed=None, audio_logmel=None, train=False):
    a = audio_embed if audio_embed is not None else audio_logmel.mean(axis=1)
    a = nn.Dense(4)(a)
    a = jnp.broadcast_to(a[:, None, None, :], images.shape[:3] + (4,))
    x = nn.relu(nn.Dense(8)(jnp.concatenate([images, a], axis=-1)))
    x = nn.Dropout(0.2, deterministic=not train)(x)   # uses the step's rng
    return nn.Dense(self.num_classes)(x)


class PixelTask(KpfTask):
  name = "pixel"

  def build_model(self):
    return PixelNet(int(self.config.keyframe.num_classes))


class PixelNanTask(PixelTask):
  """The loss (and so the gradients) is NaN at step COPROP_TEST_NAN_STEP (1-based)."""
  name = "pixel_nan"

  def loss_fn(self, params, extra, batch, rng, step):
    loss, aux = super().loss_fn(params, extra, batch, rng, step)
    bad = step + 1 == int(os.environ.get("COPROP_TEST_NAN_STEP", "0"))
    return loss * jnp.where(bad, jnp.nan, 1.0), aux


def register() -> None:
  tasks.TASKS["pixel"] = PixelTask
  tasks.TASKS["pixel_nan"] = PixelNanTask


def read_event_tags(logdir) -> dict:
  """{tag: "scalar" | "image"} from tensorboardX event files (TFRecord framing, no TF)."""
  from coprop_jax.train.trainer import import_tensorboardx
  import_tensorboardx()
  from tensorboardX.proto import event_pb2
  tags = {}
  for f in pathlib.Path(logdir).iterdir():
    data = f.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      for v in ev.summary.value:
        tags[v.tag] = "image" if v.HasField("image") else "scalar"
  return tags


def run_cli(workdir, *overrides, env=None, timeout=300, config=CONFIG, extra_flags=(),
            xla_cache=None):
  """Runs this file as the train CLI in a subprocess -> CompletedProcess (text). `xla_cache`:
  a persistent compilation cache directory shared by the test's subprocesses (every compile
  cached), so each launch compiles nothing it already compiled."""
  cmd = [sys.executable, __file__, f"--config={config}", f"--workdir={workdir}", *extra_flags,
         *[f"--config.{o}" for o in overrides]]
  e = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **(env or {}))
  if xla_cache:
    e.update(JAX_COMPILATION_CACHE_DIR=str(xla_cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  e.pop("XLA_FLAGS", None)
  return subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _kill_after_save(step: int) -> None:
  from coprop_jax.train.checkpoint import Checkpointer
  save = Checkpointer.save

  def save_then_kill(self, state, data_iter=None, meta=None):
    save(self, state, data_iter, meta)
    if os.path.basename(self.directory) == "checkpoints" and int(state.step) == step:
      self.wait()
      os.kill(os.getpid(), signal.SIGKILL)

  Checkpointer.save = save_then_kill


if __name__ == "__main__":
  from absl import app
  register()
  if os.environ.get("COPROP_TEST_KILL_AFTER_SAVE"):
    _kill_after_save(int(os.environ["COPROP_TEST_KILL_AFTER_SAVE"]))
  from coprop_jax.train.__main__ import main
  app.run(main)
