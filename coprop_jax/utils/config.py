"""Config helpers: `key=value` config strings, command-line style overrides, strict loading.

Experiment files in `configs/` expose `get_config(arg=None)`. They are used in two ways:

* from a command line, through absl's `config_flags.DEFINE_config_file("config", lock_config=True)`:
  `python -m coprop_jax.train --config configs/coprop.py:dataset=ms3 --config.train.lr=2e-4`;
* from Python (tests, notebooks): `load_config("configs/coprop.py:dataset=ms3", ["train.lr=2e-4"])`.

Either way the config is locked, so an override of an unknown key is an error, never a silent no-op.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
from typing import Any, Iterable, Mapping, Optional

import ml_collections


class ConfigError(ValueError):
  """A config string, override or file is not valid for the experiment."""


_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def parse_bool(text: str, what: str) -> bool:
  """'true'/'false' (also 1/0, yes/no; any case) -> bool; anything else is a ConfigError."""
  t = text.strip().lower()
  if t in _TRUE:
    return True
  if t in _FALSE:
    return False
  raise ConfigError(f"{what}: expected a boolean (true/false), got '{text}'")


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # bare words are strings: dataset=ms3


def parse_config_string(arg: Optional[str], defaults: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Parses `"k1=v1,k2=v2"` against `defaults`; an unknown key or a bad type raises ConfigError.

  Values are Python literals where they parse (`layers=(0,1,2,3)` needs no quoting of
  numbers; use `+` to separate tuple items inside a comma-separated string: `levels=0+1+2+3`).
  """
  out = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      raise ConfigError(f"config string item '{item}' is not of the form key=value; "
                        f"known keys: {sorted(defaults)}")
    key, value = (s.strip() for s in item.split("=", 1))
    if key not in defaults:
      raise ConfigError(f"unknown config string key '{key}'; known keys: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, tuple):
      parsed = tuple(_literal(v) for v in value.split("+") if v != "") if value not in ("", "()") else ()
    else:
      parsed = _literal(value)
      if isinstance(default, bool):
        parsed = parse_bool(value, f"config string key '{key}'")
      elif isinstance(default, float) and isinstance(parsed, int):
        parsed = float(parsed)
    if default is not None and not isinstance(parsed, type(default)):
      raise ConfigError(f"config string key '{key}': expected {type(default).__name__}, got '{value}'")
    out[key] = parsed
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies `a.b.c=value` overrides (a leading `--config.` is accepted) to a locked config.

  Raises ConfigError naming the key when it does not exist or the value's type does not fit.
  """
  for ov in overrides:
    text = ov[len("--config."):] if ov.startswith("--config.") else ov
    if "=" not in text:
      raise ConfigError(f"override '{ov}' is not of the form key=value")
    path, value = text.split("=", 1)
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      if not isinstance(node, ml_collections.ConfigDict) or p not in node:
        raise ConfigError(f"override '{ov}': unknown config key '{path}' (no section '{p}')")
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"override '{ov}': unknown config key '{path}'; "
                        f"known keys here: {sorted(node.keys())}")
    old = node[leaf]
    new = _literal(value)
    if isinstance(old, tuple) and not isinstance(new, tuple):
      new = (new,) if not isinstance(new, list) else tuple(new)
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
      new = float(new)
    if isinstance(old, bool):
      new = parse_bool(value, f"override '{ov}'")
    try:
      node[leaf] = new
    except (TypeError, ValueError) as e:
      raise ConfigError(f"override '{ov}': {e}") from e
  return config


def resolve_path(path: str, workdir: str) -> str:
  """A config path with `{workdir}` (e.g. the runlocal configs' data paths) -> absolute path
  under the run's workdir; `~` is expanded; "" stays "" (meaning "not set")."""
  if not path:
    return path
  return os.path.abspath(os.path.expanduser(path.replace("{workdir}", str(workdir))))


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:config_string]`, locks it and applies `overrides`."""
  path_str, _, arg = spec.partition(":")
  path = pathlib.Path(path_str)
  if not path.exists():
    raise ConfigError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"_coprop_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path} defines no get_config()")
  config = module.get_config(arg) if arg else module.get_config()
  config.lock()
  return apply_overrides(config, overrides)
