"""coprop_jax.media: video / frames folder + audio reading, chunked reading, writers, bad input.

References are computed from the definitions in the test (AVSBench's frame-index formula, the
analytic waveform written into the file, scipy's polyphase resampler), not by the code under test.
"""
import pathlib

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from coprop_jax import audio as audio_lib
from coprop_jax import media

SRC_FPS = 10
SECONDS = 5
W, H = 80, 60


def _frame_value(i):  # frame i of the written videos is a flat grey of this value
  return 20 + 4 * i


def _tone(t, channel):
  return (0.3 * np.sin(2 * np.pi * 440 * t) if channel == 0 else 0.2 * np.sin(2 * np.pi * 1300 * t))


def write_video(path, *, seconds=SECONDS, fps=SRC_FPS, acodec="aac", rate=44100, channels=2,
                audio_seconds=None, audio_fn=None, vcodec="libx264", audio_start=0):
  """A video of flat grey frames (value 20 + 4 i) and, unless acodec is None, an audio track."""
  c = av.open(str(path), "w")
  v = c.add_stream(vcodec, rate=fps)
  v.width, v.height, v.pix_fmt = W, H, "yuv420p"
  a = None
  if acodec:
    a = c.add_stream(acodec, rate=rate)
    a.layout = "stereo" if channels == 2 else "mono"
  for i in range(seconds * fps):
    f = av.VideoFrame.from_ndarray(np.full((H, W, 3), _frame_value(i), np.uint8), format="rgb24")
    for p in v.encode(f):
      c.mux(p)
  for p in v.encode():
    c.mux(p)
  if a is not None:
    n = int(round((audio_seconds or seconds) * rate))
    t = np.arange(n) / rate
    x = np.stack([audio_fn(t, ch) if audio_fn else _tone(t, ch) for ch in range(channels)]).astype(np.float32)
    for s in range(0, n, 1024):
      seg = x[:, s:s + 1024]
      if acodec == "pcm_s16le":
        fr = av.AudioFrame.from_ndarray(np.round(seg.T * 32767).astype(np.int16).reshape(1, -1),
                                        format="s16", layout=a.layout.name)
      else:
        fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(seg), format="fltp", layout=a.layout.name)
      fr.sample_rate, fr.pts = rate, s + int(audio_start * rate)
      for p in a.encode(fr):
        c.mux(p)
    for p in a.encode():
      c.mux(p)
  c.close()
  return pathlib.Path(path)


def write_frames_dir(d, n, size=(8, 8), names="{}.png"):
  d = pathlib.Path(d)
  d.mkdir(parents=True, exist_ok=True)
  for i in range(n):
    Image.fromarray(np.full(size + (3,), (7 * i) % 256, np.uint8)).save(d / names.format(i))
  return d


