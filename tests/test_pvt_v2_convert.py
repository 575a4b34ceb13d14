"""PVT-v2 checkpoint conversion: namings, file formats, and the errors on bad checkpoints."""
import jax
import numpy as np
import pytest
import torch

from coprop_jax.convert import pvt_v2 as cv
from coprop_jax.convert.checkpoint_io import CheckpointError
from coprop_jax.models import pvt_v2 as pm
from test_pvt_v2 import hf_model, images, state_dict, to_original_naming

TINY = (1, 1, 1, 1)


@pytest.fixture(scope="module")
def hf_sd():
  return state_dict(hf_model("b0", TINY))


@pytest.fixture(scope="module")
def ref_params(hf_sd):
  return cv.from_torch_state_dict(hf_sd, "b0", depths=TINY)


def assert_same_tree(a, b, atol=0.0):
  la, ta = jax.tree_util.tree_flatten_with_path(a)
  lb, tb = jax.tree_util.tree_flatten_with_path(b)
  assert ta == tb
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, err_msg=str(path))


def test_classification_and_backbone_namings(hf_sd, ref_params):
  cls = {f"pvt_v2.{k}": v for k, v in hf_sd.items()}
  cls["classifier.weight"] = np.zeros((1000, 256), np.float32)
  cls["classifier.bias"] = np.zeros((1000,), np.float32)
  assert cv.detect_source(cls) == "hf"
  assert_same_tree(cv.from_torch_state_dict(cls, "b0", depths=TINY), ref_params)


def test_original_and_mmseg_namings(hf_sd, ref_params):
  orig = to_original_naming(hf_sd)
  orig["head.weight"] = np.zeros((1000, 256), np.float32)
  orig["head.bias"] = np.zeros((1000,), np.float32)
  assert_same_tree(cv.from_torch_state_dict(orig, "b0", depths=TINY), ref_params)
  mmseg = {f"state_dict.backbone.{k}": v for k, v in to_original_naming(hf_sd).items()}
  mmseg["state_dict.decode_head.conv_seg.weight"] = np.zeros((2, 8, 1, 1), np.float32)
  mmseg["meta.epoch"] = np.zeros((), np.int64)
  assert cv.detect_source(mmseg) == "mmseg"
  assert_same_tree(cv.from_torch_state_dict(mmseg, "b0", depths=TINY), ref_params)


def test_safetensors_roundtrip_float32_and_bfloat16(tmp_path, hf_sd, ref_params):
  import ml_dtypes
  from safetensors.numpy import save_file
  save_file(hf_sd, str(tmp_path / "pvt.safetensors"))
  model, params = cv.load(tmp_path / "pvt.safetensors", "b0", depths=TINY)
  assert_same_tree(params, ref_params)
  assert model.embed_norm_eps == 1e-6
  x = images((40, 56), batch=1)
  out = jax.jit(model.apply)({"params": params}, x)
  assert [o.shape[1:3] for o in out] == pm.output_hw(40, 56)

  bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in hf_sd.items()}
  save_file(bf16, str(tmp_path / "pvt_bf16.safetensors"))
  _, params16 = cv.load(tmp_path / "pvt_bf16.safetensors", "b0", depths=TINY)
  assert all(np.asarray(p).dtype == np.float32 for p in jax.tree_util.tree_leaves(params16))
  expect = cv.from_torch_state_dict(
      {k: v.astype(np.float32) for k, v in bf16.items()}, "b0", depths=TINY)
  assert_same_tree(params16, expect)
  assert_same_tree(params16, ref_params, atol=0.05)  # bf16 rounding of O(1) norm weights


def test_torch_pickle_original_naming_gets_original_eps(tmp_path, hf_sd, ref_params):
  orig = {k: torch.from_numpy(v) for k, v in to_original_naming(hf_sd).items()}
  torch.save({"model": orig}, tmp_path / "pvt_v2_b0.pth")
  model, params = cv.load(tmp_path / "pvt_v2_b0.pth", "b0", depths=TINY)
  assert_same_tree(params, ref_params)
  assert (model.layer_norm_eps, model.embed_norm_eps) == (1e-6, 1e-5)


