"""MobileNetV2 (AOT layout) parity vs a small PyTorch reference of the same layout."""
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from coprop_jax.convert import mobilenet_v2 as conv_mnv2
from coprop_jax.convert.checkpoint_io import CheckpointError
from coprop_jax.models.mobilenet_v2 import MobileNetV2, block_specs


def _cbr(i, o, k=1, s=1, d=1, g=1):
  return nn.Sequential(nn.Conv2d(i, o, k, s, (k - 1) // 2 * d, d, g, bias=False),
                       nn.BatchNorm2d(o), nn.ReLU6())


class _IR(nn.Module):
  def __init__(self, i, o, s, d, t):
    super().__init__()
    h = i * t
    layers = ([_cbr(i, h)] if t != 1 else []) + [_cbr(h, h, 3, s, d, h),
                                                  nn.Conv2d(h, o, 1, bias=False), nn.BatchNorm2d(o)]
    self.conv = nn.Sequential(*layers)
    self.res = s == 1 and i == o

  def forward(self, x):
    return x + self.conv(x) if self.res else self.conv(x)


class _Ref(nn.Module):
  def __init__(self):
    super().__init__()
    self.features = nn.Sequential(_cbr(3, 32, 3, 2), *[_IR(*s) for s in block_specs(16)],
                                  _cbr(320, 1280))

  def forward(self, x):
    outs = []
    for a, b in ((0, 4), (4, 7), (7, 14), (14, 19)):
      x = self.features[a:b](x)
      outs.append(x)
    return outs


def test_parity_and_bad_keys():
  torch.manual_seed(0)
  ref = _Ref().eval()
  with torch.no_grad():
    for m in ref.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.0)
        m.bias.normal_(0, 0.1)
  sd = {"encoder." + k: v.numpy() for k, v in ref.state_dict().items()}
  variables = conv_mnv2.from_torch_state_dict(sd, prefix="encoder.")
  x = np.random.default_rng(0).standard_normal((1, 64, 48, 3)).astype(np.float32)
  with torch.no_grad():
    refs = ref(torch.from_numpy(x).permute(0, 3, 1, 2))
  outs = MobileNetV2().apply(variables, jnp.asarray(x))
  assert [o.shape[-1] for o in outs] == [24, 32, 96, 1280]
  for o, r in zip(outs, refs):
    np.testing.assert_allclose(np.asarray(o), r.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)
  sd["encoder.features.99.weight"] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointError, match="unexpected"):
    conv_mnv2.from_torch_state_dict(sd, prefix="encoder.")
