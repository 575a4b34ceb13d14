"""Stage 1: the Keyframe Processor, on all frames (`kpf`) or on keyframes only (`kpf_finetune`).

Batches are clip batches in the shared vocabulary ([B, T, ...]); frames are flattened to N = B*T
inside the step, so shapes stay fixed. Frames without GT or padded (gt_valid & frame_valid false)
get weight 0. The keyframe-only fine-tune (paper section 3.3: "fine-tuned exclusively on this
subset") is applied to the host batches (`restrict_to_keyframes`: gt_valid &= control point), so
both stages compile the same step. Evaluation: AVSBench J/F (binary) or mIoU/F (AVSS) over all
frames with GT and over keyframes only (`*_keyframes`), one video per metric batch as AVSBench.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from coprop_jax.images import normalize_uint8
from coprop_jax.models import keyframe as kf
from coprop_jax.train import losses
from coprop_jax.train.tasks.base import Task, mask_panel


def flatten_frames(batch: dict) -> dict:
  """[B, T, ...] arrays -> [B*T, ...]; uint8 frames are normalised (ImageNet mean/std)."""
  out = {}
  for k in ("frames", "masks", "gt_valid", "frame_valid", "audio_embed", "audio_logmel",
            "control_points"):
    if k in batch:
      v = batch[k]
      out[k] = v.reshape((-1,) + v.shape[2:])
  if out["frames"].dtype == jnp.uint8:
    out["frames"] = normalize_uint8(out["frames"])
  return out


def restrict_to_keyframes(batch: dict) -> dict:
  """Host-side keyframe-only fine-tune: gt_valid &= (control_points == 1), so only keyframes
  carry loss weight. Same effect as `make_loss_fn(..., keyframes_only=True)`, but the step
  compiled for all-frames training is reused (the trainer CLI does this)."""
  if "control_points" not in batch:
    raise ValueError("restrict_to_keyframes: batch has no 'control_points' [B, T]")
  return dict(batch, gt_valid=np.asarray(batch["gt_valid"]).astype(bool)
              & (np.asarray(batch["control_points"]) == 1))


def make_loss_fn(model: kf.KeyframeProcessor, tc: Any, keyframes_only: bool,
                 audio_mode: str = "normal"):
  """loss_fn(params, extra, batch, rng, step) -> (loss, aux). `tc` = config.train (its `loss`
  weights: BCE + IoU for binary, CE + Dice for semantic). audio_mode: "normal", "zero"
  (audio-blind control) or "shuffle" (audio of another clip in the batch). `step` is unused: the
  KPF loss does not change during training."""
  w1 = float(tc.loss.bce_weight)
  w2 = float(tc.loss.iou_weight)

  def loss_fn(params, extra, batch, rng, step):
    del step
    f = flatten_frames(batch)
    logits = model.apply({"params": params, **extra}, f["frames"], **_audio(f, audio_mode, rng),
                         train=True, rngs={"dropout": rng})
    weight = losses.frame_weights(f["gt_valid"], f["frame_valid"], f.get("control_points"),
                                  keyframes_only)
    out = losses.segmentation_losses(logits, f["masks"], weight, model.num_classes, w1, w2)
    out["num_frames"] = jnp.sum(weight)
    return out["loss"], {k: v for k, v in out.items() if k != "loss"}

  return loss_fn


def _audio(f: dict, mode: str, rng: jax.Array) -> dict:
  """Model audio kwargs from flattened frames: audio_embed [N, 128] if present, else
  audio_logmel [N, 96, 64] (the KPF runs VGGish on it); corrupted per `mode`."""
  if "audio_embed" in f:
    return dict(audio_embed=corrupt_audio(f["audio_embed"], mode, rng))
  if "audio_logmel" in f:
    return dict(audio_logmel=corrupt_audio(f["audio_logmel"], mode, rng))
  raise ValueError("KPF batch: needs 'audio_embed' [B, T, 128] or 'audio_logmel' [B, T, 96, 64]; "
                   f"got keys {sorted(f)}")


AUDIO_MODES = ("normal", "zero", "shuffle")


def corrupt_audio(audio: jax.Array, mode: str, rng: jax.Array) -> jax.Array:
  if mode == "normal":
    return audio
  if mode == "zero":
    return jnp.zeros_like(audio)
  if mode == "shuffle":
    return audio[jax.random.permutation(rng, audio.shape[0])]
  raise ValueError(f"audio_mode: unknown {mode!r}; expected normal, zero or shuffle")


def load_pretrained(state: Any, kc: Any) -> Any:
  """`state` with converted encoder weights put in place (Orbax checkpoints written by
  `python -m coprop_jax.convert`; `kc` = `config.keyframe`).

  `kc.backbone_weights` -> `params["backbone"]` (PVT-v2 params, or ResNet-50 {"params",
  "batch_stats"} whose statistics go to `extra["batch_stats"]["backbone"]`);
  `kc.vggish_weights` -> `params["vggish"]` (needs log-mel audio: with precomputed embeddings the
  model has no VGGish). Shapes are checked against the model's own; Adam moments start at zero
  either way, so the optimizer state stays valid.
  """
  from coprop_jax.convert.checkpoint_io import CheckpointError, check_params_match, restore_params
  params, extra = dict(state.params), dict(state.extra)

  def read(path, what):
    try:
      return restore_params(path)
    except CheckpointError as e:
      raise CheckpointError(f"keyframe.{what}: {e}") from e

  if kc.get("backbone_weights"):
    tree = read(kc.backbone_weights, "backbone_weights")
    stats = None
    if isinstance(tree, dict) and set(tree) == {"params", "batch_stats"}:
      tree, stats = tree["params"], tree["batch_stats"]
    check_params_match(tree, params["backbone"], f"keyframe.backbone_weights ({kc.backbone})")
    params["backbone"] = jax.tree_util.tree_map(jnp.asarray, tree)
    if "batch_stats" in extra and "backbone" in extra["batch_stats"]:
      if stats is None:
        raise CheckpointError(f"keyframe.backbone_weights {kc.backbone_weights}: {kc.backbone} has "
                              "BatchNorm statistics but the checkpoint holds none")
      check_params_match(stats, extra["batch_stats"]["backbone"], "backbone BatchNorm statistics")
      extra["batch_stats"] = dict(extra["batch_stats"], backbone=jax.tree_util.tree_map(jnp.asarray, stats))
  if kc.get("vggish_weights"):
    if "vggish" not in params:
      raise ValueError("keyframe.vggish_weights is set but the data gives precomputed audio_embed, "
                       "so the KPF has no VGGish; clear it or feed audio_logmel")
    tree = read(kc.vggish_weights, "vggish_weights")
    tree = tree.get("params", tree) if isinstance(tree, dict) else tree
    check_params_match(tree, params["vggish"], "keyframe.vggish_weights (VGGish)")
    params["vggish"] = jax.tree_util.tree_map(jnp.asarray, tree)
  return state.replace(params=params, extra=extra)


def predict(model: kf.KeyframeProcessor, params: Any, extra: Any, batch: dict,
            audio_mode: str = "normal") -> jax.Array:
  """Evaluation forward pass (no drop-path). batch [B, T, ...] -> logits [B, T, H, W, C]."""
  f = flatten_frames(batch)
  logits = model.apply({"params": params, **extra}, f["frames"],
                       **_audio(f, audio_mode, jax.random.PRNGKey(0)))
  b, t = batch["frames"].shape[:2]
  return logits.reshape((b, t) + logits.shape[1:])


class KpfTask(Task):
  """Stage 1, all frames: every frame with GT trains the KPF (config.keyframe, config.train.loss).

  Metrics: binary `J`, `F` (AVSBench, one video per batch), semantic `mIoU`, `F` (plus what
  `coprop_jax.eval.metrics.SemanticMeter` adds), each also over keyframes only (`*_keyframes`).
  """
  name = "kpf"
  keyframes_only = False

  def __init__(self, config: Any, audio_mode: str = ""):
    super().__init__(config)
    self.model = self.build_model()
    self.num_classes = int(config.keyframe.num_classes)
    # "" = config.keyframe.audio_mode (normal, zero: audio-blind, shuffle)
    self.audio_mode = audio_mode or config.keyframe.get("audio_mode", "normal")
    if self.audio_mode not in AUDIO_MODES:
      raise ValueError(f"keyframe.audio_mode: expected one of {AUDIO_MODES}, got "
                       f"{self.audio_mode!r}")
    main = "J" if self.num_classes == 1 else "mIoU"
    self.metric_names = (main, "F", f"{main}_keyframes", "F_keyframes")
    self.default_best_metric = f"{main}_keyframes" if self.keyframes_only else main
    # "zero" is applied to the host batches (prepare_batch), so the compiled update step is the
    # same program as with audio (one compile, shared through the persistent compilation cache).
    self._loss = make_loss_fn(self.model, config.train, False,
                              "normal" if self.audio_mode == "zero" else self.audio_mode)

  def build_model(self) -> Any:
    """The network (a Linen module called like `KeyframeProcessor`)."""
    return kf.from_config(self.config.keyframe)

  def prepare_batch(self, batch: dict) -> dict:
    if self.audio_mode == "zero":
      batch = dict(batch, **{k: np.zeros_like(batch[k]) for k in ("audio_embed", "audio_logmel")
                             if k in batch})
    return restrict_to_keyframes(batch) if self.keyframes_only else batch

  def init_variables(self, batch: dict, rng: jax.Array) -> tuple[Any, Any]:
    f = flatten_frames({k: v[:1] for k, v in batch.items()})   # one clip: shapes only
    variables = dict(self.model.init(rng, f["frames"], **_audio(f, "normal", rng)))
    params = variables.pop("params")
    return params, variables

  def trainable(self, params: Any) -> Any:
    # A frozen VGGish (keyframe.freeze_vggish, log-mel audio) gets no updates and no moments.
    if "vggish" in params and getattr(self.model, "freeze_vggish", False):
      return {k: k != "vggish" for k in params}
    return None

  def loss_fn(self, params, extra, batch, rng, step):
    return self._loss(params, extra, batch, rng, step)

  def load_pretrained(self, state: Any) -> tuple[Any, list[str]]:
    kc = self.config.keyframe
    loaded = [f"keyframe.{k} <- {kc[k]}" for k in ("backbone_weights", "vggish_weights") if kc[k]]
    return (load_pretrained(state, kc) if loaded else state), loaded

  def predict(self, params, extra, batch):
    return predict(self.model, params, extra, batch, self.audio_mode)

  def evaluate(self, predict_fn: Callable[[dict], np.ndarray], batches: Iterable[dict],
               num_images: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    from coprop_jax.eval import metrics
    ec = self.config.eval

    def meter():
      if self.num_classes == 1:
        return metrics.BinaryMeter(ec.f_num_thresholds, ec.f_beta2)
      return metrics.SemanticMeter(self.num_classes, ec.f_beta2)

    every, keys = meter(), meter()
    n_every = n_keys = 0
    images = {}
    for batch in batches:
      logits = np.asarray(predict_fn(batch))
      for i in range(logits.shape[0]):
        valid = np.asarray(batch["gt_valid"][i], bool) & np.asarray(batch["frame_valid"][i], bool)
        key = valid & (np.asarray(batch["control_points"][i]) == 1)
        lg = logits[i][..., 0] if self.num_classes == 1 else logits[i]
        masks = np.asarray(batch["masks"][i])
        # Each clip is one metric batch (AVSBench: one video per batch); frames are selected
        # with `valid` masks (not by indexing), so every clip has the same shapes.
        if valid.any():
          every.add(lg, masks, valid)
          n_every += 1
        if key.any():
          keys.add(lg, masks, key)
          n_keys += 1
        if len(images) < num_images:
          pred = (lg > 0).astype(np.int32) if self.num_classes == 1 else lg.argmax(-1)
          vid = batch.get("video_id")
          name = str(vid[i]) if vid is not None else f"clip{len(images)}"
          images[name] = mask_panel(batch["frames"][i], masks, pred, self.num_classes)
    if not n_every:
      raise ValueError("KPF evaluation: no frame with GT in the evaluation split")
    out = {k: float(v) for k, v in every.result().items() if k != "num_batches"}
    if n_keys:
      out.update({f"{k}_keyframes": float(v) for k, v in keys.result().items()
                  if k != "num_batches"})
    out["num_videos"] = float(n_every)
    return out, images


class KpfFinetuneTask(KpfTask):
  """Stage 1, keyframe fine-tune: only keyframes (control point 1) carry loss weight. Start it
  from the all-frames run with `train.init_from`. Keep-best default: the keyframe metric."""
  name = "kpf_finetune"
  keyframes_only = True
