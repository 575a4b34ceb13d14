"""The one data-preparation entry point: synthetic tree (if needed) + TFDS build, never stale.

  builder = prepare_dataset(config.data)          # trainer, evaluate, demo, notebooks
  it = input_pipeline.make_iterator(config.data, "train", True, builder=builder)

What it does for `data.name`:
- `synthetic_<layout>`: the synthetic AVSBench tree in `data.manual_dir` is generated unless one
  made from the same settings (layout, num_videos, image size, frames, seed and the generator's
  code) is there; a tree from other settings is regenerated, saying which settings differ. A tree
  there that this function did not write (no stamp) is refused: it may be real data.
- both kinds: the TFDS ArrayRecord build in `data.data_dir` is reused only when it was made from
  the same source listing (every file's relative path, size and mtime under the layout's tree) and
  the same builder options; otherwise a synthetic build is rebuilt (derived data, saying why) and
  a real AVSBench build is REFUSED with a message naming what differs (the download changed since
  it was built: check it, then delete the build to rebuild deliberately). A changed option only
  (e.g. skip_bad) rebuilds either kind.
The settings are recorded in `<manual_dir>/.coprop_synthetic_<layout>.json` (tree) and
`<data_dir>/coprop_prepare/<builder>.<config>.<version>.json` (build; with the build's report:
skipped videos, empty splits, audio warnings, restored onto the builder when reused).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import pathlib
import shutil
import time

import tensorflow_datasets as tfds

from data_pipelines import moc_synth, synthetic
from data_pipelines.avsbench import builders
from data_pipelines.avsbench import readers as R

log = logging.getLogger(__name__)
STAMP_DIR = "coprop_prepare"
_AVSS_ENTRIES = ("metadata.csv", "label2idx.json", "v1s", "v1m", "v2")


class PrepareError(ValueError):
  """A data tree or build cannot be (re)used as asked; the message says what differs."""


def _parse_name(name: str) -> tuple[str, str]:
  kind, _, layout = str(name).partition("_")
  if kind not in ("synthetic", "avsbench") or layout not in builders.BUILDERS:
    raise PrepareError(f"data.name: expected synthetic_<layout> or avsbench_<layout> with layout "
                       f"s4, ms3 or avss; got {name!r}")
  return kind, layout


def _write_json_atomic(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except json.JSONDecodeError as e:
    raise PrepareError(f"{path}: damaged record of prepared data ({e}); delete it and the data it "
                       "describes to rebuild") from e


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
  out = []
  for k in sorted(set(old) | set(new)):
    a, b = old.get(k), new.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


# ----------------------------------------------------------------------------- synthetic tree


# data.synthetic.generator -> the modules whose code draws the clips (their hash is recorded).
GENERATORS = {"random": (synthetic,), "moc": (synthetic, moc_synth),
              "moc_ambiguous": (synthetic, moc_synth), "tracking": (synthetic, moc_synth)}


def _code(module) -> str:
  return hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:16]


def synthetic_settings(layout: str, num_videos: int, size: int, seed: int,
                       generator: str = "random") -> dict:
  """The settings a synthetic tree is made from (frames: the layout's, see synthetic.py;
  generator: "random" = synthetic.make_clip, "moc" = moc_synth.make_clip)."""
  if generator not in GENERATORS:
    raise PrepareError(f"data.synthetic.generator: expected one of {sorted(GENERATORS)}, got "
                       f"{generator!r}")
  frames = {"s4": 5, "ms3": 5, "avss": "v1: 5, v2: 10"}[layout]
  code = ", ".join(f"data_pipelines/{m.__name__.rpartition('.')[2]}.py@{_code(m)}"
                   for m in GENERATORS[generator])
  return dict(layout=layout, num_videos=int(num_videos), size=int(size), frames=frames,
              seed=int(seed), script=generator, generator=code)


def _tree_entries(manual: pathlib.Path, layout: str) -> list[pathlib.Path]:
  if layout == "avss":
    return [manual / e for e in _AVSS_ENTRIES if (manual / e).exists()]
  sub = manual / {"s4": "Single-source", "ms3": "Multi-sources"}[layout]
  return [sub] if sub.exists() else []


def ensure_synthetic_tree(manual_dir, layout: str, num_videos: int, size: int, seed: int,
                          generator: str = "random") -> str:
  """Generates the synthetic tree unless one from the same settings is there. -> "generated",
  "reused" or "regenerated". Refuses a tree without this module's stamp (it may be real data)."""
  manual = pathlib.Path(manual_dir).expanduser()
  want = synthetic_settings(layout, num_videos, size, seed, generator)
  stamp = manual / f".coprop_synthetic_{layout}.json"
  have = _read_json(stamp)
  entries = _tree_entries(manual, layout)
  if entries and have is None:
    raise PrepareError(f"{manual}: holds an AVSBench {layout} tree ({entries[0].name}) that "
                       f"prepare_dataset did not write (no {stamp.name}); it may be real data. "
                       "Point data.manual_dir at an empty directory for synthetic data, or delete it")
  if entries and have == want:
    log.info("reusing synthetic %s tree in %s (same settings)", layout, manual)
    return "reused"
  action = "generated"
  if entries:
    log.warning("synthetic %s tree in %s was made from other settings (%s): regenerating it",
                layout, manual, "; ".join(_diff(have, want)))
    stamp.unlink()
    for e in entries:
      shutil.rmtree(e) if e.is_dir() else e.unlink()
    action = "regenerated"
  elif have is not None:   # a stamp without its tree
    stamp.unlink()
  synthetic.write_dataset(manual, layout, num_videos, size,
                          None if layout == "avss" else want["frames"], seed,
                          clip_fn=moc_synth.clip_fn_of(generator))
  _write_json_atomic(stamp, want)
  log.info("%s synthetic %s tree in %s (%d videos, %d px, seed %d)", action, layout, manual,
           num_videos, size, seed)
  return action


