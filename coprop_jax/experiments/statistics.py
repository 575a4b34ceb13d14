"""Paper Table 3: dataset statistics of any split (`python -m coprop_jax.ablate --table 3`).

Per split: videos, average categories per video (the classes that sound somewhere in the clip)
and the share of videos whose sounding set changes (a control point after frame 0); then the same
over the MOC subset (those changing videos; not the paper's 17 MS3 videos, which it does not list).
Where the figures come from:
  * synthetic trees: the generator's own script (`data_pipelines.moc_synth.true_control_points`),
    exact;
  * AVSS: the classes present in the GT masks and the GT rule's control points (exact class sets);
  * S4 / MS3: binary masks carry no class, so categories are "–" and changes come from the
    binary GT rule (mask IoU < 0.4 with the previous frame; it also flags fast-moving objects).
"""
from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

import ml_collections


def _records(config: ml_collections.ConfigDict, split: str, workdir: pathlib.Path) -> tuple[dict, str]:
  """{video_id: {"flags", "categories" or None}} of `split` and where they come from."""
  d = config.data
  layout = d.name.partition("_")[2]
  if d.name.startswith("synthetic_"):
    from data_pipelines import moc_synth
    truth = moc_synth.true_control_points(layout, d.synthetic.num_videos, d.image_size,
                                          d.synthetic.seed, d.synthetic.generator, split)
    return truth, f"the {d.synthetic.generator} generator's script"
  from coprop_jax.rcpg import jsonl, runner
  out = workdir / "control_points" / f"gt_rule_{split}.jsonl"
  if not out.is_file():
    out.parent.mkdir(parents=True, exist_ok=True)
    runner.run(config.rcpg, "gt", str(out), data_dir=d.manual_dir, layout=layout, split=split,
               progress=False)
  recs = {r["video_id"]: dict(flags=r["flags"], categories=r["categories"] if layout == "avss" else None)
          for r in jsonl.read_records(str(out))[0]}
  return recs, "the GT masks (" + ("class sets" if layout == "avss" else "binary IoU rule") + ")"


def summarise(records: Mapping[str, Mapping]) -> dict:
  """{videos, categories_per_video (None without classes), changing_share} of some records."""
  n = len(records)
  cats = [len(r["categories"]) for r in records.values() if r.get("categories") is not None]
  changing = sum(1 for r in records.values() if any(r["flags"][1:]))
  return dict(videos=n, categories_per_video=(sum(cats) / len(cats)) if cats and len(cats) == n else None,
              changing_share=changing / n if n else None)


def table_3(config: ml_collections.ConfigDict, splits: Sequence[str], workdir: pathlib.Path) -> dict:
  """-> {"rows": [{split, subset, videos, categories_per_video, changing_share}], "markdown",
  "source"}. The data are built first (prepare_dataset) when they are synthetic."""
  from data_pipelines import prepare
  prepare.prepare_dataset(config.data)
  rows, sources = [], set()
  for split in splits:
    recs, src = _records(config, split, workdir)
    sources.add(src)
    moc = {k: r for k, r in recs.items() if any(r["flags"][1:])}
    rows.append(dict(split=split, subset="all", **summarise(recs)))
    rows.append(dict(split=split, subset="MOC (changing)", **summarise(moc)))
  fmt = lambda x, pct=False: "–" if x is None else (f"{100 * x:.1f}" if pct else f"{x:.2f}")
  lines = ["| Split | Subset | Videos | Categories / video | Videos with changes (%) |",
           "|---|---|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['split']} | {r['subset']} | {r['videos']} | "
                 f"{fmt(r['categories_per_video'])} | {fmt(r['changing_share'], True)} |")
  note = (f"{config.data.name}; from {', '.join(sorted(sources))}. MOC: the videos whose sounding "
          "set changes (not the paper's 17 MS3 test videos, which it does not list).")
  return dict(rows=rows, markdown="\n".join(lines) + "\n\n" + note + "\n", source=sorted(sources))
