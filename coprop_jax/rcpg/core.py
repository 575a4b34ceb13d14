"""Control points: GT from masks, cosine baseline, reply parser, evaluation, retrieval.

Control points are int32 flags [T], frame 0 always 1 (Algorithm 1).

The retrieval document D is a list of entries {"video_id", "categories": [class names], "flags":
[0/1 per frame], "frame_categories": [[names] or None per frame] (optional)}: the training
videos with annotated categories and control points (paper section 3.2).
"""
from __future__ import annotations

import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

# Binary (S4/MS3) masks: a frame whose foreground IoU with the previous GT frame's is below this
# is a keyframe (a source switching). See gt_control_points; rcpg.binary_iou_threshold's default.
BINARY_IOU_THRESHOLD = 0.4


def gt_control_points(masks: np.ndarray, gt_valid: Optional[np.ndarray] = None, *,
                      binary: bool = False,
                      iou_threshold: float = BINARY_IOU_THRESHOLD) -> np.ndarray:
  """masks: [T, H, W] int (0 background, 1..K ids); gt_valid: [T] bool -> flags [T] int32.

  Algorithm 1 step 1: frame t is a keyframe when the set of nonzero ids present differs from the
  previous annotated frame's; frame 0 always is. This is THE GT rule of the project: RCPG's `gt`
  method, its document D and the data pipeline's "gt" control-point fallback all call it. Frames without GT (gt_valid False, e.g. S4 train
  frames 2..5) are never keyframes and are skipped when comparing.

  binary=True (S4/MS3 masks, 0/1 without object identities): the id set only says "foreground
  present or not", which misses a source switching from one object to another. So a frame is
  also a keyframe when the IoU of its foreground with the previous annotated frame's is below
  `iou_threshold`. Rationale: at 1 s per frame objects move a little (IoU stays high), while a
  sounding source appearing, vanishing or switching replaces a large part of the foreground.
  Connected components were rejected: their count flickers with annotation noise (an object split
  by an occluder) and does not change when one sounding object is swapped for another.
  """
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f"masks: expected [T, H, W], got shape {masks.shape}")
  t_len = masks.shape[0]
  valid = np.ones(t_len, bool) if gt_valid is None else np.asarray(gt_valid, bool)
  if valid.shape != (t_len,):
    raise ValueError(f"gt_valid: expected shape ({t_len},), got {valid.shape}")
  flags = np.zeros(t_len, np.int32)
  if t_len == 0:
    return flags
  flags[0] = 1
  prev = None
  for t in range(t_len):
    if not valid[t]:
      continue
    m = masks[t]
    ids = frozenset(np.unique(m[m != 0]).tolist())
    if prev is not None and t > 0:
      pm, pids = prev
      change = ids != pids
      if binary and not change and ids:
        a, b = m != 0, pm != 0
        iou = np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)
        change = iou < iou_threshold
      flags[t] = int(change)
    prev = (m, ids)
  return flags


def build_document(videos: Iterable[Dict], *, binary: bool = False,
                   iou_threshold: float = BINARY_IOU_THRESHOLD,
                   min_gt_frames: int = 2) -> Tuple[List[Dict], Dict[str, int]]:
  """GT videos -> retrieval document D (see the module docstring) and counts.

  videos: iterable of {"video_id", "masks" [T,H,W], optional "gt_valid" [T], optional
  "frame_valid" [T], and the categories: "frame_categories" (per frame, a list of class names
  present, None where there is no GT) and/or "categories" (the video's names)}. Padded frames
  (frame_valid False) are dropped. Videos with fewer than `min_gt_frames` annotated frames (S4
  train: only frame 1) carry no control-point information and are left out, as are videos
  without any category. Returns (D, {"videos", "entries", "few_gt_frames", "no_categories"}).
  """
  out, counts = [], {"videos": 0, "entries": 0, "few_gt_frames": 0, "no_categories": 0}
  for v in videos:
    counts["videos"] += 1
    n = int(np.sum(v["frame_valid"])) if "frame_valid" in v else len(v["masks"])
    gv = np.ones(n, bool) if v.get("gt_valid") is None else np.asarray(v["gt_valid"], bool)[:n]
    if gv.sum() < min_gt_frames:
      counts["few_gt_frames"] += 1
      continue
    fc = v.get("frame_categories")
    cats = set(v.get("categories") or ())
    if fc is not None:
      cats |= {c for frame in fc[:n] if frame for c in frame}
    if not cats:
      counts["no_categories"] += 1
      continue
    flags = gt_control_points(v["masks"][:n], gv, binary=binary, iou_threshold=iou_threshold)
    e = {"video_id": str(v["video_id"]), "categories": sorted(cats), "flags": flags.tolist()}
    if fc is not None:
      e["frame_categories"] = [None if f is None else sorted(f) for f in fc[:n]]
    out.append(e)
  counts["entries"] = len(out)
  return out, counts


