"""`python -m coprop_jax.ablate`: the rows of Tables 2a / 2b / 5, the runs they need (shared, in
dependency order, the plain AOT not trained when a converted AOT is given), LLM rows marked "not
run" rather than faked, a finished run reused and a run of another config refused; (slow) Table 2b
end to end on synthetic MS3 with tiny runs, then again with every run reused."""
import json
import os

import pytest

from coprop_jax import ablate as A
from coprop_jax.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = f"{ROOT}/configs/coprop.py:dataset=ms3,runlocal=True"


def test_rows_and_runs_of_each_table():
  base = load_config(SPEC)
  t2a = A.plan_rows("2a", {})
  assert [(r.keyframe, r.propagator, r.control_points) for r in t2a] == [
      ("kpf", "aot", "cosine"), ("kpf_finetune", "aot", "cosine"),
      ("kpf_finetune", "aot", "rcpg"), ("kpf_finetune", "aip_4layer", "rcpg")]
  assert [bool(r.skip) for r in t2a] == [False, False, True, True]
  assert "rcpg.model_name_or_path" in t2a[2].skip and "--rcpg_control_points rcpg=FILE" in t2a[2].skip
  # runs of the rows that run only, each once, a fine-tune after the run it starts from
  assert [r.name for r in A.runs_needed(t2a, base)] == ["kpf", "aot", "kpf_finetune"]
  with_llm = A.plan_rows("2a", {"rcpg": "cp.jsonl"})
  assert not any(r.skip for r in with_llm)
  assert [r.name for r in A.runs_needed(with_llm, base)] == ["kpf", "aot", "kpf_finetune", "aip_4layer"]
  t2b = A.plan_rows("2b", {"1step": "a.jsonl"})
  assert [(r.control_points, bool(r.skip)) for r in t2b] == [
      ("cosine", False), ("1step", False), ("3step", True), ("rcpg", True), ("gt", False)]
  assert {r.model for r in t2b} == {"kpf_finetune+aip_4layer"}       # inference-only rows: one model
  assert [r.name for r in A.runs_needed(t2b, base)] == ["kpf", "kpf_finetune", "aip_4layer"]
  t5 = A.plan_rows("5", {})
  assert [r.propagator for r in t5] == ["aot", "aip_1layer", "aip_4layer"]
  assert {r.control_points for r in t5} == {"gt"}
  assert {r.control_points for r in A.plan_rows("5", {"rcpg": "x"})} == {"rcpg"}
  # a converted AOT is used as is: no aot training run
  with base.unlocked():
    base.propagator.aot_weights = "/ckpt/aotl"
  assert "aot" not in [r.name for r in A.runs_needed(t5, base)]
  with pytest.raises(A.AblateError, match="--table '3'"):
    A.plan_rows("3", {})
  # Table 6: one model and one evaluation, its rows differing in the frames they cover
  t6 = A.plan_rows("6", {})
  assert [r.subset for r in t6] == ["keyframes", "normal"] and len({r.method for r in t6}) == 1
  assert {r.control_points for r in t6} == {"gt"}
  # Alignment Rate: Co-Prop, the KPF on every frame, AOT propagated from frame 0
  ar = A.plan_rows("AR", {"rcpg": "x"})
  assert [(r.model, r.control_points) for r in ar] == [
      ("kpf_finetune+aip_4layer", "rcpg"), ("kpf_finetune+aip_4layer", "every_frame"),
      ("kpf_finetune+aot", "first_frame")]
  assert len({r.method for r in ar}) == 3


def test_rows_take_their_figures_from_their_own_method():
  summaries = {"a": {"subsets": {"all": {"J": 0.5, "F": 0.6, "alignment_rate": 0.7},
                                 "keyframes": {"J": 0.9, "F": 0.8, "alignment_rate": 1.0},
                                 "normal": {"J": 0.2, "F": 0.3, "alignment_rate": 0.4}}}}
  from coprop_jax.experiments import recipes
  t6 = A.plan_rows("6", {})
  cols = recipes.table("6").columns
  from coprop_jax.experiments.runner import row_figures
  assert row_figures(t6[0], summaries["a"], cols) == {"J": 0.9, "F": 0.8, "Align.": 1.0}
  assert row_figures(t6[1], summaries["a"], cols) == {"J": 0.2, "F": 0.3, "Align.": 0.4}
  md = A.markdown("6", t6, {r.name: row_figures(r, summaries["a"], cols) for r in t6}, "note")
  assert "| Keyframes | 90.00 | 80.00 | 100.00 | kpf_finetune+aip_4layer |" in md
  assert "| Normal frames | 20.00 | 30.00 | 40.00 |" in md


