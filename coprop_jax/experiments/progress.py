"""Progress for long commands: a tqdm bar per training run or evaluation, moved by the trainer's
own log records, and other libraries' chatter (absl / Orbax / TFDS INFO and WARNING lines) sent
to a log file instead of the console."""
from __future__ import annotations

import contextlib
import logging
import pathlib
import sys
from typing import Callable, Optional

import ml_collections


class TrainProgress(logging.Handler):
  """Moves a tqdm bar from the trainer's log records ("step %d/%d: ...", "train step: traced")."""

  def __init__(self, bar):
    super().__init__(logging.INFO)
    self.bar = bar

  def emit(self, record: logging.LogRecord) -> None:
    msg = record.msg if isinstance(record.msg, str) else ""
    if msg.startswith("train step: traced"):
      self.bar.set_postfix_str("compiled")
    elif msg.startswith("step %d/%d") and record.args:
      done = int(record.args[0])
      self.bar.update(done - self.bar.n)
      rest = str(record.args[2]) if len(record.args) > 2 else ""
      loss = [p for p in rest.split(", ") if p.startswith("loss=")]
      self.bar.set_postfix_str(loss[0] if loss else "")


@contextlib.contextmanager
def bar(desc: str, total: Optional[int], unit: str = "step"):
  """A tqdm bar on stdout, closed on exit."""
  from tqdm.auto import tqdm
  b = tqdm(total=total, desc=desc, unit=unit, leave=True, dynamic_ncols=True, file=sys.stdout)
  try:
    yield b
  finally:
    b.close()


class Counted:
  """Batches that move a progress bar."""

  def __init__(self, batches, progress_bar):
    self.batches, self.bar = batches, progress_bar

  def __iter__(self):
    for b in self.batches:
      yield b
      self.bar.update(1)


def train_with_progress(name: str, config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """One training run (coprop_jax.train.trainer.train_and_evaluate) into `run_dir` with a bar."""
  from absl import logging as absl_logging
  from coprop_jax.train import trainer
  steps = int(config.train.num_steps)
  with bar(f"train {name}", steps) as b:
    h = TrainProgress(b)
    absl_logging.get_absl_logger().addHandler(h)
    try:
      summary = trainer.train_and_evaluate(config, run_dir)
    finally:
      absl_logging.get_absl_logger().removeHandler(h)
    b.update(summary["final_step"] - b.n)   # a resumed, complete run logs no step
    return summary


class OwnWarningsOnly(logging.Filter):
  """Console filter: warnings of coprop_jax / data_pipelines and every library's errors pass;
  other libraries' warnings (Orbax's and absl's per-checkpoint lines) stay in the log file."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      return True
    path = record.pathname.replace("\\", "/")
    return record.levelno >= logging.WARNING and ("/coprop_jax/" in path or "/data_pipelines/" in path)


def quiet_libraries(log_file: pathlib.Path) -> Callable[[], None]:
  """Every record at INFO and above goes to `log_file`; the console shows the bars, this
  project's warnings and every error (`OwnWarningsOnly`). Returns a function undoing it."""
  from absl import logging as absl_logging
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()     # the commands' own bars cover the builds
  log_file = pathlib.Path(log_file)
  log_file.parent.mkdir(parents=True, exist_ok=True)
  root = logging.getLogger()
  fh = logging.FileHandler(log_file)
  fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  fh.setLevel(logging.INFO)
  absl_handler = absl_logging.get_absl_handler()
  old = (root.level, absl_handler.level, absl_logging.get_verbosity())
  root.addHandler(fh)
  root.setLevel(logging.INFO)
  absl_logging.set_verbosity(absl_logging.INFO)
  console = [h for h in root.handlers if h is not fh and h is not absl_handler]
  levels = [h.level for h in (absl_handler, *console)]
  only_own = OwnWarningsOnly()
  for h in (absl_handler, *console):
    h.setLevel(logging.WARNING)
    h.addFilter(only_own)

  def undo():
    root.removeHandler(fh)
    fh.close()
    root.setLevel(old[0])
    absl_logging.set_verbosity(old[2])
    for h, lv in zip((absl_handler, *console), levels):
      h.setLevel(lv)
      h.removeFilter(only_own)
  return undo
