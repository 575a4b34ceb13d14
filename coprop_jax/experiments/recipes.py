"""The runs and rows of every experiment, as data (ml_collections); `runner.py` executes them.

Ablation runs (`ablation_runs()`): name -> {stage, insert (propagator runs: a key of
`coprop_jax.models.propagator.INSERT_VARIANTS`), init_from (the run whose checkpoints start it)}.
Each run's config is the experiment's `--config` with `stage=` / `insert=` set in its config string.

Tables (`table(t)`): headers (the leading columns), columns ([label, subset, metric]: a figure of
`coprop_jax.evaluate`'s summary, subset "all" | "keyframes" | "normal" | "moc"), rows ({name,
cells, keyframe run, propagator run, control_points, subset}) and a note. `control_points`: "gt"
(the GT rule, oracle), "cosine", "every_frame" (KPF only), "first_frame" (propagation from frame
0, AOT's own setting), an audio-LLM method (1step / 3step / rcpg: from --rcpg_control_points) or
"rcpg_or_gt" (RCPG's file when given, else the GT rule). A row's `subset` picks which frames its
figures cover ("all" unless the table compares subsets: Table 6).

Demo (`demo_runs()`, `demo_methods()`): the demo's training runs, keyed by the `demo.*_steps`
field that sets their length, and the methods of its comparison table.
"""
from __future__ import annotations

import ml_collections

TABLES = ("2a", "2b", "5", "6", "AR")
LLM_METHODS = ("1step", "3step", "rcpg")


def ablation_runs() -> ml_collections.ConfigDict:
  run = lambda stage, insert="", init_from="": dict(stage=stage, insert=insert, init_from=init_from)
  return ml_collections.ConfigDict(dict(
      kpf=run("kpf"),
      kpf_finetune=run("kpf_finetune", init_from="kpf"),
      aip_4layer=run("propagator", "4layer"),
      aip_1layer=run("propagator", "1layer"),
      aot=run("propagator", "aot"),
  ))


def _row(name, cells, keyframe, propagator, control_points, subset="all"):
  return dict(name=name, cells=list(cells), keyframe=keyframe, propagator=propagator,
              control_points=control_points, subset=subset)


JFA = [["J", "all", "J"], ["F", "all", "F"], ["Align.", "all", "alignment_rate"]]


def table(t: str) -> ml_collections.ConfigDict:
  """The recipe of paper table `t` (one of TABLES)."""
  mark = lambda b: "✓" if b else "✗"
  if t == "2a":
    # KPF off = the stage-1 KPF without the keyframe fine-tune; RCPG off = cosine control points;
    # AIP off = plain AOT (no audio anywhere).
    rows = [_row(f"kpf{k}_rcpg{r}_aip{a}", (mark(k), mark(r), mark(a)),
                 "kpf_finetune" if k else "kpf", "aip_4layer" if a else "aot",
                 "rcpg" if r else "cosine")
            for k, r, a in ((0, 0, 0), (1, 0, 0), (1, 1, 0), (1, 1, 1))]
    return ml_collections.ConfigDict(dict(headers=["KPF", "RCPG", "AIP"], columns=JFA, rows=rows,
                                          note=""))
  if t == "2b":
    # not in the paper: the cosine threshold (rcpg.cosine_threshold, 0.8) is ours.
    rows = [_row(f"cp_{cp}", (cp,), "kpf_finetune", "aip_4layer", cp)
            for cp in ("cosine", "1step", "3step", "rcpg", "gt")]
    return ml_collections.ConfigDict(dict(headers=["Control points"], columns=JFA, rows=rows,
                                          note=""))
  if t == "5":
    # not in the paper: it does not say which control points Table 5 used; here RCPG's when its
    # file is given, else the GT rule (oracle), the same for every row.
    rows = [_row(f"insert_{run}", (label,), "kpf_finetune", run, "rcpg_or_gt")
            for label, run in (("AOT", "aot"), ("1-layer", "aip_1layer"), ("4-layer", "aip_4layer"))]
    return ml_collections.ConfigDict(dict(
        headers=["Propagator"], columns=JFA, rows=rows,
        note="4-layer inserts audio at the three decoder skips and the LSTT input; 1-layer at the "
             "LSTT input only (levels 0-2 reach the decoder only, as AOT's design)."))
  if t == "6":
    rows = [_row(f"frames_{s}", (label,), "kpf_finetune", "aip_4layer", "rcpg_or_gt", subset=s)
            for label, s in (("Keyframes", "keyframes"), ("Normal frames", "normal"))]
    return ml_collections.ConfigDict(dict(
        headers=["Frames"], columns=[["J", "", "J"], ["F", "", "F"], ["Align.", "", "alignment_rate"]],
        rows=rows, note="Keyframes: segmented by the KPF; normal frames: propagated."))
  if t == "AR":
    rows = [_row("coprop", ("Co-Prop",), "kpf_finetune", "aip_4layer", "rcpg_or_gt"),
            _row("kpf_only", ("KPF on every frame",), "kpf_finetune", "aip_4layer", "every_frame"),
            _row("aot_first_frame", ("AOT from frame 0",), "kpf_finetune", "aot", "first_frame")]
    return ml_collections.ConfigDict(dict(
        headers=["Method"],
        columns=[["Align.", "all", "alignment_rate"], ["Align. MOC", "moc", "alignment_rate"],
                 ["J", "all", "J"]],
        rows=rows, note="Alignment Rate (paper Fig. 3): the share of frames whose segmented "
                        "object is the sounding one. MOC: videos whose sounding set changes by "
                        "the GT rule (not the paper's 17 videos, which it does not list)."))
  raise ValueError(f"table {t!r}: expected one of {', '.join(TABLES)}")


