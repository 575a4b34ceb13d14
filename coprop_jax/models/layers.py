"""Building blocks shared by every network in `coprop_jax.models`.

Conventions (every module in this package follows them):
  * NHWC images and feature maps; token sequences are [B, N, C].
  * Parameters are float32 (`param_dtype`); computation runs in `dtype` (float32 by default,
    bfloat16 on accelerators). Normalisation statistics are computed in float32.
  * Dense kernels are [in, out] and conv kernels [kh, kw, in, out]; the converters in
    `coprop_jax.convert` transpose PyTorch weights into this layout.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Array = jax.Array


def check_image(x: Array, name: str = "images", channels: int = 3) -> None:
  """Raises a clear error unless `x` is an NHWC batch [B, H, W, channels]."""
  if x.ndim != 4:
    raise ValueError(f"{name}: expected a rank-4 NHWC array [B, H, W, {channels}], "
                     f"got shape {tuple(x.shape)} (rank {x.ndim})")
  if x.shape[-1] != channels:
    raise ValueError(f"{name}: expected {channels} channels in the last axis (NHWC), "
                     f"got shape {tuple(x.shape)}")


class LayerNorm(nn.Module):
  """LayerNorm over the last axis, statistics in float32, output in `dtype`.

  Parameter names (`scale`, `bias`) match `flax.linen.LayerNorm`.
  """
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    feat = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (feat,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (feat,), jnp.float32)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)


class GroupNorm(nn.Module):
  """GroupNorm over the channel axis of [..., C] (PyTorch semantics), statistics in float32.

  For NHWC maps the statistics run over H, W and the channels of each group, as
  `torch.nn.GroupNorm` does for NCHW.
  """
  num_groups: int
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f"GroupNorm: {c} channels not divisible by {self.num_groups} groups")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    x32 = x.astype(jnp.float32)
    shape = x.shape
    g = x32.reshape(shape[0], -1, self.num_groups, c // self.num_groups)
    mean = jnp.mean(g, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 3), keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = g.reshape(shape) * scale + bias
    return y.astype(self.dtype)


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics (inference mode), as AOT and detection backbones use it.

  `mean`/`var` live in the `batch_stats` collection and are never updated; `scale`/`bias` are
  ordinary parameters (trainable unless the optimizer masks them). Computed in float32.
  """
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32)).value
    var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32)).value
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    y = x.astype(jnp.float32) * mul + (bias - mean * mul)
    return y.astype(self.dtype)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example with probability `rate`.

  The call's `rate` (a float or a traced scalar, e.g. one per layer of a scan over stacked
  layers) overrides the attribute."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True, rate: Any = None) -> Array:
    rate = self.rate if rate is None else rate
    if deterministic or (isinstance(rate, (int, float)) and rate == 0.0):
      return x
    keep = 1.0 - rate
    rng = self.make_rng("dropout")
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(rng, keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Mlp(nn.Module):
  """Dense -> activation -> Dense, names `fc1`/`fc2`."""
  hidden_features: int
  out_features: Optional[int] = None
  activation: Callable[[Array], Array] = nn.gelu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    out = self.out_features or x.shape[-1]
    x = nn.Dense(self.hidden_features, dtype=self.dtype, name="fc1")(x)
    x = self.activation(x)
    return nn.Dense(out, dtype=self.dtype, name="fc2")(x)


def gelu_exact(x: Array) -> Array:
  """GELU with the exact erf form (PyTorch's default `nn.GELU()`)."""
  return nn.gelu(x, approximate=False)


ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def dot_product_attention(q: Array, k: Array, v: Array, mask: Optional[Array] = None,
                          bias: Optional[Array] = None, implementation: str = "auto") -> Array:
  """Softmax attention. q: [B, Nq, H, D], k/v: [B, Nk, H, D] -> [B, Nq, H, D].

  Scores are scaled by 1/sqrt(D) and the softmax runs in float32. `mask` broadcasts to
  [B, H, Nq, Nk] (True = attend); `bias` is added to the scores before the softmax.

  Computed by `jax.nn.dot_product_attention`. implementation: "xla" (the XLA graph, any
  backend), "cudnn" (cuDNN fused attention: NVIDIA GPU, bfloat16/float16, head dim a multiple
  of 8 up to 128) or "auto" (default): cuDNN when the default backend is a GPU and the dtype and
  shapes allow, XLA otherwise -- so on CPU and TPU always XLA.
  """
  if implementation not in ATTENTION_IMPLS:
    raise ValueError(f"attention implementation must be one of {ATTENTION_IMPLS}, "
                     f"got {implementation!r}")
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  if bias is not None:
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  impl = None
  if implementation == "cudnn" or (implementation == "auto" and _cudnn_may_run(q, k)):
    impl = "cudnn"
  if impl == "cudnn" and implementation == "auto" and not _cudnn_traces(q, k, v, bias, mask):
    impl = None
  return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl)


