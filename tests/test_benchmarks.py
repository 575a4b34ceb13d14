"""Every script in benchmarks/ runs: each entry point called at tiny sizes, its JSON lines parsed.

So an API change that breaks a benchmark fails here instead of silently."""
import importlib
import json
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def run_main(name, argv, capsys):
  """benchmarks/<name>.py main(argv) -> the JSON objects it printed (at least one)."""
  if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
  mod = importlib.import_module(name)
  capsys.readouterr()
  mod.main(argv)
  out = capsys.readouterr().out
  recs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
  assert recs, f"benchmarks/{name}.py printed no JSON line:\n{out[-2000:]}"
  return recs


def test_train_step_propagator_old_and_new_and_profile_summary(tmp_path, capsys):
  argv = ["--stage", "propagator", "--preset", "tiny", "--size", "32", "--frames", "2",
          "--steps", "1", "--fast_compile", "--matmul_n", "128", "--encoder", "standin"]
  recs = run_main("train_step", argv + ["--formulation", "both", "--profile", str(tmp_path)], capsys)
  old, new = [r for r in recs if r["what"] == "propagator_train_step"]
  assert (old["formulation"], new["formulation"]) == ("old", "new")
  assert abs(old["loss"] - new["loss"]) < 1e-4 * abs(old["loss"])   # same numbers
  groups = run_main("profile_summary", [str(tmp_path), "--top", "3"], capsys)
  assert len(groups) >= 2


@pytest.mark.slow   # PVT-v2 KPF step compile, ~40 s
def test_train_step_kpf(capsys):
  recs = run_main("train_step", ["--preset", "tiny", "--size", "32", "--batch", "1", "--steps", "1",
                                 "--fast_compile", "--matmul_n", "128"], capsys)
  assert recs[-1]["what"] == "kpf_train_step" and recs[-1]["step_s"] > 0


def test_propagator_inference(capsys):
  recs = run_main("propagator", ["--frames", "2", "--size", "32", "--layers", "1", "--d_model", "32",
                                 "--heads", "4", "--ffn", "64", "--run_frames", "2", "--encoder",
                                 "fake"], capsys)
  assert recs[0]["frames_per_s"] > 0


def test_inference(capsys):
  recs = run_main("inference", ["--lengths", "3", "--size", "32", "--keyframe_every", "2",
                                "--repeats", "1"], capsys)
  assert recs


@pytest.mark.slow   # PVT-v2 KPF step compile, ~30 s
def test_keyframe(capsys):
  run_main("keyframe", ["--size", "32", "--batch", "1", "--d_model", "32", "--steps", "1",
                        "--depths", "1,1,1,1", "--layers", "1", "--fast_compile"], capsys)


def test_encoders_and_pvt_v2(capsys):
  pytest.importorskip("torch")
  run_main("encoders", ["--models", "mobilenet_v2", "--batch", "1", "--size", "32", "--iters", "1",
                        "--warmup", "0", "--torch-device", "cpu"], capsys)
  run_main("pvt_v2", ["--variants", "b0", "--batch", "1", "--size", "32", "--iters", "1",
                      "--warmup", "0", "--torch-device", "none"], capsys)


def test_eval_report_and_rcpg(capsys):
  run_main("eval_report", ["--videos", "1", "--size", "32"], capsys)
  run_main("rcpg", ["--clips", "2", "--frames", "4", "--size", "32", "--thresholds", "0.3",
                    "--layouts", "ms3"], capsys)


def test_input_pipeline(tmp_path, capsys):
  pytest.importorskip("grain")
  run_main("input_pipeline", ["--num_videos", "4", "--size", "32", "--image_size", "32",
                              "--batch_size", "2", "--steps", "1", "--workdir", str(tmp_path)], capsys)


def test_media_stream(tmp_path, capsys):
  pytest.importorskip("av")
  run_main("media_stream", ["--seconds", "1", "--fps", "4", "--frame_size", "32x32", "--size", "32",
                            "--chunk", "2", "--workdir", str(tmp_path)], capsys)


@pytest.mark.slow   # trains a tiny propagator, then segments
def test_memory_ring(capsys):
  run_main("memory_ring", ["--steps", "2", "--batch", "1", "--train_clips", "2", "--size", "32",
                           "--clips", "1", "--frames", "6", "--slots", "1", "--mem_gap", "2"], capsys)


@pytest.mark.slow   # the predict CLI in a child process (KPF + propagator compiles)
def test_predict_memory(capsys):
  pytest.importorskip("av")
  run_main("predict_memory", ["--lengths", "2", "--chunk_frames", "2"], capsys)
