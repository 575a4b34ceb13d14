"""Runs one RCPG method over a list of videos and appends one JSON line per video (resumable).

Record fields: video_id, method, flags (list[int], len T, flags[0] == 1), num_frames, category
(str or null), raw_replies (list[str], LLM methods; [] otherwise), prompts (rendered prompt of
each LLM step), examples (ids retrieved from D, rcpg), model, prompt_version, parse_ok (bool),
fallback (null, "first_frame" or "cosine": what produced the flags when the reply did not parse),
shard ([index, count]).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Callable, Dict, List, Optional

import numpy as np

from coprop_jax.rcpg import core, inputs, jsonl

log = logging.getLogger(__name__)
METHODS = ("gt", "cosine", "1step", "3step", "rcpg")
LLM_METHODS = ("1step", "3step", "rcpg")


def load_document(cfg, data_dir: str, layout: str) -> List[Dict]:
  """D from cfg.document_file (JSONL of GT control points) or the train split of data_dir."""
  if cfg.document_file:
    recs, _ = jsonl.read_records(cfg.document_file)
    bad = [r["video_id"] for r in recs if "category" not in r]
    if bad:
      raise jsonl.RecordsError(f"rcpg.document_file {cfg.document_file}: records without "
                               f"'category', e.g. {bad[:3]}")
    return [{"video_id": r["video_id"], "category": r["category"] or "", "flags": r["flags"]}
            for r in recs]
  if layout == "wavdir":
    raise ValueError("method 'rcpg' needs rcpg.document_file (the JSONL written by --method gt on "
                     "the training split) when the input is a WAV directory")
  items = inputs.list_sources(data_dir, layout, "train")
  vids = []
  for it in items:
    clip = it["load"]()
    vids.append({"video_id": it["video_id"], "category": it["category"], "masks": clip["masks"],
                 "gt_valid": clip["gt_valid"]})
  return core.build_document(vids, binary=inputs.is_binary_layout(layout),
                             iou_threshold=cfg.binary_iou_threshold)


def run(cfg, method: str, out: str, *, data_dir: str, layout: str, split: str,
        shard_index: int = 0, num_shards: int = 1, embed_fn: Optional[Callable] = None,
        prompter=None, progress: bool = True) -> Dict:
  """Processes the shard's unfinished videos; returns {"total","skipped","written","fallbacks"}.

  embed_fn(video_id, audio_logmel [T,96,64]) -> [T,D] (default: from cfg.embedding);
  prompter: a qwen.QwenPrompter (default: QwenPrompter.from_config, loaded only when needed).
  """
  if method not in METHODS:
    raise ValueError(f"--method must be one of {METHODS}, got {method!r}")
  if cfg.fallback not in ("first_frame", "cosine"):
    raise ValueError(f"rcpg.fallback must be 'first_frame' or 'cosine', got {cfg.fallback!r}")
  if method == "gt" and layout == "wavdir":
    raise ValueError("method 'gt' needs GT masks: give an AVSBench tree (--layout s4/ms3/avss)")
  items = inputs.shard(inputs.list_sources(data_dir, layout, split, cfg.num_frames),
                       shard_index, num_shards)
  done, appender = jsonl.open_resumable(out)
  other = sorted({r.get("method") for r in done.values()} - {method}, key=str)
  if other:
    appender.close()
    raise jsonl.RecordsError(f"{out}: already holds records of method {other}, not {method!r}; "
                             "use another --out")
  todo = [it for it in items if it["video_id"] not in done]
  stats = {"total": len(items), "skipped": len(items) - len(todo), "written": 0, "fallbacks": 0}
  need_embed = method == "cosine" or (method in LLM_METHODS and cfg.fallback == "cosine")
  if need_embed and embed_fn is None:
    embed_fn = inputs.make_embed_fn(cfg)
  if method in LLM_METHODS and prompter is None and todo:
    from coprop_jax.rcpg import qwen
    doc = load_document(cfg, data_dir, layout) if method == "rcpg" else ()
    prompter = qwen.QwenPrompter.from_config(cfg, method, doc)
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
      base = [{"video_id": it["video_id"], "method": method, "num_frames": int(c["num_frames"]),
               "category": c.get("category", it["category"]) or None, "raw_replies": [],
               "prompts": [], "examples": [], "model": model, "prompt_version": version,
               "parse_ok": True, "fallback": None, "shard": [shard_index, num_shards]}
              for it, c in zip(batch, clips)]
      if method == "gt":
        for r, c in zip(base, clips):
          r["flags"] = core.gt_control_points(
              c["masks"], c["gt_valid"], binary=inputs.is_binary_layout(layout),
              iou_threshold=cfg.binary_iou_threshold).tolist()
      elif method == "cosine":
        for r, c in zip(base, clips):
          r["flags"] = cosine(r["video_id"], c).tolist()
      else:
        replies = prompter.run([{"video_id": r["video_id"], "waveform": c["waveform"],
                                 "num_frames": c["num_frames"]} for r, c in zip(base, clips)])
        for r, c, rep in zip(base, clips, replies):
          r.update(raw_replies=rep["raw_replies"], prompts=rep["prompts"],
                   examples=rep["examples"])
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
  return stats


def evaluate_files(pred_path: str, gt_path: str) -> Dict:
  """Control points of `pred_path` vs GT control points of `gt_path` (JSONL) -> core.evaluate."""
  pred, _ = jsonl.read_records(pred_path)
  gt, _ = jsonl.read_records(gt_path)
  return core.evaluate({r["video_id"]: r["flags"] for r in pred},
                       {r["video_id"]: r["flags"] for r in gt})
