"""Stage-2 losses against torch references written from aot-benchmark's definitions
(networks/layers/loss.py, engines/aot_engine.py), optimizer helpers, and (slow) a short training
run of the tiny propagator on synthetic MS3 clips."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.base import get_base_config
from coprop_jax.train import propagator_losses as PLS

torch = pytest.importorskip("torch")
F = torch.nn.functional


def aot_top_k_ce(logits, labels, step, total, top_k=0.15, mining_ratio=0.5):
  """aot-benchmark CrossEntropyLoss(top_k_percent_pixels, hard_example_mining_step) per frame:
  logits [N, C, H, W] (already sliced to obj_num + 1), labels [N, H, W] with 255 ignored."""
  mining_step = mining_ratio * total + 1e-5
  out = []
  for i in range(logits.shape[0]):
    pred = logits[i:i + 1]
    num_pixels = float(pred.size(2) * pred.size(3))
    pred = pred.view(-1, pred.size(1), pred.size(2) * pred.size(3))
    gts = labels[i:i + 1].view(-1, labels.size(1) * labels.size(2))
    pixel = F.cross_entropy(pred, gts, ignore_index=255, reduction="none")
    ratio = min(1.0, step / float(mining_step))
    k = int((ratio * top_k + (1.0 - ratio)) * num_pixels)
    out.append(torch.topk(pixel, k=k, dim=1)[0].mean())
  return torch.stack(out)


def aot_soft_jaccard(logits, labels):
  """aot-benchmark SoftJaccordLoss: softmax, ignore 255, tversky(alpha=beta=1, eps=1e-6) over the
  classes present in the label, mean over them (0 if none)."""
  out = []
  for i in range(logits.shape[0]):
    p = F.softmax(logits[i:i + 1], dim=1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    lab = labels[i].reshape(-1)
    p, lab = p[lab != 255], lab[lab != 255]
    losses = []
    for c in range(p.shape[1]):
      fg = (lab == c).float()
      if fg.sum() == 0:
        continue
      num = torch.sum(p[:, c] * fg)
      den = num + torch.sum(p[:, c] * (1 - fg)) + torch.sum((1 - p[:, c]) * fg)
      losses.append(1 - num / (den + 1e-6))
    out.append(sum(losses) / len(losses) if losses else torch.tensor(0.0))
  return torch.stack(out)


@pytest.mark.parametrize("step", [0, 250, 700])
def test_losses_match_aot(step):
  """Masked logits (ids above num_objects at -1e9, as the propagator emits them) give AOT's loss
  on the logits sliced to num_objects + 1 channels; labels with 255 (ignored) and a frame with
  every pixel ignored."""
  rng = np.random.default_rng(step)
  n, c, h, w, nobj = 3, 5, 16, 12, 2
  logits = rng.normal(size=(n, h, w, c)).astype(np.float32) * 3
  labels = rng.integers(0, nobj + 1, size=(n, h, w)).astype(np.int32)
  labels[0, :3] = 255
  labels[2] = 255
  masked = np.where(np.arange(c) <= nobj, logits, -1e9).astype(np.float32)
  tl = torch.from_numpy(np.ascontiguousarray(logits[..., :nobj + 1].transpose(0, 3, 1, 2)))
  tg = torch.from_numpy(labels.astype(np.int64))
  frac = PLS.top_k_fraction(step, 1000)
  np.testing.assert_allclose(np.asarray(PLS.top_k_cross_entropy(jnp.asarray(masked), jnp.asarray(labels), frac)),
                             aot_top_k_ce(tl, tg, step, 1000).numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(PLS.soft_jaccard(jnp.asarray(masked), jnp.asarray(labels))),
                             aot_soft_jaccard(tl, tg).numpy(), rtol=1e-5, atol=1e-6)
  assert float(PLS.top_k_fraction(0, 1000)) == 1.0 and abs(float(PLS.top_k_fraction(700, 1000)) - 0.15) < 1e-7


def test_optimizer_helpers():
  """param_labels: AOT's frozen encoder stages (freeze_at=2: stem + level 1, every BN affine);
  freeze_id_bank_after: ID bank updates stop at the switch, other updates go on."""
  from coprop_jax.models.mobilenet_v2 import MobileNetV2
  cfg = get_base_config()
  enc = jax.eval_shape(MobileNetV2().init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
  params = {"propagator": {"patch_wise_id_bank": {"kernel": jnp.ones((2, 2))}, "decoder": {"bias": jnp.ones(2)}},
            "encoder": enc}
  labels = PLS.param_labels(params, cfg)
  assert labels["propagator"]["decoder"]["bias"] == "propagator"
  assert labels["encoder"]["features_0"]["conv"]["kernel"] == "frozen"
  assert labels["encoder"]["features_3"]["expand"]["conv"]["kernel"] == "frozen"
  assert labels["encoder"]["features_4"]["expand"]["conv"]["kernel"] == "encoder"
  assert labels["encoder"]["features_18"]["bn"]["scale"] == "frozen"
  p = params["propagator"]
  tx = optax.chain(optax.sgd(1.0), PLS.freeze_id_bank_after(2))
  state = tx.init(p)
  grads = jax.tree_util.tree_map(jnp.ones_like, p)
  moved = []
  for _ in range(4):
    upd, state = tx.update(grads, state, p)
    moved.append((float(jnp.abs(upd["patch_wise_id_bank"]["kernel"]).sum()), float(jnp.abs(upd["decoder"]["bias"]).sum())))
  assert [m[0] > 0 for m in moved] == [True, True, False, False] and all(m[1] > 0 for m in moved)


def synthetic_ms3_clips(num, frames=5, size=64, seed=0):
  """Synthetic MS3 clips (moving objects, GT control points) with a toy audio embedding per
  frame: the sum of the sounding objects' class codes + noise (stands in for VGGish)."""
  from coprop_jax.images import normalize_uint8
  from coprop_jax.train.toy_data import class_codes
  from data_pipelines.synthetic import make_clip
  rng = np.random.default_rng(seed)
  codes = class_codes(8)
  clips = [make_clip(rng, "ms3", size=size, frames=frames) for _ in range(num)]
  audio = [(c["sounding"].astype(np.float32) @ codes[c["object_classes"]]
            + rng.normal(0, 0.1, (frames, 128))).astype(np.float32) for c in clips]
  return dict(frames=np.stack([normalize_uint8(c["frames"]) for c in clips]),
              masks=np.stack([c["masks"] for c in clips]), gt_valid=np.ones((num, frames), bool),
              frame_valid=np.ones((num, frames), bool), control_points=np.stack([c["control_points"] for c in clips]),
              audio_embed=np.stack(audio))


