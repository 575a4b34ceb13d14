"""PVT-v2: numerical parity with transformers' PyTorch `PvtV2Model`, through our converter.

The PyTorch reference is randomly initialised with a seeded torch and then every bias and norm
weight is randomised too (HF initialises them to 0/1, which would hide a mis-mapped bias or a
swapped norm). Both the Hugging Face naming and the original whai362/PVT naming (fused `kv`,
LayerNorm eps 1e-5 in patch-embed/attention norms) are converted and compared.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import PvtV2Config, PvtV2Model

from coprop_jax.convert import pvt_v2 as cv
from coprop_jax.models import pvt_v2 as pm
from coprop_jax.models.layers import count_params

TOL = 1e-4


def hf_config(variant, depths=None):
  spec = pm.get_spec(variant, depths)
  return PvtV2Config(hidden_sizes=list(spec.hidden_sizes), depths=list(spec.depths),
                     mlp_ratios=list(spec.mlp_ratios), linear_attention=spec.linear)


@functools.lru_cache(maxsize=None)
def hf_model(variant, depths=None, seed=0):
  torch.manual_seed(seed)
  model = PvtV2Model(hf_config(variant, depths)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.normal_(0.0, 0.1)
      elif p.ndim == 1:  # LayerNorm weights
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
  return model


def state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def to_original_naming(sd):
  """HF PvtV2Model keys -> whai362/PVT keys (k and v fused into kv)."""
  out = {}
  for k, v in sd.items():
    parts = k.split(".")
    assert parts[:2] == ["encoder", "layers"], k
    i = int(parts[2])
    rest = ".".join(parts[3:])
    if rest.startswith("patch_embedding."):
      rest = rest[len("patch_embedding."):].replace("layer_norm", "norm")
      out[f"patch_embed{i + 1}.{rest}"] = v
    elif rest.startswith("layer_norm."):
      out[f"norm{i + 1}.{rest[len('layer_norm.'):]}"] = v
    else:
      j = int(parts[4])
      r = ".".join(parts[5:])
      if r.startswith("attention.key.") or r.startswith("attention.value."):
        if r.startswith("attention.key."):
          suffix = r.split(".")[-1]
          key_v = sd[k]
          val_v = sd[k.replace("attention.key.", "attention.value.")]
          out[f"block{i + 1}.{j}.attn.kv.{suffix}"] = np.concatenate([key_v, val_v], axis=0)
        continue
      r = (r.replace("layer_norm_1", "norm1").replace("layer_norm_2", "norm2")
           .replace("attention.query", "attn.q").replace("attention.proj", "attn.proj")
           .replace("attention.spatial_reduction", "attn.sr")
           .replace("attention.layer_norm", "attn.norm")
           .replace("mlp.dense1", "mlp.fc1").replace("mlp.dense2", "mlp.fc2"))
      out[f"block{i + 1}.{j}.{r}"] = v
  return out


def with_original_eps(model):
  """Sets the HF model's patch-embed and attention norms to eps 1e-5, as the original code has."""
  for name, mod in model.named_modules():
    if isinstance(mod, torch.nn.LayerNorm) and (name.endswith("patch_embedding.layer_norm")
                                                 or name.endswith("attention.layer_norm")):
      mod.eps = 1e-5
  return model


def reference(model, x):
  with torch.no_grad():
    hs = model(torch.from_numpy(x).permute(0, 3, 1, 2), output_hidden_states=True).hidden_states
  return [h.permute(0, 2, 3, 1).numpy() for h in hs]


def ours(variant, params, x, source="hf", depths=None):
  model = pm.build_model(variant, source=source, depths=depths)
  return [np.asarray(o) for o in jax.jit(model.apply)({"params": params}, jnp.asarray(x))]


def assert_parity(ref, out, what):
  assert len(out) == 4
  for s, (r, o) in enumerate(zip(ref, out)):
    assert o.shape == r.shape, f"{what} stage {s}: {o.shape} vs {r.shape}"
    err = float(np.max(np.abs(o - r)))
    assert err <= TOL, f"{what} stage {s}: max abs diff {err:.2e}"


def images(hw, batch=2, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, hw[0], hw[1], 3)).astype(np.float32)