def _cudnn_traces(q: Array, k: Array, v: Array, bias: Optional[Array],
                  mask: Optional[Array]) -> bool:
  """Whether cuDNN attention accepts these shapes in the forward AND the backward pass.

  cuDNN's checks run when a rule is traced: the training forward rule is stricter than the
  inference call (seen on an H200: "Unsupported sequence length Q 3136, KV 49" for PVT-v2's first
  stage under `jax.grad`), so probing only the forward call let training fail. The probe traces
  `jax.vjp` abstractly (`jax.eval_shape`, nothing runs)."""
  def f(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation="cudnn")

  def fwd_bwd(q, k, v):
    out, pull = jax.vjp(f, q, k, v)
    return pull(out)

  spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  try:
    jax.eval_shape(fwd_bwd, spec(q), spec(k), spec(v))
    return True
  except (NotImplementedError, ValueError, RuntimeError, TypeError):
    return False


def _cudnn_may_run(q: Array, k: Array) -> bool:
  d = q.shape[-1]
  return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
          and k.dtype == q.dtype and d % 8 == 0 and d <= 128)


class MultiHeadAttention(nn.Module):
  """Multi-head attention with separate `query`/`key`/`value`/`out` Dense layers.

  Separate projections (rather than a fused qkv kernel) keep PyTorch checkpoint conversion a
  transpose per matrix.

  Attributes:
    num_heads: number of heads; `qkv_features` must divide by it.
    qkv_features: width of q/k/v (defaults to the query's width).
    out_features: output width (defaults to the query's width).
    use_bias: bias in the q/k/v projections (the output projection always has one).
    attention_impl: "auto", "xla" or "cudnn" (see `dot_product_attention`).
  Call:
    inputs_q: [B, Nq, Cq]; inputs_kv: [B, Nk, Ckv] (defaults to inputs_q);
    inputs_v: optional separate value input [B, Nk, Cv] (AOT feeds v differently from k);
    mask: broadcastable to [B, H, Nq, Nk], True = attend. Returns [B, Nq, out_features].
  """
  num_heads: int
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  use_bias: bool = True
  attention_impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Optional[Array] = None,
               inputs_v: Optional[Array] = None, mask: Optional[Array] = None) -> Array:
    inputs_kv = inputs_q if inputs_kv is None else inputs_kv
    inputs_v = inputs_kv if inputs_v is None else inputs_v
    feat = self.qkv_features or inputs_q.shape[-1]
    if feat % self.num_heads:
      raise ValueError(f"MultiHeadAttention: {feat} features not divisible by {self.num_heads} heads")
    head_dim = feat // self.num_heads
    dense = lambda name: nn.Dense(feat, use_bias=self.use_bias, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(t.shape[:-1] + (self.num_heads, head_dim))
    q = split(dense("query")(inputs_q))
    k = split(dense("key")(inputs_kv))
    v = split(dense("value")(inputs_v))
    out = dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)
    out = out.reshape(out.shape[:-2] + (feat,))
    return nn.Dense(self.out_features or inputs_q.shape[-1], dtype=self.dtype, name="out")(out)


