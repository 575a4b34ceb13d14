"""`python -m coprop_jax.predict` end to end on media written here (PyAV mp4 with muxed AAC audio;
a frames folder + WAV), and its bad-input errors.

One module-scoped `Predictor` of the tiny random model directory (tests/predict_helpers.py) is
shared by every run, so its executables (VGGish, one KPF bucket, one propagation scan for
4-frame chunks) compile once; the 5-frame clips span two chunks (the memory is carried).
"""
import json
import pathlib
import re
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

from coprop_jax import media
from coprop_jax import predict as P
from coprop_jax.train.state import FAST_COMPILE
from predict_helpers import (ROOT, subprocess_env, tiny_model_dir, write_frames_dir, write_mp4,
                             write_wav)

T, H, W = 5, 48, 64


def clip_frames(seed=0):
  """uint8 [T, 48, 64, 3]: a bright square moving over a plain background that changes colour."""
  rng = np.random.default_rng(seed)
  f = np.zeros((T, H, W, 3), np.uint8)
  for i in range(T):
    f[i] = rng.integers(0, 120, 3)
    f[i, 12:36, 6 + 8 * i:30 + 8 * i] = (250, 240, 40)
  return f


def clip_audio(seconds=T, rate=16000):
  """A 440 Hz tone that switches to a chirp-like 1.5 kHz tone + noise at 2 s."""
  t = np.arange(seconds * rate) / rate
  rng = np.random.default_rng(1)
  return np.where(t < 2, 0.4 * np.sin(2 * np.pi * 440 * t),
                  0.3 * np.sin(2 * np.pi * 1500 * t) + 0.05 * rng.normal(size=t.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  model = tiny_model_dir(tmp_path_factory)
  pred = P.Predictor.load(model, chunk_frames=4, keyframe_batch=1, compiler_options=FAST_COMPILE)
  d = tmp_path_factory.mktemp("predict_media")
  frames, audio = clip_frames(), clip_audio()
  return dict(model=model, pred=pred, dir=d, frames=frames, audio=audio,
              mp4=write_mp4(d / "clip.mp4", frames, audio),
              mute=write_mp4(d / "mute.mp4", frames[:2]),
              silent=write_mp4(d / "silent.mp4", frames[:2], np.zeros(2 * 16000, np.float32)),
              wav=write_wav(d / "clip.wav", audio),
              frames_dir=write_frames_dir(d / "frames", frames))


def cosine_reference(emb, threshold):
  """From the definition: frame 0 is a keyframe; frame t when cos(e_t, e_{t-1}) < threshold."""
  flags = [1]
  for t in range(1, len(emb)):
    a, b = emb[t].astype(np.float64), emb[t - 1].astype(np.float64)
    flags.append(int(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) < threshold))
  return np.array(flags)


def read_pngs(d):
  return np.stack([np.asarray(Image.open(p)) for p in sorted(pathlib.Path(d).glob("*.png"))])


def check_outputs(out, summary, pred, clip, flags):
  """OUT's files against the pipeline run on the same decoded clip with the same control points."""
  ref = pred.segment(clip.frames, clip.audio_logmel, flags)
  want = media.resize_masks(ref["masks"], (H, W)).astype(np.uint8) * 255
  pngs = read_pngs(out / "masks")
  assert pngs.shape == (T, H, W) and set(np.unique(pngs)) <= {0, 255}
  np.testing.assert_array_equal(pngs, want)
  on_disk = json.loads((out / "summary.json").read_text())
  assert on_disk == json.loads(json.dumps(summary))
  assert summary["num_frames"] == T and summary["keyframes"] == np.flatnonzero(flags).tolist()
  assert summary["control_points"]["flags"] == list(flags)
  np.testing.assert_allclose(summary["timestamps"], clip.timestamps, atol=1e-3)
  assert [f["segmented"] for f in summary["frames"]] == [bool(m.any()) for m in pngs]
  assert summary["input"]["original_size"] == [H, W] and summary["model"]["kind"] == "binary"
  with av.open(str(out / summary["files"]["overlay_video"])) as c:
    decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
  assert len(decoded) == T and decoded[0].shape == (H, W, 3)
  for name in ["overlay_grid.png"] + summary["files"]["timeline"]:
    assert Image.open(out / name).size[0] > 100
  assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temp left


def test_predict_mp4_with_its_own_audio_track(env, tmp_path):
  """Cosine control points (the default) from the model's VGGish on the mp4's AAC track, checked
  against the definition; masks, summary, overlay video and pictures against the pipeline."""
  pred = env["pred"]
  out = tmp_path / "out"
  summary = P.predict(env["model"], out, video=env["mp4"], predictor=pred, progress=False)
  clip = media.read_clip(env["mp4"], size=pred.image_size)
  flags = cosine_reference(pred.embed(clip.audio_logmel), pred.config.rcpg.cosine_threshold)
  assert summary["control_points"]["source"] == "cosine"
  check_outputs(out, summary, pred, clip, flags)
  assert pred.segmenter.propagate.jitted._cache_size() == 1   # every chunk one executable


def test_predict_frames_dir_wav_and_control_points_file(env, tmp_path):
  """A frames folder + WAV with an RCPG JSONL record (keyframe inside the second chunk), a GIF
  overlay; --force replaces a previous output only when the new one is complete."""
  pred = env["pred"]
  cp = tmp_path / "cp.jsonl"
  flags = np.array([1, 0, 0, 0, 1])
  cp.write_text(json.dumps({"video_id": "other", "flags": [1, 0]}) + "\n"
                + json.dumps({"video_id": "frames", "flags": flags.tolist(), "method": "rcpg"}) + "\n")
  out = tmp_path / "out"
  out.mkdir()
  (out / "summary.json").write_text("{}")
  kw = dict(frames_dir=env["frames_dir"], audio=env["wav"], control_points=cp, predictor=pred,
            overlay="gif", progress=False)
  with pytest.raises(FileExistsError, match="already exists; pass --force"):
    P.predict(env["model"], out, **kw)
  summary = P.predict(env["model"], out, force=True, **kw)
  clip = media.read_clip(env["frames_dir"], env["wav"], size=pred.image_size)
  assert summary["control_points"]["source"] == "file" and summary["input"]["kind"] == "frames"
  assert summary["files"]["overlay_video"] == "overlay.gif"
  check_outputs(out, summary, pred, clip, flags)
  # An interrupted run (here: while writing the pictures) leaves the old OUT as it was.
  before = (out / "summary.json").read_text()
  orig = P._Outputs.close
  try:
    P._Outputs.close = lambda self: (_ for _ in ()).throw(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
      P.predict(env["model"], out, force=True, **kw)
  finally:
    P._Outputs.close = orig
  assert (out / "summary.json").read_text() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["cp.jsonl", "out"]


def run_main(capsys, argv):
  rc = P.main(argv + ["--no_progress"])
  err = capsys.readouterr().err.strip()
  return rc, err


def test_bad_inputs_one_line_error_exit_1(env, tmp_path, capsys):
  """Each bad input: exit status 1, one line 'error: ...' naming the file, OUT not created."""
  d, model = env["dir"], str(env["model"])
  junk = tmp_path / "junk.mp4"
  junk.write_bytes(np.random.default_rng(0).bytes(4000))
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  corrupt = tmp_path / "corrupt.wav"
  corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + np.random.default_rng(1).bytes(200))
  silent_wav = write_wav(tmp_path / "silent.wav", np.zeros(T * 16000))
  out = tmp_path / "out"
  cases = [
      (["--video", str(junk)], f"video {junk}: not a readable"),
      (["--video", str(empty)], f"video {empty}: empty file"),
      (["--video", str(env["mute"])], f"{env['mute']}: has no audio track"),
      (["--frames_dir", str(env["frames_dir"]), "--audio", str(corrupt)], f"{corrupt}: not a readable audio"),
      (["--video", str(env["silent"])], f"{env['silent']}: .*silent"),
      (["--frames_dir", str(env["frames_dir"]), "--audio", str(silent_wav)], f"{silent_wav}: .*silent"),
      (["--frames_dir", str(env["frames_dir"])], "needs --audio FILE"),
      (["--video", str(env["mp4"]), "--control_points", str(tmp_path / "nope.jsonl")], "nope.jsonl: does not exist"),
      (["--video", str(env["mp4"]), "--control_points_method", "qwen"], "give --qwen_model DIR"),
  ]
  for args, want in cases:
    rc, err = run_main(capsys, ["--checkpoint", model, "--out", str(out)] + args)
    assert rc == 1 and "\n" not in err and err.startswith("error: ") and re.search(want, err), (args, err)
    assert not out.exists()
  # Checkpoints: missing, not a model directory, a model of another config (--config), a
  # directory whose weights are not those of its config.json.
  other = f"{ROOT}/configs/coprop.py:dataset=ms3"
  bad_model = tmp_path / "bad_model"
  bad_model.mkdir()
  for f in ("model.json", "params"):
    (bad_model / f).symlink_to(env["model"] / f)
  cfg = json.loads((env["model"] / "config.json").read_text())
  cfg["propagator"]["d_model"] *= 2
  (bad_model / "config.json").write_text(json.dumps(cfg))
  for ckpt, extra, want in [
      (tmp_path / "missing", [], "missing: does not exist"),
      (d, [], "not a Co-Prop model directory"),
      (env["model"], ["--config", other], "was made with another config; fields that differ"),
      (bad_model, [], "bad_model"),
  ]:
    rc, err = run_main(capsys, ["--checkpoint", str(ckpt), "--out", str(out), "--video", str(env["mp4"])]
                       + extra)
    assert rc == 1 and "\n" not in err and err.startswith("error: ") and re.search(want, err), (ckpt, err)
    assert not out.exists()


def test_cli_process_reports_one_line_and_status_1(env, tmp_path):
  """The real command: no traceback, one stderr line, exit status 1."""
  r = subprocess.run([sys.executable, "-m", "coprop_jax.predict", "--checkpoint", str(tmp_path / "nomodel"),
                      "--video", str(env["mp4"]), "--out", str(tmp_path / "o")], capture_output=True,
                     text=True, env=subprocess_env(), cwd=tmp_path, timeout=120)
  assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
  assert r.stderr.strip().splitlines() == [f"error: model directory {tmp_path / 'nomodel'}: does not exist"]


@pytest.mark.slow  # ~40 s: a fresh process loads the model and compiles everything
def test_cli_end_to_end_subprocess(env, tmp_path):
  out = tmp_path / "seg"
  r = subprocess.run([sys.executable, "-m", "coprop_jax.predict", "--checkpoint", str(env["model"]),
                      "--video", str(env["mp4"]), "--out", str(out), "--chunk_frames", "2"],
                     capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=600)
  assert r.returncode == 0, r.stderr
  assert "predict: 100%" in r.stderr and "5/5" in r.stderr        # the progress bar over frames
  summary = json.loads((out / "summary.json").read_text())
  assert summary["num_frames"] == T and summary["chunk_frames"] == 2
  assert len(list((out / "masks").glob("*.png"))) == T
  assert f"summary        {out / 'summary.json'}" in r.stdout


class ScriptedPrompter:
  """Stands in for `rcpg.qwen.QwenPrompter` (same `run` contract): replies with scripted flags
  per window start (None = an unparseable reply) and records what it was given."""
  model_name = "scripted"

  def __init__(self, replies):
    self.replies, self.calls = replies, []

  def run(self, videos):
    self.calls += videos
    return [dict(flags=self.replies[v["video_id"]], raw_replies=["..."], category="dog", examples=[])
            for v in videos]


def test_qwen_control_points_windows_context_and_fallback(env, tmp_path):
  """--control_points_method qwen on windows of 2 frames: each window after the first is given
  the previous frame's second of audio as context (its flag dropped), a keyframe is forced only at
  frame 0, and an unparseable reply falls back to the config's rule (first_frame: no keyframe)."""
  pred = env["pred"]
  q = ScriptedPrompter({"clip@0": [1, 0], "clip@2": [1, 0, 1], "clip@4": None})
  summary = P.predict(env["model"], tmp_path / "out", video=env["mp4"], control_points_method="qwen",
                      prompter=q, qwen_window=2, predictor=pred, progress=False)
  assert [v["video_id"] for v in q.calls] == ["clip@0", "clip@2", "clip@4"]
  assert [v["num_frames"] for v in q.calls] == [2, 3, 2]                  # context frame + window
  assert [len(v["waveform"]) for v in q.calls] == [32000, 48000, 32000]   # 1 s of 16 kHz per frame
  clip = media.read_clip(env["mp4"], size=pred.image_size)
  np.testing.assert_array_equal(q.calls[1]["waveform"], clip.waveform[16000:64000])
  cp = summary["control_points"]
  assert cp["flags"] == [1, 0, 0, 1, 0] and cp["source"] == "3step" and cp["fallbacks"] == 1
  assert [w["fallback"] for w in cp["windows"]] == [None, None, "first_frame"]


def test_model_trained_on_a_weight_free_embedding_hears_through_it(rng):
  """The demo's models (data.audio_embed="logmel_stats") hold no VGGish: predict embeds the audio
  with the same weight-free embedding the model was trained on (checked against its definition:
  per mel band, the time mean above the quietest band's mean, then the time std)."""
  from coprop_jax import model_io
  from predict_helpers import tiny_config
  from propagator_helpers import random_like
  cfg = tiny_config("data.audio_embed=logmel_stats")
  params = random_like(model_io.expected_shapes(cfg, cfg.data.image_size), 0)
  assert "vggish" not in params["keyframe"]["params"]
  p = P.Predictor(cfg, params, image_size=cfg.data.image_size)
  lm = rng.normal(size=(3, 96, 64)).astype(np.float32)
  mean = lm.mean(axis=1)
  ref = np.concatenate([mean - mean.min(axis=1, keepdims=True), lm.std(axis=1)], axis=1)
  np.testing.assert_allclose(p.embed(lm), ref, rtol=1e-5, atol=1e-5)
  assert p.embed(np.zeros((0, 96, 64), np.float32)).shape == (0, 128)
  cfg_vgg = tiny_config()
  with pytest.raises(P.PredictError, match="no VGGish"):
    P.Predictor(cfg_vgg, params, image_size=cfg.data.image_size)