def check_document(doc: Sequence[Dict], where: str) -> List[Dict]:
  """Validates D (from a file or a tree); raises ValueError naming `where` and the entry."""
  if not doc:
    raise ValueError(f"retrieval document {where}: empty (no training video with categories and "
                     "at least two annotated frames)")
  for i, e in enumerate(doc):
    vid = e.get("video_id", f"#{i}")
    cats = e.get("categories")
    if not isinstance(cats, list) or not all(isinstance(c, str) and c.strip() for c in cats):
      raise ValueError(f"retrieval document {where}: entry {vid!r} needs 'categories', a list of "
                       f"class names, got {cats!r}")
    fl = e.get("flags")
    if not isinstance(fl, list) or not fl or any(f not in (0, 1) for f in fl):
      raise ValueError(f"retrieval document {where}: entry {vid!r} needs 'flags', a non-empty list "
                       f"of 0/1, got {fl!r}")
  if not any(e["categories"] for e in doc):
    raise ValueError(f"retrieval document {where}: no entry has a category, so retrieval can never "
                     "find an example; build D from annotations with categories (AVSS, or a JSONL "
                     "of video_id, categories, flags)")
  return list(doc)


def _norm(s) -> str:
  return re.sub(r"[^a-z0-9]+", " ", str(s).lower()).strip()


def _contains(words: List[str], sub: List[str]) -> bool:
  k = len(sub)
  return k > 0 and any(words[i:i + k] == sub for i in range(len(words) - k + 1))


def retrieve_examples(document: Sequence[Dict], category: Optional[str], k: int,
                      num_frames: Optional[int] = None,
                      exclude_id: Optional[str] = None) -> List[Dict]:
  """R(q, D): up to k entries of D with a category matching q, deterministic order.

  Match: an entry category equal to q (case, spaces and punctuation ignored); if none is, an
  entry category whose words appear together in q ("a dog barking" finds "dog"). Order: entries
  with `num_frames` flags first, then by video id. `exclude_id`: the query's own video, never its
  own example (RCPG run on the training split would otherwise copy its GT).
  """
  # not in the paper: the matching rule and the preference for same-length examples are ours.
  if not category:
    return []
  if exclude_id is not None:
    document = [d for d in document if d["video_id"] != exclude_id]
  c = _norm(category)
  cw = c.split()
  hits = [d for d in document if any(_norm(x) == c for x in d["categories"])]
  if not hits:
    hits = [d for d in document if any(_contains(cw, _norm(x).split()) for x in d["categories"])]
  key = lambda d: (num_frames is not None and len(d["flags"]) != num_frames, d["video_id"])
  return sorted(hits, key=key)[:k]


def cosine_control_points(embeddings: np.ndarray, threshold: float) -> np.ndarray:
  """embeddings: [T, D] per-frame audio embeddings -> flags [T] int32.

  Frame t (t >= 1) is a keyframe when cos(e_t, e_{t-1}) < threshold; frame 0 always.
  """
  e = np.asarray(embeddings, np.float64)
  if e.ndim != 2:
    raise ValueError(f"embeddings: expected [T, D], got shape {e.shape}")
  n = np.linalg.norm(e, axis=-1)
  cos = np.sum(e[1:] * e[:-1], -1) / np.maximum(n[1:] * n[:-1], 1e-12)
  flags = np.concatenate([[1], (cos < threshold).astype(np.int32)]).astype(np.int32)
  return flags[:len(e)]


_WORD = re.compile(r"\b(keyframe|key frame|yes|no|non-keyframe|not)\b")