def test_wrong_variant_is_reported(hf_sd):
  with pytest.raises(CheckpointError) as e:
    cv.from_torch_state_dict(hf_sd, "b1", depths=TINY)
  msg = str(e.value)
  assert "shape mismatches" in msg
  assert "stage0_block0/norm1/scale: checkpoint (32,) vs model (64,)" in msg
  # A full b0 checkpoint loaded as b2: blocks missing, shapes wrong, and the variant it looks like.
  full_b0 = state_dict(hf_model("b0"))
  with pytest.raises(CheckpointError) as e:
    cv.from_torch_state_dict(full_b0, "b2")
  msg = str(e.value)
  assert "missing from the checkpoint" in msg
  assert "encoder.layers.0.blocks.2.layer_norm_1.weight" in msg
  assert "shape mismatches" in msg
  assert "looks like PVT-v2 variant 'b0'" in msg
  # Extra blocks are unexpected keys.
  with pytest.raises(CheckpointError, match="unexpected in the checkpoint"):
    cv.from_torch_state_dict(full_b0, "b0", depths=TINY)


def test_wrong_variant_original_naming():
  full_b0 = to_original_naming(state_dict(hf_model("b0")))
  assert cv.infer_variant(full_b0) == "b0"
  with pytest.raises(CheckpointError, match="wrong variant"):
    cv.from_torch_state_dict(full_b0, "b1")


def test_infer_variant(hf_sd):
  assert cv.infer_variant(state_dict(hf_model("b0"))) == "b0"
  assert cv.infer_variant(hf_sd) is None  # depths (1,1,1,1) is no published variant
  assert cv.infer_variant({"foo": np.zeros(1)}) is None


def test_not_a_pvt_checkpoint():
  with pytest.raises(CheckpointError, match="no known naming"):
    cv.from_torch_state_dict({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, "b0")


def test_truncated_and_non_checkpoint_files(tmp_path, hf_sd):
  from safetensors.numpy import save_file
  good = tmp_path / "good.safetensors"
  save_file(hf_sd, str(good))
  data = good.read_bytes()
  trunc = tmp_path / "trunc.safetensors"
  trunc.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="trunc.safetensors"):
    cv.load(trunc, "b0", depths=TINY)
  text = tmp_path / "notes.pth"
  text.write_text("this is not a checkpoint\n")
  with pytest.raises(CheckpointError, match="notes.pth"):
    cv.load(text, "b0")
  torch.save({"model": {k: torch.from_numpy(v) for k, v in hf_sd.items()}},
             tmp_path / "full.pth")
  raw = (tmp_path / "full.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(raw[: len(raw) // 3])
  with pytest.raises(CheckpointError, match="cut.pth"):
    cv.load(tmp_path / "cut.pth", "b0", depths=TINY)
  with pytest.raises(CheckpointError, match="does not exist"):
    cv.load(tmp_path / "absent.safetensors", "b0")


def test_convert_from_a_callers_source_dict(hf_sd, ref_params):
  """A bigger model's converter takes the PVT-v2 weights out of its own SourceDict."""
  from coprop_jax.convert.checkpoint_io import SourceDict
  state = {f"visual.{k}": v for k, v in to_original_naming(hf_sd).items()}
  state["fuse.weight"] = np.zeros((4, 4), np.float32)
  src = SourceDict(state, what="composite checkpoint")
  params = cv.convert(src, "b0", prefix="visual.", source="original", depths=TINY)
  assert_same_tree(params, ref_params)
  src.take("fuse.weight")
  src.finish()  # every key consumed


@pytest.mark.parametrize("cls_name", ["PvtV2Model", "PvtV2Backbone", "PvtV2ForImageClassification"])
def test_real_transformers_class_key_names(cls_name):
  """The key names and shapes of each transformers class (built on the meta device) convert."""
  import transformers
  from test_pvt_v2 import hf_config
  with torch.device("meta"):
    model = getattr(transformers, cls_name)(hf_config("b2_linear", TINY))
  rng = np.random.default_rng(0)
  sd = {k: rng.standard_normal(tuple(v.shape)).astype(np.float32)
        for k, v in model.state_dict().items()}
  assert cv.detect_source(sd) == "hf"
  params = cv.from_torch_state_dict(sd, "b2_linear", depths=TINY)
  prefix = "pvt_v2." if cls_name == "PvtV2ForImageClassification" else ""
  sr = sd[prefix + "encoder.layers.3.blocks.0.attention.spatial_reduction.weight"]
  np.testing.assert_array_equal(params["stage3_blocks"]["attn"]["sr"]["kernel"][0],
                                sr.transpose(2, 3, 1, 0))
