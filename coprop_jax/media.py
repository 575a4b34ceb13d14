"""Media I/O on the host (numpy): a video or a frames folder plus audio in; mask PNGs and overlay videos out.

This is what `python -m coprop_jax.predict` reads and writes. Everything the model sees is
produced the way the training data is (AVSBench's preprocessing, `coprop_jax.audio`,
`data_pipelines.input_pipeline`), so a clip read here and the same clip read from an AVSBench tree
give the same inputs.

Reading::

  src = media.open_media("clip.mp4")              # or a frames folder + audio="clip.wav"
  src.info                                          # MediaInfo: T, fps, sizes, audio source, ...
  clip = src.read()                                 # Clip: frames [T,S,S,3] uint8, audio_logmel [T,96,64], ...
  for chunk in src.chunks(16): ...                  # the same, 16 frames at a time, flat memory

Sampling rules (`sample_times`, `patch_starts`; AVSBench = OpenNLPLab/AVSBench preprocess_scripts):
- Frames: sample k (k = 0..T-1) at `fps` samples per second is the frame on screen at time
  `(k + 15/16) / fps` after the first frame, i.e. the last decoded frame whose timestamp is <= that
  time; past the end of the video, the last frame. At fps=1 this is AVSBench's rule (of 16 frame
  positions per second it keeps the 16th, index `int(k*R + 15/16*R)` with R = round(source fps),
  and clamps to the last frame); AVSBench counts frames at round(source fps), we use the
  timestamps, which is the same for constant integer frame rates and does not drift at 29.97 fps.
- T: `max(1, floor(duration * fps + 1/2))` for a video; the number of images for a folder.
- Resize: square `size x size`, PIL bilinear (as `data_pipelines.input_pipeline`; AVSBench used
  cv2 bilinear to 224x224), aspect ratio not kept; `info.original_size` keeps (H, W) for writing
  masks back (`resize_masks`, nearest).
- Audio: all channels averaged to mono (as VGGish), resampled to 16 kHz with soxr ('HQ'), then cut
  or zero-padded at the end to exactly T/fps seconds (`num_samples`). Audio time 0 is the video's
  first frame (the track's own timestamps place it; a separate audio file starts at time 0).
- Log-mel: one VGGish patch [96, 64] per frame (`coprop_jax.audio`). At fps=1 this is
  `audio.waveform_to_frame_patches` (the training data's): for T <= 24, patch k covers
  [0.96 k, 0.96 k + 0.975) s (AVSBench's contiguous VGGish framing), beyond that each second's
  patch starts at that second. At any other fps, patch k starts at k / fps (overlapping when
  fps > 1); samples past T/fps are zeros.
- Silence: audio whose down-mixed peak |x| <= SILENCE_PEAK (1e-4, -80 dBFS, about 3 LSB of 16-bit
  PCM) everywhere is rejected (MediaError) unless `allow_silence=True`: the model would see a
  constant log(0.01) spectrogram, and the control points and audio attention would be meaningless.

Writing: `write_mask_pngs` (binary 0/255 or palette class ids), `OverlayVideoWriter` /
`write_overlay_video` (H.264 mp4 through PyAV; animated GIF through Pillow when asked for or when
the FFmpeg build has no H.264 encoder), `overlay_masks` (the drawing shared with
`coprop_jax.eval.visualize`). Every file is written to a temporary sibling and renamed
(`atomic_output`).

Every bad input raises `MediaError`, a one-line message naming the file and the problem.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
import os
import pathlib
import re
import tempfile
from fractions import Fraction
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from coprop_jax import audio as audio_lib

SAMPLE_RATE = audio_lib.SAMPLE_RATE
# not in the paper: the silence threshold (peak of the mono down-mix, full scale = 1.0).
SILENCE_PEAK = 1e-4
# AVSBench keeps the 16th of 16 positions per second: the frame at 15/16 of each interval.
FRAME_PHASE = Fraction(15, 16)
# Samples one VGGish patch reads: 96 hops of 10 ms minus one, plus a 25 ms window (0.975 s).
PATCH_SAMPLES = ((audio_lib.PATCH_FRAMES - 1) * round(SAMPLE_RATE * audio_lib.STFT_HOP_SECONDS)
                 + round(SAMPLE_RATE * audio_lib.STFT_WINDOW_SECONDS))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Audio files read with libsndfile (strict about corrupt headers); anything else goes through PyAV.
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")
_AUDIO_BLOCK_SECONDS = 1.0


class MediaError(ValueError):
  """A video, frames folder or audio file cannot be used; the message names the file and why."""


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  """What `open_media` found (nothing decoded beyond the first frame and an audio peak scan).

  path: the video file or frames folder. audio_path: the separate audio file, or None when the
  audio is the video's own track. kind: "video" or "frames". num_frames: T sampled frames.
  fps: samples per second of the returned frames. source_fps: the video's frame rate (None for a
  folder or when the container does not say). original_size / size: (H, W) before / after
  resizing. duration: seconds of video (a folder: T / fps). audio_rate / audio_channels: the
  audio source's sample rate and channel count (before down-mixing and resampling).
  """
  path: str
  audio_path: Optional[str]
  kind: str
  num_frames: int
  fps: float
  source_fps: Optional[float]
  original_size: tuple
  size: tuple
  duration: float
  audio_rate: int
  audio_channels: int

  @property
  def video_id(self) -> str:
    return pathlib.Path(self.path).stem or pathlib.Path(self.path).name


@dataclasses.dataclass
class Chunk:
  """Frames start .. start+n-1 of a clip (one window of `MediaSource.chunks`).

  frames: uint8 [n, S, S, 3]; timestamps: float64 [n] seconds after the first frame (the sampled
  frame's own time; a folder: the nominal (k + 15/16) / fps); audio_logmel: float32 [n, 96, 64];
  waveform: float32 16 kHz mono, samples [num_samples(start), num_samples(start + n)) of the
  clip's waveform.
  """
  start: int
  frames: np.ndarray
  timestamps: np.ndarray
  audio_logmel: np.ndarray
  waveform: np.ndarray

  def example(self, video_id: str = "clip") -> dict:
    """The chunk in the batch vocabulary (unbatched): frames, audio_logmel, frame_valid, video_id."""
    return dict(frames=self.frames, audio_logmel=self.audio_logmel,
                frame_valid=np.ones(len(self.frames), bool), video_id=video_id)


@dataclasses.dataclass
class Clip(Chunk):
  """A whole clip: a Chunk with start=0 and n=T, plus `info` and `audio_seconds` (the length of
  the audio source before it was cut/padded to T / fps)."""
  info: MediaInfo = None
  audio_seconds: float = 0.0

  def example(self, video_id: Optional[str] = None) -> dict:
    return super().example(video_id or self.info.video_id)


# ----------------------------------------------------------------------------- sampling rules


def _as_fraction(fps) -> Fraction:
  try:
    f = Fraction(fps).limit_denominator(1_000_000) if not isinstance(fps, Fraction) else fps
  except (TypeError, ValueError) as e:
    raise MediaError(f"fps={fps!r}: expected a positive number") from e
  if not f > 0:
    raise MediaError(f"fps={fps!r}: expected a positive number")
  return f


def sample_times(num_frames: int, fps: float = 1.0) -> list[Fraction]:
  """Target time (seconds after the first frame) of each sampled frame: (k + 15/16) / fps."""
  f = _as_fraction(fps)
  return [(k + FRAME_PHASE) / f for k in range(num_frames)]


def num_frames_for(duration: float, fps: float = 1.0) -> int:
  """T for a video of `duration` seconds: max(1, floor(duration * fps + 1/2))."""
  # not in the paper: AVSBench clips are exactly 5 s; for any length we round to the nearest
  # whole interval (a 4.98 s or 5.3 s video gives 5 frames at fps=1).
  d = Fraction(duration).limit_denominator(10_000_000)
  return max(1, math.floor(d * _as_fraction(fps) + Fraction(1, 2)))


def num_samples(num_frames: int, fps: float = 1.0) -> int:
  """16 kHz samples covered by the first `num_frames` frames: round(num_frames * 16000 / fps)."""
  return int(round(Fraction(num_frames * SAMPLE_RATE) / _as_fraction(fps)))


def _vggish_num_patches(n: int) -> int:
  hop = round(SAMPLE_RATE * audio_lib.STFT_HOP_SECONDS)
  win = round(SAMPLE_RATE * audio_lib.STFT_WINDOW_SECONDS)
  frames = 1 + (n - win) // hop if n >= win else 0
  return 1 + (frames - audio_lib.PATCH_FRAMES) // audio_lib.PATCH_FRAMES if frames >= audio_lib.PATCH_FRAMES else 0


def _contiguous_framing(num_frames: int, fps) -> bool:
  """audio.waveform_to_frame_patches' test: fps=1 and VGGish over T seconds gives exactly T patches."""
  return _as_fraction(fps) == 1 and _vggish_num_patches(num_frames * SAMPLE_RATE) == num_frames


def patch_starts(num_frames: int, fps: float = 1.0) -> np.ndarray:
  """int64 [T]: the 16 kHz sample where frame k's log-mel patch starts (it reads PATCH_SAMPLES).

  fps=1: as `audio.waveform_to_frame_patches` (contiguous VGGish patches every 0.96 s when
  that framing yields exactly T patches, i.e. T <= 24; else the start of each second).
  Other fps: round(k * 16000 / fps).
  """
  k = np.arange(num_frames, dtype=np.int64)
  f = _as_fraction(fps)
  if _contiguous_framing(num_frames, f):
    hop = round(SAMPLE_RATE * audio_lib.STFT_HOP_SECONDS) * audio_lib.PATCH_FRAMES
    return k * hop
  # not in the paper: fps != 1 (the paper and AVSBench only use 1 frame per second). Patch k starts
  # where frame k's interval starts, like audio.py's rule for long clips.
  return np.array([num_samples(i, f) for i in range(num_frames)], np.int64)


def frame_patches(waveform: np.ndarray, num_frames: int, fps: float = 1.0) -> np.ndarray:
  """16 kHz mono waveform (already cut/padded to num_samples(T)) -> float32 [T, 96, 64].

  fps=1 and T <= 24 calls `audio.waveform_to_frame_patches` (the training data's function); otherwise
  PATCH_SAMPLES are taken from each `patch_starts` position, zero-padded past the end (for fps=1
  the same numbers as audio.py, without its whole-clip STFT, which needs ~1 GB for 10 minutes).
  """
  if _contiguous_framing(num_frames, fps):
    return audio_lib.waveform_to_frame_patches(waveform, num_frames)
  return _patches_at(np.asarray(waveform, np.float32), 0, patch_starts(num_frames, fps))


def _patches_at(wave: np.ndarray, offset: int, starts: np.ndarray) -> np.ndarray:
  """wave holds samples [offset, offset + len); one patch per start (zeros past the end)."""
  if len(starts) == 0:
    return np.zeros((0, audio_lib.PATCH_FRAMES, audio_lib.NUM_MEL_BINS), np.float32)
  need = int(starts[-1]) - offset + PATCH_SAMPLES
  if wave.shape[0] < need:
    wave = np.pad(wave, (0, need - wave.shape[0]))
  out = [audio_lib.waveform_to_patches(wave[s - offset:s - offset + PATCH_SAMPLES])[0]
         for s in starts]
  return np.stack(out).astype(np.float32)


def resize_frames(frames: np.ndarray, size: Optional[int]) -> np.ndarray:
  """uint8 [n, H, W, 3] -> [n, size, size, 3], PIL bilinear (as the input pipeline); None: as is."""
  # not in the paper: PIL bilinear like data_pipelines.input_pipeline (AVSBench used cv2 bilinear).
  frames = np.asarray(frames)
  if size is None or frames.shape[1:3] == (size, size):
    return frames
  return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR))
                   for f in frames]) if len(frames) else np.zeros((0, size, size, 3), np.uint8)


