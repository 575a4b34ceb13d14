"""Pictures of one clip's segmentation: an overlay grid and a timeline (matplotlib, Agg canvas).

`overlay_figure` / `save_overlay_grid`: the clip's frames in columns, the predicted masks drawn
over them in the first row of each block and the GT masks in the second; keyframes (control
points) framed in orange and labelled KEY; each prediction titled with its frame's J when GT is
there.

`timeline_figure` / `save_timeline`: for each frame, in time: the audio's log-mel spectrogram
(one VGGish patch per frame), the control points (orange lines through every panel), and which
object or class is segmented per frame -- one row of cells per object/class for the prediction
and one for the GT -- with the frames where the predicted set differs from the GT's boxed and
shaded red (those are the frames the Alignment Rate counts as wrong), and the per-frame J.

Both build a `matplotlib.figure.Figure` on an Agg canvas without touching pyplot's global
backend (safe in notebooks); `save_*` write the PNG atomically and return its path. Colours are
`coprop_jax.media.overlay_palette` by mask id, the same in both pictures and in the overlay video.

What counts as "segmented" (shown in cells and used for the red boxes):
- with an instance map `objects` [T,H,W] (ids 1..N; e.g. the synthetic clips' `visible`): object
  o is segmented when the mask covers at least `cover` (default half) of o's visible pixels;
- else, for class masks (AVSS ids), class c is segmented when at least `min_pixels` pixels carry
  it (as `eval.metrics.presence_from_masks`);
- else (binary masks without objects) there is one row, "sounding region": any foreground pixel.
"""
# not in the paper: the paper shows qualitative masks only; these two layouts and the 1/2 cover
# rule for objects are ours.
from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from coprop_jax import media

KEY_COLOR = "#ff8c00"       # control points / keyframes
MISMATCH_COLOR = "#e02020"  # frames whose segmented set differs from GT
DPI = 100


def _check_masks(name, m, t_len, hw=None):
  m = np.asarray(m)
  if m.ndim != 3 or m.shape[0] != t_len or (hw is not None and m.shape[1:] != hw):
    want = f"[{t_len}, {hw[0]}, {hw[1]}]" if hw else f"[{t_len}, H, W]"
    raise ValueError(f"{name}: expected {want}, got shape {m.shape}")
  return m.astype(np.int32)


def _flags(name, x, t_len, default):
  if x is None:
    return np.full(t_len, default, bool)
  x = np.asarray(x).astype(bool)
  if x.shape != (t_len,):
    raise ValueError(f"{name}: expected shape ({t_len},), got {x.shape}")
  return x


def frame_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  """float [T]: per-frame J shown in the pictures. Intersection = pixels where both masks carry the
  same nonzero id, union = pixels where either is nonzero (for 0/1 masks: AVSBench's per-frame
  IoU). A frame with an empty GT scores the fraction of pixels left empty (AVSBench's rule)."""
  p, g = np.asarray(pred), np.asarray(gt)
  inter = ((p == g) & (g != 0)).sum(axis=(1, 2))
  union = ((p != 0) | (g != 0)).sum(axis=(1, 2))
  empty = ((p == 0) & (g == 0)).sum(axis=(1, 2)) / np.prod(p.shape[1:])
  return np.where((g != 0).any(axis=(1, 2)), inter / np.maximum(union, 1), empty)


def segmented_sets(masks: np.ndarray, *, objects: Optional[np.ndarray] = None, cover: float = 0.5,
                   min_pixels: int = 1, ids: Optional[Sequence[int]] = None):
  """What each frame's mask segments -> (bool [T, K], entity ids [K], kind).

  kind "object": objects [T,H,W] given, entity k = object id ids[k], True when the mask covers
  >= `cover` of its visible pixels (False where it is not visible). kind "class": entity = class id
  (the ids present in `masks`, or `ids`), True when >= min_pixels pixels have it. kind "binary":
  masks are 0/1 and no objects given: one entity (1), True when anything is foreground.
  """
  m = np.asarray(masks)
  if objects is not None:
    ob = np.asarray(objects)
    if ob.shape != m.shape:
      raise ValueError(f"objects: expected shape {m.shape} (like the masks), got {ob.shape}")
    ent = np.asarray(sorted(set(np.unique(ob).tolist()) - {0}) if ids is None else ids, np.int64)
    fg = m != 0
    out = np.zeros((m.shape[0], len(ent)), bool)
    for k, o in enumerate(ent):
      vis = (ob == o).sum(axis=(1, 2))
      cov = ((ob == o) & fg).sum(axis=(1, 2))
      out[:, k] = (vis > 0) & (cov >= cover * np.maximum(vis, 1))
    return out, ent, "object"
  if ids is None and m.max(initial=0) <= 1:
    return (m != 0).reshape(m.shape[0], -1).sum(axis=1)[:, None] >= min_pixels, np.array([1]), "binary"
  ent = np.asarray(sorted(set(np.unique(m).tolist()) - {0}) if ids is None else ids, np.int64)
  out = np.stack([(m == c).sum(axis=(1, 2)) >= min_pixels for c in ent], axis=1) if len(ent) else \
      np.zeros((m.shape[0], 0), bool)
  return out, ent, "class"


