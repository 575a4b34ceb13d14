"""Runs one RCPG method over a list of videos and appends one JSON line per video (resumable).

Record fields: video_id, method, split (null for a WAV directory), layout, flags (list[int], len T,
flags[0] == 1), num_frames, category (str or null: the LLM's category for LLM methods, the GT's
for `gt`), categories (gt: the class names in the GT masks, usable as a retrieval document line),
num_gt_frames (gt), raw_replies (list[str], LLM methods; [] otherwise), prompts (rendered prompt of
each LLM step), examples (ids retrieved from D, rcpg), model, prompt_version, parse_ok (bool),
fallback (null, "first_frame" or "cosine": what produced the flags when the reply did not parse),
shard ([index, count]), num_videos_total (videos over all shards).
"""
from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from coprop_jax.rcpg import core, inputs, jsonl

log = logging.getLogger(__name__)
METHODS = ("gt", "cosine", "1step", "3step", "rcpg")
LLM_METHODS = ("1step", "3step", "rcpg")


def load_document(cfg, data_dir: str, layout: str) -> Tuple[List[Dict], str]:
  """The retrieval document D (paper section 3.2: training videos annotated with categories and
  control points) -> (D, where it came from). Sources, first that applies:
    rcpg.document_file: JSONL of {"video_id", "categories": [names], "flags": [0/1]} (e.g. the
      output of `--method gt` on an AVSS train split; lines with num_gt_frames < 2 are skipped);
    rcpg.document_avss_dir, or data_dir itself for layout avss: the AVSS train split, whose
      v1s/v1m subsets re-label AVSBench-object's videos with classes per frame.
  Anything else (S4/MS3 alone carry no per-frame categories; S4 train has one GT frame) is an
  error, as is a document without categories: never a silent fallback to 3step."""
  if cfg.document_file:
    where = f"rcpg.document_file {cfg.document_file}"
    if not pathlib.Path(cfg.document_file).is_file():
      raise FileNotFoundError(f"{where}: does not exist")
    recs, _ = jsonl.read_records(cfg.document_file)
    doc, few = [], 0
    for r in recs:
      if not isinstance(r.get("categories"), list):
        raise jsonl.RecordsError(
            f"{where}: video {r['video_id']!r} has no 'categories' list (a line is "
            '{"video_id": ..., "categories": [class names], "flags": [0/1 ...]}; files written by '
            "--method gt before categories were recorded cannot serve as a document)")
      if r.get("num_gt_frames", 2) < 2:
        few += 1
        continue
      doc.append({"video_id": str(r["video_id"]), "categories": [str(c) for c in r["categories"]],
                  "flags": r["flags"]})
    doc = [d for d in doc if d["categories"]] if any(d["categories"] for d in doc) else doc
    core.check_document(doc, where)
    log.info("rcpg: retrieval document %s: %d entries (%d lines skipped: fewer than 2 GT frames)",
             cfg.document_file, len(doc), few)
    return doc, cfg.document_file
  if cfg.document_avss_dir or layout == "avss":
    root = cfg.document_avss_dir or data_dir
    where = (f"rcpg.document_avss_dir {root}" if cfg.document_avss_dir
             else f"the AVSS train split of {root}")
    doc, counts = inputs.avss_document(root, cfg.binary_iou_threshold)
    core.check_document(doc, where)
    log.info("rcpg: retrieval document from %s: %d entries of %d videos (%d with < 2 GT frames, "
             "%d without a class)", where, counts["entries"], counts["videos"],
             counts["few_gt_frames"], counts["no_categories"])
    return doc, str(root)
  raise ValueError(
      f"method 'rcpg' on layout {layout!r} needs a retrieval document with categories and "
      "control points per video: set rcpg.document_file (JSONL of video_id, categories, flags) or "
      "rcpg.document_avss_dir (an AVSBench-semantic tree: its v1s/v1m subsets re-label the S4/MS3 "
      "videos with classes per frame)")


def _check_existing(out, done: Dict[str, Dict], expect: Dict, all_ids: set):
  """Records already in `out` must come from this very run (method, split, layout, shard)."""
  for vid, r in done.items():
    for k, v in expect.items():
      if r.get(k) != v:
        raise jsonl.RecordsError(
            f"{out}: already holds records of {k} {r.get(k)!r} (e.g. video {vid!r}), this run is "
            f"{k} {v!r}; use another --out (nothing was written)")
    if vid not in all_ids:
      raise jsonl.RecordsError(f"{out}: holds video {vid!r}, which is not in this input; use "
                               "another --out (nothing was written)")


