"""Image normalisation shared by the data pipeline, the models and the trainer.

Every network here (PVT-v2, ResNet-50, MobileNetV2 as AOT uses it) expects ImageNet-normalised
RGB: (x / 255 - mean) / std. numpy only, so host-side data code can use it without JAX.
"""
from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_uint8(images):
  """uint8 RGB [..., 3] (numpy or jax array) -> float32 ImageNet-normalised, same array type."""
  return (images.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
