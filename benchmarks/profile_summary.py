"""Where a profiled XLA:CPU step spends its time: ops grouped by kind and by model scope.

  PYTHONPATH=$PWD python benchmarks/train_step.py --preset b0 --steps 2 --profile /tmp/prof
  PYTHONPATH=$PWD python benchmarks/profile_summary.py /tmp/prof [--top 25]

Reads the newest `*.trace.json.gz` under DIR (written by `jax.profiler`) and `DIR/step.hlo.txt`
(the compiled step's HLO, written by train_step.py --profile). Each XLA op event of the trace is
matched to its HLO instruction; a fusion is classified by the ops it contains (convolution, dot,
reduce, transpose/copy, gather/scatter, elementwise) and by its `op_name` metadata: the model
scope (e.g. `KeyframeProcessor/fpn0/conv`) and whether it belongs to the forward pass (`jvp`) or
the backward pass (`transpose(jvp)`). Times are summed over both CPU threads and divided by the
number of profiled steps, so they add up to more than the step's wall time when ops overlap.
Prints one JSON line per grouping.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .* \{$")
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+(?: \S+)*? ([a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OPNAME = re.compile(r'op_name="([^"]*)"')

KINDS = ("convolution", "dot", "reduce-window", "reduce", "scatter", "gather", "sort",
         "transpose", "copy", "concatenate", "pad", "slice", "dynamic-slice",
         "dynamic-update-slice")


def parse_hlo(text: str):
  """-> (instr: name -> (opcode, op_name, called computation), comps: name -> [(opcode, op_name)])"""
  instr, comps, cur = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    m = _COMP.match(line)
    if m:
      cur = m.group(1)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, opcode = m.group(1), m.group(2)
    op = _OPNAME.search(line)
    call = _CALLS.search(line)
    instr[name] = (opcode, op.group(1) if op else "", call.group(1) if call else None)
    if cur is not None:
      comps[cur].append((opcode, op.group(1) if op else ""))
  return instr, comps


def classify(name: str, instr, comps) -> tuple[str, str]:
  """(kind, op_name) of one executed instruction."""
  opcode, op_name, called = instr[name]
  ops = [opcode]
  names = [op_name] if op_name else []
  if called and called in comps:
    ops = [o for o, _ in comps[called]]
    names += [n for _, n in comps[called] if n]
  kind = "elementwise"
  for k in KINDS:
    if k in ops:
      kind = k
      break
  if "custom-call" in ops and kind == "elementwise":
    kind = "custom-call"
  # the most specific op_name: the one of the fusion's main op, else the first
  main = next((n for (o, n) in (comps.get(called, []) if called else []) if o == kind and n),
              names[0] if names else "")
  return kind, main


def scope_of(op_name: str) -> str:
  """'jit(step)/transpose(jvp(KeyframeProcessor))/backbone/stage0_blocks/.../dot_general' ->
  ('bwd', 'backbone/stage0_blocks')."""
  direction = "bwd" if "transpose(" in op_name else "fwd"
  parts = [p for p in op_name.split("/") if p and "(" not in p]
  parts = parts[:-1] if len(parts) > 1 else parts   # drop the primitive name
  parts = [re.sub(r"_\d+$", "", p) for p in parts[:2]]
  return f"{direction} {'/'.join(parts) or '(optimizer, loss)'}"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("dir")
  p.add_argument("--top", type=int, default=25)
  a = p.parse_args(argv)
  traces = sorted(glob.glob(os.path.join(a.dir, "**", "*.trace.json.gz"), recursive=True),
                  key=os.path.getmtime)
  if not traces:
    raise SystemExit(f"profile_summary: no *.trace.json.gz under {a.dir}")
  hlo_path = os.path.join(a.dir, "step.hlo.txt")
  if not os.path.exists(hlo_path):
    raise SystemExit(f"profile_summary: {hlo_path} missing (run train_step.py with --profile)")
  instr, comps = parse_hlo(open(hlo_path).read())
  events = [e for e in json.load(gzip.open(traces[-1]))["traceEvents"]
            if e.get("ph") == "X" and e.get("name") in instr]
  counts = collections.Counter(e["name"] for e in events)
  steps = max(1, collections.Counter(counts.values()).most_common(1)[0][0]) if counts else 1
  by_kind, by_scope, by_op = (collections.Counter() for _ in range(3))
  for e in events:
    kind, op_name = classify(e["name"], instr, comps)
    sec = e["dur"] / 1e6 / steps
    by_kind[kind] += sec
    by_scope[scope_of(op_name)] += sec
    by_op[(e["name"], kind, op_name)] += sec
  total = sum(by_kind.values())
  print(json.dumps(dict(what="profile", trace=traces[-1], steps=steps,
                        op_seconds_per_step=round(total, 3))))
  print(json.dumps(dict(what="by_kind", seconds={k: round(v, 3) for k, v in by_kind.most_common()})))
  print(json.dumps(dict(what="by_scope", seconds={k: round(v, 3)
                                                  for k, v in by_scope.most_common(a.top)})))
  for (name, kind, op_name), sec in by_op.most_common(a.top):
    print(json.dumps(dict(what="op", op=name, kind=kind, seconds=round(sec, 3),
                          op_name=op_name[-160:])))


if __name__ == "__main__":
  main()
