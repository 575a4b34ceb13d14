import jax.numpy as jnp
import numpy as np
import pytest
import torch

from coprop_jax import audio
from coprop_jax.convert import vggish as conv_vggish
from coprop_jax.convert.checkpoint_io import CheckpointError
from coprop_jax.models.vggish import VGGish, embed_frames


def _wave(sr=16000, secs=2.0):
  t = np.arange(int(sr * secs)) / sr
  rng = np.random.default_rng(0)
  chirp = np.sin(2 * np.pi * (200 * t + 1500 * t ** 2))
  return (0.3 * chirp + 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)
          + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def test_network_parity():
  from torchvggish.torchvggish import VGG, make_layers
  torch.manual_seed(0)
  ref = VGG(make_layers(), postprocess=False).eval()
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  params = conv_vggish.from_torch_state_dict(sd)
  x = np.random.default_rng(0).standard_normal((3, 96, 64)).astype(np.float32)
  with torch.no_grad():
    r = ref(torch.from_numpy(x)[:, None]).numpy()
  o = np.asarray(VGGish().apply({"params": params}, jnp.asarray(x)))
  assert o.shape == (3, 128) and r.max() > 0
  assert np.max(np.abs(o - r)) <= 1e-4 * max(1.0, np.max(np.abs(r)))
  e = np.asarray(embed_frames(params, jnp.asarray(x).reshape(1, 3, 96, 64)))
  np.testing.assert_allclose(e[0], o, atol=1e-5)
  sd.pop("features.0.bias")
  with pytest.raises(CheckpointError, match="missing"):
    conv_vggish.from_torch_state_dict(sd)


def test_frontend_parity():
  from torchvggish.vggish_input import waveform_to_examples
  w = _wave()
  r = waveform_to_examples(w, 16000, return_tensor=False)
  o = audio.waveform_to_patches(w, 16000)
  assert o.shape == r.shape
  assert np.max(np.abs(o - r)) <= 1e-4 * np.max(np.abs(r))


def test_bad_inputs():
  with pytest.raises(ValueError, match="96, 64"):
    VGGish().init(__import__("jax").random.PRNGKey(0), jnp.zeros((1, 64, 96)))


def test_param_count_matches_torchvggish():
  import jax
  from torchvggish.torchvggish import VGG, make_layers
  from coprop_jax.models.layers import count_params
  with torch.device("meta"):
    ref = VGG(make_layers(), postprocess=False)
  v = jax.eval_shape(VGGish().init, jax.random.PRNGKey(0), jnp.zeros((1, 96, 64)))
  assert count_params(v["params"]) == sum(p.numel() for p in ref.parameters()) == 72141184


def test_frame_patches_parity_on_a_10s_clip():
  """AVSBench pairing: 10 one-second frames <- VGGish over the whole 10 s clip."""
  from torchvggish.vggish_input import waveform_to_examples
  w = np.stack([_wave(secs=10.0), 0.5 * _wave(secs=10.0)], axis=1)  # stereo -> mean
  r = waveform_to_examples(w, 16000, return_tensor=False)
  o = audio.waveform_to_frame_patches(w, 10, 16000)
  assert o.shape == r.shape == (10, 96, 64)
  assert np.max(np.abs(o - r)) <= 1e-4 * np.max(np.abs(r))


def test_wrong_sample_rate(tmp_path):
  """The front end never resamples silently (torchvggish would resample with resampy)."""
  with pytest.raises(audio.AudioError, match="16000 Hz, got 44100"):
    audio.waveform_to_patches(_wave(), 44100)
  with pytest.raises(audio.AudioError, match="16000 Hz, got 8000"):
    audio.waveform_to_frame_patches(_wave(), 2, 8000)
  import soundfile as sf
  sf.write(str(tmp_path / "a.wav"), _wave(sr=22050), 22050)
  with pytest.raises(audio.AudioError, match=r"a.wav: sample rate 22050 Hz, expected 16000 Hz"):
    audio.read_wav(tmp_path / "a.wav")
  w, rate = audio.read_wav(tmp_path / "a.wav", expected_rate=None)
  assert rate == 22050 and w.ndim == 1
  (tmp_path / "b.wav").write_text("not audio")
  with pytest.raises(audio.AudioError, match="b.wav: not a readable audio file"):
    audio.read_wav(tmp_path / "b.wav")


def test_wrong_waveform_rank():
  with pytest.raises(audio.AudioError, match=r"expected a waveform \[N\] or \[N, channels\]"):
    audio.waveform_to_patches(np.zeros((2, 3, 16000), np.float32), 16000)


def test_resnet_checkpoint_into_vggish():
  sd = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}
  with pytest.raises(CheckpointError, match=r"(?s)VGGish: checkpoint does not match.*features.0.weight"):
    conv_vggish.from_torch_state_dict(sd)
