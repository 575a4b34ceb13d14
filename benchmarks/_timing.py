"""Helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`, so this module
is importable as `_timing`)."""
from __future__ import annotations

import time


def parse_size(s: str) -> tuple[int, int]:
  """"224" -> (224, 224); "240x320" -> (240, 320)."""
  if "x" in s:
    h, w = s.lower().split("x")
    return int(h), int(w)
  return int(s), int(s)


def time_loop(fn, iters: int, warmup: int, max_seconds: float) -> tuple[float, int]:
  """Seconds per call (mean over the timed calls) and the number of timed calls; stops early
  once `max_seconds` have passed (at least one timed call)."""
  for _ in range(warmup):
    fn()
  n, start = 0, time.perf_counter()
  while n < iters:
    fn()
    n += 1
    if time.perf_counter() - start > max_seconds:
      break
  return (time.perf_counter() - start) / n, n
