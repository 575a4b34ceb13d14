"""Train one stage of Co-Prop (flags only; the work is `trainer.train_and_evaluate`).

  python -m coprop_jax.train --config configs/coprop.py:dataset=ms3,stage=kpf --workdir DIR \
      [--config.train.lr=2e-4 ...] [--allow_config_change]

Stages (`stage=` in the config string, or `--config.train.stage`): kpf (Keyframe Processor on all
frames), kpf_finetune (keyframes only; give `--config.train.init_from=<kpf run>/checkpoints`),
propagator (stage 2). A small CPU run: `configs/coprop.py:dataset=ms3,runlocal=True`.
Rerunning the same command resumes from the workdir's last checkpoint. A workdir whose saved
config differs in a field that changes the model, the data or the optimizer is refused, listing
the fields; `--allow_config_change` accepts the change deliberately.
"""
from __future__ import annotations

import json
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:config string], e.g. "
    "configs/coprop.py:dataset=ms3,stage=kpf. Fields are overridden with --config.<a.b>=<value>.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs, the saved config "
                               "and (runlocal configs) the synthetic data go here.")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume although the workdir's saved config differs in a "
    "field that changes the model, the data or the optimizer.")
flags.mark_flags_as_required(["config", "workdir"])


class _OwnInfoOnly(std_logging.Filter):
  """INFO lines from coprop_jax / data_pipelines reach the user; other libraries' INFO chatter
  (Orbax's per-save lines, JAX's backend probing) is dropped; warnings and errors always pass."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    path = record.pathname.replace("\\", "/")
    return "/coprop_jax/" in path or "/data_pipelines/" in path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]} (overrides are --config.a.b=value)")
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  from coprop_jax.train import trainer   # after flag parsing: --help and flag errors stay fast
  try:
    summary = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                         allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except trainer.USER_ERRORS as e:
    logging.error("%s", e)
    sys.exit(1)
  print(json.dumps({k: v for k, v in summary.items() if k not in ("history", "evals")}))


if __name__ == "__main__":
  app.run(main)