# ----------------------------------------------------------------------------- overlay grid


def overlay_figure(frames: np.ndarray, pred_masks: np.ndarray, gt_masks: Optional[np.ndarray] = None, *,
                   control_points: Optional[np.ndarray] = None, gt_valid: Optional[np.ndarray] = None,
                   frame_valid: Optional[np.ndarray] = None, timestamps: Optional[np.ndarray] = None,
                   title: Optional[str] = None, names: Optional[dict] = None, max_cols: int = 8,
                   cell_px: int = 160, indices: Optional[Sequence[int]] = None) -> Figure:
  """frames uint8 [T,H,W,3]; pred_masks / gt_masks int [T,H,W] (ids as `media.overlay_masks`);
  control_points [T] (1 = keyframe); gt_valid / frame_valid bool [T]; timestamps [T] seconds;
  names: {mask id: label} to print a colour key (e.g. AVSS class names); indices [T]: the frame
  numbers printed as "t=" (default 0..T-1; e.g. the positions of frames sampled from a long clip).

  Grid of the valid frames, at most `max_cols` per block (blocks balanced); each block has a "prediction" row and, when
  gt_masks is given, a "ground truth" row. Figure size in pixels: cols*cell_px + 100 wide,
  blocks*rows*(cell_px+20) + 44 (+22 with a title) high, where
  blocks = ceil(n_valid / max_cols) and cols = ceil(n_valid / blocks).
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames: expected [T, H, W, 3], got shape {frames.shape}")
  t_len, hw = frames.shape[0], frames.shape[1:3]
  pred = _check_masks("pred_masks", pred_masks, t_len, hw)
  gt = None if gt_masks is None else _check_masks("gt_masks", gt_masks, t_len, hw)
  cps = _flags("control_points", control_points, t_len, False)
  gv = _flags("gt_valid", gt_valid, t_len, gt is not None)
  fv = _flags("frame_valid", frame_valid, t_len, True)
  idx = np.flatnonzero(fv)
  if idx.size == 0:
    raise ValueError("overlay_figure: no valid frame to show")
  if indices is not None and len(indices) != t_len:
    raise ValueError(f"indices: expected {t_len} frame numbers, got {len(indices)}")
  ious = frame_iou(pred, gt) if gt is not None else None
  blocks = -(-idx.size // max_cols)
  cols = -(-idx.size // blocks)   # balanced: 10 frames at max_cols=8 -> 2 blocks of 5
  rows = 1 + (gt is not None)
  label_w, cell_h, top = 100, cell_px + 20, 44 + (22 if title else 0)
  w_px, h_px = cols * cell_px + label_w, blocks * rows * cell_h + top
  fig = Figure(figsize=(w_px / DPI, h_px / DPI), dpi=DPI)
  FigureCanvasAgg(fig)
  if title:
    fig.text(0.5, 1 - 8 / h_px, title, ha="center", va="top", fontsize=11, weight="bold")
  fig.text(8 / w_px, 1 - (top - 14) / h_px,
           "masks drawn in colour, the rest darkened;  orange frame + KEY = keyframe (control point)"
           + (";  J = IoU with GT" if gt is not None else ""), fontsize=8, va="center", color="#444444")
  if names:
    pal = media.overlay_palette()
    ids = sorted(set(np.unique(pred).tolist()) | (set(np.unique(gt).tolist()) if gt is not None else set()))
    key = [(i, names.get(i, str(i))) for i in ids if i != 0]
    x = 1 - 8 / w_px
    for i, lab in key[::-1]:
      tx = fig.text(x, 1 - (top - 14) / h_px, f" {lab} ", fontsize=8, ha="right", va="center",
                    color="black", bbox=dict(facecolor=pal[i] / 255.0, edgecolor="none", pad=1.5))
      x -= (7 * len(lab) + 22) / w_px
  over_p = media.overlay_masks(frames, pred)
  over_g = media.overlay_masks(frames, gt) if gt is not None else None
  for n, t in enumerate(idx):
    b, c = divmod(n, cols)
    key = bool(cps[t])
    for r in range(rows):
      y0 = top + (b * rows + r) * cell_h
      ax = fig.add_axes([(label_w + c * cell_px + 3) / w_px, 1 - (y0 + cell_h - 3) / h_px,
                         (cell_px - 6) / w_px, (cell_px - 6) / h_px])
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.imshow(over_p[t], interpolation="nearest")
        lab = f"t={t if indices is None else int(indices[t])}" + (
            f"  {timestamps[t]:.1f}s" if timestamps is not None else "")
        if ious is not None and gv[t]:
          lab += f"  J={ious[t]:.2f}"
        ax.set_title(lab, fontsize=8, pad=3)
        if key:
          ax.text(0.03, 0.97, "KEY", transform=ax.transAxes, ha="left", va="top", fontsize=8,
                  weight="bold", color="black", bbox=dict(facecolor=KEY_COLOR, edgecolor="none", pad=1.5))
      else:
        ax.imshow(over_g[t] if gv[t] else frames[t], interpolation="nearest")
        if not gv[t]:
          ax.text(0.5, 0.5, "no GT", transform=ax.transAxes, ha="center", va="center", fontsize=9,
                  color="white", bbox=dict(facecolor="black", alpha=0.6, edgecolor="none"))
      for sp in ax.spines.values():
        sp.set_edgecolor(KEY_COLOR if key else "#999999")
        sp.set_linewidth(4 if key else 0.8)
      if c == 0:
        fig.text((label_w - 8) / w_px, 1 - (y0 + cell_h / 2 + 8) / h_px,
                 "prediction" if r == 0 else "ground\ntruth", ha="right", va="center", fontsize=10,
                 weight="bold")
  return fig


def save_figure(fig: Figure, path) -> pathlib.Path:
  """Writes the figure as PNG at DPI (exactly its pixel size) to a temporary sibling, then renames."""
  path = pathlib.Path(path)
  with media.atomic_output(path) as tmp:
    fig.savefig(tmp, format="png", dpi=DPI)
  return path


def save_overlay_grid(path, frames, pred_masks, gt_masks=None, **kw) -> pathlib.Path:
  """`overlay_figure(...)` saved as PNG at `path` (atomically); returns the path."""
  return save_figure(overlay_figure(frames, pred_masks, gt_masks, **kw), path)


# ----------------------------------------------------------------------------- timeline


def timeline_figure(audio_logmel: np.ndarray, *, control_points: Optional[np.ndarray] = None,
                    pred_masks: Optional[np.ndarray] = None, gt_masks: Optional[np.ndarray] = None,
                    objects: Optional[np.ndarray] = None, names: Optional[dict] = None,
                    gt_valid: Optional[np.ndarray] = None, frame_valid: Optional[np.ndarray] = None,
                    gt_control_points: Optional[np.ndarray] = None, fps: float = 1.0,
                    title: Optional[str] = None, cover: float = 0.5, min_pixels: int = 1,
                    first_frame: int = 0) -> Figure:
  """audio_logmel float [T,96,64] (one VGGish patch per frame); control_points [T] (used by the
  pipeline; orange lines); gt_control_points [T] (optional, orange triangles on top);
  pred_masks / gt_masks int [T,H,W]; objects int [T,H,W] instance map (see module docstring);
  names: {entity id: label} (object ids with `objects`, else class ids); fps: frames per second
  (x axis in seconds, frame k spans [k/fps, (k+1)/fps)); first_frame: the clip frame number of
  the first entry (a page of a long clip: frame labels and seconds start there).

  Panels: spectrogram; with masks, a "prediction" and a "GT" row per object/class (cell filled
  with the id's overlay colour where segmented, hatched grey where the object is not visible);
  with both masks, red shading on frames whose predicted set differs from GT, and J per frame.
  """
  lm = np.asarray(audio_logmel, np.float32)
  if lm.ndim != 3 or lm.shape[1:] != (96, 64):
    raise ValueError(f"audio_logmel: expected [T, 96, 64], got shape {lm.shape}")
  t_len = lm.shape[0]
  cps = _flags("control_points", control_points, t_len, False)
  fv = _flags("frame_valid", frame_valid, t_len, True)
  pred = None if pred_masks is None else _check_masks("pred_masks", pred_masks, t_len)
  gt = None if gt_masks is None else _check_masks("gt_masks", gt_masks, t_len,
                                                  pred.shape[1:] if pred is not None else None)
  gv = _flags("gt_valid", gt_valid, t_len, gt is not None) & fv
  sec = 1.0 / float(fps)
  ends = t_len * sec

  # Which entities each frame segments.
  rows = []   # (label, bool [T] segmented, colour id, visible bool [T] or None, is_gt)
  mismatch = np.zeros(t_len, bool)
  if pred is not None or gt is not None:
    masks = [m for m in (pred, gt) if m is not None]
    present = set().union(*(np.unique(m).tolist() for m in masks))
    if objects is not None:
      ob = _check_masks("objects", objects, t_len, masks[0].shape[1:])
      ent = np.asarray(sorted(set(np.unique(ob).tolist()) - {0}), np.int64)
      kind = "object"
      vis = np.stack([(ob == o).any(axis=(1, 2)) for o in ent], axis=1).reshape(t_len, len(ent))
    else:
      ob, vis = None, None
      kind = "binary" if max(present) <= 1 else "class"
      ent = np.array([1]) if kind == "binary" else np.asarray(sorted(present - {0}), np.int64)
    sets = {}
    for nm, m in (("pred", pred), ("GT", gt)):
      if m is not None:
        sets[nm] = segmented_sets(m, objects=ob, cover=cover, min_pixels=min_pixels,
                                  ids=None if kind == "binary" else ent)[0]
    if pred is not None and gt is not None:
      mismatch = np.any(sets["pred"] != sets["GT"], axis=1) & gv
    for k, e in enumerate(ent):
      if kind == "binary":
        lab = "sounding region"
      else:
        lab = (names or {}).get(int(e), f"object {e}" if kind == "object" else f"class {e}")
      for nm, m in (("pred", pred), ("GT", gt)):
        if nm not in sets:
          continue
        cid = int(e) if kind == "class" else 1
        if kind == "object":  # the mask id that covers this object most (1 for binary masks)
          ids, cnt = np.unique(m[(ob == e) & (m != 0)], return_counts=True)
          cid = int(ids[np.argmax(cnt)]) if ids.size else 1
        rows.append((f"{lab} \u00b7 {nm}", sets[nm][:, k], cid,
                     None if vis is None else vis[:, k], nm == "GT"))
  ious = frame_iou(pred, gt) if pred is not None and gt is not None else None
  n_ent = len({r[0].rsplit(" \u00b7 ", 1)[0] for r in rows})

  # Layout in inches.
  width = float(np.clip(2.6 + 0.7 * t_len, 9.0, 32.0))
  h_spec, h_row, h_j = 1.5, 0.26, (0.32 if ious is not None else 0.0)
  h_rows = h_row * len(rows) + 0.08 * max(n_ent - 1, 0)
  top, bottom = 0.95 + (0.3 if title else 0.0), 0.5
  height = top + h_spec + (0.3 + h_rows if rows else 0) + h_j + bottom
  fig = Figure(figsize=(width, height), dpi=DPI)
  FigureCanvasAgg(fig)
  left, right = 1.9 / width, 1 - 0.25 / width

  def axes_at(y_top, h):  # y in inches from the top
    return fig.add_axes([left, 1 - (y_top + h) / height, right - left, h / height])

  if title:
    fig.text(0.5, 1 - 0.1 / height, title, ha="center", va="top", fontsize=11, weight="bold")
  legend = ["audio: the log-mel patch the model hears at each frame (one 0.96 s VGGish patch per frame)",
            "orange line = control point (keyframe: the KPF segments it, the propagator carries the mask "
            "on to the next one)" + ("   \u25bc = GT control point" if gt_control_points is not None else "")]
  if rows:
    legend.append("cells: filled = segmented, empty = not segmented"
                  + (", hatched = " + " / ".join(w for w, on in (("not visible", objects is not None),
                                                                ("no GT", gt is not None)) if on)
                     if objects is not None or gt is not None else ""))
  if ious is not None:
    legend.append("red box = the prediction segments other objects than the GT in that frame (a miss "
                  "for the Alignment Rate)")
  top += 0.17 * (len(legend) - 2)
  height += 0.17 * (len(legend) - 2)
  fig.set_size_inches(width, height)
  fig.text(0.1 / width, 1 - 0.12 / height - (0.3 if title else 0.0) / height, "\n".join(legend),
           fontsize=8, color="#333333", va="top", linespacing=1.45)

  y = top
  ax_s = axes_at(y, h_spec)
  spec = lm.reshape(t_len * 96, 64).T   # [64 mel bands, time]
  ax_s.imshow(spec, origin="lower", aspect="auto", cmap="magma", extent=(0, ends, 0, 64),
              interpolation="nearest")
  ax_s.set_ylabel("audio\n(mel band)", fontsize=8)
  ax_s.set_xlim(0, ends)
  ax_s.tick_params(labelsize=7)
  ax_s.set_xticks(np.arange(t_len) * sec + sec / 2)
  ax_s.set_xticklabels([str(first_frame + k) for k in range(t_len)] if t_len <= 60 else [])
  ax_s.xaxis.set_ticks_position("top")
  ax_s.xaxis.set_label_position("top")
  ax_s.set_xlabel("frame", fontsize=8, labelpad=2)
  all_axes = [ax_s]
  if gt_control_points is not None:
    g = _flags("gt_control_points", gt_control_points, t_len, False)
    ax_s.plot(np.flatnonzero(g) * sec, np.full(int(g.sum()), 64.0), "v", color=KEY_COLOR,
              markersize=8, markeredgecolor="black", clip_on=False, zorder=7)
  y += h_spec + 0.3

  if rows:
    ax_r = axes_at(y, h_rows)
    pal = media.overlay_palette().astype(np.float32) / 255.0
    gap = 0.08 / h_row   # extra space between entities, in row units
    ypos, cur, prev_lab = [], 0.0, None
    for lab, *_ in rows:
      base = lab.rsplit(" \u00b7 ", 1)[0]
      if prev_lab is not None and base != prev_lab:
        cur += gap
      ypos.append(cur)
      cur += 1.0
      prev_lab = base
    total = cur
    for (lab, on, cid, vis_e, is_gt), yy0 in zip(rows, ypos):
      yy = total - yy0 - 1.0
      for t in range(t_len):
        if not fv[t]:
          continue
        x0, w = t * sec + 0.03 * sec, 0.94 * sec
        if (is_gt and not gv[t]) or (vis_e is not None and not vis_e[t]):
          ax_r.add_patch(Rectangle((x0, yy + 0.12), w, 0.76, facecolor="#f2f2f2", edgecolor="#bbbbbb",
                                   hatch="///", lw=0.5, zorder=2))
          continue
        ax_r.add_patch(Rectangle((x0, yy + 0.12), w, 0.76, facecolor=pal[cid] if on[t] else "none",
                                 edgecolor="#555555", lw=0.6, zorder=2))
    for t in np.flatnonzero(mismatch):  # behind the cells: empty cells turn pink, filled stay clean
      ax_r.add_patch(Rectangle((t * sec, 0), sec, total, facecolor=MISMATCH_COLOR, alpha=0.22, lw=0,
                               zorder=0))
      ax_r.add_patch(Rectangle((t * sec + 0.01 * sec, 0.02), 0.98 * sec, total - 0.04, facecolor="none",
                               edgecolor=MISMATCH_COLOR, lw=1.8, zorder=3))
    ax_r.set_xlim(0, ends)
    ax_r.set_ylim(0, total)
    ax_r.set_yticks([total - yy0 - 0.5 for yy0 in ypos])
    ax_r.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax_r.tick_params(axis="y", length=0)
    ax_r.set_xticks([])
    for sp in ax_r.spines.values():
      sp.set_visible(False)
    all_axes.append(ax_r)
    y += h_rows
  if ious is not None:
    ax_j = axes_at(y + 0.04, h_j - 0.04)
    for t in range(t_len):
      if gv[t]:
        ax_j.text((t + 0.5) * sec, 0.5, f"{ious[t]:.2f}", ha="center", va="center", fontsize=7,
                  color=MISMATCH_COLOR if mismatch[t] else "black",
                  weight="bold" if mismatch[t] else "normal")
    ax_j.set_xlim(0, ends)
    ax_j.set_ylim(0, 1)
    ax_j.set_yticks([0.5])
    ax_j.set_yticklabels(["J per frame"], fontsize=8)
    ax_j.tick_params(axis="y", length=0)
    for s_ in ("top", "right", "left"):
      ax_j.spines[s_].set_visible(False)
    all_axes.append(ax_j)
  last = all_axes[-1]
  step = sec * max(1, int(np.ceil(t_len / 30)))
  ticks = np.arange(0, ends + 1e-9, step)
  last.set_xticks(ticks)
  last.set_xticklabels([f"{first_frame * sec + x:g}" for x in ticks])
  last.tick_params(axis="x", labelsize=7)
  last.set_xlabel("time (s)", fontsize=8)
  for ax in all_axes:
    for t in np.flatnonzero(cps):
      ax.axvline(t * sec, color=KEY_COLOR, lw=2.2, zorder=6)
  return fig


def save_timeline(path, audio_logmel, **kw) -> pathlib.Path:
  """`timeline_figure(...)` saved as PNG at `path` (atomically); returns the path."""
  return save_figure(timeline_figure(audio_logmel, **kw), path)