# b0 is small enough to test at full depth; b2_linear runs with one block per stage (its widths,
# heads, MLP ratios and linear attention unchanged) to keep the default suite fast; the full-depth
# b2_linear case is marked slow. The default suite runs b0 at 224 and b2_linear non-square; the
# other sizes are marked slow (`pytest -m slow`) to keep the default suite within its time budget.
CASES = [
    ("b0", None, (224, 224)),
    pytest.param("b0", None, (100, 60), marks=pytest.mark.slow),  # non-square, not /32
    pytest.param("b2_linear", (1, 1, 1, 1), (224, 224), marks=pytest.mark.slow),
    ("b2_linear", (1, 1, 1, 1), (90, 130)),  # stage-4 map 3x5: adaptive pool windows overlap
    pytest.param("b2_linear", (1, 1, 1, 1), (20, 36), marks=pytest.mark.slow),  # < 7x7 from stage 1
]


@pytest.mark.parametrize("variant,depths,hw", CASES)
def test_parity_hf_naming(variant, depths, hw):
  m = hf_model(variant, depths)
  sd = state_dict(m)
  assert cv.detect_source(sd) == "hf"
  params = cv.from_torch_state_dict(sd, variant, depths=depths)
  x = images(hw)
  assert_parity(reference(m, x), ours(variant, params, x, depths=depths), f"{variant} {hw}")


# Slow: the default suite checks that original/mmseg namings convert to the same params as the HF
# naming (test_pvt_v2_convert.py) and the per-source LayerNorm eps (test_source_eps).
@pytest.mark.slow
@pytest.mark.parametrize("variant,depths,hw", [CASES[1], CASES[3]])
def test_parity_original_naming(variant, depths, hw):
  m = with_original_eps(hf_model(variant, depths, seed=1))
  try:
    sd = to_original_naming(state_dict(m))
    assert any(k.endswith("attn.kv.weight") for k in sd)
    assert cv.detect_source(sd) == "original"
    params = cv.from_torch_state_dict(sd, variant, depths=depths)
    x = images(hw, seed=1)
    assert_parity(reference(m, x), ours(variant, params, x, source="original", depths=depths),
                  f"original {variant} {hw}")
  finally:
    hf_model.cache_clear()  # the cached model's eps were changed


@pytest.mark.slow
@pytest.mark.parametrize("hw", [(224, 224), (96, 160)])
def test_parity_b2_linear_full_depth(hw):
  m = hf_model("b2_linear")
  params = cv.from_torch_state_dict(state_dict(m), "b2_linear")
  x = images(hw, batch=1)
  assert_parity(reference(m, x), ours("b2_linear", params, x), f"b2_linear full {hw}")


def test_source_eps():
  assert pm.build_model("b0").embed_norm_eps == 1e-6
  assert pm.build_model("b0").layer_norm_eps == 1e-6
  for source in ("original", "mmseg"):
    model = pm.build_model("b0", source=source)
    assert (model.layer_norm_eps, model.embed_norm_eps) == (1e-6, 1e-5)
  with pytest.raises(ValueError, match="source"):
    pm.build_model("b0", source="timm2")


@pytest.mark.parametrize("out_size", [7])
@pytest.mark.parametrize("hw", [(14, 14), (13, 9), (3, 5), (7, 7), (1, 20)])
def test_adaptive_avg_pool_matches_torch(hw, out_size):
  x = np.random.default_rng(3).normal(size=(2, hw[0], hw[1], 4)).astype(np.float32)
  ref = torch.nn.AdaptiveAvgPool2d(out_size)(torch.from_numpy(x).permute(0, 3, 1, 2))
  got = pm.adaptive_avg_pool_2d(jnp.asarray(x), (out_size, out_size))
  np.testing.assert_allclose(np.asarray(got), ref.permute(0, 2, 3, 1).numpy(), atol=1e-6)


def test_depthwise_shift_equals_grouped_conv():
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 9, 6, 12)).astype(np.float32))
  shift = pm.DepthwiseConv3x3("shift")
  variables = shift.init(jax.random.PRNGKey(0), x)
  variables = jax.tree_util.tree_map(lambda p: p + 0.3, variables)  # non-zero bias
  ref = torch.nn.functional.conv2d(
      torch.from_numpy(np.array(x)).permute(0, 3, 1, 2),
      torch.from_numpy(np.asarray(variables["params"]["kernel"]).transpose(3, 2, 0, 1).copy()),
      torch.from_numpy(np.array(variables["params"]["bias"])), padding=1, groups=12)
  ref = ref.permute(0, 2, 3, 1).numpy()
  for impl in ("shift", "conv"):
    got = pm.DepthwiseConv3x3(impl).apply(variables, x)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)
  with pytest.raises(ValueError, match="impl"):
    pm.DepthwiseConv3x3("fft").apply(variables, x)


