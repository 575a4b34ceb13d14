"""Long-term memory ring vs AOT's unbounded memory: effect on J (one JSON line per setting).

python benchmarks/memory_ring.py [--steps 150] [--size 128] [--clips 8] [--frames 100] \
    [--slots 4] [--mem_gap 5]

1. Trains a tiny propagator (2 LSTT layers, d_model 64; stand-in encoder: multi-scale average
   pooling + fixed random projections) with the stage-2 loss (coprop_jax.train.propagator_losses:
   top-k CE + soft Jaccard, GT teacher forcing then sequential training, id shuffle) on 5-frame
   synthetic MS3 clips (data_pipelines.synthetic, GT control points as references).
2. Segments `--clips` synthetic clips of `--frames` frames with GT keyframes (oracle) through
   coprop_jax.pipeline, with `memory_slots = --slots` and with enough slots never to drop
   (frames / mem_gap + 1, i.e. exactly AOT), in two settings:
   * propagation_only: one control point (frame 0); target = the objects sounding at frame 0,
     tracked through the clip (the VOS task the propagator performs; a segment of `frames`
     frames writes (frames - 1) // mem_gap memory frames);
   * gt_control_points: a control point wherever the GT sounding set changes (Co-Prop's
     setting), target = the GT masks.
   and prints J (AVSBench binary J, mean per clip), the pixel agreement of the two memories'
   predictions and the fraction of frames predicted after the ring dropped an entry.
Audio: a toy embedding per frame (sum of the sounding objects' class codes + noise) stands in
for VGGish. AVSBench clip lengths (5 or 10 frames, mem_gap 5) write at most 1 memory frame per
segment, so with memory_slots >= 1 the ring never drops there: identical to AOT by construction.
"""
import argparse
import datetime
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs.base import get_base_config
from coprop_jax import pipeline as PL
from coprop_jax.eval.metrics import binary_iou_per_frame
from coprop_jax.images import normalize_uint8
from coprop_jax.models import propagator as P
from coprop_jax.train import propagator_losses as PLS
from coprop_jax.train.toy_data import class_codes
from data_pipelines.synthetic import make_clip

CH = (16, 24, 32, 64)  # stand-in encoder channels at 1/4, 1/8, 1/16, 1/16
PROJ = [np.random.default_rng(10 + i).standard_normal((3, c)).astype(np.float32) for i, c in enumerate(CH)]


def encode(_, x):
  """[N, H, W, 3] normalised frames -> 4 maps (average pooling, fixed random projections)."""
  x = x.astype(jnp.float32)
  pool = lambda s: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, s, s, 1), (1, s, s, 1), "VALID") / (s * s)
  return [jnp.tanh(pool(s) @ p) for s, p in zip((4, 8, 16, 16), PROJ)]


def clips(num, frames, size, seed):
  rng = np.random.default_rng(seed)
  codes = class_codes(8)
  cs = [make_clip(rng, "ms3", size=size, frames=frames, video_id=f"c{i}") for i in range(num)]
  audio = [(c["sounding"].astype(np.float32) @ codes[c["object_classes"]]
            + rng.normal(0, 0.1, (frames, 128))).astype(np.float32) for c in cs]
  track = [np.isin(c["visible"], np.flatnonzero(c["sounding"][0]) + 1).astype(np.int32) for c in cs]
  return dict(frames=np.stack([normalize_uint8(c["frames"]) for c in cs]),
              masks=np.stack([c["masks"] for c in cs]), track=np.stack(track),
              gt_valid=np.ones((num, frames), bool), frame_valid=np.ones((num, frames), bool),
              control_points=np.stack([c["control_points"] for c in cs]), audio_embed=np.stack(audio),
              video_id=np.array([c["video_id"] for c in cs]))


def config(slots, gap):
  c = get_base_config()
  p = c.propagator
  p.num_layers, p.d_model, p.num_heads, p.ffn_dim = 2, 64, 4, 128
  p.memory_slots, p.mem_gap, p.length_bucket, p.remat = slots, gap, 0, True
  return c


