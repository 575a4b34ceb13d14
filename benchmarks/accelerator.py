"""One accelerator run of the speed figures (GPU/TPU; also runs on CPU at tiny sizes).

  bash benchmarks/accelerator.sh [--out DIR] [--budget_s 1500] [--tiny] [--only a,b]

Runs each section below as a child process with its own time limit (a hung or slow compile
costs at most that section's limit), skips a section once the whole run's budget (--budget_s)
could not cover it, prints every JSON line the benchmarks print (tagged with the section) and
writes DIR/accelerator.jsonl and DIR/accelerator.md (a markdown table). Sections (SECTIONS), most valuable
first: the stage-2 (propagator) train step at AOT-L size (`train_step.py --stage propagator
--preset paper`) new formulation bf16, old formulation float32 and new float32 (each its own
child: the old may not finish compiling within its limit); full-pipeline inference at 224
(`inference.py --preset paper`, T = 10 and 100: frames/s and compiled memory, flat in T); the
KPF train step in bf16 (PVT-v2-b0); the tiny preset (old/new float32 in one process, new bf16);
the new step with the CPU convolution forms (conv_impl=shift, bf16); the KPF at "paper" size.
Figures: compile_s / compile_cpu_s, step_s, frames_per_s, utilisation against the device's
published dense bf16 peak (train_step.py PEAK_BF16), peak_memory_MiB (device allocator peak of the
child), XLA's temp memory.

The children import no grain / tensorflow_datasets / tensorboardX / av / soundfile (a meta-path
hook makes any such import fail loudly; `--check_imports` runs only that trace). Without
ml_collections installed, benchmarks/_shims (a minimal ConfigDict) is put on the path.
--tiny: every section at tiny sizes with small limits (the CPU check of this script).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = ("grain", "tensorflow_datasets", "tensorboardX", "av", "soundfile")

# (name, time limit s, benchmark, argv)
SECTIONS = [
    ("prop_paper_new_bf16", 300, "train_step", ["--stage", "propagator", "--preset", "paper",
                                                "--dtype", "bfloat16", "--steps", "5"]),
    ("prop_paper_old_f32", 280, "train_step", ["--stage", "propagator", "--preset", "paper",
                                               "--formulation", "old", "--steps", "3"]),
    ("prop_paper_new_f32", 240, "train_step", ["--stage", "propagator", "--preset", "paper",
                                               "--steps", "5"]),
    ("inference_paper_224", 360, "inference", ["--preset", "paper", "--lengths", "10,100",
                                               "--repeats", "2"]),
    ("kpf_b0_bf16", 180, "train_step", ["--preset", "b0", "--dtype", "bfloat16", "--steps", "5"]),
    ("prop_tiny_old_new_f32", 180, "train_step", ["--stage", "propagator", "--preset", "tiny",
                                                  "--formulation", "both", "--steps", "5"]),
    ("prop_tiny_new_bf16", 120, "train_step", ["--stage", "propagator", "--preset", "tiny",
                                               "--dtype", "bfloat16", "--steps", "5"]),
    ("prop_paper_new_shift_bf16", 180, "train_step", ["--stage", "propagator", "--preset", "paper",
                                                      "--dtype", "bfloat16", "--conv_impl",
                                                      "shift", "--steps", "3"]),
    ("kpf_paper_bf16", 240, "train_step", ["--preset", "paper", "--dtype", "bfloat16", "--steps",
                                          "3"]),
]
# --tiny: the same benchmarks at sizes a 2-core CPU compiles in seconds.
_T = ["--size", "32", "--steps", "1", "--fast_compile", "--matmul_n", "128"]
TINY_SECTIONS = [
    ("prop_tiny_old_new_f32", 240, "train_step", ["--stage", "propagator", "--preset", "tiny",
                                                   "--frames", "2", "--formulation", "both"] + _T),
    ("prop_tiny_new_bf16", 240, "train_step", ["--stage", "propagator", "--preset", "tiny",
                                                "--frames", "2", "--dtype", "bfloat16"] + _T),
    ("kpf_tiny_bf16", 240, "train_step", ["--preset", "tiny", "--batch", "1", "--dtype",
                                          "bfloat16"] + _T),
    ("inference_tiny", 240, "inference", ["--preset", "tiny", "--size", "32", "--lengths", "3",
                                          "--repeats", "1", "--keyframe_every", "2"]),
]


class _Blocker:
  """Meta-path finder: importing a FORBIDDEN top-level module raises ImportError naming it."""

  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in FORBIDDEN:
      raise ImportError(f"accelerator run: '{name}' must not be imported on this path")
    return None


def child(bench: str, argv: list[str]) -> None:
  """Runs benchmarks/<bench>.py main(argv) with the import blocker on; then prints the device's
  allocator peak."""
  sys.meta_path.insert(0, _Blocker())
  sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
  import importlib
  importlib.import_module(bench).main(argv)
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  bad = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
  print(json.dumps(dict(what="child_done", bench=bench, forbidden_modules_loaded=bad,
                        peak_memory_MiB=round(stats["peak_bytes_in_use"] / 2 ** 20, 1)
                        if "peak_bytes_in_use" in stats else None)), flush=True)


def _env() -> dict:
  env = dict(os.environ)
  paths = [str(ROOT)]
  try:
    import ml_collections  # noqa: F401
  except ImportError:
    paths.append(str(ROOT / "benchmarks" / "_shims"))
  env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def check_imports() -> dict:
  """Imports what every section imports (train_step's and inference's modules), blocker on."""
  code = ("import sys; sys.argv=['x']; sys.path[:0]=[%r, %r]; import accelerator as A; "
          "sys.meta_path.insert(0, A._Blocker()); "
          "import configs.base, coprop_jax.pipeline, coprop_jax.train.state, "
          "coprop_jax.train.propagator_losses, coprop_jax.train.tasks.propagator, "
          "coprop_jax.train.tasks.kpf, coprop_jax.models.keyframe, train_step, inference; "
          "bad=sorted(m for m in sys.modules if m.split('.')[0] in A.FORBIDDEN); print(bad)"
          % (str(ROOT), str(ROOT / "benchmarks")))
  p = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True,
                     timeout=300)
  ok = p.returncode == 0 and p.stdout.strip().endswith("[]")
  return dict(what="import_check", ok=ok, forbidden=list(FORBIDDEN),
              error=None if ok else (p.stderr or p.stdout)[-1500:])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", default="accelerator_out")
  ap.add_argument("--budget_s", type=float, default=1500.0)
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--only", default="", help="comma-separated section names")
  ap.add_argument("--check_imports", action="store_true")
  ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.child:
    return child(a.child[0], a.child[1:])
  out = pathlib.Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  records = [check_imports()]
  print(json.dumps(records[0]), flush=True)
  if a.check_imports:
    return records
  sections = TINY_SECTIONS if a.tiny else SECTIONS
  if a.only:
    keep = set(a.only.split(","))
    sections = [s for s in sections if s[0] in keep]
  t_start = time.time()
  for name, limit, bench, args in sections:
    left = a.budget_s - (time.time() - t_start)
    if left < min(limit, 20):
      rec = dict(what="section", section=name, status="skipped: run budget spent")
      print(json.dumps(rec), flush=True)
      records.append(rec)
      continue
    lim = int(min(limit, left))
    t0 = time.time()
    try:
      p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--child",
                          bench, *args], env=_env(), capture_output=True, text=True, timeout=lim,
                         cwd=ROOT)
      status, stdout, err = ("ok" if p.returncode == 0 else f"failed rc={p.returncode}",
                             p.stdout, p.stderr)
    except subprocess.TimeoutExpired as e:
      status = f"timed out after {lim} s"
      stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
      err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    recs = [json.loads(l) for l in stdout.splitlines() if l.startswith("{")]
    peak = next((r.get("peak_memory_MiB") for r in recs if r.get("what") == "child_done"), None)
    for r in recs:
      if r.get("what") in ("peak", "child_done"):
        continue
      r.update(section=name)
      r.setdefault("peak_memory_MiB", peak)
      print(json.dumps(r), flush=True)
      records.append(r)
    rec = dict(what="section", section=name, status=status, wall_s=round(time.time() - t0, 1),
               args=" ".join([bench] + args))
    if status != "ok":
      rec["stderr_tail"] = err[-1200:]
    print(json.dumps(rec), flush=True)
    records.append(rec)
  (out / "accelerator.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  (out / "accelerator.md").write_text(markdown(records))
  print(json.dumps(dict(what="written", jsonl=str(out / "accelerator.jsonl"),
                        markdown=str(out / "accelerator.md"))), flush=True)
  return records


def markdown(records: list[dict]) -> str:
  dev = next((r.get("device") for r in records if r.get("device")), "?")
  lines = [f"Accelerator run on {dev}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
           "| section | what | form | conv | dtype | size | compile s (wall/CPU) | step s | "
           "frames/s | utilisation | temp MiB | peak MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in records:
    if r.get("what") in ("propagator_train_step", "kpf_train_step"):
      lines.append("| {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} | {} |".format(
          r["section"], r["what"], r.get("formulation", ""), r.get("conv_impl", ""), r["dtype"],
          r["size"], r.get("compile_s"), r.get("compile_cpu_s"), r.get("step_s"),
          r.get("frames_per_s"), r.get("utilisation"), r.get("temp_MiB"), r.get("peak_memory_MiB")))
    elif r.get("what") == "inference":
      lines.append("| {} | inference T={} | | | {} | {} | first call {} | {} | {} | | {} | {} |".format(
          r["section"], r["T"], r["dtype"], r["size"], r["first_call_s"], r["segment_s"],
          r["frames_per_s"], r.get("peak_temp_MiB"), r.get("peak_memory_MiB")))
  lines += ["", "| section | status | wall s |", "|---|---|---|"]
  lines += [f"| {r['section']} | {r['status']} | {r.get('wall_s', '')} |"
            for r in records if r.get("what") == "section"]
  imp = records[0]
  lines += ["", f"Import check (no {', '.join(imp['forbidden'])}): {'ok' if imp['ok'] else 'FAILED'}"]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