def resize_masks(masks: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
  """int [n, h, w] (or [h, w]) label masks -> int32 [n, H, W] with nearest neighbour (labels stay labels)."""
  m = np.asarray(masks)
  single = m.ndim == 2
  m = m[None] if single else m
  h, w = int(size_hw[0]), int(size_hw[1])
  if m.shape[1:] != (h, w):
    m = np.stack([np.asarray(Image.fromarray(x.astype(np.int32), mode="I").resize((w, h), Image.NEAREST))
                  for x in m])
  m = m.astype(np.int32)
  return m[0] if single else m


# ----------------------------------------------------------------------------- audio sources


def _frame_to_mono(frame) -> np.ndarray:
  """av.AudioFrame -> float32 [n] in [-1, 1], channels averaged."""
  a = frame.to_ndarray()
  ch = len(frame.layout.channels)
  if not frame.format.is_planar:
    a = a.reshape(-1, ch).T
  if a.dtype == np.int16:
    a = a.astype(np.float32) / 32768.0
  elif a.dtype == np.int32:
    a = a.astype(np.float32) / 2147483648.0
  elif a.dtype == np.uint8:
    a = (a.astype(np.float32) - 128.0) / 128.0
  elif a.dtype == np.int64:
    a = a.astype(np.float64) / 9223372036854775808.0
  return a.astype(np.float32).mean(axis=0)


class _AudioSource:
  """Decodes one audio source to mono float32 blocks at its own rate, aligned to the clip's time 0."""

  def __init__(self, path: pathlib.Path, from_video: bool, t0: Fraction = Fraction(0)):
    self.path, self.from_video, self.t0 = path, from_video, t0
    self.what = "video" if from_video else "audio file"
    self.use_soundfile = not from_video and path.suffix.lower() in SOUNDFILE_EXTENSIONS
    if self.use_soundfile:
      import soundfile as sf
      try:
        with sf.SoundFile(str(path)) as f:
          self.rate, self.channels, frames = int(f.samplerate), int(f.channels), f.frames
      except Exception as e:
        raise MediaError(f"audio file {path}: not a readable audio file ({_short(e)})") from e
      if frames == 0:
        raise MediaError(f"audio file {path}: contains no audio samples")
    else:
      container = _open_container(path, self.what)
      with container:
        if not container.streams.audio:
          if from_video:
            raise MediaError(f"video {path}: has no audio track; give an audio file (a WAV) for it")
          raise MediaError(f"audio file {path}: has no audio stream")
        cc = container.streams.audio[0].codec_context
        self.rate, self.channels = int(cc.sample_rate or 0), int(cc.channels or 0)
      if self.rate <= 0:
        raise MediaError(f"{self.what} {path}: audio track has no sample rate")

  def blocks(self) -> Iterator[np.ndarray]:
    """Mono float32 blocks at self.rate; sample 0 is clip time 0."""
    if self.use_soundfile:
      import soundfile as sf
      block = max(1, int(self.rate * _AUDIO_BLOCK_SECONDS))
      try:
        with sf.SoundFile(str(self.path)) as f:
          while True:
            x = f.read(block, dtype="float32", always_2d=True)
            if x.shape[0] == 0:
              return
            yield x.mean(axis=1)
      except MediaError:
        raise
      except Exception as e:
        raise MediaError(f"audio file {self.path}: cannot be decoded ({_short(e)})") from e
      return
    container = _open_container(self.path, self.what)
    with container:
      stream = container.streams.audio[0]
      tb = stream.time_base
      drop, first = 0, True
      try:
        for frame in container.decode(stream):
          if frame.sample_rate != self.rate:
            raise MediaError(f"{self.what} {self.path}: audio sample rate changes from {self.rate} "
                             f"to {frame.sample_rate} Hz inside the stream")
          x = _frame_to_mono(frame)
          if first:
            first = False
            start = (Fraction(frame.pts) * tb if frame.pts is not None and tb else Fraction(0)) - self.t0
            # not in the paper: the track's first timestamp places it against the first video frame
            # (leading gap -> zeros, audio before the first frame -> dropped).
            n = round(start * self.rate)
            if n > 0:
              yield np.zeros(n, np.float32)
            else:
              drop = -n
          if drop:
            cut = min(drop, x.shape[0])
            x, drop = x[cut:], drop - cut
          if x.size:
            yield x
      except MediaError:
        raise
      except Exception as e:
        raise MediaError(f"{self.what} {self.path}: audio cannot be decoded ({_short(e)})") from e

  def check_not_silent(self):
    """Raises MediaError when there are no samples or every |sample| <= SILENCE_PEAK (early exit)."""
    peak, n = 0.0, 0
    for x in self.blocks():
      n += x.shape[0]
      if x.size:
        peak = max(peak, float(np.abs(x).max()))
      if peak > SILENCE_PEAK:
        return
    if n == 0:
      raise MediaError(f"{self.what} {self.path}: the audio track contains no samples")
    raise MediaError(f"{self.what} {self.path}: the audio is silent (peak |x| = {peak:.1e} <= "
                     f"{SILENCE_PEAK:g} over {n / self.rate:.2f} s); pass allow_silence=True to run anyway")

  def resampled(self) -> Iterator[np.ndarray]:
    """16 kHz mono float32 blocks (soxr 'HQ', streamed; equals soxr.resample on the whole signal)."""
    if self.rate == SAMPLE_RATE:
      yield from self.blocks()
      return
    import soxr
    # not in the paper: soxr 'HQ' resampling (AVSBench wrote 16 kHz WAVs with moviepy/FFmpeg).
    rs = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    for x in self.blocks():
      y = rs.resample_chunk(np.ascontiguousarray(x, np.float32), last=False)
      if y.size:
        yield y
    y = rs.resample_chunk(np.zeros(0, np.float32), last=True)
    if y.size:
      yield y

  def read_all(self) -> np.ndarray:
    """The whole source at 16 kHz (one soxr.resample call over the whole signal)."""
    blocks = list(self.blocks())
    x = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    if self.rate == SAMPLE_RATE or x.size == 0:
      return x.astype(np.float32)
    import soxr
    return soxr.resample(x, self.rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def _short(e: BaseException) -> str:
  return " ".join(str(e).split())[:200] or type(e).__name__


def _open_container(path: pathlib.Path, what: str):
  import av
  try:
    return av.open(str(path))
  except Exception as e:
    raise MediaError(f"{what} {path}: not a readable media file ({_short(e)})") from e


def _fit(x: np.ndarray, n: int) -> np.ndarray:
  return np.pad(x, (0, max(0, n - x.shape[0])))[:n].astype(np.float32)


# ----------------------------------------------------------------------------- sources


class MediaSource(abc.ABC):
  """An opened video or frames folder with its audio; `read()` the whole clip or iterate `chunks(n)`.

  Build with `open_media`. `info` is known after opening; reading decodes the files again each
  time (nothing is cached), so a source can be read more than once.
  """

  def __init__(self, info: MediaInfo, audio: _AudioSource, size: Optional[int], fps: Fraction):
    self.info, self._audio, self._size, self._fps = info, audio, size, fps

  @abc.abstractmethod
  def _frames(self) -> Iterator[tuple[float, np.ndarray]]:
    """Yields (timestamp in seconds, uint8 [H, W, 3] frame at the original size) for k = 0..T-1."""

  def read(self) -> Clip:
    """The whole clip: frames [T,S,S,3] uint8, audio_logmel [T,96,64], waveform [num_samples(T)]."""
    info = self.info
    ts, frames = [], []
    for t, f in self._frames():
      ts.append(t)
      frames.append(resize_frames(f[None], self._size)[0])
    wave_src = self._audio.read_all()
    n = num_samples(info.num_frames, self._fps)
    # not in the paper: audio cut / zero-padded at the end to T / fps seconds, as the training
    # reader does (AVSBench's preprocessing instead repeated the last log-mel patch of short WAVs).
    wave = _fit(wave_src, n)
    logmel = frame_patches(wave, info.num_frames, self._fps)
    return Clip(start=0, frames=np.stack(frames), timestamps=np.asarray(ts, np.float64),
                audio_logmel=logmel, waveform=wave, info=info,
                audio_seconds=wave_src.shape[0] / SAMPLE_RATE)

  def chunks(self, chunk_frames: int) -> Iterator[Chunk]:
    """Consecutive windows of `chunk_frames` frames (the last may be shorter), flat memory.

    Concatenating the chunks' arrays gives `read()`'s (frames and timestamps exactly, log-mel and
    waveform up to float rounding). Memory: one chunk of frames plus about chunk_frames / fps + 1 s
    of audio, whatever the clip's length.
    """
    if not isinstance(chunk_frames, (int, np.integer)) or chunk_frames < 1:
      raise MediaError(f"{self.info.path}: chunk_frames must be a positive integer, got {chunk_frames!r}")
    info = self.info
    t_len, n_total = info.num_frames, num_samples(info.num_frames, self._fps)
    starts = patch_starts(t_len, self._fps)
    audio_blocks = self._audio.resampled()
    buf, buf_start, pos = [np.zeros(0, np.float32)], 0, 0   # buf covers [buf_start, pos)

    def ensure(upto):  # buffer audio up to sample `upto`; zeros past the audio's end and past n_total
      nonlocal pos
      while pos < upto:
        x = next(audio_blocks, None) if pos < n_total else None
        x = np.zeros(upto - pos, np.float32) if x is None else x[:n_total - pos]
        buf.append(x)
        pos += x.shape[0]

    frame_iter = self._frames()
    for a in range(0, t_len, chunk_frames):
      b = min(a + chunk_frames, t_len)
      ts, frames = [], []
      for _ in range(a, b):
        t, f = next(frame_iter)
        ts.append(t)
        frames.append(resize_frames(f[None], self._size)[0])
      w_lo, w_hi = num_samples(a, self._fps), num_samples(b, self._fps)
      lo = min(int(starts[a]), w_lo)
      hi = max(int(starts[b - 1]) + PATCH_SAMPLES, w_hi)
      ensure(hi)
      wave = np.concatenate(buf)
      logmel = _patches_at(wave[lo - buf_start:], lo, starts[a:b])
      waveform = _fit(wave[w_lo - buf_start:], w_hi - w_lo)
      keep = min(int(starts[b]) if b < t_len else hi, w_hi)
      buf[:] = [wave[keep - buf_start:]]
      buf_start = keep
      yield Chunk(start=a, frames=np.stack(frames), timestamps=np.asarray(ts, np.float64),
                  audio_logmel=logmel, waveform=waveform)
    frame_iter.close()
    audio_blocks.close()


class _VideoSource(MediaSource):

  def __init__(self, path: pathlib.Path, audio: Optional[pathlib.Path], size, fps, allow_silence):
    container = _open_container(path, "video")
    with container:
      if not container.streams.video:
        raise MediaError(f"video {path}: has no video stream")
      stream = container.streams.video[0]
      tb = stream.time_base or Fraction(1, 1_000_000)
      rate = stream.average_rate or stream.guessed_rate
      first = None
      try:
        for frame in container.decode(stream):
          first = frame
          break
      except Exception as e:
        raise MediaError(f"video {path}: no decodable video frame ({_short(e)})") from e
      if first is None:
        raise MediaError(f"video {path}: contains no video frames")
      t0 = Fraction(first.pts) * tb if first.pts is not None else Fraction(0)
      orig = (int(first.height), int(first.width))
      duration = Fraction(stream.duration) * tb if stream.duration else None
    if duration is None or duration <= 0:
      # Not in the header (mkv/webm): the video packets' timestamps (the container's duration
      # would include a longer audio track).
      duration = _scan_duration(path, t0)
    self._path, self._tb, self._t0 = path, tb, t0
    self._source_rate = Fraction(rate) if rate else None
    f = _as_fraction(fps)
    t_len = num_frames_for(duration, f)
    if audio is None:
      asrc = _AudioSource(path, from_video=True, t0=t0)
    else:
      asrc = _AudioSource(audio, from_video=False)
    if not allow_silence:
      asrc.check_not_silent()
    info = MediaInfo(path=str(path), audio_path=None if audio is None else str(audio), kind="video",
                     num_frames=t_len, fps=float(f), source_fps=float(rate) if rate else None,
                     original_size=orig, size=(size, size) if size else orig,
                     duration=float(duration), audio_rate=asrc.rate, audio_channels=asrc.channels)
    super().__init__(info, asrc, size, f)

  def _frames(self):
    # not in the paper: AVSBench's frame rule on timestamps instead of round(fps) frame counts.
    targets = sample_times(self.info.num_frames, self._fps)
    t_len = len(targets)
    # A frame may be at most one sampling interval (+ one source frame) before a target past the end.
    slack = 1 / self._fps + (1 / self._source_rate if self._source_rate else Fraction(0))
    container = _open_container(self._path, "video")
    with container:
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      k, prev, prev_t, prev_rgb, idx = 0, None, None, None, 0

      def rgb():
        nonlocal prev_rgb
        if prev_rgb is None:  # convert only the frames that are sampled, each once
          prev_rgb = prev.to_ndarray(format="rgb24")
        return prev_rgb

      try:
        for frame in container.decode(stream):
          if frame.pts is not None:
            t = Fraction(frame.pts) * self._tb - self._t0
          else:
            t = Fraction(idx) / (self._source_rate or 1)
          idx += 1
          while k < t_len and t > targets[k] and prev is not None:
            yield float(prev_t), rgb()
            k += 1
          if k == t_len:
            return
          prev, prev_t, prev_rgb = frame, t, None
      except MediaError:
        raise
      except Exception as e:
        raise MediaError(f"video {self._path}: decoding failed at frame {idx} ({_short(e)})") from e
      if prev is None:
        raise MediaError(f"video {self._path}: contains no video frames")
      if targets[k] - prev_t > slack:
        raise MediaError(f"video {self._path}: frames end at {float(prev_t):.2f} s but its header says "
                         f"{self.info.duration:.2f} s (truncated or damaged file?)")
      while k < t_len:  # AVSBench: past the last frame, the last frame
        yield float(prev_t), rgb()
        k += 1


def _scan_duration(path: pathlib.Path, t0: Fraction) -> Fraction:
  """Video duration from the packets' timestamps (containers whose header has none)."""
  container = _open_container(path, "video")
  end = None
  with container:
    stream = container.streams.video[0]
    tb = stream.time_base or Fraction(1, 1_000_000)
    for pkt in container.demux(stream):
      if pkt.pts is None:
        continue
      e = Fraction(pkt.pts + (pkt.duration or 0)) * tb
      end = e if end is None or e > end else end
  if end is None or end - t0 <= 0:
    raise MediaError(f"video {path}: cannot tell its duration (no timestamps)")
  return end - t0


def _natural_key(p: pathlib.Path):
  return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]


class _FramesDirSource(MediaSource):

  def __init__(self, path: pathlib.Path, audio: Optional[pathlib.Path], size, fps, allow_silence):
    files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=_natural_key)
    if not files:
      raise MediaError(f"frames folder {path}: contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    sizes = {}
    for p in files:
      try:
        with Image.open(p) as im:
          wh = im.size
      except Exception as e:
        raise MediaError(f"frame {p}: unreadable image ({_short(e)})") from e
      sizes.setdefault(wh, p)
      if len(sizes) > 1:
        (w0, h0), first = next(iter(sizes.items()))
        raise MediaError(f"frame {p}: size {wh[0]}x{wh[1]}, but {first.name} is {w0}x{h0} "
                         "(all frames of a folder must have one size)")
    if audio is None:
      raise MediaError(f"frames folder {path}: needs an audio file (a WAV) for its sound")
    asrc = _AudioSource(audio, from_video=False)
    if not allow_silence:
      asrc.check_not_silent()
    f = _as_fraction(fps)
    (w, h), = sizes.keys()
    self._files = files
    info = MediaInfo(path=str(path), audio_path=str(audio), kind="frames", num_frames=len(files),
                     fps=float(f), source_fps=None, original_size=(h, w),
                     size=(size, size) if size else (h, w), duration=float(len(files) / f),
                     audio_rate=asrc.rate, audio_channels=asrc.channels)
    super().__init__(info, asrc, size, f)

  def _frames(self):
    # not in the paper: a folder's image k stands for interval k; its nominal time is (k + 15/16)/fps.
    for p, t in zip(self._files, sample_times(len(self._files), self._fps)):
      try:
        with Image.open(p) as im:
          a = np.asarray(im.convert("RGB"), np.uint8)
      except Exception as e:
        raise MediaError(f"frame {p}: unreadable image ({_short(e)})") from e
      if a.shape[:2] != self.info.original_size:
        raise MediaError(f"frame {p}: size changed while reading")
      yield float(t), a


def open_media(path, audio=None, *, size: Optional[int] = 224, fps: float = 1.0,
               allow_silence: bool = False) -> MediaSource:
  """Opens a video file (mp4, mkv, webm, avi, mov, ...) or a folder of frames, with its audio.

  path: a video (its audio track is used unless `audio` is given) or a folder of images (sorted in
  natural order: 2.png before 10.png; `audio` required; one image per 1/fps seconds).
  audio: optional audio file (WAV/FLAC/OGG through libsndfile, other formats through PyAV).
  size: square side the frames are resized to (None: keep the original size).
  fps: samples per second (1 = AVSBench). allow_silence: accept a silent audio track.
  Raises MediaError (one line naming the file) for: a missing or unreadable file, a video without
  video frames, no audio track and no audio file, a corrupt or empty audio file, silent audio, a
  folder without images or with images of different sizes.
  """
  p = pathlib.Path(path).expanduser()
  if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
    raise MediaError(f"{p}: size must be a positive integer or None, got {size!r}")
  _as_fraction(fps)
  a = None if audio is None else pathlib.Path(audio).expanduser()
  if a is not None:
    if not a.exists():
      raise MediaError(f"audio file {a}: does not exist")
    if not a.is_file():
      raise MediaError(f"audio file {a}: not a file")
  if not p.exists():
    raise MediaError(f"video {p}: does not exist")
  if p.is_dir():
    return _FramesDirSource(p, a, size, fps, allow_silence)
  if p.stat().st_size == 0:
    raise MediaError(f"video {p}: empty file (0 bytes)")
  return _VideoSource(p, a, size, fps, allow_silence)


def read_clip(path, audio=None, **kw) -> Clip:
  """`open_media(path, audio, **kw).read()`."""
  return open_media(path, audio, **kw).read()


# ----------------------------------------------------------------------------- writers


@contextlib.contextmanager
def atomic_output(path):
  """Yields a temporary sibling path (same suffix); renamed to `path` when the block succeeds,
  removed when it raises. Works for files and for directories created at the yielded path
  (os.replace: an existing file is replaced, an existing non-empty directory makes it fail)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
  os.close(fd)
  os.unlink(tmp)
  tmp = pathlib.Path(tmp)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if tmp.is_dir():
      import shutil
      shutil.rmtree(tmp, ignore_errors=True)
    else:
      tmp.unlink(missing_ok=True)
    raise


def _voc_palette() -> np.ndarray:
  from data_pipelines.synthetic import voc_colormap
  return voc_colormap(256)


def write_mask_png(path, mask: np.ndarray, *, mode: str = "binary",
                   size: Optional[Sequence[int]] = None) -> pathlib.Path:
  """Writes one mask PNG atomically. mask: int [h, w] (0 background).

  mode="binary": 8-bit grey, 255 where mask != 0 (AVSBench S4/MS3 style); mode="palette": 'P'
  image whose pixel values are the class ids (0..255) with the PASCAL VOC colour map (AVSS style).
  size: (H, W) to resize to first (nearest), e.g. `info.original_size`.
  """
  m = np.asarray(mask)
  if m.ndim != 2:
    raise MediaError(f"mask for {path}: expected [H, W], got shape {m.shape}")
  if size is not None:
    m = resize_masks(m, size)
  if mode == "binary":
    img = Image.fromarray(((m != 0) * 255).astype(np.uint8), mode="L")
  elif mode == "palette":
    if m.min(initial=0) < 0 or m.max(initial=0) > 255:
      raise MediaError(f"mask for {path}: class ids must be in 0..255 for a palette PNG, got "
                       f"{m.min()}..{m.max()}")
    img = Image.fromarray(m.astype(np.uint8), mode="P")
    img.putpalette(_voc_palette().reshape(-1).tolist())
  else:
    raise MediaError(f"mask for {path}: mode must be 'binary' or 'palette', got {mode!r}")
  with atomic_output(path) as tmp:
    img.save(tmp, format="PNG")
  return pathlib.Path(path)


def write_mask_pngs(out_dir, masks: np.ndarray, *, start: int = 0, mode: str = "binary",
                    size: Optional[Sequence[int]] = None, name: str = "{:06d}.png") -> list[pathlib.Path]:
  """Writes masks int [n, h, w] as out_dir/{start+k:06d}.png (each file atomically); returns the paths.

  Call once per chunk with `start=chunk.start` to stream. mode/size: as `write_mask_png`.
  """
  d = pathlib.Path(out_dir)
  d.mkdir(parents=True, exist_ok=True)
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise MediaError(f"masks for {d}: expected [n, H, W], got shape {masks.shape}")
  return [write_mask_png(d / name.format(start + k), m, mode=mode, size=size)
          for k, m in enumerate(masks)]


# Overlay colours by mask id (id 0 = background is never drawn); id 1 (binary masks) is blue, so
# that red stays free for "wrong" in the pictures (eval/visualize.py) and orange for keyframes.
OVERLAY_COLORS = np.array([
    (0, 0, 0), (30, 144, 255), (255, 215, 0), (60, 210, 90), (200, 90, 255), (0, 220, 220),
    (255, 90, 200), (160, 200, 40), (150, 150, 255), (140, 100, 60), (255, 60, 60)], np.uint8)


def overlay_palette(n: int = 256) -> np.ndarray:
  """[n, 3] uint8 colours for mask ids (cycling OVERLAY_COLORS[1:] for ids >= 11)."""
  k = np.arange(n)
  idx = np.where(k == 0, 0, (k - 1) % (len(OVERLAY_COLORS) - 1) + 1)
  return OVERLAY_COLORS[idx]


def mask_outline(mask: np.ndarray) -> np.ndarray:
  """bool [..., H, W]: pixels of a nonzero id with a 4-neighbour of another id (its boundary)."""
  m = np.asarray(mask)
  pad = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
  c = pad[..., 1:-1, 1:-1]
  diff = ((pad[..., :-2, 1:-1] != c) | (pad[..., 2:, 1:-1] != c) |
          (pad[..., 1:-1, :-2] != c) | (pad[..., 1:-1, 2:] != c))
  return diff & (c != 0)


def overlay_masks(frames: np.ndarray, masks: np.ndarray, *, alpha: float = 0.35, background: float = 0.5,
                  colors: Optional[np.ndarray] = None, outline: bool = True) -> np.ndarray:
  """Draws masks over frames: uint8 [..., H, W, 3] + int [..., H, W] -> uint8 [..., H, W, 3].

  Pixels outside every mask are darkened to `background` of their brightness (so the segmented
  objects stand out whatever their colour); each nonzero id is tinted with colors[id] (default
  `overlay_palette()`) at opacity `alpha`, and its boundary drawn opaque when `outline`.
  """
  fr = np.asarray(frames)
  m = np.asarray(masks)
  if fr.shape[:-1] != m.shape or fr.shape[-1] != 3:
    raise MediaError(f"overlay_masks: frames {fr.shape} and masks {m.shape} do not match ([..., H, W, 3] vs [..., H, W])")
  pal = overlay_palette() if colors is None else np.asarray(colors, np.uint8)
  if m.size and (m.min() < 0 or m.max() >= len(pal)):
    raise MediaError(f"overlay_masks: mask ids {m.min()}..{m.max()} outside the palette of {len(pal)} colours")
  col = pal[m].astype(np.float32)
  fg = (m != 0)[..., None]
  f = fr.astype(np.float32)
  out = np.where(fg, (1 - alpha) * f + alpha * col, background * f)
  if outline:
    out = np.where(mask_outline(m)[..., None], col, out)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def h264_available() -> bool:
  """True when PyAV's FFmpeg build has an H.264 encoder (libx264)."""
  import av
  try:
    av.codec.Codec("libx264", "w")
    return True
  except Exception:
    return False


class OverlayVideoWriter:
  """Streams RGB images into a video, atomically (temporary sibling renamed on `close`).

  path suffix .mp4/.mkv/.mov: H.264 (libx264, yuv420p, crf 20) through PyAV; when the FFmpeg build
  has no H.264 encoder the writer falls back to an animated GIF at path.with_suffix('.gif') --
  `writer.path` is the file actually written. Suffix .gif: animated GIF through Pillow (it keeps all
  frames, palette-quantised, until `close`: use mp4 for long clips). `fps`: playback rate.
  Use as a context manager; an exception inside the block leaves no file behind.
  """

  def __init__(self, path, fps: float = 1.0, *, crf: int = 20):
    path = pathlib.Path(path)
    self._rate = _as_fraction(fps)
    suffix = path.suffix.lower()
    if suffix in (".mp4", ".mkv", ".mov"):
      # not in the paper: overlay video container/codec; GIF when this FFmpeg has no H.264.
      self.kind = "h264" if h264_available() else "gif"
    elif suffix == ".gif":
      self.kind = "gif"
    else:
      raise MediaError(f"overlay video {path}: unsupported suffix {path.suffix!r} (use .mp4 or .gif)")
    self.path = path if self.kind == "h264" else path.with_suffix(".gif")
    self._crf = crf
    self._ctx = atomic_output(self.path)
    self._tmp = self._ctx.__enter__()
    self._container = self._stream = None
    self._gif: list[Image.Image] = []
    self._size = None
    self.num_frames = 0
    self._closed = False

  def write(self, images: np.ndarray):
    """images: uint8 [n, H, W, 3] or [H, W, 3]; every image must have the first one's size."""
    im = np.asarray(images)
    if im.ndim == 3:
      im = im[None]
    if im.ndim != 4 or im.shape[-1] != 3 or im.dtype != np.uint8:
      raise MediaError(f"overlay video {self.path}: expected uint8 [n, H, W, 3] images, got {im.dtype} {im.shape}")
    if self._size is None:
      self._size = im.shape[1:3]
      if self.kind == "h264":
        self._open_h264()
    elif im.shape[1:3] != self._size:
      raise MediaError(f"overlay video {self.path}: image size {im.shape[1:3]} differs from the first {self._size}")
    for x in im:
      if self.kind == "h264":
        import av
        h, w = x.shape[:2]
        x = np.pad(x, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # yuv420p needs even sides
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(x), format="rgb24")
        frame.pts = self.num_frames
        for pkt in self._stream.encode(frame):
          self._container.mux(pkt)
      else:
        self._gif.append(Image.fromarray(x).quantize(256, method=Image.Quantize.MEDIANCUT))
      self.num_frames += 1

  def _open_h264(self):
    import av
    h, w = self._size
    self._container = av.open(str(self._tmp), "w")
    s = self._container.add_stream("libx264", rate=self._rate)
    s.width, s.height, s.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
    s.time_base = 1 / self._rate
    s.options = {"crf": str(self._crf), "preset": "veryfast"}
    self._stream = s

  def close(self) -> pathlib.Path:
    """Finishes the file and renames it into place; returns the path written."""
    if self._closed:
      return self.path
    self._closed = True
    try:
      if self.num_frames == 0:
        raise MediaError(f"overlay video {self.path}: no frames were written")
      if self.kind == "h264":
        for pkt in self._stream.encode():
          self._container.mux(pkt)
        self._container.close()
      else:
        ms = max(20, int(round(1000 / float(self._rate))))
        self._gif[0].save(self._tmp, format="GIF", save_all=True, append_images=self._gif[1:],
                          duration=ms, loop=0)
        self._gif = []
    except BaseException as e:
      self._abort(e)
      raise
    self._ctx.__exit__(None, None, None)
    return self.path

  def _abort(self, exc):
    if self._container is not None:
      with contextlib.suppress(Exception):
        self._container.close()
    self._gif = []
    with contextlib.suppress(BaseException):
      self._ctx.__exit__(type(exc), exc, exc.__traceback__)

  def __enter__(self):
    return self

  def __exit__(self, et, ev, tb):
    if et is None:
      self.close()
    elif not self._closed:
      self._closed = True
      self._abort(ev)
    return False


def write_overlay_video(path, frames: np.ndarray, masks: np.ndarray, fps: float = 1.0,
                        **overlay_kw) -> pathlib.Path:
  """frames uint8 [T, H, W, 3] + masks int [T, H, W] -> overlay video (see OverlayVideoWriter); returns its path."""
  with OverlayVideoWriter(path, fps) as w:
    w.write(overlay_masks(frames, masks, **overlay_kw))
  return w.path