def write_wav(path, x, rate=16000):
  sf.write(str(path), x, rate, subtype="PCM_16")
  return pathlib.Path(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("media")
  return dict(
      mp4=write_video(d / "clip.mp4"),
      mkv_short_audio=write_video(d / "short.mkv", acodec="pcm_s16le", rate=16000, channels=1,
                                  audio_seconds=4.5),
      mkv_long_audio=write_video(d / "long.mkv", acodec="pcm_s16le", rate=16000, channels=1,
                                 audio_seconds=6),
      late_audio=write_video(d / "late.mkv", acodec="pcm_s16le", rate=16000, channels=1,
                             audio_seconds=3, audio_start=0.5),
      no_audio=write_video(d / "mute.mp4", acodec=None),
      silent=write_video(d / "silent.mp4", audio_fn=lambda t, ch: np.zeros_like(t)),
      dir=d)


def _frame_index(frames):  # invert _frame_value (H.264 keeps flat grey within a level or two)
  return np.round((frames.reshape(len(frames), -1).mean(axis=1) - 20) / 4).astype(int)


def test_mp4_roundtrip(files):
  src = media.open_media(files["mp4"], size=32)
  info = src.info
  assert (info.kind, info.num_frames, info.fps, info.source_fps) == ("video", 5, 1.0, 10.0)
  assert info.original_size == (H, W) and info.size == (32, 32)
  assert (info.audio_rate, info.audio_channels, info.audio_path) == (44100, 2, None)
  clip = src.read()
  assert clip.frames.shape == (5, 32, 32, 3) and clip.frames.dtype == np.uint8
  # AVSBench preprocess: of 16 positions per second keep the 16th, index int(l*R + 15/16*R).
  expect = [int(l * SRC_FPS + (15 / 16) * SRC_FPS) for l in range(5)]
  assert _frame_index(clip.frames).tolist() == expect
  np.testing.assert_allclose(clip.timestamps, np.array(expect) / SRC_FPS)
  assert clip.audio_logmel.shape == (5, 96, 64) and clip.audio_logmel.dtype == np.float32
  assert clip.waveform.shape == (5 * 16000,)
  # Down-mixed, resampled audio vs the analytic signal at 16 kHz (AAC: within codec tolerance).
  t = np.arange(5 * 16000) / 16000
  ref = 0.5 * (_tone(t, 0) + _tone(t, 1))
  inner = slice(800, -800)
  err = clip.waveform[inner] - ref[inner]
  assert np.sqrt(np.mean(err ** 2)) < 0.01 * np.sqrt(np.mean(ref ** 2)) + 2e-3, np.abs(err).max()
  ex = clip.example()
  assert ex["video_id"] == "clip" and ex["frame_valid"].all() and ex["frames"] is clip.frames


def test_audio_cut_and_pad_to_frames(files):
  # pcm_s16le: lossless; 4.5 s of audio on a 5 s video -> zeros after 4.5 s; 6 s -> cut at 5 s.
  t = np.arange(6 * 16000) / 16000
  ref = np.round(_tone(t, 0) * 32767) / 32768
  short = media.read_clip(files["mkv_short_audio"], size=None)
  assert short.frames.shape == (5, H, W, 3)
  np.testing.assert_allclose(short.waveform[:72000], ref[:72000], atol=1e-4)
  assert not short.waveform[72000:].any()
  assert short.audio_seconds == pytest.approx(4.5)
  long = media.read_clip(files["mkv_long_audio"], size=None)
  np.testing.assert_allclose(long.waveform, ref[:80000], atol=1e-4)
  np.testing.assert_allclose(long.audio_logmel, audio_lib.waveform_to_frame_patches(ref[:80000], 5),
                             atol=2e-2)


def test_audio_track_placed_by_its_timestamps(files):
  """An audio track starting 0.5 s after the first video frame gets 0.5 s of leading zeros."""
  clip = media.read_clip(files["late_audio"], size=None)
  t = np.arange(3 * 16000) / 16000
  assert not clip.waveform[:8000].any()
  np.testing.assert_allclose(clip.waveform[8000:8000 + 48000], np.round(_tone(t, 0) * 32767) / 32768,
                             atol=1e-4)
  assert not clip.waveform[8000 + 48000:].any()
  chunked = np.concatenate([c.waveform for c in media.open_media(files["late_audio"]).chunks(2)])
  np.testing.assert_array_equal(chunked, clip.waveform)


def test_fps_sampling(files):
  src = media.open_media(files["mp4"], size=None, fps=2)
  assert src.info.num_frames == 10
  clip = src.read()
  assert _frame_index(clip.frames).tolist() == [int((k + 15 / 16) * SRC_FPS / 2) for k in range(10)]
  # fps=0.5: T = round(2.5) = 3 (half-up); the third target (5.875 s) is past the end -> last frame.
  clip = media.read_clip(files["mp4"], size=None, fps=0.5)
  assert _frame_index(clip.frames).tolist() == [int((k + 15 / 16) * SRC_FPS * 2) for k in range(2)] + [49]
  assert media.patch_starts(3, 2).tolist() == [0, 8000, 16000]
  assert media.patch_starts(3, 1).tolist() == [0, 15360, 30720]
  assert media.patch_starts(26, 1)[-2:].tolist() == [24 * 16000, 25 * 16000]


@pytest.mark.parametrize("fps,chunk", [(1, 1), (1, 2), (1, 5), (1, 7), (2, 3), (0.5, 2)])
def test_chunks_equal_read(files, fps, chunk):
  src = media.open_media(files["mp4"], size=24, fps=fps)
  whole = src.read()
  parts = list(src.chunks(chunk))
  assert [p.start for p in parts] == list(range(0, src.info.num_frames, chunk))
  assert all(len(p.frames) <= chunk for p in parts)
  np.testing.assert_array_equal(np.concatenate([p.frames for p in parts]), whole.frames)
  np.testing.assert_array_equal(np.concatenate([p.timestamps for p in parts]), whole.timestamps)
  np.testing.assert_allclose(np.concatenate([p.audio_logmel for p in parts]), whole.audio_logmel, atol=1e-5)
  np.testing.assert_allclose(np.concatenate([p.waveform for p in parts]), whole.waveform, atol=1e-6)


@pytest.mark.parametrize("t_len", [24, 25])
def test_frames_dir_chunks_around_vggish_framing(tmp_path, t_len):
  """T <= 24: AVSBench's contiguous 0.96 s VGGish patches; T = 25: each second's own patch. The
  chunked reader (patches cut one by one) must agree with audio.waveform_to_frame_patches."""
  d = write_frames_dir(tmp_path / "frames", t_len, names="img_{}.jpg")
  rng = np.random.default_rng(t_len)
  x = (0.2 * rng.standard_normal(t_len * 16000 - 3000)).astype(np.float32)
  wav = write_wav(tmp_path / "a.wav", x)
  src = media.open_media(d, wav, size=None)
  whole = src.read()
  ref = audio_lib.waveform_to_frame_patches(sf.read(str(wav), dtype="float32")[0], t_len)
  np.testing.assert_allclose(whole.audio_logmel, ref, atol=1e-6)
  parts = list(src.chunks(4))
  np.testing.assert_allclose(np.concatenate([p.audio_logmel for p in parts]), ref, atol=1e-5)
  # Natural order: img_2 before img_10.
  np.testing.assert_array_equal(whole.frames[:, 0, 0, 0], (7 * np.arange(t_len)) % 256)


def test_frames_dir_matches_avsbench_reader(tmp_path):
  """A synthetic MS3 clip read as a frames folder + WAV gives the AVSBench reader's inputs."""
  from data_pipelines import synthetic
  from data_pipelines.avsbench import readers
  synthetic.write_dataset(tmp_path, "ms3", num_videos=3, size=32, frames=5, seed=1)
  rec = readers.list_videos(tmp_path, "ms3", "test")[0]
  ref = readers.read_video(rec)
  clip = media.read_clip(readers.frame_paths(rec)[0].parent, readers.wav_path(rec), size=None)
  np.testing.assert_array_equal(clip.frames, ref["frames"])
  np.testing.assert_array_equal(clip.audio_logmel, ref["audio_logmel"])
  np.testing.assert_array_equal(clip.waveform, ref["waveform"])


def test_stereo_44k_wav_downmix_and_resample(tmp_path):
  rate, secs = 44100, 3
  t = np.arange(rate * secs) / rate
  left, right = 0.4 * np.sin(2 * np.pi * 1000 * t), 0.2 * np.sin(2 * np.pi * 3000 * t)
  wav = tmp_path / "stereo.wav"
  sf.write(str(wav), np.stack([left, right], 1), rate, subtype="FLOAT")
  clip = media.read_clip(write_frames_dir(tmp_path / "f", secs), wav, size=None)
  assert (clip.info.audio_rate, clip.info.audio_channels) == (rate, 2)
  # Both tones are far below 8 kHz, so ideal resampling is the same signal sampled at 16 kHz.
  t16 = np.arange(secs * 16000) / 16000
  ref = 0.5 * (0.4 * np.sin(2 * np.pi * 1000 * t16) + 0.2 * np.sin(2 * np.pi * 3000 * t16))
  assert clip.waveform.shape == (secs * 16000,)
  inner = slice(400, -400)
  np.testing.assert_allclose(clip.waveform[inner], ref[inner], atol=2e-3)
  spec = np.abs(np.fft.rfft(clip.waveform * np.hanning(len(clip.waveform))))
  freqs = np.fft.rfftfreq(len(clip.waveform), 1 / 16000)
  lo, hi = freqs < 2000, freqs >= 2000
  assert freqs[lo][np.argmax(spec[lo])] == pytest.approx(1000, abs=0.5)
  assert freqs[hi][np.argmax(spec[hi])] == pytest.approx(3000, abs=0.5)
  assert spec[hi].max() / spec[lo].max() == pytest.approx(0.5, abs=0.02)  # both channels, averaged


def _err(path_fragment, fn, *args, **kw):
  with pytest.raises(media.MediaError) as e:
    fn(*args, **kw)
  msg = str(e.value)
  assert str(path_fragment) in msg and "\n" not in msg, msg
  return msg


def test_bad_video_inputs(files, tmp_path):
  _err(tmp_path / "nope.mp4", media.open_media, tmp_path / "nope.mp4")
  (tmp_path / "zero.mp4").write_bytes(b"")
  assert "empty" in _err(tmp_path / "zero.mp4", media.open_media, tmp_path / "zero.mp4")
  (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
  assert "not a readable" in _err(tmp_path / "junk.mp4", media.open_media, tmp_path / "junk.mp4")
  trunc = tmp_path / "trunc.mp4"
  trunc.write_bytes(files["mp4"].read_bytes()[:3000])
  _err(trunc, media.open_media, trunc)
  # A container with an audio track but no video frames.
  c = av.open(str(tmp_path / "novideo.mkv"), "w")
  v = c.add_stream("libx264", rate=10)
  v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
  a = c.add_stream("pcm_s16le", rate=16000)
  a.layout = "mono"
  fr = av.AudioFrame.from_ndarray(np.full((1, 16000), 1000, np.int16), format="s16", layout="mono")
  fr.sample_rate = 16000
  for p in a.encode(fr):
    c.mux(p)
  c.close()
  assert "no video frames" in _err(tmp_path / "novideo.mkv", media.open_media, tmp_path / "novideo.mkv")
  assert "no audio track" in _err(files["no_audio"], media.open_media, files["no_audio"])
  assert "silent" in _err(files["silent"], media.open_media, files["silent"])
  # The same silent video with allow_silence, and the mute one with a WAV, are fine.
  assert media.open_media(files["silent"], allow_silence=True).info.num_frames == 5
  wav = write_wav(tmp_path / "ok.wav", 0.1 * np.ones(16000, np.float32))
  assert media.open_media(files["no_audio"], wav).info.audio_path == str(wav)
  assert "chunk_frames" in _err(files["mp4"], lambda: next(media.open_media(files["mp4"]).chunks(0)))


def test_bad_audio_inputs(files, tmp_path):
  video = files["no_audio"]
  corrupt = tmp_path / "corrupt.wav"
  corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + np.random.default_rng(1).bytes(200))
  assert "not a readable audio file" in _err(corrupt, media.open_media, video, corrupt)
  empty = write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))
  assert "no audio samples" in _err(empty, media.open_media, video, empty)
  zeros = write_wav(tmp_path / "zeros.wav", np.zeros(32000, np.float32))
  assert "silent" in _err(zeros, media.open_media, video, zeros)
  # Near-silent: peak 6e-5 (2 LSB of 16-bit) is silence; a 1e-3 click is not.
  quiet = np.random.default_rng(2).choice([-2, -1, 0, 1, 2], 32000) / 32768
  assert "silent" in _err("q.wav", media.open_media, video, write_wav(tmp_path / "q.wav", quiet))
  quiet[1000] = 1e-3
  media.open_media(video, write_wav(tmp_path / "click.wav", quiet))
  _err(tmp_path / "missing.wav", media.open_media, video, tmp_path / "missing.wav")