def sine_position_embedding_2d(height: int, width: int, num_pos_feats: int = 128,
                               temperature: float = 10000.0, normalize: bool = True,
                               scale: float = 2 * math.pi, dtype: Dtype = jnp.float32,
                               zero_based: bool = False) -> Array:
  """2-D sine position embedding (DETR style, no padding mask) -> [height, width, 2 * num_pos_feats].

  Positions are 1..H / 1..W (DETR's cumsum of an all-ones mask); with `normalize` they are divided
  by H / W (+1e-6) and multiplied by `scale`. Channel order is (y features, x features), each
  interleaving sin/cos like DETR. Used by the Keyframe Processor. `zero_based=True` is AOT's
  variant (positions 0..H-1 divided by H-1; `aot_position_embedding` below),
  which the propagator must use to match AOT checkpoints.
  """
  first = 0 if zero_based else 1
  y = jnp.arange(first, height + first, dtype=jnp.float32)[:, None] * jnp.ones((1, width))
  x = jnp.arange(first, width + first, dtype=jnp.float32)[None, :] * jnp.ones((height, 1))
  if normalize:
    eps = 1e-6
    y = y / (height + first - 1 + eps) * scale
    x = x / (width + first - 1 + eps) * scale
  dim_t = jnp.arange(num_pos_feats, dtype=jnp.float32)
  dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
  px = x[..., None] / dim_t
  py = y[..., None] / dim_t
  px = jnp.stack([jnp.sin(px[..., 0::2]), jnp.cos(px[..., 1::2])], axis=-1).reshape(height, width, -1)
  py = jnp.stack([jnp.sin(py[..., 0::2]), jnp.cos(py[..., 1::2])], axis=-1).reshape(height, width, -1)
  return jnp.concatenate([py, px], axis=-1).astype(dtype)


def depthwise_shift(x, kernel, stride: int = 1, dilation: int = 1, pad: int = 1, bias=None):
  """Depthwise conv as k*k strided, shifted multiply-adds (float32 accumulation).

  x: [B, H, W, C], kernel: [k, k, 1, C] (Flax grouped-conv layout), symmetric zero padding
  `pad`, optional `bias` [C] -> [B, Ho, Wo, C] float32; same result as
  `lax.conv_general_dilated(..., feature_group_count=C)` (+ bias).
  XLA:CPU runs grouped convolutions ~20x slower than this fused elementwise form
  (benchmarks/RESULTS.md, PVT-v2 section); on GPU/TPU both are fine. With stride 1 and "same"
  padding (2 * pad == dilation * (k - 1)) the backward pass is written out (custom VJP): the
  input gradient is the same shifted form with the flipped kernel, the kernel gradient k*k
  float32 sums -- 2.4x faster on XLA:CPU than differentiating the shifted form, whose kernel
  gradient XLA turns into transposes and batched dots.
  """
  k = kernel.shape[0]
  if stride == 1 and 2 * pad == dilation * (k - 1):
    y = _depthwise_same(x, kernel, dilation)
  else:
    y = _depthwise_shift(x, kernel, stride, dilation, pad)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y


def _depthwise_shift(x, kernel, stride: int, dilation: int, pad: int):
  b, h, w, c = x.shape
  k = kernel.shape[0]
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  y = jnp.zeros((b, ho, wo, c), jnp.float32)
  for i in range(k):
    for j in range(k):
      sl = jax.lax.slice(xp, (0, i * dilation, j * dilation, 0),
                         (b, i * dilation + (ho - 1) * stride + 1,
                          j * dilation + (wo - 1) * stride + 1, c), (1, stride, stride, 1))
      y = y + sl.astype(jnp.float32) * kernel[i, j, 0].astype(jnp.float32)
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_same(x, kernel, dilation: int):
  """Stride-1 "same" depthwise conv [B, H, W, C] -> [B, H, W, C] float32 (see depthwise_shift)."""
  return _depthwise_shift(x, kernel, 1, dilation, dilation * (kernel.shape[0] - 1) // 2)


def _depthwise_same_fwd(x, kernel, dilation):
  return _depthwise_same(x, kernel, dilation), (x, kernel)


def _depthwise_same_bwd(dilation, res, dy):
  x, kernel = res
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  # y[p] = sum_t x[p + d*t - pad] * w[t]  =>  dx[q] = sum_t dy[q - d*t + pad] * w[t]: the same
  # "same" correlation of dy with the flipped kernel.
  dx = _depthwise_shift(dy, jnp.flip(kernel, (0, 1)), 1, dilation, pad).astype(x.dtype)
  b, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))).astype(jnp.float32)
  dy = dy.astype(jnp.float32)
  taps = [jnp.sum(xp[:, i * dilation:i * dilation + h, j * dilation:j * dilation + w, :] * dy,
                  axis=(0, 1, 2)) for i in range(k) for j in range(k)]
  dk = jnp.stack(taps).reshape(k, k, 1, c).astype(kernel.dtype)
  return dx, dk


_depthwise_same.defvjp(_depthwise_same_fwd, _depthwise_same_bwd)