# ----------------------------------------------------------------------------- source listing


def source_listing(manual_dir, layout: str) -> list[tuple[str, int, int]]:
  """(relative path, size, mtime_ns) of every file the layout's builder may read, sorted."""
  manual = pathlib.Path(manual_dir).expanduser()
  root = R.layout_root(manual, layout)
  if layout == "avss":
    tops = [root / e for e in _AVSS_ENTRIES]
  else:
    tops = [root]
  out = []
  for top in tops:
    if top.is_file():
      st = top.stat()
      out.append((str(top.relative_to(manual)), st.st_size, st.st_mtime_ns))
      continue
    for dirpath, dirnames, filenames in os.walk(top):
      dirnames[:] = [d for d in dirnames if not d.startswith(".")]
      for f in filenames:
        if f.startswith("."):
          continue
        p = pathlib.Path(dirpath) / f
        st = p.stat()
        out.append((str(p.relative_to(manual)), st.st_size, st.st_mtime_ns))
  return sorted(out)


def fingerprint(listing: list[tuple[str, int, int]]) -> dict:
  """Digest of a source listing: counts, sha256 with and without mtimes, and per top-level
  folder (two path components) digests so a change can be located."""
  full, nomt, groups = hashlib.sha256(), hashlib.sha256(), {}
  for rel, size, mtime in listing:
    full.update(f"{rel}\0{size}\0{mtime}\n".encode())
    nomt.update(f"{rel}\0{size}\n".encode())
    g = "/".join(pathlib.PurePath(rel).parts[:2])
    groups.setdefault(g, hashlib.sha256()).update(f"{rel}\0{size}\0{mtime}\n".encode())
  return dict(files=len(listing), bytes=int(sum(s for _, s, _ in listing)),
              sha256=full.hexdigest(), sha256_without_mtimes=nomt.hexdigest(),
              groups={g: h.hexdigest()[:16] for g, h in sorted(groups.items())})


def describe_source_change(old: dict, new: dict) -> str:
  parts = [f"{old.get('files')} files ({old.get('bytes')} bytes) -> {new['files']} files "
           f"({new['bytes']} bytes)"]
  if old.get("sha256_without_mtimes") == new["sha256_without_mtimes"]:
    parts.append("same names and sizes, other modification times (copied or touched?)")
  og, ng = old.get("groups", {}), new["groups"]
  changed = sorted(g for g in set(og) | set(ng) if og.get(g) != ng.get(g))
  if changed:
    parts.append(f"changed under: {', '.join(changed[:8])}" + (" ..." if len(changed) > 8 else ""))
  return "; ".join(parts)


# ----------------------------------------------------------------------------- the entry point


