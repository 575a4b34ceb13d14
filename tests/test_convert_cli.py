import subprocess
import sys

import numpy as np
import pytest
import torch

from coprop_jax.convert.__main__ import main
from coprop_jax.convert.checkpoint_io import restore_params
from coprop_jax.convert import vggish as conv_vggish


def _vggish_sd():
  from torchvggish.torchvggish import VGG, make_layers
  torch.manual_seed(0)
  return VGG(make_layers(), postprocess=False).state_dict()


def test_cli_pth_and_safetensors(tmp_path, capsys):
  sd = _vggish_sd()
  torch.save(sd, tmp_path / "v.pth")
  from safetensors.torch import save_file
  save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "v.safetensors"))
  want = conv_vggish.from_torch_state_dict({k: v.numpy() for k, v in sd.items()})
  for name in ("v.pth", "v.safetensors"):
    out = tmp_path / (name + ".orbax")
    assert main(["vggish", "--src", str(tmp_path / name), "--out", str(out)]) == 0
    got = restore_params(out)
    np.testing.assert_array_equal(got["features_0"]["kernel"], want["features_0"]["kernel"])
  # refuses to overwrite, --force works
  out = tmp_path / "v.pth.orbax"
  assert main(["vggish", "--src", str(tmp_path / "v.pth"), "--out", str(out)]) == 1
  assert "already exists" in capsys.readouterr().err
  assert main(["vggish", "--src", str(tmp_path / "v.pth"), "--out", str(out), "--force"]) == 0


def test_cli_bad_files(tmp_path, capsys):
  torch.save(_vggish_sd(), tmp_path / "v.pth")
  data = (tmp_path / "v.pth").read_bytes()
  (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
  (tmp_path / "junk.pth").write_text("not a checkpoint")
  for f in ("trunc.pth", "junk.pth", "missing.pth"):
    assert main(["vggish", "--src", str(tmp_path / f), "--out", str(tmp_path / (f + ".o"))]) == 1
    assert not (tmp_path / (f + ".o")).exists()
  # mismatched checkpoint: a VGGish file given as resnet
  assert main(["resnet", "--src", str(tmp_path / "v.pth"), "--out", str(tmp_path / "r")]) == 1
  assert "missing" in capsys.readouterr().err
  assert not (tmp_path / "r").exists()


def test_cli_help():
  r = subprocess.run([sys.executable, "-m", "coprop_jax.convert", "--help"], capture_output=True,
                     text=True)
  assert r.returncode == 0 and "--variant" in r.stdout and "pvt_v2" in r.stdout


def test_pvt_dispatch_needs_variant(tmp_path):
  pytest.importorskip("coprop_jax.convert.pvt_v2")
  torch.save({"x": torch.zeros(1)}, tmp_path / "p.pth")
  assert main(["pvt_v2", "--src", str(tmp_path / "p.pth"), "--out", str(tmp_path / "o")]) == 1