@pytest.mark.slow  # ~1-2 min: BPTT compile of the scan + 40 steps on CPU
def test_stage2_loss_falls_and_reaches_the_insert():
  from coprop_jax.models import propagator as P
  from coprop_jax.train.state import FAST_COMPILE
  from propagator_helpers import fake_encode, propagator_shapes, random_like
  cfg = get_base_config()
  p = cfg.propagator
  p.num_layers, p.d_model, p.num_heads, p.ffn_dim, p.local_max_dis, p.memory_slots = 1, 32, 4, 64, 2, 2
  p.remat = True
  cfg.train.num_steps = 40
  loss_fn = PLS.make_loss_fn(cfg, encode=fake_encode)
  assert loss_fn.switch_step == 20
  params = {"propagator": random_like(propagator_shapes(P.from_config(p), 64, 64), seed=0), "encoder": {}}
  extra = {"encoder": {}}
  data = synthetic_ms3_clips(4)
  tx = optax.adam(2e-3)

  def step(params, opt, batch, rng, i):
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, extra, batch, rng, i)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss, aux, g

  step = jax.jit(step, compiler_options=FAST_COMPILE)
  opt = tx.init(params)
  losses = []
  for i in range(40):
    batch = {k: v[(2 * i) % 4:(2 * i) % 4 + 2] for k, v in data.items()}
    params, opt, loss, aux, g = step(params, opt, batch, jax.random.PRNGKey(i), i)
    losses.append(float(loss))
    if i == 0:
      for k in ("audio_insert_3", "audio_insert_0", "id_audio"):
        for n in ("query", "key"):
          assert np.abs(np.asarray(g["propagator"][k][n]["kernel"])).max() > 0, (k, n)
      assert float(aux["num_frames"]) > 0 and float(aux["seq_training"]) == 0
  assert float(aux["seq_training"]) == 1
  assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:4]), losses
