"""Audio front end: waveform -> 16 kHz mono -> VGGish log-mel patches, on the host in numpy.

Why numpy on the host: the log-mel patches are a fixed, parameter-free function of the WAV,
computed once per clip by the data pipeline (TFDS build or grain transform). Keeping it in
numpy lets the builders run without an accelerator and keeps the device busy with the
networks; it also makes the result bit-for-bit independent of the XLA backend.

Parameters are VGGish's (torchvggish `vggish_params`, TF audioset): 25 ms periodic-Hann window
(400 samples), 10 ms hop, FFT 512, magnitude spectrum, 64 HTK-mel bands 125-7500 Hz,
`log(mel + 0.01)`, non-overlapping 96x64 patches (0.96 s). Matches torchvggish's
`vggish_input.waveform_to_examples` to ~5e-8 relative (tests/test_vggish.py).

Sample rate: only 16 kHz is accepted; anything else raises `AudioError` naming the rate
(torchvggish would resample silently with resampy). Resample when building the dataset
(AVSBench's WAVs are 16 kHz already), so that every clip goes through the same filter.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

SAMPLE_RATE = 16000
STFT_WINDOW_SECONDS = 0.025
STFT_HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_WINDOW_SECONDS = 0.96
EXAMPLE_HOP_SECONDS = 0.96
PATCH_FRAMES = 96  # 0.96 s of 10 ms frames


class AudioError(ValueError):
  """A waveform or WAV file is not what the front end expects."""


def _frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
  """[N, ...] -> [num_frames, window_length, ...], no padding (frames that fit wholly)."""
  num_frames = 1 + (data.shape[0] - window_length) // hop_length
  if num_frames < 1:
    return np.zeros((0, window_length) + data.shape[1:], data.dtype)
  idx = np.arange(window_length)[None, :] + hop_length * np.arange(num_frames)[:, None]
  return data[idx]


def _hertz_to_mel(hz: np.ndarray) -> np.ndarray:
  return 1127.0 * np.log(1.0 + hz / 700.0)


def mel_matrix(num_mel_bins: int = NUM_MEL_BINS, num_spectrogram_bins: int = 257,
               sample_rate: int = SAMPLE_RATE, lower_hz: float = MEL_MIN_HZ,
               upper_hz: float = MEL_MAX_HZ) -> np.ndarray:
  """HTK-mel triangular filterbank [num_spectrogram_bins, num_mel_bins] (DC bin zeroed)."""
  nyquist = sample_rate / 2.0
  if not 0.0 <= lower_hz < upper_hz <= nyquist:
    raise AudioError(f"mel band edges must satisfy 0 <= {lower_hz} < {upper_hz} <= {nyquist}")
  bins_mel = _hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
  edges = np.linspace(_hertz_to_mel(np.float64(lower_hz)), _hertz_to_mel(np.float64(upper_hz)),
                      num_mel_bins + 2)
  weights = np.empty((num_spectrogram_bins, num_mel_bins))
  for i in range(num_mel_bins):
    lo, center, hi = edges[i:i + 3]
    lower_slope = (bins_mel - lo) / (center - lo)
    upper_slope = (hi - bins_mel) / (hi - center)
    weights[:, i] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
  weights[0, :] = 0.0
  return weights


def log_mel_spectrogram(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Mono float waveform in [-1, 1] at 16 kHz -> log-mel frames [num_frames, 64] (float64)."""
  if sample_rate != SAMPLE_RATE:
    raise AudioError(f"expected audio at {SAMPLE_RATE} Hz, got {sample_rate} Hz; resample first")
  waveform = np.asarray(waveform, np.float64)
  if waveform.ndim != 1:
    raise AudioError(f"expected a mono waveform [num_samples], got shape {waveform.shape}")
  window_length = int(round(sample_rate * STFT_WINDOW_SECONDS))
  hop_length = int(round(sample_rate * STFT_HOP_SECONDS))
  fft_length = 2 ** int(np.ceil(np.log2(window_length)))
  frames = _frame(waveform, window_length, hop_length)
  window = 0.5 - 0.5 * np.cos(2 * np.pi / window_length * np.arange(window_length))  # periodic
  spec = np.abs(np.fft.rfft(frames * window, fft_length))
  mel = spec @ mel_matrix(num_spectrogram_bins=fft_length // 2 + 1, sample_rate=sample_rate)
  return np.log(mel + LOG_OFFSET)


def to_mono(waveform: np.ndarray) -> np.ndarray:
  """[N] or [N, channels] -> [N] by averaging channels (as VGGish does)."""
  waveform = np.asarray(waveform)
  if waveform.ndim == 2:
    return waveform.mean(axis=1)
  if waveform.ndim != 1:
    raise AudioError(f"expected a waveform [N] or [N, channels], got shape {waveform.shape}")
  return waveform


def waveform_to_patches(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Waveform -> all non-overlapping VGGish patches [num_patches, 96, 64] float32.

  Equals torchvggish's `vggish_input.waveform_to_examples` (without its channel axis) for
  16 kHz input.
  """
  log_mel = log_mel_spectrogram(to_mono(waveform), sample_rate)
  features_rate = 1.0 / STFT_HOP_SECONDS
  win = int(round(EXAMPLE_WINDOW_SECONDS * features_rate))
  hop = int(round(EXAMPLE_HOP_SECONDS * features_rate))
  return _frame(log_mel, win, hop).astype(np.float32)


def waveform_to_frame_patches(waveform: np.ndarray, num_frames: int,
                              sample_rate: int = SAMPLE_RATE,
                              seconds_per_frame: float = 1.0) -> np.ndarray:
  """One log-mel patch per video frame -> [num_frames, 96, 64] float32.

  AVSBench samples one frame per second and pairs frame i with second i of the audio. The
  waveform is cut or zero-padded to `num_frames * seconds_per_frame` seconds, and patch i
  is taken from the start of frame i's audio segment.
  """
  wav = to_mono(waveform).astype(np.float64)
  if sample_rate != SAMPLE_RATE:
    raise AudioError(f"expected audio at {SAMPLE_RATE} Hz, got {sample_rate} Hz; resample first")
  seg = int(round(seconds_per_frame * sample_rate))
  need = num_frames * seg
  if wav.shape[0] < need:
    wav = np.pad(wav, (0, need - wav.shape[0]))
  wav = wav[:need]
  # 0.96 s (plus the STFT window's tail) must fit inside each frame's segment.
  patch_samples = int(round((PATCH_FRAMES - 1) * STFT_HOP_SECONDS * sample_rate)) + int(
      round(STFT_WINDOW_SECONDS * sample_rate))
  if seg < patch_samples:
    raise AudioError(f"seconds_per_frame={seconds_per_frame} is shorter than one VGGish patch "
                     f"({patch_samples / sample_rate:.3f} s)")
  if seconds_per_frame == 1.0:
    # AVSBench-exact: VGGish over the whole clip (patch i covers [0.96 i, 0.96 (i + 1)) s). That
    # framing yields exactly T patches for clips of up to 24 s; longer clips would drift by
    # 0.04 s a frame, so they take each patch from the start of its own second instead.
    patches = waveform_to_patches(wav, sample_rate)
    if patches.shape[0] == num_frames:
      return patches
  out = [waveform_to_patches(wav[i * seg:i * seg + patch_samples], sample_rate)[0]
         for i in range(num_frames)]
  return np.stack(out).astype(np.float32)


def read_wav(path: str | os.PathLike, expected_rate: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int]:
  """Reads a WAV file -> (float32 waveform [N] mono in [-1, 1], sample rate).

  Raises `AudioError` naming the file when it is missing, unreadable, empty, or not at
  `expected_rate` (pass None to accept any rate).
  """
  import soundfile as sf
  path = pathlib.Path(path)
  if not path.exists():
    raise AudioError(f"audio file {path}: does not exist")
  try:
    data, rate = sf.read(str(path), dtype="float32", always_2d=False)
  except Exception as e:
    raise AudioError(f"audio file {path}: not a readable audio file ({e})") from e
  if data.size == 0:
    raise AudioError(f"audio file {path}: contains no samples")
  if expected_rate is not None and rate != expected_rate:
    raise AudioError(f"audio file {path}: sample rate {rate} Hz, expected {expected_rate} Hz")
  return to_mono(data).astype(np.float32), int(rate)


# Names of the weight-free per-frame audio embeddings (`data.audio_embed`), [T, 96, 64] -> [T, 128].
AUDIO_EMBEDDINGS = ("logmel_stats",)


def logmel_stats_embedding(audio_logmel: np.ndarray) -> np.ndarray:
  """audio_logmel [T, 96, 64] (one VGGish patch per frame) -> float32 [T, 128]: per mel band, the
  frame's mean log-mel level above the frame's quietest band (64) and its standard deviation over
  the patch's 96 time steps (64).

  A stand-in for VGGish embeddings when no converted VGGish weights are at hand (the demo): a
  fixed function of the spectrum, no network. Shifting each frame's mean spectrum by its minimum
  puts silent bands at 0, so the cosine similarity of two frames reflects which bands sound
  (`coprop_jax.rcpg.core.cosine_control_points` works on it as on VGGish embeddings).
  """
  # not in the paper: it uses VGGish embeddings; this weight-free embedding is the demo's.
  x = np.asarray(audio_logmel, np.float32)
  if x.ndim != 3 or x.shape[1:] != (PATCH_FRAMES, NUM_MEL_BINS):
    raise AudioError(f"audio_logmel: expected [T, {PATCH_FRAMES}, {NUM_MEL_BINS}], got shape "
                     f"{x.shape}")
  mean = x.mean(axis=1)
  mean = mean - mean.min(axis=1, keepdims=True)
  return np.concatenate([mean, x.std(axis=1)], axis=1).astype(np.float32)


def frame_embeddings(audio_logmel: np.ndarray, kind: str) -> np.ndarray:
  """The weight-free embedding `kind` (one of AUDIO_EMBEDDINGS) of [T, 96, 64] -> [T, 128]."""
  if kind == "logmel_stats":
    return logmel_stats_embedding(audio_logmel)
  raise AudioError(f"audio embedding {kind!r}: expected one of {AUDIO_EMBEDDINGS}")