def _make_builder(layout, synthetic_kind, data_dir, options):
  return builders.BUILDERS[layout](config="synthetic" if synthetic_kind else "default",
                                   data_dir=str(data_dir), file_format="array_record", **options)


def prepare_dataset(data_cfg):
  """Generates (synthetic) and builds or reuses the TFDS dataset named by `data_cfg` (the config's
  `data` section); returns the prepared builder, with `skipped`, `empty_splits`,
  `audio_warnings` and `prepare_action` ("built", "reused", "rebuilt"). See the module docstring
  for when a tree/build is reused, regenerated/rebuilt or refused (PrepareError)."""
  kind, layout = _parse_name(data_cfg.name)
  manual = pathlib.Path(os.path.expanduser(data_cfg.manual_dir))
  data_dir = pathlib.Path(os.path.expanduser(data_cfg.data_dir))
  cls = builders.BUILDERS[layout]
  if int(data_cfg.num_frames) != cls.NUM_FRAMES:
    raise PrepareError(f"data.num_frames={data_cfg.num_frames}: the {layout} dataset has "
                       f"{cls.NUM_FRAMES} frames per clip")
  if kind == "synthetic":
    ensure_synthetic_tree(manual, layout, data_cfg.synthetic.num_videos, data_cfg.image_size,
                          data_cfg.synthetic.seed, data_cfg.synthetic.generator)
  elif not manual.is_dir():
    raise PrepareError(f"data.manual_dir={data_cfg.manual_dir!r}: not a directory (the AVSBench "
                       "manual download)")
  # Control points are joined at read time (input_pipeline), so they are no build option.
  options = dict(skip_bad=bool(data_cfg.skip_bad),
                 short_audio_tolerance_s=float(data_cfg.short_audio_tolerance_s))
  b = _make_builder(layout, kind == "synthetic", data_dir, options)
  want = dict(builder=b.name, config=b.builder_config.name, version=str(b.version),
              manual_dir=str(manual.resolve()), options=b.options(),
              source=fingerprint(source_listing(manual, layout)))
  stamp = data_dir / STAMP_DIR / f"{b.name}.{b.builder_config.name}.{b.version}.json"
  built = (pathlib.Path(b.data_path) / "dataset_info.json").exists()
  have = _read_json(stamp)
  action = "built"
  if built:
    settings = {k: have.get(k) for k in want} if have else None
    if settings == want:
      log.info("reusing TFDS build %s (same source listing and options)", b.data_path)
      b.skipped = [tuple(x) for x in have["report"]["skipped"]]
      b.empty_splits = list(have["report"]["empty_splits"])
      b.audio_warnings = list(have["report"]["audio_warnings"])
      b.prepare_action = "reused"
      return b
    if have is None:
      why = f"no record of the settings that produced it ({stamp} missing)"
      source_changed = True
    else:
      source_changed = have.get("source", {}).get("sha256") != want["source"]["sha256"]
      reasons = []
      if source_changed:
        reasons.append(f"source listing of {manual}: "
                       + describe_source_change(have.get("source", {}), want["source"]))
      reasons += _diff({k: have.get(k) for k in want if k != "source"},
                       {k: v for k, v in want.items() if k != "source"})
      why = "; ".join(reasons)
    if kind == "avsbench" and source_changed:
      raise PrepareError(f"TFDS build {b.data_path} was not made from the AVSBench files now in "
                         f"{manual}: {why}. Check the download; to rebuild deliberately, delete "
                         f"{b.data_path} and {stamp}")
    log.warning("rebuilding TFDS build %s: %s", b.data_path, why)
    shutil.rmtree(b.data_path)
    action = "rebuilt"
    b = _make_builder(layout, kind == "synthetic", data_dir, options)
  if stamp.exists():
    stamp.unlink()
  t0 = time.perf_counter()
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual), download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  report = dict(skipped=[list(x) for x in b.skipped], empty_splits=list(b.empty_splits),
                audio_warnings=list(b.audio_warnings))
  _write_json_atomic(stamp, dict(want, report=report, seconds=round(time.perf_counter() - t0, 2)))
  log.info("%s TFDS %s/%s in %s: %s%s", action, b.name, b.builder_config.name, b.data_path,
           ", ".join(f"{k}={v.num_examples}" for k, v in b.info.splits.items()),
           f"; {len(b.skipped)} videos skipped, empty splits {b.empty_splits}" if b.skipped else "")
  b.prepare_action = action
  return b
