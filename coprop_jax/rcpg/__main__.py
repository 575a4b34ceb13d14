"""CLI.

  python -m coprop_jax.rcpg --config configs/rcpg.py --method {gt,cosine,1step,3step,rcpg} \
      --out FILE [--data DIR --layout {wavdir,s4,ms3,avss} --split test] \
      [--shard_index i --num_shards n] [--config.rcpg.x=value ...]
  python -m coprop_jax.rcpg merge --out FILE SHARD [SHARD ...] [--config C --data DIR ...]
  python -m coprop_jax.rcpg evaluate --pred FILE --gt FILE

`merge` checks the shards against the video list of --config/--data when given, else against the
records' own `shard` / `num_videos_total` fields (a missing or unfinished shard is an error).
Errors print one line `error: ...` naming the file or field, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from coprop_jax.rcpg import inputs, jsonl, runner


def _data_args(p, required_config: bool):
  p.add_argument("--config", required=required_config, help="experiment config file[:string]")
  p.add_argument("--data", default=None, help="overrides rcpg.data_dir")
  p.add_argument("--layout", default=None, choices=inputs.LAYOUTS, help="overrides rcpg.layout")
  p.add_argument("--split", default=None, help="overrides rcpg.split")


def _resolve(args, overrides):
  from coprop_jax.utils.config import load_config
  cfg = load_config(args.config, overrides).rcpg
  return (cfg, args.data or cfg.data_dir, args.layout or cfg.layout, args.split or cfg.split)


def main(argv=None) -> int:
  try:
    return _main(argv)
  except (ValueError, FileNotFoundError) as e:   # RecordsError, DataError, ConfigError included
    print(f"error: {e}", file=sys.stderr)
    return 2


def _main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  if argv and argv[0] == "merge":
    p = argparse.ArgumentParser(prog="python -m coprop_jax.rcpg merge", allow_abbrev=False)
    p.add_argument("--out", required=True)
    p.add_argument("shards", nargs="+")
    _data_args(p, required_config=False)
    args, rest = p.parse_known_args(argv[1:])
    expected = None
    if args.config:
      cfg, data, layout, split = _resolve(args, rest)
      expected = [i["video_id"] for i in inputs.list_sources(data, layout, split, cfg.num_frames)]
    recs = jsonl.merge(args.shards, args.out, expected)
    print(json.dumps({"merged": len(recs), "out": args.out, "checked_ids": expected is not None,
                      "checked_shards": expected is None}))
    return 0
  if argv and argv[0] == "evaluate":
    p = argparse.ArgumentParser(prog="python -m coprop_jax.rcpg evaluate", allow_abbrev=False)
    p.add_argument("--pred", required=True)
    p.add_argument("--gt", required=True)
    args = p.parse_args(argv[1:])
    print(json.dumps(runner.evaluate_files(args.pred, args.gt)))
    return 0
  p = argparse.ArgumentParser(prog="python -m coprop_jax.rcpg", allow_abbrev=False)
  _data_args(p, required_config=True)
  p.add_argument("--method", default=None, choices=runner.METHODS, help="overrides rcpg.method")
  p.add_argument("--out", required=True, help="JSONL output (appended; reruns resume)")
  p.add_argument("--shard_index", type=int, default=0)
  p.add_argument("--num_shards", type=int, default=1)
  p.add_argument("--no_progress", action="store_true")
  args, rest = p.parse_known_args(argv)
  cfg, data, layout, split = _resolve(args, rest)
  stats = runner.run(cfg, args.method or cfg.method, args.out, data_dir=data, layout=layout,
                     split=split, shard_index=args.shard_index, num_shards=args.num_shards,
                     progress=not args.no_progress)
  print(json.dumps(stats))
  return 0


if __name__ == "__main__":
  sys.exit(main())