def parse_flags(reply: str, num_frames: int) -> Optional[np.ndarray]:
  """Parse an LLM reply into exactly `num_frames` 0/1 flags, or None when it cannot.

  Accepted forms (first that works): a run of exactly T binary digits in a bracketed list or
  separated by commas/spaces ("[1, 0, 0]", "1 0 0", "1,0,0", "100"); a list of 1-based frame
  indices introduced by "keyframes"/"frames" ("keyframes: 1, 4, 7"); per-line "Frame 3: keyframe".
  Frame 0 is forced to 1.
  """
  if not isinstance(reply, str) or num_frames <= 0:
    return None
  text = reply.lower()
  out = None
  # 1. bracketed lists of 0/1.
  for m in re.finditer(r"\[([^\[\]]*)\]", text):
    toks = re.findall(r"\d+", m.group(1))
    if len(toks) == num_frames and all(t in ("0", "1") for t in toks):
      out = np.array([int(t) for t in toks], np.int32)
      break
  # 2. a maximal run of exactly T binary tokens separated by commas/semicolons/spaces.
  if out is None:
    run: List[str] = []
    for tok in re.findall(r"\d+(?:\.\d+)?|[^\W\d_]+|[^\w\s]", text) + ["<end>"]:
      if tok in ("0", "1"):
        run.append(tok)
      elif tok in (",", ";") and run:
        continue
      else:
        if len(run) == num_frames:
          out = np.array([int(t) for t in run], np.int32)
          break
        run = []
  # 3. a single word of T binary digits ("1000100000").
  if out is None:
    m = re.search(r"(?<!\d)[01]{%d}(?!\d)" % num_frames, text)
    if m:
      out = np.array([int(c) for c in m.group(0)], np.int32)
  # 4. "Frame k: keyframe / not" lines.
  if out is None:
    lines = re.findall(r"frame\s*(\d+)\s*[:=\-]\s*(non-keyframe|not a keyframe|not|no|keyframe|key frame|yes|1|0)", text)
    if lines:
      idx = [int(i) for i, _ in lines]
      base = 0 if min(idx) == 0 else 1
      if sorted(set(idx)) == list(range(base, base + num_frames)):
        out = np.zeros(num_frames, np.int32)
        for i, v in lines:
          out[int(i) - base] = int(v in ("keyframe", "key frame", "yes", "1"))
  # 5. "keyframes: 1, 4, 7" (1-based indices).
  if out is None:
    m = re.search(r"key\s*frames?\s*(?:(?:are|at|is|on|in|:)\s*)*(?:frames?\s*)?:?\s*((?:\d+\s*(?:,|and|\s)\s*)*\d+)", text)
    if m:
      idx = [int(i) for i in re.findall(r"\d+", m.group(1))]
      if idx and all(1 <= i <= num_frames for i in idx):
        out = np.zeros(num_frames, np.int32)
        out[[i - 1 for i in idx]] = 1
  if out is None:
    return None
  out[0] = 1
  return out


def evaluate(pred: Dict[str, Sequence[int]], gt: Dict[str, Sequence[int]], *,
             pred_name: str = "pred", gt_name: str = "gt") -> Dict[str, float]:
  """Precision/recall/F1 of keyframe flags (frame 0 excluded: it is always 1) and per-video
  exact-match rate, over the ids of `gt`. Missing predictions, length mismatches and flags other
  than 0/1 raise ValueError naming `pred_name`/`gt_name` and the video."""
  missing = sorted(set(gt) - set(pred))
  if missing:
    raise ValueError(f"evaluate: {len(missing)} video ids of {gt_name} have no prediction in "
                     f"{pred_name}, e.g. {missing[:5]}")
  tp = fp = fn = exact = 0
  for vid, g in gt.items():
    for name, flags in ((gt_name, g), (pred_name, pred[vid])):
      vals = flags.tolist() if isinstance(flags, np.ndarray) else flags
      if not isinstance(vals, (list, tuple)) or any(
          isinstance(f, bool) or f not in (0, 1) for f in vals):
        raise ValueError(f"evaluate: {name}: video {vid!r} has flags {vals!r}; flags must be 0 or 1")
    g = np.asarray(g, np.int32)
    p = np.asarray(pred[vid], np.int32)
    if p.shape != g.shape:
      raise ValueError(f"evaluate: video {vid!r} has {p.shape} flags in {pred_name}, {g.shape} in "
                       f"{gt_name}")
    exact += int(np.array_equal(p, g))
    p, g = p[1:], g[1:]
    tp += int(np.sum((p == 1) & (g == 1)))
    fp += int(np.sum((p == 1) & (g == 0)))
    fn += int(np.sum((p == 0) & (g == 1)))
  prec = tp / (tp + fp) if tp + fp else 1.0
  rec = tp / (tp + fn) if tp + fn else 1.0
  f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
  return {"precision": prec, "recall": rec, "f1": f1,
          "exact_match": exact / max(len(gt), 1), "num_videos": len(gt)}
