"""Helpers for the PyTorch reference models the parity tests build."""
import torch


def randomise_batchnorm(model, seed: int = 1):
  """Gives every BatchNorm2d non-trivial statistics and affine weights (fresh ones are identity),
  so a conversion that drops or swaps them shows in the outputs. Returns `model`."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for mod in model.modules():
      if isinstance(mod, torch.nn.BatchNorm2d):
        n = mod.num_features
        mod.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
        mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        mod.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
        mod.bias.copy_(torch.randn(n, generator=g) * 0.1)
  return model