def test_output_sizes_match_helper():
  model = pm.build_model("b0", depths=(1, 1, 1, 1))
  x = jnp.zeros((1, 65, 97, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  outs = jax.eval_shape(model.apply, variables, x)
  assert [o.shape[1:3] for o in outs] == pm.output_hw(65, 97)
  assert [o.shape[3] for o in outs] == list(pm.VARIANTS["b0"].hidden_sizes)


@pytest.mark.slow
def test_bfloat16_compute_close_to_float32():
  m = hf_model("b0", (1, 1, 1, 1))
  params = cv.from_torch_state_dict(state_dict(m), "b0", depths=(1, 1, 1, 1))
  x = jnp.asarray(images((64, 64), batch=1))
  f32 = jax.jit(pm.build_model("b0", depths=(1, 1, 1, 1)).apply)({"params": params}, x)
  bf16 = jax.jit(pm.build_model("b0", depths=(1, 1, 1, 1), dtype=jnp.bfloat16).apply)(
      {"params": params}, x)
  for a, b in zip(f32, bf16):
    assert b.dtype == jnp.bfloat16
    # LayerNorm outputs are O(1); bf16 has ~3 significant digits.
    assert float(jnp.max(jnp.abs(a - b.astype(jnp.float32)))) < 0.25
    assert float(jnp.mean(jnp.abs(a - b.astype(jnp.float32)))) < 0.02


@pytest.mark.slow
def test_drop_path_only_in_training():
  model = pm.build_model("b0", depths=(1, 1, 1, 1), drop_path_rate=0.5)
  x = jnp.asarray(images((32, 32), batch=4))
  variables = {"params": cv.from_torch_state_dict(state_dict(hf_model("b0", (1, 1, 1, 1))), "b0",
                                                   depths=(1, 1, 1, 1))}
  apply = jax.jit(model.apply, static_argnames="train")
  a = apply(variables, x, train=False)
  b = apply(variables, x, train=False)
  np.testing.assert_array_equal(np.asarray(a[3]), np.asarray(b[3]))
  c = apply(variables, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
  assert not np.allclose(np.asarray(a[3]), np.asarray(c[3]))


def _remat_case():
  depths = (1, 1, 1, 1)
  params = cv.from_torch_state_dict(state_dict(hf_model("b0", depths)), "b0", depths=depths)
  x = jnp.asarray(images((40, 40), batch=1))
  return (params, x, pm.build_model("b0", depths=depths),
          pm.build_model("b0", depths=depths, remat=True))


@pytest.mark.slow
def test_remat_same_outputs():
  params, x, plain, remat = _remat_case()
  a = jax.jit(plain.apply)({"params": params}, x)
  b = jax.jit(remat.apply)({"params": params}, x)
  for u, v in zip(a, b):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-6)


@pytest.mark.slow
def test_remat_same_grads():
  params, x, plain, remat = _remat_case()

  def loss(model, p):
    return sum(jnp.sum(jnp.square(o)) for o in model.apply({"params": p}, x, train=True))

  la, ga = jax.jit(jax.value_and_grad(lambda p: loss(plain, p)))(params)
  lb, gb = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
  np.testing.assert_allclose(float(la), float(lb), rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                         ga, gb)


# b0, b2_linear and b5 (the paper's backbone) by default; the other variants are marked slow.
@pytest.mark.parametrize("variant", [v if v in ("b0", "b2_linear", "b5") else
                                     pytest.param(v, marks=pytest.mark.slow)
                                     for v in sorted(pm.VARIANTS)])
def test_param_count_matches_transformers(variant):
  with torch.device("meta"):
    ref = PvtV2Model(hf_config(variant))
  want = sum(p.numel() for p in ref.parameters())
  got = count_params(pm.init_shapes(variant))
  assert got == want, f"{variant}: ours {got} vs transformers {want}"


def test_bad_images():
  model = pm.build_model("b0", depths=(1, 1, 1, 1))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="rank-4"):
    model.apply(variables, jnp.zeros((32, 32, 3)))
  with pytest.raises(ValueError, match="3 channels"):
    model.apply(variables, jnp.zeros((1, 32, 32, 1)))
  with pytest.raises(ValueError, match="at least 29x29"):
    jax.eval_shape(model.apply, variables, jnp.zeros((1, 28, 64, 3)))
  with pytest.raises(ValueError, match="unknown variant"):
    pm.build_model("b9")


# ---- scan over stacked blocks vs unrolled; the per-block -> stacked layout upgrade ----

SCAN_DEPTHS = (2, 1, 1, 3)   # stages with 1, 2 and 3 blocks


@pytest.fixture(scope="module")
def scan_case():
  """A converted b0 with uneven depths (torch reference weights) and a 40x40 batch."""
  from test_keyframe_speed import FAST
  params = cv.from_torch_state_dict(state_dict(hf_model("b0", SCAN_DEPTHS)), "b0",
                                    depths=SCAN_DEPTHS)
  x = jnp.asarray(images((40, 40), batch=2, seed=5))

  def loss_and_grads(scan, remat=False):
    model = pm.build_model("b0", depths=SCAN_DEPTHS, drop_path_rate=0.3, scan_layers=scan,
                           remat=remat)

    def loss(p):
      outs = model.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
      return sum(jnp.mean(jnp.square(o)) for o in outs), outs

    return jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=FAST)(params)

  return params, x, loss_and_grads