def conv_same(x: Array, kernel: Array) -> Array:
  """Stride-1 convolution with symmetric zero padding k // 2 (odd k): [B, H, W, Cin] x
  [k, k, Cin, F] -> [B, H, W, F] in x's dtype; the same result as `lax.conv_general_dilated`
  (and `nn.Conv(padding="SAME")`), with a backward pass that is fast on every backend.

  1x1: one matmul over the channels (XLA:CPU computes the kernel gradient of a 1x1 convolution
  ~25x slower than the equivalent matmul). k x k (custom VJP): forward `lax.conv_general_dilated`;
  input gradient the convolution of dy with the flipped, in/out-swapped kernel (what JAX's own
  transpose rule computes); kernel gradient k*k matmuls of shifted input views with dy,
  accumulated in float32 -- on XLA:CPU ~4x faster than the kernel-gradient convolution
  (benchmarks/RESULTS.md, KPF train step).
  """
  k = kernel.shape[0]
  if kernel.shape[1] != k or k % 2 == 0:
    raise ValueError(f"conv_same: needs an odd square kernel, got {kernel.shape[:2]}")
  if kernel.shape[2] != x.shape[-1]:
    raise ValueError(f"conv_same: kernel expects {kernel.shape[2]} input channels, input has "
                     f"{x.shape[-1]}")
  if k == 1:
    return jnp.dot(x.reshape(-1, x.shape[-1]), kernel[0, 0]).reshape(x.shape[:-1] + (-1,))
  return _conv_same(x, kernel)


