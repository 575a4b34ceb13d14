"""`python -m coprop_jax.convert`: end to end on real PyTorch files, bad files, safe --out."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_helpers import randomise_batchnorm

from coprop_jax.convert import mobilenet_v2 as conv_mnv2
from coprop_jax.convert.__main__ import main
from coprop_jax.convert.checkpoint_io import restore_params


@pytest.fixture(scope="module")
def mnv2_sd():
  """A torchvision-named MobileNetV2 state dict (small: 2.2 M parameters)."""
  from test_mobilenet import hf_to_torchvision
  from transformers import MobileNetV2Config, MobileNetV2Model
  torch.manual_seed(0)
  m = MobileNetV2Model(MobileNetV2Config(output_stride=16, tf_padding=False, layer_norm_eps=1e-5),
                       add_pooling_layer=False)
  return {k: v.contiguous() for k, v in hf_to_torchvision(m.state_dict()).items()}


def test_cli_resnet50_pth_end_to_end(tmp_path, capsys):
  """torch.save(ResNetModel.state_dict()) -> CLI -> Orbax -> restore -> forward == torch."""
  from transformers import ResNetConfig, ResNetModel
  from coprop_jax.models.resnet import ResNet50
  torch.manual_seed(0)
  ref = ResNetModel(ResNetConfig()).eval()
  randomise_batchnorm(ref)
  torch.save(ref.state_dict(), tmp_path / "r50.pth")
  out = tmp_path / "r50.orbax"
  assert main(["resnet50", "--src", str(tmp_path / "r50.pth"), "--out", str(out)]) == 0
  assert "wrote resnet50 checkpoint" in capsys.readouterr().out
  variables = restore_params(out)
  x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    r = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).last_hidden_state.permute(0, 2, 3, 1).numpy()
  o = jax.jit(ResNet50().apply)(variables, jnp.asarray(x))[-1]
  assert o.shape == r.shape == (1, 2, 2, 2048)
  # <= 1e-4 relative to the output scale (float32 accumulation order differs from torch)
  scale = max(1.0, float(np.abs(r).max()))
  assert float(np.abs(np.asarray(o) - r).max()) <= 1e-4 * scale


def test_cli_pth_and_safetensors(tmp_path, capsys, mnv2_sd):
  torch.save(mnv2_sd, tmp_path / "m.pth")
  from safetensors.torch import save_file
  save_file(mnv2_sd, str(tmp_path / "m.safetensors"))
  want = conv_mnv2.from_torch_state_dict({k: v.numpy() for k, v in mnv2_sd.items()})
  for name in ("m.pth", "m.safetensors"):
    out = tmp_path / (name + ".orbax")
    assert main(["mobilenetv2", "--src", str(tmp_path / name), "--out", str(out)]) == 0
    got = restore_params(out)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)


def test_cli_out_dir_is_never_clobbered(tmp_path, capsys, mnv2_sd):
  torch.save(mnv2_sd, tmp_path / "m.pth")
  src = str(tmp_path / "m.pth")
  # an existing Orbax checkpoint: refused without --force, replaced whole with --force
  out = tmp_path / "ckpt"
  assert main(["mobilenet_v2", "--src", src, "--out", str(out)]) == 0
  before = sorted(p.name for p in out.iterdir())
  assert main(["mobilenet_v2", "--src", src, "--out", str(out)]) == 1
  assert "already exists" in capsys.readouterr().err
  assert sorted(p.name for p in out.iterdir()) == before
  assert main(["mobilenet_v2", "--src", src, "--out", str(out), "--force"]) == 0
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")]  # no temp left
  # a failed conversion with --force leaves the existing checkpoint untouched
  (tmp_path / "junk.pth").write_text("not a checkpoint")
  assert main(["mobilenet_v2", "--src", str(tmp_path / "junk.pth"), "--out", str(out),
               "--force"]) == 1
  capsys.readouterr()
  jax.tree_util.tree_map(np.testing.assert_array_equal, restore_params(out),
                         conv_mnv2.from_torch_state_dict({k: v.numpy() for k, v in mnv2_sd.items()}))
  # a directory with unrelated content is not replaced, even with --force
  other = tmp_path / "mydata"
  other.mkdir()
  (other / "notes.txt").write_text("keep me")
  assert main(["mobilenet_v2", "--src", src, "--out", str(other), "--force"]) == 1
  assert "not an Orbax checkpoint directory" in capsys.readouterr().err
  assert (other / "notes.txt").read_text() == "keep me"


def test_cli_bad_files(tmp_path, capsys, mnv2_sd):
  torch.save(mnv2_sd, tmp_path / "m.pth")
  data = (tmp_path / "m.pth").read_bytes()
  (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
  (tmp_path / "junk.pth").write_text("not a checkpoint")
  (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
  (tmp_path / "weights.npz").write_bytes(b"PK")
  cases = {"trunc.pth": "not a readable PyTorch checkpoint",
           "junk.pth": "not a readable PyTorch checkpoint",
           "junk.safetensors": "not a readable safetensors file",
           "weights.npz": "unknown format '.npz'",
           "missing.pth": "file does not exist"}
  for f, msg in cases.items():
    assert main(["mobilenet_v2", "--src", str(tmp_path / f), "--out", str(tmp_path / (f + ".o"))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint ") and f in err and msg in err, err
    assert not (tmp_path / (f + ".o")).exists()
  # mismatched checkpoint: a MobileNetV2 file given as resnet
  assert main(["resnet", "--src", str(tmp_path / "m.pth"), "--out", str(tmp_path / "r")]) == 1
  err = capsys.readouterr().err
  assert "ResNet-50: checkpoint does not match the model" in err and "conv1.weight" in err
  assert not (tmp_path / "r").exists()


def test_cli_as_subprocess_exit_code_and_message(tmp_path):
  (tmp_path / "junk.pth").write_text("not a checkpoint")
  r = subprocess.run([sys.executable, "-m", "coprop_jax.convert", "resnet50", "--src",
                      str(tmp_path / "junk.pth"), "--out", str(tmp_path / "o")],
                     capture_output=True, text=True)
  assert r.returncode == 1
  assert "error: checkpoint" in r.stderr and "not a readable PyTorch checkpoint" in r.stderr
  assert "Traceback" not in r.stderr
  r = subprocess.run([sys.executable, "-m", "coprop_jax.convert", "--help"], capture_output=True,
                     text=True)
  assert r.returncode == 0 and "--variant" in r.stdout and "resnet50" in r.stdout


def test_pvt_dispatch_needs_variant(tmp_path, capsys):
  torch.save({"x": torch.zeros(1)}, tmp_path / "p.pth")
  assert main(["pvt_v2", "--src", str(tmp_path / "p.pth"), "--out", str(tmp_path / "o")]) == 1
  assert "needs --variant" in capsys.readouterr().err


def test_cli_pvt_wrong_variant(tmp_path, capsys):
  """PVT-v2-b0 weights converted as b2: exit 1, the message names the mismatch and the variant."""
  from safetensors.numpy import save_file
  from test_pvt_v2 import hf_model, state_dict
  save_file(state_dict(hf_model("b0")), str(tmp_path / "b0.safetensors"))
  assert main(["pvt_v2", "--variant", "b2", "--src", str(tmp_path / "b0.safetensors"),
               "--out", str(tmp_path / "o")]) == 1
  err = capsys.readouterr().err
  assert "shape mismatches" in err and "looks like PVT-v2 variant 'b0'" in err
  assert not (tmp_path / "o").exists()