@pytest.mark.slow   # two gradient compiles; the default parity test runs the scanned form
def test_scan_and_unrolled_blocks_agree(scan_case):
  """Same stacked params, drop-path active (same rng): scan == unrolled, outputs and grads."""
  params, _, loss_and_grads = scan_case
  assert params["stage3_blocks"]["mlp"]["fc1"]["kernel"].shape == (3, 256, 1024)
  (la, outs_a), ga = loss_and_grads(scan=True)
  (lb, outs_b), gb = loss_and_grads(scan=False)
  np.testing.assert_allclose(float(la), float(lb), rtol=1e-6)
  for u, v in zip(outs_a, outs_b):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-5)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         ga, gb)
  assert float(jnp.max(jnp.abs(ga["stage3_blocks"]["mlp"]["fc2"]["kernel"][2]))) > 0


@pytest.mark.slow
def test_scan_remat_same_grads(scan_case):
  _, _, loss_and_grads = scan_case
  (la, _), ga = loss_and_grads(scan=True)
  (lb, _), gb = loss_and_grads(scan=True, remat=True)
  np.testing.assert_allclose(float(la), float(lb), rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                         ga, gb)


def test_per_block_layout_upgrade(tmp_path, scan_case):
  """Old per-block trees (and Orbax checkpoints of them) load as the stacked layout."""
  from coprop_jax.convert.checkpoint_io import CheckpointError, restore_params, save_params
  params = scan_case[0]
  old = pm.per_block_layout(params)
  assert sorted(k for k in old if "_block" in k) == [
      "stage0_block0", "stage0_block1", "stage1_block0", "stage2_block0", "stage3_block0",
      "stage3_block1", "stage3_block2"]
  np.testing.assert_array_equal(old["stage3_block2"]["attn"]["query"]["kernel"],
                                params["stage3_blocks"]["attn"]["query"]["kernel"][2])
  assert pm.is_per_block_layout(old) and not pm.is_per_block_layout(params)
  new = pm.upgrade_layout(old)
  assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, new, params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, pm.upgrade_layout(params), params)
  # an Orbax checkpoint written in the old layout (as `python -m coprop_jax.convert` did)
  save_params(old, tmp_path / "old")
  jax.tree_util.tree_map(np.testing.assert_array_equal, restore_params(tmp_path / "old"), params)
  # blocks that cannot be stacked are named
  gap = dict(old)
  gap["stage3_block4"] = gap.pop("stage3_block2")
  with pytest.raises(ValueError, match="stage 3 blocks are numbered"):
    pm.upgrade_layout(gap)
  bad = dict(old, stage0_block1=jax.tree_util.tree_map(lambda a: a[..., :1], old["stage0_block1"]))
  with pytest.raises(ValueError, match="stage0 blocks.*differ in shape"):
    pm.upgrade_layout(bad)
  save_params(bad, tmp_path / "bad")
  with pytest.raises(CheckpointError, match="bad.*differ in shape"):
    restore_params(tmp_path / "bad")
