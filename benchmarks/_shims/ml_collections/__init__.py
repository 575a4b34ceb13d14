"""A minimal stand-in for `ml_collections.ConfigDict`, put on the path by benchmarks/accelerator.py
ONLY when the real package is not installed (accelerator images often lack it). It covers what
`configs/` and the library read: nested attribute / item access, `get`, `in`, `items`, `lock`."""
from __future__ import annotations

import copy


class ConfigDict:
  def __init__(self, d=None, **kw):
    object.__setattr__(self, "_d", {})
    for k, v in dict(d or {}, **kw).items():
      self[k] = v

  def __setitem__(self, k, v):
    self._d[k] = ConfigDict(v) if isinstance(v, dict) else v

  def __getitem__(self, k):
    return self._d[k]

  def __setattr__(self, k, v):
    self[k] = v

  def __getattr__(self, k):
    try:
      return self._d[k]
    except KeyError:
      raise AttributeError(k) from None

  def __contains__(self, k):
    return k in self._d

  def __iter__(self):
    return iter(self._d)

  def get(self, k, default=None):
    return self._d.get(k, default)

  def items(self):
    return self._d.items()

  def keys(self):
    return self._d.keys()

  def values(self):
    return self._d.values()

  def lock(self):
    return self

  def unlock(self):
    return self

  def to_dict(self):
    return {k: v.to_dict() if isinstance(v, ConfigDict) else v for k, v in self._d.items()}

  def copy_and_resolve_references(self):
    return copy.deepcopy(self)

  def __repr__(self):
    return f"ConfigDict({self.to_dict()!r})"
