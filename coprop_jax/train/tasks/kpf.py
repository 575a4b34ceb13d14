"""Stage-1 training of the Keyframe Processor: all frames, then keyframes only.

Batches are clip batches in the shared vocabulary ([B, T, ...]); frames are flattened to N = B*T
inside the step, so shapes stay fixed. Frames without GT or padded (gt_valid & frame_valid false)
get weight 0; with `keyframes_only` frames whose control point is not 1 also get weight 0, so the
fine-tune's gradients come from keyframes only.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from coprop_jax.images import normalize_uint8
from coprop_jax.models import keyframe as kf
from coprop_jax.train import losses
from coprop_jax.train.state import TrainState, make_optimizer

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
  """loss_fn(params, extra, batch, rng) -> (loss, aux). audio_mode: "normal", "zero" (audio-blind
  control) or "shuffle" (audio of another clip in the batch)."""
  w1 = float(tc.loss.get("bce_weight", 1.0))
  w2 = float(tc.loss.get("iou_weight", 1.0))

  def loss_fn(params, extra, batch, rng):
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


def corrupt_audio(audio: jax.Array, mode: str, rng: jax.Array) -> jax.Array:
  if mode == "normal":
    return audio
  if mode == "zero":
    return jnp.zeros_like(audio)
  if mode == "shuffle":
    return audio[jax.random.permutation(rng, audio.shape[0])]
  raise ValueError(f"audio_mode: unknown {mode!r}; expected normal, zero or shuffle")


def init_state(model: kf.KeyframeProcessor, tc: Any, sample_batch: dict, seed: int = 0,
               compiler_options: Optional[dict] = None) -> TrainState:
  """Initialise params (from one sample batch's shapes) and the optimizer. With a frozen VGGish
  (`model.freeze_vggish` and log-mel audio) its params get no optimizer state or updates."""
  f = flatten_frames({k: v[:1] for k, v in sample_batch.items() if hasattr(v, "shape")
                      and v.dtype.kind not in "OSU"})
  key = jax.random.PRNGKey(seed)
  frames = jnp.asarray(f["frames"])
  audio = {k: jnp.asarray(v) for k, v in _audio(f, "normal", key).items()}
  frozen = ("vggish",) if model.freeze_vggish and "audio_logmel" in audio else ()
  tx = make_optimizer(tc, frozen)

  def make(k, frames, audio):  # one program: params, other collections and optimizer state
    variables = dict(model.init(k, frames, **audio))
    params = variables.pop("params")
    return TrainState.create(params, tx, extra=variables, rng=jax.random.fold_in(k, 1))

  return jax.jit(make, compiler_options=compiler_options)(key, frames, audio)


def load_pretrained(state: TrainState, kc: Any) -> TrainState:
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


def make_predict_fn(model: kf.KeyframeProcessor, audio_mode: str = "normal",
                    compiler_options: Optional[dict] = None):
  """jit(predict)(params, extra, batch) -> logits [B, T, H, W, C]."""

  def predict(params, extra, batch):
    f = flatten_frames(batch)
    logits = model.apply({"params": params, **extra}, f["frames"],
                         **_audio(f, audio_mode, jax.random.PRNGKey(0)))
    b, t = batch["frames"].shape[:2]
    return logits.reshape((b, t) + logits.shape[1:])

  return jax.jit(predict, compiler_options=compiler_options)


def evaluate(predict, params, extra, batches, num_classes: int, keyframes_only: bool = False,
             eval_batch_frames: Optional[int] = None) -> dict:
  """AVSBench metrics over `batches` (each clip is one metric batch, as AVSBench's one-video
  batches). Frames without GT / padded (and non-keyframes if keyframes_only) are skipped."""
  from coprop_jax.eval import metrics
  meter = metrics.BinaryMeter() if num_classes == 1 else metrics.SemanticMeter(num_classes)
  for batch in batches:
    arrays = {k: v for k, v in batch.items() if getattr(v, "dtype", np.dtype("O")).kind not in "OSU"}
    logits = np.asarray(predict(params, extra, arrays))
    for i in range(logits.shape[0]):
      valid = batch["gt_valid"][i] & batch["frame_valid"][i]
      if keyframes_only:
        valid = valid & (batch["control_points"][i] == 1)
      if not valid.any():
        continue
      lg = logits[i][..., 0] if num_classes == 1 else logits[i]
      meter.add(lg[valid], batch["masks"][i][valid])
  del eval_batch_frames
  return meter.result()