def test_bad_frames_dirs(tmp_path):
  wav = write_wav(tmp_path / "a.wav", 0.1 * np.ones(16000, np.float32))
  (tmp_path / "none").mkdir()
  (tmp_path / "none" / "notes.txt").write_text("x")
  assert "no images" in _err(tmp_path / "none", media.open_media, tmp_path / "none", wav)
  d = write_frames_dir(tmp_path / "mixed", 3)
  Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(d / "3.png")
  assert "size 8x9" in _err(d / "3.png", media.open_media, d, wav)
  d = write_frames_dir(tmp_path / "ok", 2)
  assert "audio" in _err(d, media.open_media, d)


def test_resize_masks_nearest():
  m = np.random.default_rng(0).integers(0, 4, (2, 4, 5))
  np.testing.assert_array_equal(media.resize_masks(m, (8, 15)), np.kron(m, np.ones((1, 2, 3), int)))


def test_write_mask_pngs(tmp_path):
  from data_pipelines.avsbench.readers import _decode_voc
  from data_pipelines.synthetic import voc_colormap
  m = np.zeros((2, 4, 4), np.int32)
  m[0, 1:3, 1:3] = 1
  m[1, :2] = 7
  paths = media.write_mask_pngs(tmp_path / "bin", m, start=10, size=(8, 8))
  assert [p.name for p in paths] == ["000010.png", "000011.png"]
  got = np.asarray(Image.open(paths[0]))
  assert got.shape == (8, 8) and set(np.unique(got)) == {0, 255}
  np.testing.assert_array_equal(got, np.kron(m[0] != 0, np.ones((2, 2), int)) * 255)
  pal = media.write_mask_pngs(tmp_path / "pal", m, mode="palette")
  im = Image.open(pal[1])
  assert im.mode == "P"
  np.testing.assert_array_equal(np.asarray(im), m[1])
  np.testing.assert_array_equal(np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)[:8], voc_colormap(8))
  np.testing.assert_array_equal(_decode_voc(np.asarray(im.convert("RGB")), 10), m[1])  # AVSS reader round trip
  with pytest.raises(media.MediaError, match="0..255"):
    media.write_mask_png(tmp_path / "pal" / "bad.png", np.full((2, 2), 300), mode="palette")
  assert sorted(p.name for p in (tmp_path / "pal").iterdir()) == ["000000.png", "000001.png"]


