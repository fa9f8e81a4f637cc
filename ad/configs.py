"""Experiment configs: Python files whose `get_config()` returns an ml_collections.ConfigDict.

Overrides use `--config.key.sub=value` on the command line; the value is parsed as the type
of the existing field (lists/tuples as comma-separated or Python literals). The dict is
locked, so a typo in a key is an error that names it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Sequence

import ml_collections

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "quickstart.py")


def resolve(path: str | None) -> str:
  """A path, or a bare name looked up in experiments/configs/ ('quickstart' -> .../quickstart.py)."""
  if path is None:
    return DEFAULT_CONFIG
  if os.path.isfile(path):
    return path
  cand = os.path.join(CONFIG_DIR, path if path.endswith(".py") else path + ".py")
  if os.path.isfile(cand):
    return cand
  known = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_"))
  raise FileNotFoundError(f"config {path!r}: no such file, and not a name in experiments/configs/ (known: {known})")


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  path = resolve(path)
  spec = importlib.util.spec_from_file_location(f"_ad_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path}: a config file must define get_config() returning a ConfigDict")
  cfg = module.get_config()
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ValueError(f"{path}: get_config() returned {type(cfg).__name__}, expected ml_collections.ConfigDict")
  cfg.lock()
  for item in overrides:
    apply_override(cfg, item, path)
  return cfg


def apply_override(cfg: ml_collections.ConfigDict, item: str, source: str = "config") -> None:
  if "=" not in item:
    raise ValueError(f"override {item!r}: expected key=value (for example model.num_blocks=4)")
  key, raw = item.split("=", 1)
  key = key.strip().removeprefix("config.")
  parts = key.split(".")
  node = cfg
  for p in parts[:-1]:
    if p not in node:
      raise KeyError(f"override {item!r}: {source} has no key {key!r} (no {p!r}; known: {sorted(node.keys())})")
    node = node[p]
  leaf = parts[-1]
  if leaf not in node:
    raise KeyError(f"override {item!r}: {source} has no key {key!r} (known at this level: {sorted(node.keys())})")
  node[leaf] = _parse_like(node[leaf], raw, key)


def _parse_like(current, raw: str, key: str):
  if isinstance(current, bool):
    if raw.lower() in ("1", "true", "yes"):
      return True
    if raw.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"override {key}={raw!r}: expected a boolean")
  if isinstance(current, (list, tuple)):
    try:
      val = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      val = [v.strip() for v in raw.split(",") if v.strip()]
    if not isinstance(val, (list, tuple)):
      val = [val]
    if current and isinstance(current[0], int):
      try:
        val = [int(v) for v in val]
      except ValueError:
        raise ValueError(f"override {key}={raw!r}: expected integers") from None
    return type(current)(val)
  if isinstance(current, int):
    try:
      return int(raw)
    except ValueError:
      raise ValueError(f"override {key}={raw!r}: expected an integer") from None
  if isinstance(current, float):
    try:
      return float(raw)
    except ValueError:
      raise ValueError(f"override {key}={raw!r}: expected a number") from None
  return raw
