"""Stage 2: the Audio-insert Propagator (AOT's LSTT + audio insert), trained with AOT's recipe.

    python -m coprop_jax.train --config configs/coprop.py:dataset=ms3,stage=propagator --workdir DIR \
        --config.propagator.aot_weights=ckpt/aotl --config.keyframe.vggish_weights=ckpt/vggish

Training (`coprop_jax.pipeline.make_train_forward` + `coprop_jax.train.propagator_losses`):
clips of T frames; every frame with a control point AND a GT mask is a reference (its GT mask
resets the memory: with the built dataset's default control points, frame 0 only, which is
AOT's recipe; with `data.control_points_file`, every GT-derived keyframe); the short-term memory
takes the GT of the previous frame for the first `propagator.train.seq_training_start` of the
run and the model's own prediction after it (sequential training), when the ID bank is frozen
(`freeze_id_bank_after`); loss = top-k CE (ramped) + soft Jaccard on propagated frames with GT;
BPTT through the scan (`propagator.remat` to save memory).

Trained: {"propagator": params, "encoder": encoder params}; AOT's frozen encoder stages and
BatchNorm affine params get no update, the other encoder stages run at
`propagator.train.encoder_lr_ratio` of the rate (AOT's rule). Weight decay skips 1-D params
(biases, norms) and AOT's TRAIN_WEIGHT_DECAY_EXEMPTION names (`decay_mask`).
Not trained (`extra`): the encoder's BatchNorm statistics and, with log-mel audio, the frozen
VGGish whose per-frame embedding is the propagator's audio. Where the VGGish weights come from:
  * `keyframe.vggish_weights` (the converted VGGish, `python -m coprop_jax.convert vggish`): the
    same file the KPF stages load, so both networks see the same audio features (real runs);
  * without it, the VGGish a KPF of this config initialises from `config.seed`: exactly the
    frozen VGGish of a KPF run made with the same seed and no vggish_weights (smoke runs).
  `python -m coprop_jax.export` checks that the propagator run's VGGish equals the KPF's (the
  model directory keeps one VGGish, the KPF's) and refuses a pair that differs.
Initial weights: `propagator.aot_weights` (a converted AOT checkpoint: every AOT weight incl.
the ID bank; the audio parameters keep their exact no-op init), loaded by `load_pretrained`.

Evaluation during training: GT keyframes (oracle) at the eval split's GT control points
(`coprop_jax.rcpg.core.gt_control_points`), propagated through each segment; AVSBench J/F
(binary) or mIoU/F (AVSS) with the Alignment Rate (`coprop_jax.eval.report.EvalReport`), over
all frames with GT (`J`, `F`, `alignment_rate`) and over the propagated frames only (`J_normal`,
`F_normal`; keyframes are GT, so these measure the propagator alone).

Stage 2 for S4: S4's train split has GT on frame 1 only, so nothing can be learned about
propagation from it; `configs/coprop.py:dataset=s4,stage=propagator` trains on MS3's train split
(evaluating on MS3's val) and the S4 model uses that propagator.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from coprop_jax import propagation
from coprop_jax.models import propagator as prop_lib
from coprop_jax.train.tasks.base import Task, mask_panel

IGNORE = 255
# aot-benchmark configs/default.py TRAIN_WEIGHT_DECAY_EXEMPTION: parameters whose path contains
# one of these get no weight decay (with every 1-D parameter: biases and norms).
DECAY_EXEMPT = ("absolute_pos_embed", "relative_position_bias_table", "relative_emb_v", "conv_out")


def decay_mask(params: Any) -> Any:
  """AOT's weight-decay rule (utils/learning.py get_trainable_params): True (decayed) for
  params of rank >= 2 whose path names none of DECAY_EXEMPT. `params` may be abstract."""
  def one(path, x):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return len(x.shape) > 1 and not any(e in n for n in names for e in DECAY_EXEMPT)
  return jax.tree_util.tree_map_with_path(one, params)


def _audio_args(batch: dict, extra: dict) -> dict:
  if "audio_embed" in batch:
    return {"audio_embed": batch["audio_embed"]}
  if "audio_logmel" in batch:
    return {"audio_logmel": batch["audio_logmel"], "vggish_params": extra["vggish"]}
  raise ValueError("propagator batch: needs 'audio_embed' [B, T, 128] or 'audio_logmel' "
                   f"[B, T, 96, 64]; got keys {sorted(batch)}")


def ids_to_classes(ids: jax.Array, masks: jax.Array, is_ref: jax.Array, num_classes: int,
                   max_objects: int) -> jax.Array:
  """Semantic: predicted object ids [B, T, H, W] -> class ids, through the classes of each
  frame's segment reference (GT class masks [B, T, H, W], references is_ref [B, T]; the
  pipeline's identity: largest class first). Frames before the first reference -> 0."""
  from coprop_jax.pipeline import classes_to_object_ids
  b, t = ids.shape[:2]
  table = classes_to_object_ids(masks.reshape((b * t,) + masks.shape[2:]), num_classes,
                                max_objects)["id_to_class"].reshape(b, t, -1)
  start = jax.lax.cummax(jnp.where(is_ref, jnp.arange(t)[None], -1), axis=1)
  seg = jnp.take_along_axis(table, jnp.maximum(start, 0)[..., None], axis=1)      # [B, T, ids]
  cls = jnp.take_along_axis(seg, ids.reshape(b, t, -1), axis=2).reshape(ids.shape)
  return jnp.where((start >= 0)[..., None, None], cls, 0).astype(jnp.int32)