def _conv_lax(x, kernel):
  p = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((p, p), (p, p)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def _conv_same(x, kernel):
  return _conv_lax(x, kernel)


def _conv_same_fwd(x, kernel):
  return _conv_lax(x, kernel), (x, kernel)


def _conv_same_bwd(res, dy):
  x, kernel = res
  k = kernel.shape[0]
  p = k // 2
  dx = _conv_lax(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)).astype(x.dtype)
  b, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  dy2 = dy.reshape(-1, dy.shape[-1])
  taps = [jax.lax.dot_general(xp[:, i:i + h, j:j + w, :].reshape(-1, c), dy2,
                              (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
          for i in range(k) for j in range(k)]
  dk = jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)
  return dx, dk


_conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


class Conv(nn.Module):
  """k x k convolution, stride 1, "SAME" zero padding (odd k), NHWC, via `conv_same`.

  Parameters exactly as `nn.Conv(features, (k, k), padding="SAME")`: `kernel` [k, k, Cin, F]
  (lecun-normal init) and `bias` [F] (zeros) when `use_bias`. [B, H, W, Cin] -> [B, H, W, F] in
  `dtype`.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    y = conv_same(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                         jnp.float32).astype(self.dtype)
    return y


def scan_layers(layer: nn.Module, x: Array, *shared: Array, length: int, scan: bool = True,
                remat: bool = False, per_layer: Optional[dict] = None, **static: Any) -> Array:
  """Applies `length` copies of the unbound `layer` in sequence, maxtext `scan_layers` style.

  x_{j+1} = layer(x_j, *shared, **per_layer[j], **static). The copies' parameters live under the
  layer's name, every leaf stacked on a leading axis of size `length`. `shared` inputs are the
  same for every copy; `per_layer` maps keyword names to arrays with a leading `length` axis
  (e.g. each block's drop-path rate); `static` keywords are Python values (e.g. train=True).
  scan=True: one `nn.scan` body, compiled once; False: the same computation fully unrolled
  (`unroll=length`), same parameters and outputs. remat: `nn.remat` around each copy (its
  activations are recomputed in the backward pass). "params" and "dropout" rngs are split per
  copy. length 0 returns x.
  """
  if length == 0:
    return x
  names = tuple(per_layer or {})
  n_shared = len(shared)

  def body(mdl, carry, *args):
    kw = dict(zip(names, args[n_shared:]), **static)
    return mdl(carry, *args[:n_shared], **kw), None

  if remat:
    body = nn.remat(body, prevent_cse=not scan)
  run = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * n_shared + (0,) * len(names), length=length,
                unroll=1 if scan else length)
  x, _ = run(layer, x, *shared, *((per_layer or {})[k] for k in names))
  return x


def stack_layer_params(trees: Sequence[Any], what: str) -> Any:
  """Per-layer parameter trees -> one tree with every leaf stacked on a leading axis (numpy):
  the layout of `scan_layers`. Raises ValueError naming `what` when the trees differ in
  structure or in a leaf's shape."""
  struct = jax.tree_util.tree_structure(trees[0])
  for j, t in enumerate(trees[1:], 1):
    if jax.tree_util.tree_structure(t) != struct:
      raise ValueError(f"{what}: layer {j} has other parameters than layer 0")

  def stack(path, *leaves):
    shapes = sorted({tuple(np.shape(a)) for a in leaves})
    if len(shapes) != 1:
      raise ValueError(f"{what}: the layers' {jax.tree_util.keystr(path)} differ in shape: "
                       f"{shapes}")
    return np.stack([np.asarray(a) for a in leaves])

  return jax.tree_util.tree_map_with_path(stack, *trees)


def unstack_layer_params(tree: Any) -> list:
  """The inverse of `stack_layer_params`: one tree per index of the leading axis (numpy arrays,
  or `jax.ShapeDtypeStruct`s for a tree of those)."""
  def index(a, j):
    if isinstance(a, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(a.shape[1:], a.dtype)
    return np.asarray(a)[j]

  n = int(np.shape(jax.tree_util.tree_leaves(tree)[0])[0])
  return [jax.tree_util.tree_map(lambda a, j=j: index(a, j), tree) for j in range(n)]


def count_params(params: Any) -> int:
  """Number of scalars in a parameter pytree (works on `jax.eval_shape` outputs too)."""
  return int(sum(math.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------- AOT kernels
# Used by the propagator (coprop_jax/models/propagator.py); semantics as aot-benchmark's.
NEG_INF = -1e9  # logit of a masked key / slot (exp underflows to exactly 0 in float32)


def aot_position_embedding(h: int, w: int, num_pos_feats: int = 128,
                           temperature: float = 10000.0) -> Array:
  """AOT PositionEmbeddingSine(normalize=True) -> [h, w, 2*num_pos_feats].

  Unlike DETR (cumsum, 1..h over h) AOT uses coordinates 0..h-1 divided by (h-1 + 1e-6), times 2*pi;
  channels are (y, x) features, each interleaving sin/cos.
  """
  return sine_position_embedding_2d(h, w, num_pos_feats, temperature, zero_based=True)


def _interp_matrix(n_out: int, n_in: int) -> Array:
  """[n_out, n_in] bilinear weights with align_corners=True (torch F.interpolate semantics)."""
  if n_in == 1 or n_out == 1:
    return jnp.zeros((n_out, n_in), jnp.float32).at[:, 0].set(1.0)
  src = jnp.arange(n_out, dtype=jnp.float32) * ((n_in - 1) / (n_out - 1))
  lo = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, n_in - 2)
  frac = src - lo
  return (jax.nn.one_hot(lo, n_in) * (1 - frac)[:, None] + jax.nn.one_hot(lo + 1, n_in) * frac[:, None])


def resize_align_corners(x: Array, out_hw) -> Array:
  """Bilinear resize of [B, h, w, C] to [B, *out_hw, C] with align_corners=True (AOT's setting)."""
  mh = _interp_matrix(out_hw[0], x.shape[1]).astype(x.dtype)
  mw = _interp_matrix(out_hw[1], x.shape[2]).astype(x.dtype)
  return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw)


def local_attention(q: Array, k: Array, v: Array, rel_k: Array, rel_v: Array, max_dis: int,
                    dense: Optional[bool] = None) -> Array:
  """Windowed attention of each query over a (2*max_dis+1)^2 window of k/v (AOT short-term).

  q, k, v: [B, h, w, H, D] (q already scaled); rel_k: [B, h, w, H, W2] relative-position logits;
  rel_v: [H, D, W2] relative value bias. Window positions outside the image are masked.
  Implemented as one gather of the W2 shifted copies of the zero-padded k/v (no identity-kernel
  convolution, no (hw x hw) matrix); for maps with h*w <= 2 * W2 (`dense` None) or with
  dense=True, as masked attention over all h*w keys (`_local_attention_dense`, far less data
  moved at AOT's 14x14). Both forms give the same result.
  Returns [B, h, w, H, D].
  """
  h, w = q.shape[1:3]
  win = 2 * max_dis + 1
  dy, dx = np.divmod(np.arange(win * win), win)  # window index j = dy*win + dx (torch unfold order)
  oy = np.arange(h)[:, None, None] + dy[None, None, :]  # [h, 1, W2] rows in the padded map
  ox = np.arange(w)[None, :, None] + dx[None, None, :]  # [1, w, W2]
  valid = ((oy >= max_dis) & (oy < h + max_dis)) & ((ox >= max_dis) & (ox < w + max_dis))  # [h,w,W2]
  if (h * w <= 2 * win * win) if dense is None else dense:
    return _local_attention_dense(q, k, v, rel_k, rel_v, max_dis, oy - max_dis, ox - max_dis, valid)

  def patches(x):  # [B,h,w,H,D] -> [B,h,w,W2,H,D]: one gather of W2 shifted copies, no matmul
    xp = jnp.pad(x, ((0, 0), (max_dis, max_dis), (max_dis, max_dis), (0, 0), (0, 0)))
    return xp[:, oy, ox]

  kp, vp = patches(k), patches(v)
  logits = jnp.einsum("bhwnd,bhwknd->bhwnk", q, kp).astype(jnp.float32) + rel_k.astype(jnp.float32)
  logits = jnp.where(jnp.asarray(valid)[None, :, :, None, :], logits, NEG_INF)
  attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhwnk,bhwknd->bhwnd", attn, vp)
  return out + jnp.einsum("bhwnk,ndk->bhwnd", attn, rel_v.astype(v.dtype))


def _local_attention_dense(q, k, v, rel_k, rel_v, max_dis, ky, kx, valid):
  """`local_attention` for small maps (h*w <= 2 * W2, e.g. AOT's 1/16 map of a 224 image, 14x14
  with a 15x15 window): every query against all h*w keys (two matmuls), keys outside its window
  masked, the relative-position logits and value bias moved between the window layout and the
  key layout by static gathers. Same result as the patch form (which materialises W2 shifted
  copies of k and v: ~20x the data at 14x14). ky, kx: key row/column of each (query, window
  position) [h, 1 | w, W2] (may be outside the map where `valid` [h, w, W2] is False)."""
  b, h, w, nh, d = q.shape
  n, w2 = h * w, rel_k.shape[-1]
  win = 2 * max_dis + 1
  qy, qx = np.divmod(np.arange(n), w)
  ddy, ddx = qy[None, :] - qy[:, None], qx[None, :] - qx[:, None]        # key - query [Nq, Nk]
  in_win = (np.abs(ddy) <= max_dis) & (np.abs(ddx) <= max_dis)
  off = np.where(in_win, (ddy + max_dis) * win + (ddx + max_dis), 0)     # window index [Nq, Nk]
  key = (np.clip(ky, 0, h - 1) * w + np.clip(kx, 0, w - 1)).reshape(n, w2)  # key index [Nq, W2]
  rows = np.arange(n)[:, None]
  qf, kf, vf = (x.reshape(b, n, nh, d) for x in (q, k, v))
  rel = jnp.moveaxis(rel_k.reshape(b, n, nh, w2), 1, 2).astype(jnp.float32)  # [B, H, Nq, W2]
  logits = jnp.einsum("bqhd,bkhd->bhqk", qf, kf).astype(jnp.float32) + rel[:, :, rows, off]
  logits = jnp.where(jnp.asarray(in_win)[None, None], logits, NEG_INF)
  attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)                 # [B, H, Nq, Nk]
  out = jnp.einsum("bhqk,bkhd->bqhd", attn, vf)
  attn_win = jnp.where(jnp.asarray(valid.reshape(n, w2))[None, None], attn[:, :, rows, key], 0)
  out = out + jnp.einsum("bhqj,hdj->bqhd", attn_win, rel_v.astype(v.dtype))
  return out.reshape(b, h, w, nh, d)


def memory_attention(q: Array, k: Array, v: Array, valid: Array) -> Array:
  """Attention over a slot memory (AOT long-term). q: [B,N,H,D] (scaled); k/v: [B,S,N,H,D];
  valid: [B,S] bool (invalid slots get NEG_INF logits). Returns [B,N,H,D]."""
  b, s, n, nh, d = k.shape
  logits = jnp.einsum("bqhd,bsnhd->bhqsn", q, k).astype(jnp.float32)
  logits = jnp.where(valid[:, None, None, :, None], logits, NEG_INF)
  logits = logits.reshape(b, nh, q.shape[1], s * n)
  attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype).reshape(b, nh, q.shape[1], s, n)
  return jnp.einsum("bhqsn,bsnhd->bqhd", attn, v)