def run(cfg, method: str, out: str, *, data_dir: str, layout: str, split: str,
        shard_index: int = 0, num_shards: int = 1, embed_fn: Optional[Callable] = None,
        prompter=None, progress: bool = True) -> Dict:
  """Processes the shard's unfinished videos; returns {"total","skipped","written","fallbacks"}
  (+ for rcpg "retrieval_queries", "retrieval_found", "document_entries").

  embed_fn(video_id, audio_logmel [T,96,64]) -> [T,D] (default: from cfg.embedding);
  prompter: a qwen.QwenPrompter (default: QwenPrompter.from_config, loaded only when needed).
  `out` is created only when the first record is written (or, for a shard with nothing to do,
  as an empty file at the end): a run failing before leaves no file.
  """
  if method not in METHODS:
    raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
  if cfg.fallback not in ("first_frame", "cosine"):
    raise ValueError(f"rcpg.fallback must be 'first_frame' or 'cosine', got {cfg.fallback!r}")
  if method == "gt" and layout == "wavdir":
    raise ValueError("method 'gt' needs GT masks: give an AVSBench tree (--layout s4/ms3/avss)")
  all_items = inputs.list_sources(data_dir, layout, split, cfg.num_frames)
  items = inputs.shard(all_items, shard_index, num_shards)
  rec_split = None if layout == "wavdir" else split
  done, appender = jsonl.open_resumable(out)
  _check_existing(out, done, {"method": method, "split": rec_split, "layout": layout,
                              "shard": [shard_index, num_shards],
                              "num_videos_total": len(all_items)},
                  {it["video_id"] for it in all_items})
  todo = [it for it in items if it["video_id"] not in done]
  stats = {"total": len(items), "skipped": len(items) - len(todo), "written": 0, "fallbacks": 0}
  need_embed = method == "cosine" or (method in LLM_METHODS and cfg.fallback == "cosine")
  if need_embed and embed_fn is None and todo:
    embed_fn = inputs.make_embed_fn(cfg)
  if method == "rcpg":
    stats.update(retrieval_queries=0, retrieval_found=0, document_entries=None)
  if method in LLM_METHODS and prompter is None and todo:
    from coprop_jax.rcpg import qwen
    qwen.resolve_device(cfg.device)   # fail fast, naming rcpg.device, before any loading
    doc = load_document(cfg, data_dir, layout)[0] if method == "rcpg" else ()
    prompter = qwen.QwenPrompter.from_config(cfg, method, doc)
  if method == "rcpg" and prompter is not None:
    stats["document_entries"] = len(prompter.document)
  model = getattr(prompter, "model_name", "") if method in LLM_METHODS else ""
  version = prompter.templates["version"] if method in LLM_METHODS and prompter else ""

  def cosine(vid, clip):
    return core.cosine_control_points(embed_fn(vid, clip["audio_logmel"]), cfg.cosine_threshold)

  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(todo), unit="video", desc=f"rcpg {method}", dynamic_ncols=True)
  bs = max(1, int(cfg.batch_size)) if method in LLM_METHODS else 1
  try:
    for start in range(0, len(todo), bs):
      batch = todo[start:start + bs]
      clips = [it["load"]() for it in batch]
      base = [{"video_id": it["video_id"], "method": method, "split": rec_split, "layout": layout,
               "num_frames": int(c["num_frames"]),
               "category": (c.get("category", it["category"]) or None) if method == "gt" else None,
               "raw_replies": [], "prompts": [], "examples": [], "model": model,
               "prompt_version": version, "parse_ok": True, "fallback": None,
               "shard": [shard_index, num_shards], "num_videos_total": len(all_items)}
              for it, c in zip(batch, clips)]
      if method == "gt":
        for r, c in zip(base, clips):
          r["flags"] = core.gt_control_points(
              c["masks"], c["gt_valid"], binary=inputs.is_binary_layout(layout),
              iou_threshold=cfg.binary_iou_threshold).tolist()
          r["categories"] = c["categories"]
          r["num_gt_frames"] = int(np.sum(c["gt_valid"]))
      elif method == "cosine":
        for r, c in zip(base, clips):
          r["flags"] = cosine(r["video_id"], c).tolist()
      else:
        replies = prompter.run([{"video_id": r["video_id"], "waveform": c["waveform"],
                                 "num_frames": c["num_frames"]} for r, c in zip(base, clips)])
        for r, c, rep in zip(base, clips, replies):
          r.update(raw_replies=rep["raw_replies"], prompts=rep["prompts"],
                   examples=rep["examples"])
          if method == "rcpg":
            stats["retrieval_queries"] += 1
            stats["retrieval_found"] += int(bool(rep["examples"]))
          if rep["category"] is not None:
            r["category"] = rep["category"]
          if rep["flags"] is None:
            r["parse_ok"], r["fallback"] = False, cfg.fallback
            stats["fallbacks"] += 1
            log.warning("rcpg: video %s: reply %r did not parse into %d flags; fallback %s",
                        r["video_id"], rep["raw_replies"][-1][:200], c["num_frames"], cfg.fallback)
            if cfg.fallback == "cosine":
              r["flags"] = cosine(r["video_id"], c).tolist()
            else:
              r["flags"] = [1] + [0] * (int(c["num_frames"]) - 1)
          else:
            r["flags"] = rep["flags"]
      for r in base:
        r["flags"][0] = 1
        appender.write(r)
        stats["written"] += 1
      if bar is not None:
        bar.update(len(batch))
        bar.set_postfix(fallbacks=stats["fallbacks"])
  finally:
    appender.close()
    if bar is not None:
      bar.close()
  if not pathlib.Path(out).exists():   # a shard with nothing to do: its (empty) output
    jsonl.write_atomic(out, [])
  if method == "rcpg" and stats["retrieval_queries"]:
    log.info("rcpg: %d of %d queries found examples in the retrieval document (%d entries)",
             stats["retrieval_found"], stats["retrieval_queries"], stats["document_entries"])
    if not stats["retrieval_found"]:
      log.warning("rcpg: no query found an example: the LLM's categories match none of the "
                  "document's; this run behaved like 3step")
  return stats


def evaluate_files(pred_path: str, gt_path: str) -> Dict:
  """Control points of `pred_path` vs GT control points of `gt_path` (JSONL) -> core.evaluate.
  A video id twice in a file, or flags other than 0/1, is an error naming the file."""
  tables = []
  for path in (pred_path, gt_path):
    recs, _ = jsonl.read_records(path)
    t = {}
    for r in recs:
      if r["video_id"] in t:
        raise jsonl.RecordsError(f"{path}: video id {r['video_id']!r} appears twice")
      t[r["video_id"]] = r["flags"]
    tables.append(t)
  return core.evaluate(tables[0], tables[1], pred_name=str(pred_path), gt_name=str(gt_path))