def test_finetune_without_control_points_is_refused_before_anything_is_written(tmp_path):
  from coprop_jax.train import trainer
  from coprop_jax.utils.config import ConfigError
  c = load_config(SPEC.replace("runlocal=True", "runlocal=True,stage=kpf_finetune"))
  assert c.data.control_points_file == ""
  with pytest.raises(ConfigError, match="data.control_points_file"):
    trainer.train_and_evaluate(c, str(tmp_path / "ft"))
  assert not (tmp_path / "ft").exists()
  # the ablation gives its fine-tune the GT rule's control points of the train split
  f = A.run_config(SPEC, [], A.RUNS["kpf_finetune"], tmp_path)
  assert f.data.control_points_file == str(tmp_path / "control_points" / "gt_train.jsonl")


def test_run_configs_reuse_and_refusal(tmp_path):
  c = A.run_config(SPEC, ["--config.train.num_steps=7"], A.RUNS["kpf_finetune"], tmp_path)
  assert c.train.stage == "kpf_finetune" and c.train.num_steps == 7
  assert c.train.init_from == str(tmp_path / "runs" / "kpf" / "checkpoints")
  assert c.data.manual_dir == str(tmp_path / "data" / "synthetic")      # one data build for all runs
  p = A.run_config(SPEC, [], A.RUNS["aot"], tmp_path)
  assert p.train.stage == "propagator" and p.propagator.audio_insert_levels == ()
  assert p.train.lr_schedule == "poly"                                   # coprop.py's stage-2 recipe
  d = tmp_path / "runs" / "kpf"
  k = A.run_config(SPEC, [], A.RUNS["kpf"], tmp_path)
  assert not A.run_is_done(k, d)
  d.mkdir(parents=True)
  from coprop_jax.train.trainer import save_config
  save_config(k, str(d), [])
  assert not A.run_is_done(k, d)                                         # started, not finished
  (d / "train_summary.json").write_text(json.dumps({"final_step": k.train.num_steps}))
  assert A.run_is_done(k, d)
  other = A.run_config(SPEC, ["--config.keyframe.d_model=16"], A.RUNS["kpf"], tmp_path)
  with pytest.raises(A.AblateError, match="keyframe.d_model: 32 -> 16"):
    A.run_is_done(other, d)
  assert A.main(["--table", "2b", "--config", SPEC, "--workdir", str(tmp_path),
                 "--rcpg_control_points", "2step=x.jsonl"]) == 1


TINY = ["--config.train.num_steps=2", "--config.train.checkpoint_every=2", "--config.train.log_every=1",
        "--config.eval.every_steps=0", "--config.data.synthetic.num_videos=6",
        "--config.propagator.d_model=32", "--config.propagator.ffn_dim=64",
        "--config.propagator.num_audio_tokens=2"]


@pytest.mark.slow  # 30 min on the loaded 2-core box: three tiny trainings, two evaluations
def test_table_2b_end_to_end_then_reused(tmp_path, capsys):
  wd = tmp_path / "abl"
  assert A.main(["--table", "2b", "--config", SPEC, "--workdir", str(wd), "--batch_size", "2", *TINY]) == 0
  res = json.loads((wd / "table_2b.json").read_text())
  assert res["runs"] == {"kpf": "trained", "kpf_finetune": "trained", "aip_4layer": "trained"}
  rows = {r["name"]: r for r in res["rows"]}
  for n in ("cp_cosine", "cp_gt"):
    f = rows[n]["figures"]
    assert 0 <= f["J"] <= 1 and 0 <= f["F"] <= 1 and 0 <= f["alignment_rate"] <= 1
  for n in ("cp_1step", "cp_3step", "cp_rcpg"):
    assert rows[n]["figures"] is None and rows[n]["skip"].startswith("not run")
  md = (wd / "table_2b.md").read_text()
  assert md.count("not run: needs a local audio LLM") == 3 and "| cosine |" in md
  assert (wd / "eval_2b" / "comparison.md").is_file()
  _rows_match_their_own_predictions(wd, "2b", res)
  # again: every run and the model reused, the same figures
  assert A.main(["--table", "2b", "--config", SPEC, "--workdir", str(wd), "--batch_size", "2", *TINY]) == 0
  again = json.loads((wd / "table_2b.json").read_text())
  assert set(again["runs"].values()) == {"reused"}
  assert [r["figures"] for r in again["rows"]] == [r["figures"] for r in res["rows"]]