def train(args):
  cfg = config(args.slots, args.mem_gap)
  cfg.train.num_steps = args.steps
  loss_fn = PLS.make_loss_fn(cfg, encode=encode)
  model = P.from_config(cfg.propagator)
  feats = [jnp.zeros((1, args.size // s, args.size // s, c)) for s, c in zip((4, 8, 16, 16), CH)]
  params = {"propagator": jax.jit(lambda r: P.init_params(
      model, r, feats, jnp.zeros((1, 128)), jnp.zeros((1, args.size, args.size, model.max_objects + 1))))(
          jax.random.PRNGKey(0)), "encoder": {}}
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0, args.lr, max(1, args.steps // 20), args.steps),
                   weight_decay=0.07)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, batch, rng, i):
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, {"encoder": {}}, batch, rng, i)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  data = clips(args.train_clips, 5, args.size, seed=1)
  t0, losses = time.perf_counter(), []
  for i in range(args.steps):
    sel = np.random.default_rng(i).choice(args.train_clips, args.batch, replace=False)
    batch = {k: v[sel] for k, v in data.items() if k not in ("track", "video_id")}
    params, opt, loss = step(params, opt, batch, jax.random.PRNGKey(i), i)
    losses.append(float(loss))
  print(json.dumps(dict(phase="train", steps=args.steps, loss_first10=round(float(np.mean(losses[:10])), 4),
                        loss_last10=round(float(np.mean(losses[-10:])), 4),
                        seconds=round(time.perf_counter() - t0, 1))), flush=True)
  return params["propagator"]


def evaluate(args, prop):
  data = clips(args.clips, args.frames, args.size, seed=2)
  t = args.frames
  enough = (t - 1) // args.mem_gap + 1
  segs = {k: PL.make_segmenter(config(k, args.mem_gap), encode=encode) for k in (args.slots, enough)}
  for setting in ("propagation_only", "gt_control_points"):
    cp = data["control_points"].copy()
    target = data["masks"]
    if setting == "propagation_only":
      cp[:] = 0
      cp[:, 0] = 1
      target = data["track"]
    batch = dict(data, control_points=cp, masks=target)
    outs = {}
    for slots, seg in segs.items():
      outs[slots] = seg.segment({"propagator": prop, "encoder": {}}, batch, keyframes="gt")
    # Frames predicted after the ring dropped: more than `slots` writes since the last keyframe.
    start = PL.segment_starts(cp == 1)
    since = np.arange(t)[None] - start
    dropped = (since - 1) // args.mem_gap > args.slots  # writes before frame t: (since-1)//gap
    for slots, out in outs.items():
      lg = np.where(out["object_ids"] > 0, 10.0, -10.0).reshape(-1, args.size, args.size)
      j = np.asarray(binary_iou_per_frame(jnp.asarray(lg), jnp.asarray(target.reshape(lg.shape))))
      j_clip = j.reshape(args.clips, t).mean(1)
      j_after = j.reshape(args.clips, t)[dropped].mean() if dropped.any() else None
      print(json.dumps(dict(
          setting=setting, memory_slots=slots, mem_gap=args.mem_gap, frames=t, clips=args.clips,
          J=round(float(j_clip.mean()), 4),
          J_frames_after_drop=None if j_after is None else round(float(j_after), 4),
          frames_after_drop_fraction=round(float(dropped.mean()), 4),
          agreement_with_unbounded=round(float(np.mean(out["object_ids"] == outs[enough]["object_ids"])), 5),
          fg_prob_mean_abs_diff=round(float(np.abs(out["fg_prob"] - outs[enough]["fg_prob"]).mean()), 6),
          keyframes=int(out["report"]["num_keyframes"]), device=jax.devices()[0].platform,
          date=datetime.date.today().isoformat())), flush=True)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--steps", type=int, default=150)
  ap.add_argument("--lr", type=float, default=2e-3)
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--train_clips", type=int, default=48)
  ap.add_argument("--size", type=int, default=128)
  ap.add_argument("--clips", type=int, default=8)
  ap.add_argument("--frames", type=int, default=100)
  ap.add_argument("--slots", type=int, default=4)
  ap.add_argument("--mem_gap", type=int, default=5)
  args = ap.parse_args(argv)
  evaluate(args, train(args))


if __name__ == "__main__":
  main()
