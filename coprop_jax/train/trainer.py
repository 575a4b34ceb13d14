"""One trainer for every stage: `train_and_evaluate(config, workdir)`.

Shaped like flax's examples/imagenet/train.py, with big_vision's sections: mesh, input pipeline,
model and optimizer, sharding, update step, checkpoint, evals, train loop. What differs between
stages (model, loss, host-side batch preparation, metrics, pretrained weights) is a `Task`
(coprop_jax/train/tasks), chosen by `config.train.stage`.

Workdir layout:
  config.json                the run's config (compared on resume: see `check_config`)
  checkpoints/<step>/        rolling Orbax checkpoints (state + data iterator position)
  checkpoints.damaged/       checkpoints that could not be read, moved aside on resume
  best/<step>/               the best checkpoint by `eval.best_metric` (+ its metrics, "meta")
  tensorboard/               event files (tensorboardX, no TensorFlow)
  train_summary.json         final step, logged metrics, evaluations, best
  data/                      synthetic tree and TFDS build of the runlocal configs ({workdir})

Guarantees: the loss and gradient norm are checked on device at every step and a non-finite
step is never applied (state.train_step); the host reads that flag before every log, eval and
checkpoint, so no checkpoint is written from a non-finite state and the run stops with one
`NonFiniteError` naming the step. Resume is exact (state, rng and data iterator position are in
the checkpoint); a damaged latest checkpoint falls back to the previous finalized one.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging

from coprop_jax.convert.checkpoint_io import CheckpointError
from coprop_jax.train import distributed
from coprop_jax.train import sharding as shd
from coprop_jax.train import tasks as tasks_lib
from coprop_jax.train.checkpoint import Checkpointer
from coprop_jax.train.state import FAST_COMPILE, TrainState, lr_schedule, train_step
from coprop_jax.utils.config import ConfigError, resolve_path
from data_pipelines.avsbench.readers import DataError
from data_pipelines.prepare import PrepareError


class TrainingError(RuntimeError):
  """A run cannot go on; the message says why and what to do."""


class NonFiniteError(TrainingError):
  """The loss or gradient norm became NaN/inf."""


class ConfigChangedError(TrainingError):
  """The workdir holds a run made with another config."""


# Errors the CLI reports as one line (no traceback): bad config, workdir, checkpoint or data.
USER_ERRORS = (TrainingError, CheckpointError, ConfigError, tasks_lib.UnknownStageError,
               FileNotFoundError, PrepareError, DataError)

# Fields that may differ from the workdir's saved config on resume: they change how a run is
# logged, checkpointed, evaluated, compiled or how long it runs, not the model, the data or the
# optimizer. rcpg.* is preprocessing that the trainer never reads. The run's length
# (RUN_LENGTH) may change only when nothing depends on it: a constant learning rate and a stage
# whose loss does not ramp (`Task.length_dependent`: not the propagator, whose top-k ramp and
# sequential-training switch are fractions of the run); see `resume_mutable`.
RESUME_MUTABLE = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.fast_compile", "train.compilation_cache_dir", "train.mesh_data",
                  "train.mesh_fsdp", "train.fsdp_min_size", "eval.every_steps",
                  "eval.num_images")
RUN_LENGTH = ("train.num_steps", "train.num_epochs")
# The cluster and the mesh may change on resume: the checkpoint is restored onto the new mesh.
RESUME_MUTABLE_SECTIONS = ("rcpg.", "train.distributed.")


# ---- config saved in the workdir -----------------------------------------------------------------

def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _jsonable(config: ml_collections.ConfigDict) -> dict:
  return json.loads(json.dumps(config.to_dict(), default=list))   # tuples -> lists


def resume_mutable(config: dict) -> tuple[str, ...]:
  """The fields of RESUME_MUTABLE, plus the run's length when the update does not depend on it
  (constant learning rate, a stage without ramps)."""
  tc = config.get("train", {})
  task = tasks_lib.TASKS.get(tc.get("stage"))
  fixed = (tc.get("lr_schedule", "constant") != "constant"
           or getattr(task, "length_dependent", True))
  return RESUME_MUTABLE + (() if fixed else RUN_LENGTH)


def config_changes(saved: dict, current: dict) -> list[str]:
  """Differences that matter on resume: 'key: saved -> now' for every field outside
  `resume_mutable` (fields added or removed count too)."""
  a, b = _flat(saved), _flat(current)
  mutable = set(resume_mutable(saved)) & set(resume_mutable(current))
  out = []
  for k in sorted(set(a) | set(b)):
    if k in mutable or k.startswith(RESUME_MUTABLE_SECTIONS):
      continue
    if a.get(k, "<absent>") != b.get(k, "<absent>"):
      out.append(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}")
  return out


def _has_checkpoints(workdir: str) -> bool:
  root = os.path.join(workdir, "checkpoints")
  return os.path.isdir(root) and any(n.isdigit() for n in os.listdir(root))


def check_config(config: ml_collections.ConfigDict, workdir: str,
                 allow_config_change: bool = False) -> list[str]:
  """Before resuming from `workdir`'s checkpoints: refuses a config that differs from the saved
  config.json in a field that alters the model, the data or the optimizer (ConfigChangedError
  listing them), unless `allow_config_change`. Returns the accepted changes (for `save_config`).
  A workdir without checkpoints holds nothing to mix: any config is accepted."""
  path = os.path.join(workdir, "config.json")
  if not _has_checkpoints(workdir):
    return []
  if not os.path.exists(path):
    if not allow_config_change:
      raise ConfigChangedError(f"workdir {workdir} holds checkpoints but no config.json to check "
                               "this config against; use another --workdir, or pass "
                               "--allow_config_change to resume anyway")
    return ["config.json: <absent>"]
  try:
    with open(path) as fh:
      saved = json.load(fh)
  except (OSError, ValueError) as e:
    raise ConfigChangedError(f"{path}: not a readable config ({e}); move it away or use "
                             "another --workdir") from e
  changes = config_changes(saved, _jsonable(config))
  if changes and not allow_config_change:
    raise ConfigChangedError(
        f"workdir {workdir} holds a run made with another config; fields that differ (saved -> "
        f"now): {'; '.join(changes)}. Rerun with the saved values, use another --workdir, or "
        "pass --allow_config_change to change them deliberately")
  if changes:
    logging.warning("config changed on resume (--allow_config_change): %s", "; ".join(changes))
  return changes


def save_config(config: ml_collections.ConfigDict, workdir: str, changes: list[str]) -> None:
  """Writes `workdir`/config.json (temp file + rename); after an accepted change the previous
  file is kept as config.before_<time>.json. Only process 0 writes (multi-host runs)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "config.json")
  os.makedirs(workdir, exist_ok=True)
  if changes and os.path.exists(path):
    keep = os.path.join(workdir, f"config.before_{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.replace(path, keep)
    logging.info("previous config kept as %s", keep)
  tmp = path + ".tmp"
  with open(tmp, "w") as fh:
    json.dump(_jsonable(config), fh, indent=1, sort_keys=True)
  os.replace(tmp, path)


def describe_source(path: str, config: ml_collections.ConfigDict) -> str:
  """What a checkpoint directory's run was, when its workdir's config.json says so (read for
  `train.init_from` errors): "<path> is a checkpoint of stage 'kpf' (this run trains stage
  'propagator'); model fields that differ (its -> yours): ...; " or "" when unknown."""
  from coprop_jax.model_io import architecture_changes
  p = os.path.abspath(os.path.expanduser(path))
  for d in (p, os.path.dirname(p), os.path.dirname(os.path.dirname(p))):
    cfg_path = os.path.join(d, "config.json")
    if os.path.isfile(cfg_path):
      try:
        with open(cfg_path) as fh:
          saved = ml_collections.ConfigDict(json.load(fh))
      except (OSError, ValueError):
        return ""
      parts = []
      stage = saved.get("train", {}).get("stage")
      if stage != config.train.stage:
        parts.append(f"train.init_from {p} is a checkpoint of stage {stage!r} (this run trains "
                     f"stage {config.train.stage!r})")
      try:
        diff = architecture_changes(saved, config)
      except Exception:  # an older config layout: the shape check below still names the params
        diff = []
      if diff:
        parts.append(f"model fields that differ ({cfg_path} -> yours): {'; '.join(diff)}")
      return "".join(x + "; " for x in parts)
  return ""


# ---- data ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Data:
  """What the trainer reads. `train`: endless iterator of host batches with JSON-able
  `get_state()` / `set_state()` (its position is saved with every checkpoint);
  `eval_batches()`: a fresh pass over `config.eval.split` (one clip per batch as AVSBench);
  `steps_per_epoch`: training examples // global batch size. Multi-host: `train` yields this
  host's slice of every global batch (`data.batch_size // jax.process_count()` clips);
  `eval_batches()` yields the whole split on every host (each host evaluates all of it)."""
  train: Iterator[dict]
  steps_per_epoch: int
  eval_batches: Callable[[], Iterable[dict]]


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> Data:
  """The one place the trainer gets its data (swap in another preparation here).

  `data.name`: "toy_kpf" (in-memory toy clips, coprop_jax.train.toy_data: train clips from
  `data.synthetic.seed`, eval clips ("val": seed + 1, "test": seed + 2, a fifth as many));
  "synthetic_<layout>" (the synthetic AVSBench tree is generated into `data.manual_dir` unless
  present, then built with TFDS into `data.data_dir`); "avsbench_<layout>" (the manual download
  in `data.manual_dir`, built once). `{workdir}` in those paths is the run's workdir.
  """
  d = config.data
  ec = config.eval
  if d.name == "toy_kpf":
    from coprop_jax.train import toy_data
    nc = config.keyframe.num_classes
    kw = dict(size=d.image_size, frames=d.num_frames, num_classes=nc - 1 if nc > 1 else 3,
              semantic=nc > 1)
    clips = toy_data.make_dataset(d.synthetic.seed, d.synthetic.num_videos, **kw)
    if ec.split not in ("val", "test"):
      raise ConfigError(f"eval.split: toy data has 'val' and 'test', got {ec.split!r}")
    seed = d.synthetic.seed + (1 if ec.split == "val" else 2)
    held_out = toy_data.make_dataset(seed, max(2, d.synthetic.num_videos // 5), **kw)

    def toy_eval():
      for i, c in enumerate(held_out):
        yield dict({k: v[None] for k, v in c.items()}, video_id=np.array([f"toy_{ec.split}{i}"]))

    pi, pc = jax.process_index(), jax.process_count()
    mine = clips[pi::pc]                   # this host's clips (all of them on a single host)
    if d.batch_size // pc > len(mine):
      raise ConfigError(f"data.batch_size={d.batch_size}: more than the {len(mine)} toy clips of "
                        f"each of the {pc} host(s) (data.synthetic.num_videos)")
    return Data(toy_data.ClipBatches(mine, d.batch_size // pc, d.shuffle_seed),
                max(1, len(mine) * pc // d.batch_size), toy_eval)
  import grain
  from data_pipelines import input_pipeline, prepare
  d = ml_collections.ConfigDict(d.to_dict())
  d.manual_dir = resolve_path(d.manual_dir, workdir)
  d.data_dir = resolve_path(d.data_dir, workdir)
  b = prepare.prepare_dataset(d)   # generated/built once, never silently stale
  splits = b.info.splits
  if ec.every_steps > 0 and (ec.split not in splits or splits[ec.split].num_examples == 0):
    raise ConfigError(f"eval.split={ec.split!r}: the {d.name} build in {d.data_dir} has no such "
                      f"examples (splits: { {k: v.num_examples for k, v in splits.items()} })")
  train = input_pipeline.make_iterator(d, "train", train=True, builder=b)
  per_epoch = max(1, splits["train"].num_examples // d.batch_size)
  return Data(train, per_epoch,
              lambda: input_pipeline.make_iterator(d, ec.split, train=False, builder=b,
                                                   shard_options=grain.sharding.NoSharding()))


# ---- helpers ---------------------------------------------------------------------------------------

def _log_compiled(compiled: Any) -> None:
  """Logs XLA's memory analysis (and FLOPs) of the compiled update step."""
  try:
    mem = compiled.memory_analysis()
  except Exception as e:  # not every backend implements it
    mem = None
    logging.info("compiled train step: no memory analysis (%s)", e)
  if mem is not None:
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes")
    logging.info("compiled train step memory: %s", ", ".join(
        f"{f.replace('_size_in_bytes', '')}={getattr(mem, f, 0) / 2 ** 20:.1f} MiB" for f in fields
        if hasattr(mem, f)))
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if cost and "flops" in cost:
      logging.info("compiled train step: %.4g FLOPs per step (XLA cost analysis)", cost["flops"])
  except Exception as e:
    logging.info("compiled train step: no cost analysis (%s)", e)


def _set_compilation_cache(path: str) -> None:
  from jax.experimental.compilation_cache import compilation_cache
  jax.config.update("jax_compilation_cache_dir", path)
  compilation_cache.reset_cache()   # re-initialised on the next compile, in `path`
  logging.info("persistent compilation cache: %s", path)


def import_tensorboardx() -> Any:
  """The tensorboardX module. tensorboardX imports torch at import time when it is installed
  (seconds), only to accept torch tensors, which the trainer never passes: the import is made
  with torch hidden unless torch is loaded already."""
  import sys
  hide = "torch" not in sys.modules and "tensorboardX" not in sys.modules
  if hide:
    sys.modules["torch"] = None    # `import torch` raises ImportError inside tensorboardX
  try:
    import tensorboardX
  finally:
    if hide:
      del sys.modules["torch"]
  return tensorboardX


def abstract_batch(mesh: jax.sharding.Mesh, sample: dict) -> dict:
  """Global-batch ShapeDtypeStructs (split over data x fsdp) of one host batch of arrays."""
  return {k: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(),) + v.shape[1:], v.dtype,
                                  sharding=shd.batch_sharding(mesh, v.ndim))
          for k, v in sample.items()}


def create_train_state(task: Any, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                       batch: dict) -> tuple[TrainState, Callable[[dict], TrainState]]:
  """-> (abstract state: ShapeDtypeStructs with their shardings, init) where
  `init(device_batch)` makes the fresh state (params from `task.init_variables` with
  `config.seed`, optimizer from `task.make_optimizer`; call `task.set_total_steps` first when
  the task or the schedule needs the run's length), created directly in its shardings
  (`sharding.state_shardings`: large kernels and their optimizer moments split over 'fsdp', the
  rest replicated; `config.train.fsdp_min_size`). Nothing is compiled or allocated until `init`
  is called. `batch`: `abstract_batch(...)`."""
  opts = FAST_COMPILE if config.train.fast_compile else None
  rng = jax.random.PRNGKey(config.seed)
  params_shape, extra_shape = jax.eval_shape(task.init_variables, batch, rng)
  tx = task.make_optimizer(params_shape)

  def create(params, extra, rng):
    return TrainState.create(params, tx, extra=extra, rng=jax.random.fold_in(rng, 1))

  abstract = jax.eval_shape(create, params_shape, extra_shape, rng)
  shardings = shd.state_shardings(mesh, abstract, int(config.train.fsdp_min_size))

  def init(device_batch: dict) -> TrainState:
    params, extra = jax.jit(task.init_variables, out_shardings=(shardings.params, shardings.extra),
                            compiler_options=opts)(device_batch, rng)
    return jax.jit(create, out_shardings=shardings)(params, extra, rng)

  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract, shardings)
  return abstract, init


def compile_train_step(task: Any, config: ml_collections.ConfigDict, abstract_state: TrainState,
                       batch: dict) -> Any:
  """The update step (`state.train_step` with `task.loss_fn`), lowered and compiled for the
  shapes and shardings of `abstract_state` / `batch` (state donated). Logs the time, XLA's
  memory analysis and FLOPs."""
  state_shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
  repl = shd.replicated(next(iter(batch.values())).sharding.mesh)
  # Frozen parameters (task.trainable: False / ratio 0) stay outside the differentiated tree.
  update = jax.jit(functools.partial(train_step, loss_fn=task.loss_fn,
                                     lr_fn=lr_schedule(config.train, task.total_steps),
                                     trainable=task.trainable(abstract_state.params)),
                   out_shardings=(state_shardings, repl), donate_argnums=(0,),
                   compiler_options=FAST_COMPILE if config.train.fast_compile else None)
  t0 = time.perf_counter()
  traced = update.trace(abstract_state, batch)
  t1 = time.perf_counter()
  compiled = traced.lower().compile()
  logging.info("train step: traced in %.1f s, lowered and compiled in %.1f s", t1 - t0,
               time.perf_counter() - t1)
  _log_compiled(compiled)
  return compiled


# ---- the trainer -----------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict:
  """Trains `config.train.stage` into `workdir` (resuming there if it holds checkpoints),
  evaluating every `eval.every_steps`. Returns the summary written to train_summary.json."""
  tc, ec = config.train, config.eval
  distributed.initialize(tc.distributed)            # before any device is touched
  task = tasks_lib.get_task(config)                 # before anything is written
  if (tc.stage == "kpf_finetune" and not config.data.control_points_file
      and not tc.get("allow_finetune_without_control_points", False)):
    raise ConfigError("train.stage=kpf_finetune needs data.control_points_file (RCPG's output, "
                      "python -m coprop_jax.rcpg): without it every clip's only keyframe is frame "
                      "0; set train.allow_finetune_without_control_points=True to accept that")
  best_metric = ec.best_metric or task.default_best_metric
  if best_metric not in task.metric_names:
    raise ConfigError(f"eval.best_metric={ec.best_metric!r}: stage {task.name} reports "
                      f"{', '.join(task.metric_names)}")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  source = Checkpointer(tc.init_from, read_only=True, what="train.init_from") \
      if tc.init_from else None                     # a missing directory: error, none created
  if source is not None and source.latest_step() is None:
    raise CheckpointError(f"train.init_from {source.directory}: no checkpoint in it")
  changes = check_config(config, workdir, allow_config_change)
  if tc.compilation_cache_dir:
    _set_compilation_cache(resolve_path(tc.compilation_cache_dir, workdir))
  opts = FAST_COMPILE if tc.fast_compile else None

  # ---- Mesh -------------------------------------------------------------------------------------
  try:
    mesh = shd.make_mesh(int(tc.mesh_data), int(tc.mesh_fsdp))
  except ValueError as e:
    raise ConfigError(str(e)) from e
  repl = shd.replicated(mesh)
  logging.info("mesh: %s over %d %s device(s), %d process(es)", dict(mesh.shape), mesh.size,
               jax.devices()[0].platform, jax.process_count())
  shards = shd.batch_shards(mesh)
  if config.data.batch_size % shards or config.data.batch_size % jax.process_count():
    raise ConfigError(f"data.batch_size={config.data.batch_size}: the global batch must divide "
                      f"over the {shards} devices of the mesh (data x fsdp) and the "
                      f"{jax.process_count()} process(es)")

  # ---- Input pipeline ---------------------------------------------------------------------------
  data = prepare_data(config, workdir)
  start_position = data.train.get_state()
  sample = shd.device_arrays(task.prepare_batch(next(data.train)))
  data.train.set_state(start_position)               # the sample batch is trained on at step 1
  batch_abstract = abstract_batch(mesh, sample)
  frames_per_step = int(np.prod(batch_abstract["frames"].shape[:2]))
  steps = tc.num_steps if tc.num_steps > 0 else tc.num_epochs * data.steps_per_epoch
  task.set_total_steps(steps)                        # ramps and schedules are fractions of it

  # ---- Model & optimizer, sharding (large kernels over 'fsdp', batches over data x fsdp) -------
  abstract_state, init = create_train_state(task, config, mesh, batch_abstract)
  state_shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state.params))
  logging.info("stage %s: %s parameters; %d steps (%d per epoch), %d frames per step",
               task.name, f"{n_params:,}", steps, data.steps_per_epoch, frames_per_step)
  if source is not None:   # before compiling: a checkpoint of another stage/config is refused now
    try:
      source.check_variables(abstract_state.params, abstract_state.extra)
    except CheckpointError as e:
      raise CheckpointError(describe_source(tc.init_from, config) + str(e)) from e

  # ---- Update step: lowered and compiled before step 1 -------------------------------------------
  compiled = compile_train_step(task, config, abstract_state, batch_abstract)

  # ---- Load checkpoint (resume), or initialise --------------------------------------------------
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=tc.keep_checkpoints)
  best = Checkpointer(os.path.join(workdir, "best"), keep=1)
  writer = None
  try:
    if ckpt.latest_step() is not None:
      state = ckpt.restore(abstract_state, data_iter=data.train)
      logging.info("resumed from step %d (%s)", int(state.step), ckpt.directory)
    else:
      state = init(shd.shard_batch(mesh, sample))
      if source is not None:
        params, extra, src_step = source.restore_variables(
            abstract_state.params, abstract_state.extra,
            sharding=lambda tree: shd.state_shardings(mesh, tree, int(tc.fsdp_min_size)))
        state = state.replace(params=params, extra=extra)
        logging.info("initialised params from %s (step %d)", source.directory, src_step)
      else:
        state, loaded = task.load_pretrained(state)
        state = jax.device_put(state, state_shardings)
        for what in loaded:
          logging.info("initialised %s", what)

    save_config(config, workdir, changes)          # once the state fits this config

    # ---- Evals ------------------------------------------------------------------------------------
    predict = jax.jit(task.predict, compiler_options=opts)
    # not in the paper: evaluation runs on this host's first device with whole (all-gathered)
    # parameters; every host evaluates the whole split (eval_batches), so no result has to
    # cross hosts (AVSBench evaluates one clip per batch anyway).
    gather = jax.jit(lambda p, e: (p, e), out_shardings=repl)
    eval_device = jax.local_devices()[0]
    meta = best.read_meta() if best.latest_step() is not None else None
    best_value = meta["value"] if meta else None
    if jax.process_index() == 0:
      writer = import_tensorboardx().SummaryWriter(os.path.join(workdir, "tensorboard"))

    def run_eval(state: TrainState, step: int) -> dict:
      params, extra = jax.tree.map(lambda x: jax.device_put(x.addressable_data(0), eval_device),
                                   gather(state.params, state.extra))

      def predict_host(batch):
        arrays = jax.device_put(shd.device_arrays(batch), eval_device)
        return np.asarray(jax.device_get(predict(params, extra, arrays)))

      t = time.perf_counter()
      metrics, images = task.evaluate(predict_host, data.eval_batches(), ec.num_images)
      if best_metric not in metrics:
        raise TrainingError(f"eval.best_metric={best_metric!r} was not reported by the "
                            f"evaluation (got {sorted(metrics)})")
      logging.info("eval (%s) step %d: %s (%.1f s)", ec.split, step,
                   ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), time.perf_counter() - t)
      if writer is not None:
        for k, v in metrics.items():
          writer.add_scalar(f"{ec.split}/{k}", v, step)
        for k, img in images.items():
          writer.add_image(f"{ec.split}/masks/{k}", img, step, dataformats="HWC")
        writer.flush()
      return dict(metrics, step=step)

    def check_finite(state: TrainState) -> None:
      bad = int(jax.device_get(state.nonfinite_step))
      if bad:
        ckpt.wait()
        last = ckpt.latest_step()
        raise NonFiniteError(
            f"training stopped: loss or gradient norm not finite at step {bad} (update skipped); "
            + (f"the last checkpoint, step {last} in {ckpt.directory}, is intact and a rerun "
               "resumes from it" if last is not None else "no checkpoint was written")
            + "; lower train.lr, set train.grad_clip or check the data")

    # ---- Train loop -------------------------------------------------------------------------------
    history, evals = [], []
    start = int(jax.device_get(state.step))
    pending = []
    t_log, step_log = time.perf_counter(), start
    for step in range(start, steps):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        batch = shd.shard_batch(mesh, task.prepare_batch(next(data.train)))
        state, metrics = compiled(state, batch)
      pending.append(metrics)
      done = step + 1
      last = done == steps
      do_log = done % max(tc.log_every, 1) == 0 or last
      do_eval = ec.every_steps > 0 and (done % ec.every_steps == 0 or last)
      do_ckpt = (tc.checkpoint_every > 0 and done % tc.checkpoint_every == 0) or last
      if not (do_log or do_eval or do_ckpt):
        continue
      check_finite(state)
      if do_log:
        ms = jax.device_get(pending)
        m = {k: float(np.mean([x[k] for x in ms])) for k in ms[0]}
        dt = time.perf_counter() - t_log
        m["frames_per_s"] = (done - step_log) * frames_per_step / max(dt, 1e-9)
        m["steps_per_s"] = (done - step_log) / max(dt, 1e-9)
        t_log, step_log, pending = time.perf_counter(), done, []
        logging.info("step %d/%d: %s", done, steps,
                     ", ".join(f"{k}={v:.4g}" for k, v in m.items()))
        if writer is not None:
          for k, v in m.items():
            writer.add_scalar(f"train/{k}", v, done)
        history.append(dict(m, step=done))
      if do_eval:
        res = run_eval(state, done)
        evals.append(res)
        if best_value is None or res[best_metric] > best_value:
          best_value = res[best_metric]
          best.save(state, meta=dict(step=done, metric=best_metric, value=best_value,
                                     metrics=res))
          logging.info("new best %s=%.4f at step %d (%s)", best_metric, best_value, done,
                       best.directory)
      if do_ckpt:
        ckpt.save(state, data.train)
      if do_eval:   # the evaluation's time is not training throughput
        t_log = time.perf_counter()
    check_finite(state)
  finally:
    for c in (ckpt, best) + ((source,) if source is not None else ()):
      c.close()
    if writer is not None:
      writer.close()
  summary = dict(final_step=int(jax.device_get(state.step)), workdir=workdir,
                 checkpoints=ckpt.directory, history=history, evals=evals,
                 best=dict(dir=best.directory, metric=best_metric, value=best_value))
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, "train_summary.json.tmp")
    with open(tmp, "w") as fh:
      json.dump(summary, fh, indent=1)
    os.replace(tmp, os.path.join(workdir, "train_summary.json"))
  return summary
