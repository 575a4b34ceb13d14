"""coprop_jax.eval.visualize: overlay grid and timeline PNGs on synthetic clips."""
import numpy as np
import pytest
from PIL import Image

from coprop_jax.eval import visualize as vis
from data_pipelines import synthetic


@pytest.fixture(scope="module")
def clip():
  return synthetic.make_clip(np.random.default_rng(3), "ms3", 32, 6)


def _wrong_object_pred(c, t):
  """GT masks, except frame t segments a silent (distractor) object instead."""
  pred = c["masks"].copy()
  silent = int(np.flatnonzero(~c["sounding"][t])[0])
  pred[t] = (c["visible"][t] == silent + 1).astype(np.int32)
  return pred


def _png(path):
  return np.asarray(Image.open(path).convert("RGB"))


def test_overlay_grid_size_and_content(clip, tmp_path):
  t_len = len(clip["frames"])
  kw = dict(control_points=clip["control_points"], title="x", cell_px=80)
  a = vis.save_overlay_grid(tmp_path / "a.png", clip["frames"], clip["masks"], clip["masks"], **kw)
  img_a = _png(a)
  assert img_a.shape == (2 * (80 + 20) + 44 + 22, t_len * 80 + 100, 3)
  b = vis.save_overlay_grid(tmp_path / "b.png", clip["frames"], _wrong_object_pred(clip, 2),
                            clip["masks"], **kw)
  img_b = _png(b)
  assert img_b.shape == img_a.shape and not np.array_equal(img_a, img_b)
  # Only frame 2's prediction cell (and its J label) changed: columns of other frames are identical.
  diff_cols = np.flatnonzero(np.any(img_a != img_b, axis=(0, 2)))
  assert diff_cols.min() >= 100 + 2 * 80 and diff_cols.max() < 100 + 3 * 80
  # 10 valid frames at max_cols=4 -> 3 blocks of 4 columns; no GT -> one row per block.
  frames = np.concatenate([clip["frames"]] * 2)[:10]
  masks = np.concatenate([clip["masks"]] * 2)[:10]
  fig = vis.overlay_figure(frames, masks, max_cols=4, cell_px=50)
  assert tuple(fig.get_size_inches() * vis.DPI) == pytest.approx((4 * 50 + 100, 3 * 70 + 44))
  fv = np.ones(10, bool)
  fv[8:] = False   # padding frames are not drawn: 8 frames -> 2 blocks of 4
  fig = vis.overlay_figure(frames, masks, frame_valid=fv, max_cols=4, cell_px=50)
  assert tuple(fig.get_size_inches() * vis.DPI) == pytest.approx((4 * 50 + 100, 2 * 70 + 44))
  with pytest.raises(ValueError, match="pred_masks"):
    vis.overlay_figure(clip["frames"], clip["masks"][:3])


def test_timeline_written_and_reacts_to_predictions(clip, tmp_path):
  names = {o + 1: synthetic.CLASS_NAMES[k] for o, k in enumerate(clip["object_classes"])}
  kw = dict(control_points=clip["control_points"], gt_masks=clip["masks"], objects=clip["visible"],
            names=names, gt_control_points=clip["control_points"], title="t")
  a = _png(vis.save_timeline(tmp_path / "a.png", clip["audio_logmel"], pred_masks=clip["masks"], **kw))
  b = _png(vis.save_timeline(tmp_path / "b.png", clip["audio_logmel"],
                             pred_masks=_wrong_object_pred(clip, 2), **kw))
  assert a.shape == b.shape and a.shape[1] == 900 and a.shape[0] > 400
  assert not np.array_equal(a, b)
  red = np.array([224, 32, 32])
  near_red = lambda img: np.sum(np.all(np.abs(img.astype(int) - red) < 40, axis=-1))
  assert near_red(b) > near_red(a) + 100   # the mismatch box and the red J appear
  # Audio only (no masks): just the spectrogram panel, still a valid picture.
  c = _png(vis.save_timeline(tmp_path / "c.png", clip["audio_logmel"],
                             control_points=clip["control_points"]))
  assert c.shape[1] == 900 and c.shape[0] < a.shape[0]
  with pytest.raises(ValueError, match="audio_logmel"):
    vis.timeline_figure(clip["audio_logmel"][..., :10])


def test_segmented_sets_recover_sounding_objects(clip):
  """GT masks of the synthetic clip segment exactly the sounding (visible) objects."""
  got, ent, kind = vis.segmented_sets(clip["masks"], objects=clip["visible"])
  assert kind == "object"
  vis_any = np.stack([(clip["visible"] == o).any(axis=(1, 2)) for o in ent], axis=1)
  np.testing.assert_array_equal(got, clip["sounding"][:, ent - 1] & vis_any)
  m = np.zeros((3, 4, 4), np.int32)
  m[0, 0, 0], m[1, :2] = 3, 5
  got, ent, kind = vis.segmented_sets(m)
  assert kind == "class" and ent.tolist() == [3, 5]
  np.testing.assert_array_equal(got, [[1, 0], [0, 1], [0, 0]])
  got, ent, kind = vis.segmented_sets((m > 0).astype(np.int32))
  assert kind == "binary" and got[:, 0].tolist() == [True, True, False]


def test_frame_iou_definition():
  rng = np.random.default_rng(0)
  p = rng.integers(0, 3, (5, 6, 6))
  g = rng.integers(0, 3, (5, 6, 6))
  g[4] = 0
  want = []
  for t in range(5):
    if (g[t] != 0).any():
      want.append(np.sum((p[t] == g[t]) & (g[t] != 0)) / np.sum((p[t] != 0) | (g[t] != 0)))
    else:
      want.append(np.mean((p[t] == 0)))
  np.testing.assert_allclose(vis.frame_iou(p, g), want)
