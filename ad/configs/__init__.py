"""Experiment configs: Python files whose `get_config()` returns an ml_collections.ConfigDict.
The named ones ship in this package (ad/configs/NAME.py; common.py builds their sections from the
typed settings' defaults, so a config writes only what it changes); any other is a path.

Overrides use `--config.key.sub=value` on the command line; the value is parsed as the type
of the existing field (lists/tuples as comma-separated or Python literals). The dict is
locked, so a typo in a key is an error that names it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
from typing import Sequence

import ml_collections

CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))  # the named configs ship beside this loader
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "quickstart.py")


def resolve(path: str | None) -> str:
  """A bare name is a config of ad/configs/ ('quickstart' -> .../quickstart.py), never a
  file of that name in the working directory; anything with a '/' or ending in '.py' is a path
  to a Python config file. Configs are Python and are executed: use only configs you trust."""
  if path is None:
    return DEFAULT_CONFIG
  known = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith(("_", "common")))
  if os.sep not in path and "/" not in path and not path.endswith(".py"):
    cand = os.path.join(CONFIG_DIR, path + ".py")
    if os.path.isfile(cand):
      return cand
    hint = f"; for the file in this directory pass --config ./{path}.py" if os.path.isfile(path + ".py") else ""
    raise FileNotFoundError(f"config {path!r}: not a config name in ad/configs/ (known: {known}){hint}")
  if not path.endswith(".py"):
    raise ValueError(f"config {path!r}: a config file must be a Python file ending in .py (names: {known})")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config {path!r}: no such file (config names: {known})")
  return path


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  path = resolve(path)
  spec = importlib.util.spec_from_file_location(f"_ad_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ValueError(f"{path}, line {e.lineno}: the config is not valid Python ({e.msg})") from None
  except Exception as e:
    raise ValueError(f"{path}: running the config failed: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path}: a config file must define get_config() returning a ConfigDict")
  try:
    cfg = module.get_config()
  except Exception as e:
    raise ValueError(f"{path}: get_config() failed: {type(e).__name__}: {e}") from None
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
  for i, p in enumerate(parts[:-1]):
    if not isinstance(node, ml_collections.ConfigDict):
      raise ValueError(f"override {item!r}: {'.'.join(parts[:i])} is a value ({type(node).__name__}), not a section")
    if p not in node:
      raise KeyError(f"override {item!r}: {source} has no key {key!r} (no {p!r}; known: {sorted(node.keys())})")
    node = node[p]
  leaf = parts[-1]
  if not isinstance(node, ml_collections.ConfigDict):
    raise ValueError(f"override {item!r}: {'.'.join(parts[:-1])} is a value ({type(node).__name__}), not a section")
  if leaf not in node:
    raise KeyError(f"override {item!r}: {source} has no key {key!r} (known at this level: {sorted(node.keys())})")
  if isinstance(node[leaf], ml_collections.ConfigDict):
    raise ValueError(f"override {item!r}: {key} is a section; set one of its fields ({sorted(node[leaf].keys())})")
  try:
    node[leaf] = _parse_like(node[leaf], raw, key)
  except TypeError as e:  # ml_collections refuses a value of another type
    raise ValueError(f"override {item!r}: {key} holds a {type(node[leaf]).__name__}; {e}") from None


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
    if current and isinstance(current[0], dict) and not all(isinstance(v, dict) for v in val):
      raise ValueError(f"override {key}={raw!r}: expected a list of dicts like {current[0]}")
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


def check_range(name: str, value, *, low=None, high=None, low_open: bool = False, high_open: bool = False) -> None:
  """One place for numeric settings' ranges: `value` must be a finite number within [low, high]
  (open ends as asked), else a ValueError that names the setting, the value and the range."""
  import math
  lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
  hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
  want = " and ".join(x for x in (lo, hi) if x) or "a finite number"
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name}={value!r}: expected a number {want}") from None
  ok = math.isfinite(v) and (low is None or (v > low if low_open else v >= low)) and (
      high is None or (v < high if high_open else v <= high))
  if not ok:
    raise ValueError(f"{name}={value!r}: expected a finite number {want}")


def section(cls, given, name: str, **fixed):
  """The one parser of a typed config section: the dataclass `cls` from the mapping `given` (the
  config's section `name`), with the dataclass's defaults where a key is absent. An unknown key is
  an error naming the section, the key and the keys it knows; a list given for a tuple-valued field
  becomes a tuple (a config file may write either). `fixed`: fields the caller sets, which the
  section may not (a student's arch, given apart from its model section)."""
  fields = {f.name: f for f in dataclasses.fields(cls)}
  known = sorted(set(fields) - set(fixed))
  given = dict(given or {})
  unknown = sorted(set(given) - set(known))
  if unknown:
    raise ValueError(f"config.{name} has unknown keys {unknown}; known: {known}")
  for k, v in given.items():
    if isinstance(fields[k].default, tuple) and isinstance(v, (list, tuple)):
      given[k] = tuple(v)
  return cls(**given, **fixed)