def demo_runs() -> list[ml_collections.ConfigDict]:
  """The demo's training runs in training order (a list: ConfigDict sorts its keys): name, stage, the config field giving its steps (`demo.*`), the run it
  starts from, per-section overrides, the propagator insert variant, and whether it is the
  tracking prior (trained on its own "tracking" data; both stage-2 runs start from it)."""
  run = lambda name, stage, steps, init_from="", insert="", overrides=None, prior=False: \
      ml_collections.ConfigDict(dict(name=name, stage=stage, steps=steps, init_from=init_from,
                                     insert=insert, overrides=overrides or {}, prior=prior))
  return [
      run("kpf", "kpf", "demo.kpf_steps"),
      run("kpf_finetune", "kpf_finetune", "demo.finetune_steps", init_from="kpf"),
      run("kpf_blind", "kpf", "demo.blind_steps", overrides={"keyframe": {"audio_mode": "zero"}}),
      run("propagator_pretrain", "propagator", "demo.pretrain_steps", insert="aot", prior=True),
      run("propagator", "propagator", "demo.propagator_steps", insert="4layer"),
      run("propagator_aot", "propagator", "demo.propagator_steps", insert="aot"),
  ]


def demo_methods() -> list[dict]:
  """The demo's comparison: name, model ("model" = fine-tuned KPF + audio-insert propagator,
  "model_aot" = the same KPF + plain-AOT propagator, "blind" = the audio-blind KPF), keyframes
  ("kpf"), control points ("eval" = the demo's rcpg.method file, "truth" = the generator's,
  "every_frame", "first_frame") and whether the audio is zeroed."""
  m = lambda name, model, cp, zero_audio=False: dict(name=name, model=model, keyframes="kpf",
                                                     control_points=cp, zero_audio=zero_audio)
  return [
      m("coprop", "model", "eval"),
      m("coprop_gt_cp", "model", "truth"),
      m("kpf_only", "model", "every_frame"),
      m("kpf_blind", "blind", "every_frame", zero_audio=True),
      # not in the paper: "plain AOT propagation" here is AOT's own setting (the first frame's
      # mask propagated through the clip, no audio, no keyframes); the paper's Table 5 "AOT" row
      # (Co-Prop's keyframes + a plain-AOT propagator) is coprop_aot.
      m("aot", "model_aot", "first_frame"),
      m("coprop_aot", "model_aot", "eval"),
  ]
