"""Stage 2: the Audio-insert Propagator (AOT's LSTT + audio insert), trained with AOT's recipe.

    python -m coprop_jax.train --config configs/coprop.py:dataset=ms3,stage=propagator --workdir DIR \
        --config.propagator.aot_weights=ckpt/aotl --config.keyframe.vggish_weights=ckpt/vggish

Training (`make_train_forward` below + `coprop_jax.train.propagator_losses`):
clips of T frames; every frame with a control point AND a GT mask is a reference (its GT mask
resets the memory: with the built dataset's default control points, frame 0 only, which is
AOT's recipe; with `data.control_points_file`, every GT-derived keyframe); the short-term memory
takes the GT of the previous frame for the first `propagator.train.seq_training_start` of the
run and the model's own prediction after it (sequential training), when the ID bank is frozen
(`freeze_id_bank_after`); loss = top-k CE (ramped) + soft Jaccard on propagated frames with GT;
BPTT through the scan (`propagator.remat` to save memory). The step is laid out for speed: the
encoder (and VGGish) run once on all B*T frames before the frame scan, only what depends on the
previous frame runs inside it (`propagation.propagate_train`: no `lax.cond`), and frozen
parameters are not differentiated (`trainable` -> `state.train_step`).

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


def split_train_params(params: dict) -> tuple[dict, dict]:
  """Pipeline params -> (trainable {"propagator", "encoder": encoder "params"}, extra {"encoder":
  the encoder's other collections (frozen BatchNorm statistics), "vggish": VGGish params when the
  KPF holds them}) for `make_train_forward` / `propagator_losses.make_loss_fn`."""
  enc = dict(params.get("encoder") or {})
  trainable = {"propagator": params["propagator"], "encoder": enc.pop("params", {})}
  extra = {"encoder": enc}
  vgg = (params.get("keyframe") or {}).get("params", {}).get("vggish")
  if vgg is not None:
    extra["vggish"] = vgg
  return trainable, extra


FORMULATIONS = ("batched", "per_frame")


def make_train_forward(config, *, encode: Optional[Callable] = None, formulation: str = "batched"):
  """Stage-2 forward: fwd(params, extra, batch, rng, seq_training) -> dict(logits [B,T,H,W,ids],
  targets [B,T,H,W] int32 object ids (IGNORE where unknown), weights [B,T] float32 (frames with
  GT that are propagated: not references, after the clip's first reference), num_objects [B,T]).

  params/extra as `split_train_params`. batch: frames, masks, gt_valid, frame_valid,
  control_points, audio_embed or audio_logmel (VGGish from extra["vggish"]). References: frames
  with a control point AND a GT mask (oracle keyframes; a control point without GT is no reset).
  seq_training (traced bool): False = AOT's first phase (short-term memory from the GT of the
  previous frame where it has GT), True = sequential training (the model's own prediction; ID
  bank frozen). config.propagator.train: mem_gap, id_shuffle (AOT's random id permutation).
  formulation: "batched" (default): encoder and VGGish on all B*T frames at once, then
  `propagation.propagate_train`; "per_frame": the same numbers through the inference scan
  `propagation.propagate(train=True)` (encoder inside the scan, `lax.cond` on padding frames),
  kept as the reference the fast form is tested and benchmarked against.
  """
  from coprop_jax.pipeline import segment_targets
  if formulation not in FORMULATIONS:
    raise ValueError(f"make_train_forward: formulation must be one of {FORMULATIONS}, got {formulation!r}")
  pc, tc = config.propagator, config.propagator.train
  model = prop_lib.from_config(pc)
  if encode is None:
    _, encode = prop_lib.build_encoder(pc)
  semantic = int(config.keyframe.num_classes) > 1
  num_classes, mo = int(config.keyframe.num_classes), model.max_objects

  def forward(params, extra, batch, rng, seq_training):
    frames, masks = batch["frames"], batch["masks"]
    b, t = frames.shape[:2]
    gt = batch["gt_valid"].astype(bool) & batch["frame_valid"].astype(bool)
    is_ref = (batch["control_points"] == 1) & gt
    if semantic:
      targets, nobj = segment_targets(masks, is_ref, num_classes, mo)
    else:
      targets, nobj = (masks > 0).astype(jnp.int32), jnp.ones((b, t), jnp.int32)
    targets = jnp.where(gt[..., None, None], targets, IGNORE)
    after_ref = jnp.cumsum(is_ref.astype(jnp.int32), axis=1) > 0
    weights = (gt & ~is_ref & after_ref).astype(jnp.float32)
    r_drop, r_perm = jax.random.split(rng)
    perm = None
    if tc.id_shuffle:  # AOT: random id permutation per clip, background kept at 0
      perms = jax.vmap(lambda k: jax.random.permutation(k, mo) + 1)(jax.random.split(r_perm, b))
      perm = jnp.concatenate([jnp.zeros((b, 1), perms.dtype), perms], 1)
    seq = jnp.asarray(seq_training, bool)
    enc_vars = {"params": params["encoder"], **extra.get("encoder", {})}
    fv = batch["frame_valid"].astype(bool)
    kf_ids = jnp.where(targets == IGNORE, 0, targets)
    if formulation == "per_frame":
      audio = ({"audio_embed": batch["audio_embed"]} if "audio_embed" in batch else
               {"audio_logmel": batch["audio_logmel"], "vggish_params": extra.get("vggish")})
      out = propagation.propagate(
          model, {"propagator": params["propagator"], "encoder": enc_vars},
          frames, kf_ids, is_ref, nobj, encode=encode, frame_valid=fv,
          memory_slots=pc.memory_slots, mem_gap=tc.mem_gap, train=True, rng=r_drop,
          remat=pc.remat, teacher_masks=targets, teacher_valid=gt, teacher_forcing=~seq,
          freeze_id=seq, id_perm=perm, return_logits=True, **audio)
      logits = out["logits"]
    else:
      # Time-major: the encoder's outputs are the scan's per-frame inputs without a transpose
      # of any activation (only the input frames are transposed).
      tm = lambda x: jnp.swapaxes(x, 0, 1).reshape((t * b,) + x.shape[2:])
      feats = [f.reshape((t, b) + f.shape[1:]) for f in encode(enc_vars, tm(frames))]
      if "audio_embed" in batch:
        audio = jnp.swapaxes(batch["audio_embed"], 0, 1)
      elif "audio_logmel" in batch:
        from coprop_jax.models.vggish import VGGish
        emb = VGGish(dtype=model.dtype).apply({"params": extra.get("vggish")}, tm(batch["audio_logmel"]))
        audio = jax.lax.stop_gradient(emb).reshape(t, b, -1)
      else:
        _audio_args(batch, extra)   # raises the error naming the missing keys
      logits = propagation.propagate_train(
          model, params["propagator"], feats, audio, kf_ids, is_ref, nobj, frame_valid=fv,
          rng=r_drop, teacher_masks=targets, teacher_valid=gt, teacher_forcing=~seq,
          freeze_id=seq, id_perm=perm, memory_slots=pc.memory_slots, mem_gap=tc.mem_gap,
          remat=pc.remat)
    return dict(logits=logits, targets=targets, weights=weights, num_objects=nobj)

  return forward


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

  def trainable(self, params: Any) -> Any:
    """Learning-rate ratio per leaf: propagator 1, trained encoder stages
    `encoder_lr_ratio`, AOT's frozen encoder stages / BatchNorm affine params 0 (not
    differentiated by the update step)."""
    from coprop_jax.train.propagator_losses import param_labels
    tc = self.config.propagator.train
    ratio = {"propagator": 1.0, "encoder": float(tc.encoder_lr_ratio), "frozen": 0.0}
    return jax.tree.map(lambda lab: ratio[lab], param_labels(params, self.config))

  def make_optimizer(self, params: Any) -> optax.GradientTransformation:
    from coprop_jax.train.propagator_losses import freeze_id_bank_after
    from coprop_jax.train.state import make_optimizer
    tx = make_optimizer(self.config.train, self.trainable(params), total_steps=self.total_steps,
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
