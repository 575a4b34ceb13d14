"""Checkpoint reading (safetensors, torch weights_only) and strict key matching."""
import numpy as np
import pytest
import torch

from coprop_jax.convert import checkpoint_io as cio


def test_safetensors_round_trip_with_bfloat16(tmp_path):
  import ml_dtypes
  from safetensors.numpy import save_file
  path = tmp_path / "w.safetensors"
  w = np.arange(6, dtype=np.float32).reshape(2, 3)
  save_file({"a.weight": w, "b.bias": w[0].astype(ml_dtypes.bfloat16)}, str(path))
  sd = cio.load_state_dict(path)
  np.testing.assert_array_equal(sd["a.weight"], w)
  src = cio.SourceDict(sd, "test")
  np.testing.assert_array_equal(src.take("b.bias"), w[0])
  assert src.take("b.bias").dtype == np.float32


def test_torch_pickle_nested_and_prefixed(tmp_path):
  path = tmp_path / "ckpt.pth"
  torch.save({"state_dict": {"module.x.weight": torch.ones(2, 2, dtype=torch.bfloat16)}, "epoch": 3},
             path)
  sd = cio.strip_prefixes(cio.load_state_dict(path), ("state_dict.", "module."))
  assert list(sd) == ["x.weight"]
  np.testing.assert_array_equal(sd["x.weight"].astype(np.float32), np.ones((2, 2)))


def test_torch_pickle_with_code_is_refused(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("pwned",))
  path = tmp_path / "evil.pth"
  torch.save({"w": torch.ones(1), "obj": Evil()}, path)
  with pytest.raises(cio.CheckpointError, match="not a readable PyTorch checkpoint"):
    cio.load_state_dict(path)


@pytest.mark.parametrize("name,content,match", [
    ("missing.safetensors", None, "does not exist"),
    ("trunc.safetensors", b"\x10\x00\x00", "not a readable safetensors"),
    ("trunc.pth", b"PK\x03\x04garbage", "not a readable PyTorch"),
    ("weights.txt", b"hello", "unknown format"),
])
def test_bad_files_give_clear_errors(tmp_path, name, content, match):
  path = tmp_path / name
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(cio.CheckpointError, match=match):
    cio.load_state_dict(path)


def test_source_dict_reports_missing_and_unexpected():
  src = cio.SourceDict({"a": np.zeros(1), "b": np.zeros(1), "c.num_batches_tracked": np.zeros(())},
                       "toy", ignore=lambda k: k.endswith("num_batches_tracked"))
  src.take("a")
  src.take("zzz")
  with pytest.raises(cio.CheckpointError) as e:
    src.finish()
  assert "missing from the checkpoint (1): zzz" in str(e.value)
  assert "unexpected in the checkpoint (1): b" in str(e.value)


def test_check_params_match_lists_shape_mismatches():
  want = {"dense": {"kernel": np.zeros((3, 4)), "bias": np.zeros(4)}}
  got = {"dense": {"kernel": np.zeros((4, 3)), "extra": np.zeros(1)}}
  with pytest.raises(cio.CheckpointError) as e:
    cio.check_params_match(got, want, "toy")
  msg = str(e.value)
  assert "dense/kernel: checkpoint (4, 3) vs model (3, 4)" in msg
  assert "not filled (1): dense/bias" in msg and "not in the model (1): dense/extra" in msg
  cio.check_params_match(want, want, "toy")


def test_layout_helpers():
  w = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
  assert cio.conv(w).shape == (4, 5, 3, 2) and cio.conv(w)[1, 2, 0, 1] == w[1, 0, 1, 2]
  assert cio.linear(np.zeros((7, 3))).shape == (3, 7)


def test_orbax_save_restore_and_no_overwrite(tmp_path):
  params = {"a": {"kernel": np.arange(4, dtype=np.float32)}}
  out = cio.save_params(params, tmp_path / "ckpt")
  np.testing.assert_array_equal(cio.restore_params(out)["a"]["kernel"], params["a"]["kernel"])
  with pytest.raises(FileExistsError):
    cio.save_params(params, tmp_path / "ckpt")
  with pytest.raises(cio.CheckpointError, match="does not exist"):
    cio.restore_params(tmp_path / "nope")