class PropagatorTask(Task):
  """Stage 2 (see the module docstring). Metrics: binary `J`, `F`, `alignment_rate`, `J_normal`,
  `F_normal` (semantic: `mIoU` ...); keep-best default `J` / `mIoU` (GT keyframes included, as
  AVSBench averages every frame)."""
  name = "propagator"
  length_dependent = True   # top-k ramp and sequential-training switch: fractions of the run

  def __init__(self, config: Any):
    super().__init__(config)
    pc = config.propagator
    self.model = prop_lib.from_config(pc)
    self.encoder_module, self.encode = self.build_encoder()
    self.num_classes = int(config.keyframe.num_classes)
    self.semantic = self.num_classes > 1
    main = "mIoU" if self.semantic else "J"
    self.metric_names = (main, "F", "alignment_rate", f"{main}_normal", "F_normal")
    self.default_best_metric = main
    self._loss: Optional[Callable] = None

  def build_encoder(self) -> tuple[Any, Callable]:
    """(encoder module or None, encode(enc_vars, images [N, H, W, 3]) -> 4 maps): the
    config's (`propagator.encoder`). Tests swap in a stand-in."""
    return prop_lib.build_encoder(self.config.propagator)

  # ---- training ----------------------------------------------------------------------------
  def set_total_steps(self, total_steps: int) -> None:
    from coprop_jax.train.propagator_losses import make_loss_fn
    super().set_total_steps(total_steps)
    # The top-k ramp and the switch to sequential training are fractions of the run.
    self._loss = make_loss_fn(self.config, self.total_steps, encode=self.encode)

  def _need_total(self) -> Callable:
    if self._loss is None:
      raise RuntimeError("PropagatorTask: call set_total_steps(n) first (the loss ramps and the "
                         "sequential-training switch are fractions of the run)")
    return self._loss

  @property
  def switch_step(self) -> int:
    """Update index from which the short-term memory takes the model's own prediction and the
    ID bank is frozen."""
    return self._need_total().switch_step

  def init_variables(self, batch: dict, rng: jax.Array) -> tuple[Any, Any]:
    h, w = batch["frames"].shape[2:4]
    r_enc, r_prop = jax.random.split(rng)
    img = jnp.zeros((1, h, w, 3), jnp.float32)
    enc_vars = dict(self.encoder_module.init(r_enc, img)) if self.encoder_module is not None else {}
    feats = self.encode(enc_vars, img)
    onehot = jax.nn.one_hot(jnp.zeros((1, h, w), jnp.int32), self.model.max_objects + 1)
    prop = prop_lib.init_params(self.model, r_prop, feats, jnp.zeros((1, 128)), onehot)
    params = {"propagator": prop, "encoder": enc_vars.pop("params", {})}
    extra = {"encoder": enc_vars}
    if "audio_logmel" in batch and "audio_embed" not in batch:   # audio_embed wins (_audio_args)
      extra["vggish"] = self._kpf_vggish(batch, rng)
    return params, extra

  def _kpf_vggish(self, batch: dict, rng: jax.Array) -> Any:
    """The VGGish params that `KpfTask.init_variables` makes with the same rng (the KPF's own
    init, traced here; XLA keeps only the VGGish part of it)."""
    from coprop_jax.models import keyframe as kf_lib
    from coprop_jax.train.tasks.kpf import flatten_frames
    f = flatten_frames({k: batch[k][:1] for k in ("frames", "audio_logmel")})
    kpf = kf_lib.from_config(self.config.keyframe)
    return kpf.init(rng, f["frames"][:1], audio_logmel=f["audio_logmel"][:1])["params"]["vggish"]

  def make_optimizer(self, params: Any) -> optax.GradientTransformation:
    from coprop_jax.train.propagator_losses import freeze_id_bank_after, param_labels
    from coprop_jax.train.state import make_optimizer
    tc = self.config.propagator.train
    ratio = {"propagator": 1.0, "encoder": float(tc.encoder_lr_ratio), "frozen": 0.0}
    ratios = jax.tree.map(lambda lab: ratio[lab], param_labels(params, self.config))
    tx = make_optimizer(self.config.train, ratios, total_steps=self.total_steps,
                        decay_mask=decay_mask(params))
    return optax.chain(tx, freeze_id_bank_after(self.switch_step))

  def loss_fn(self, params, extra, batch, rng, step):
    return self._need_total()(params, extra, batch, rng, step)

  def load_pretrained(self, state: Any) -> tuple[Any, list[str]]:
    """`propagator.aot_weights` -> propagator + encoder (params and BatchNorm statistics);
    `keyframe.vggish_weights` -> the frozen VGGish (log-mel audio only). Shapes checked."""
    from coprop_jax.convert.checkpoint_io import CheckpointError, check_params_match, restore_params
    from coprop_jax.pipeline import load_aot_weights
    pc, kc = self.config.propagator, self.config.keyframe
    params, extra, loaded = dict(state.params), dict(state.extra), []
    if pc.aot_weights:
      try:
        aot = restore_params(pc.aot_weights)
      except CheckpointError as e:
        raise CheckpointError(f"propagator.aot_weights: {e}") from e
      cur = {"propagator": params["propagator"],
             "encoder": {"params": params["encoder"], **extra.get("encoder", {})}}
      new = load_aot_weights(self.config, cur, aot)
      enc = dict(new["encoder"])
      params.update(propagator=new["propagator"], encoder=enc.pop("params"))
      extra["encoder"] = enc
      loaded.append(f"propagator + encoder <- propagator.aot_weights {pc.aot_weights}")
    if kc.vggish_weights:
      if "vggish" not in extra:
        raise ValueError("keyframe.vggish_weights is set but the data gives precomputed "
                         "audio_embed, so the propagator runs no VGGish; clear it or feed audio_logmel")
      try:
        tree = restore_params(kc.vggish_weights)
      except CheckpointError as e:
        raise CheckpointError(f"keyframe.vggish_weights: {e}") from e
      tree = tree.get("params", tree) if isinstance(tree, dict) else tree
      check_params_match(tree, extra["vggish"], "keyframe.vggish_weights (VGGish)")
      extra["vggish"] = jax.tree_util.tree_map(jnp.asarray, tree)
      loaded.append(f"VGGish <- keyframe.vggish_weights {kc.vggish_weights}")
    return state.replace(params=params, extra=extra), loaded

  # ---- evaluation --------------------------------------------------------------------------
  # not in the paper: it gives no stage-2 evaluation; during training the propagator is scored
  # alone, from GT keyframes at the GT control points (the oracle-keyframe pipeline).
  def predict(self, params, extra, batch):
    """GT keyframes at the batch's control points (frames with GT), propagated (inference
    memory: propagator.memory_slots / mem_gap). -> binary: foreground probabilities
    [B, T, H, W] float32 (keyframes: the GT mask); semantic: class ids [B, T, H, W] int32."""
    from coprop_jax.pipeline import segment_targets
    pc = self.config.propagator
    masks = batch["masks"]
    b, t = masks.shape[:2]
    fv = batch["frame_valid"].astype(bool)
    is_ref = (batch["control_points"] == 1) & batch["gt_valid"].astype(bool) & fv
    if self.semantic:
      ids, nobj = segment_targets(masks, is_ref, self.num_classes, self.model.max_objects)
      ids = jnp.where(ids == IGNORE, 0, ids)
    else:
      ids, nobj = (masks > 0).astype(jnp.int32), jnp.ones((b, t), jnp.int32)
    out = propagation.propagate(
        self.model, {"propagator": params["propagator"],
                     "encoder": {"params": params["encoder"], **extra.get("encoder", {})}},
        batch["frames"], ids, is_ref, nobj, encode=self.encode, frame_valid=fv,
        memory_slots=pc.memory_slots, mem_gap=pc.mem_gap, **_audio_args(batch, extra))
    if self.semantic:
      return ids_to_classes(out["ids"], masks, is_ref, self.num_classes, self.model.max_objects)
    return out["fg_prob"]

  def evaluate(self, predict_fn: Callable[[dict], np.ndarray], batches: Iterable[dict],
               num_images: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    from coprop_jax.eval.report import EvalReport
    from coprop_jax.rcpg.core import gt_control_points
    ec = self.config.eval
    rep = EvalReport("semantic" if self.semantic else "binary",
                     num_classes=self.num_classes if self.semantic else None,
                     alignment_iou=ec.alignment_iou, alignment_min_area=ec.alignment_min_area,
                     num_thresholds=ec.f_num_thresholds, beta2=ec.f_beta2)
    images = {}
    for batch in batches:
      masks = np.asarray(batch["masks"])
      valid = np.asarray(batch["gt_valid"], bool) & np.asarray(batch["frame_valid"], bool)
      # Oracle control points: the GT rule on each clip's masks (keyframes get their GT mask).
      cps = np.stack([gt_control_points(m, v, binary=not self.semantic) for m, v in zip(masks, valid)])
      out = np.asarray(predict_fn(dict(batch, control_points=cps)))
      for i in range(masks.shape[0]):
        vid = batch.get("video_id")
        name = str(vid[i]) if vid is not None else f"clip{len(rep.video_ids)}"
        kw = dict(pred=out[i]) if self.semantic else dict(probs=np.clip(out[i], 0.0, 1.0))
        rep.add_video(name, gt=masks[i], gt_valid=batch["gt_valid"][i],
                      frame_valid=batch["frame_valid"][i], is_keyframe=cps[i] == 1, **kw)
        if len(images) < num_images:
          pred = out[i] if self.semantic else (out[i] > 0.5).astype(np.int32)
          images[name] = mask_panel(batch["frames"][i], masks[i], pred, self.num_classes)
    if not rep.video_ids:
      raise ValueError("propagator evaluation: the evaluation split has no clip")
    main = "mIoU" if self.semantic else "J"
    metrics = {}
    for subset, suffix in (("all", ""), ("normal", "_normal")):
      fig = rep.subset_figures(subset)
      for k in (main, "F") + (("alignment_rate",) if subset == "all" else ()):
        if fig.get(k) is not None:
          metrics[k + suffix] = float(fig[k])
    if main not in metrics:
      raise ValueError("propagator evaluation: no frame with GT in the evaluation split")
    metrics["num_videos"] = float(len(rep.video_ids))
    return metrics, images
