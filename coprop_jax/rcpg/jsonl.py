"""Resumable JSON-lines output: one record per video, appended atomically, merged across shards.

Each record is written with a single os.write of the whole line followed by fsync, so a crash
can leave at most a torn *last* line; `open_resumable` drops it (truncating the file back to the
last complete line) and returns the finished ids. A corrupt line anywhere else is an error.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Dict, Iterable, List, Optional, Tuple


class RecordsError(ValueError):
  """A control-points file is malformed, or shards do not fit together."""


def read_records(path, allow_torn_tail: bool = False) -> Tuple[List[Dict], int]:
  """-> (records, byte offset of the end of the last complete line).

  A last line without newline or not valid JSON is tolerated only with allow_torn_tail.
  """
  data = pathlib.Path(path).read_bytes()
  records, pos, n = [], 0, 0
  while pos < len(data):
    end = data.find(b"\n", pos)
    last = end == -1 or end == len(data) - 1
    line = data[pos:] if end == -1 else data[pos:end]
    n += 1
    try:
      if end == -1:
        raise ValueError("no trailing newline")
      rec = json.loads(line)
      if not isinstance(rec, dict) or "video_id" not in rec or "flags" not in rec:
        raise ValueError('expected an object with "video_id" and "flags"')
    except ValueError as e:
      if allow_torn_tail and last:
        return records, pos
      raise RecordsError(f"{path}: line {n} is corrupt ({e}); only the last line of an "
                         "interrupted run may be torn") from e
    records.append(rec)
    pos = end + 1
  return records, pos


def read_resumable(path) -> Tuple[Dict[str, Dict], Optional[int]]:
  """Finished records of an output file by video id, and the byte offset of the end of its last
  complete line (None when the file does not exist). Reads only: nothing is created or cut."""
  path = pathlib.Path(path)
  done: Dict[str, Dict] = {}
  if not path.exists():
    return done, None
  records, good = read_records(path, allow_torn_tail=True)
  for r in records:
    if r["video_id"] in done:
      raise RecordsError(f"{path}: video id {r['video_id']!r} appears twice")
    done[r["video_id"]] = r
  return done, good


def open_resumable(path) -> Tuple[Dict[str, Dict], "Appender"]:
  """-> (finished records by id, appender). The appender creates the file, or drops a torn last
  line, only when the first record is written: a run that fails before leaves no file behind."""
  done, good = read_resumable(path)
  return done, Appender(path, truncate_to=good)


class Appender:
  """Appends one JSON line per call with one write + fsync; opens (and creates) the file lazily."""

  def __init__(self, path, truncate_to: Optional[int] = None):
    self.path = pathlib.Path(path)
    self.truncate_to = truncate_to
    self.fd = None
    self.written = 0

  def _open(self):
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if self.truncate_to is not None and self.path.stat().st_size != self.truncate_to:
      with open(self.path, "r+b") as f:   # drop the torn last line of an interrupted run
        f.truncate(self.truncate_to)
        f.flush()
        os.fsync(f.fileno())
    self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

  def write(self, record: Dict):
    if self.fd is None:
      self._open()
    line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode()
    os.write(self.fd, line)
    os.fsync(self.fd)
    self.written += 1

  def close(self):
    if self.fd is not None:
      os.close(self.fd)
      self.fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def write_atomic(path, records: Iterable[Dict]):
  """Writes all records to `path` via a temp file in the same directory + rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      for r in records:
        f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def check_shards(records: List[Dict], where: str) -> Dict:
  """Uses each record's `shard` [index, count] and `num_videos_total` to check that every shard of
  the run is present and complete (round-robin: shard i holds len(range(i, total, count)) videos).
  Raises RecordsError naming the missing or short shards. -> {"num_shards", "num_videos_total"}."""
  bad = [r["video_id"] for r in records if not isinstance(r.get("shard"), list)
         or len(r["shard"]) != 2 or not isinstance(r.get("num_videos_total"), int)]
  if bad:
    raise RecordsError(f"{where}: records without 'shard' / 'num_videos_total' (written by an older "
                       f"version?), e.g. {bad[:3]}; give --config and --data to check the ids instead")
  counts = {r["shard"][1] for r in records}
  totals = {r["num_videos_total"] for r in records}
  if len(counts) > 1 or len(totals) > 1:
    raise RecordsError(f"{where}: records of different runs: num_shards {sorted(counts)}, "
                       f"num_videos_total {sorted(totals)}")
  if not records:
    return {"num_shards": 0, "num_videos_total": 0}
  n, total = counts.pop(), totals.pop()
  have = [0] * n
  for r in records:
    i = r["shard"][0]
    if not 0 <= i < n:
      raise RecordsError(f"{where}: video {r['video_id']!r} has shard {r['shard']}")
    have[i] += 1
  short = [f"shard {i} of {n}: {have[i]} of {len(range(i, total, n))} videos"
           for i in range(n) if have[i] != len(range(i, total, n))]
  if short:
    raise RecordsError(f"{where}: incomplete ({'; '.join(short)}); a shard file is missing or its "
                       "run did not finish")
  return {"num_shards": n, "num_videos_total": total}


def merge(shards: List, out, expected_ids: Optional[Iterable[str]] = None) -> List[Dict]:
  """Joins shard files into `out` (sorted by video id, written atomically).

  Raises RecordsError on a torn/corrupt shard, a video id in more than one line, records of
  different methods/splits/layouts, a missing or incomplete shard (from the records' `shard`
  fields when expected_ids is None), or ids missing from / not expected in the shards.
  """
  if not shards:
    raise RecordsError("merge: no shard files given")
  by_id: Dict[str, Dict] = {}
  where: Dict[str, str] = {}
  dups = []
  for s in shards:
    if not pathlib.Path(s).exists():
      raise RecordsError(f"merge: shard file {s} does not exist")
    records, _ = read_records(s)
    for r in records:
      vid = r["video_id"]
      if vid in by_id:
        dups.append(f"{vid!r} ({where[vid]} and {s})")
      by_id[vid], where[vid] = r, str(s)
  if dups:
    raise RecordsError(f"merge: {len(dups)} duplicate video ids: {', '.join(dups[:5])}")
  for field in ("method", "split", "layout"):
    vals = sorted({repr(r.get(field)) for r in by_id.values()})
    if len(vals) > 1:
      raise RecordsError(f"merge: shards mix {field}s {vals}")
  if expected_ids is not None:
    exp = set(expected_ids)
    missing, extra = sorted(exp - set(by_id)), sorted(set(by_id) - exp)
    if missing or extra:
      raise RecordsError(f"merge: {len(missing)} expected ids missing (e.g. {missing[:5]}), "
                         f"{len(extra)} unexpected ids (e.g. {extra[:5]})")
  else:
    check_shards(list(by_id.values()), f"merge of {len(shards)} shard files")
  records = [by_id[k] for k in sorted(by_id)]
  write_atomic(out, records)
  return records