def _rows_match_their_own_predictions(wd, table, res):
  """Each row's J is the mean over videos of its own method's per-video J (the evaluator's
  figures from that method's masks), over the row's frame subset."""
  import csv
  for r in res["rows"]:
    if r["figures"] is None:
      continue
    with open(wd / f"eval_{table}" / f"{r['method']}.per_video.csv") as fh:
      vids = list(csv.DictReader(fh))
    col = "J" if r["subset"] == "all" else f"J_{r['subset']}"
    vals = [float(v[col]) for v in vids if v[col] != ""]
    assert vals and abs(sum(vals) / len(vals) - r["figures"]["J"]) < 1e-5, (r["name"], col)


@pytest.mark.slow  # reuses nothing from the test above: the AR table's four runs, tiny
def test_tables_6_and_ar_end_to_end(tmp_path):
  wd = tmp_path / "abl"
  for t in ("AR", "6"):
    assert A.main(["--table", t, "--config", SPEC, "--workdir", str(wd), "--batch_size", "2", *TINY]) == 0
    res = json.loads((wd / f"table_{t}.json").read_text())
    md = (wd / f"table_{t}.md").read_text()
    header = md.splitlines()[0]
    if t == "AR":
      assert header == "| Method | Align. | Align. MOC | J | Model |"
      assert set(res["runs"]) == {"kpf", "kpf_finetune", "aip_4layer", "aot"}
    else:
      assert header == "| Frames | J | F | Align. | Model |"
      assert set(res["runs"].values()) == {"reused"}
      assert len({r["method"] for r in res["rows"]}) == 1
    assert len(md.splitlines()) >= 2 + len(res["rows"])
    _rows_match_their_own_predictions(wd, t, res)


def test_table_3_statistics_from_the_generator(tmp_path, capsys):
  """Table 3 on a synthetic moc_ambiguous tree: videos per split, categories per video, the
  share of videos that change source, each recomputed here from the generator's clips."""
  import numpy as np
  from data_pipelines import moc_synth
  spec = SPEC
  ov = ["--config.data.synthetic.num_videos=10", "--config.data.synthetic.generator=moc_ambiguous",
        "--config.data.image_size=32"]
  assert A.main(["--table", "3", "--config", spec, "--workdir", str(tmp_path), "--split", "all", *ov]) == 0
  res = json.loads((tmp_path / "table_3.json").read_text())
  clips = list(moc_synth.clip_stream("ms3", 10, 32, 0, clip_fn=moc_synth.make_clip_ambiguous))
  for split in ("train", "val", "test"):
    mine = [c for s, c in clips if s == split]
    row = next(r for r in res["rows"] if r["split"] == split and r["subset"] == "all")
    assert row["videos"] == len(mine)
    cats = [int(c["sounding"].any(0).sum()) for c in mine]
    assert abs(row["categories_per_video"] - np.mean(cats)) < 1e-9
    changing = [bool(c["control_points"][1:].any()) for c in mine]
    assert abs(row["changing_share"] - np.mean(changing)) < 1e-9
    moc = next(r for r in res["rows"] if r["split"] == split and r["subset"] != "all")
    assert moc["videos"] == sum(changing)
  md = (tmp_path / "table_3.md").read_text()
  assert md.startswith("| Split | Subset | Videos |") and "not the paper's 17" in md
  assert "moc_ambiguous generator" in capsys.readouterr().out