def test_overlay_masks_definition():
  rng = np.random.default_rng(0)
  fr = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
  m = np.zeros((6, 6), np.int32)
  m[1:5, 1:5] = 2
  out = media.overlay_masks(fr, m, alpha=0.25, background=0.5)
  col = media.overlay_palette()[2].astype(float)
  np.testing.assert_array_equal(out[0, 0], np.rint(0.5 * fr[0, 0]))            # background, darkened
  np.testing.assert_array_equal(out[2, 2], np.rint(0.75 * fr[2, 2] + 0.25 * col))  # inside
  np.testing.assert_array_equal(out[1, 3], col)                                  # boundary
  with pytest.raises(media.MediaError):
    media.overlay_masks(fr, m[:5])


def test_overlay_video_mp4_and_gif(tmp_path):
  assert media.h264_available()
  rng = np.random.default_rng(0)
  frames = rng.integers(60, 200, (6, 21, 33, 3)).astype(np.uint8)
  frames[:] = frames[:, :1, :1]  # flat colours survive H.264
  masks = np.zeros((6, 21, 33), np.int32)
  for t in range(6):
    masks[t, 5:15, 2 + 4 * t:12 + 4 * t] = 1
  path = media.write_overlay_video(tmp_path / "o.mp4", frames, masks, fps=2)
  assert path == tmp_path / "o.mp4"
  with av.open(str(path)) as c:
    s = c.streams.video[0]
    assert s.codec_context.name == "h264" and s.average_rate == 2
    got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)])
  assert got.shape == (6, 22, 34, 3)   # padded to even sides for yuv420p
  want = media.overlay_masks(frames, masks)
  assert np.abs(got[:, :21, :33].astype(int) - want).mean() < 6
  gif = media.write_overlay_video(tmp_path / "o.gif", frames, masks, fps=2)
  im = Image.open(gif)
  assert im.n_frames == 6 and im.info["duration"] == 500 and im.size == (33, 21)
  # An exception inside the writer leaves nothing behind.
  with pytest.raises(RuntimeError):
    with media.OverlayVideoWriter(tmp_path / "x.mp4", 1) as w:
      w.write(want[:2])
      raise RuntimeError("stop")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gif", "o.mp4"]
