"""The student design space (003 section 3.2, Table 1).

An architecture is one MobileBERT-style block (003 Fig. 2) stacked `num_blocks` times,
named `H_B_A_I_F` as in the paper: hidden size, bottleneck size, attention heads,
intermediate size, number of stacked FFNs; for example `512_128_1_640_2`.

Table 1 prints a hidden size of 246; that is a typesetting slip for 256 (every other
value is a multiple of 32 and MobileBERT-style widths are), so the default uses 256.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Iterable, Sequence

import numpy as np

FACTORS = ("hidden", "bottleneck", "heads", "intermediate", "num_ffn")

# 003 Table 1, with 246 read as 256 (see module docstring).
TABLE1 = {
    "hidden": (128, 256, 384, 512),
    "bottleneck": (64, 96, 128, 160),
    "heads": (1, 2, 4, 8),
    "intermediate": (384, 512, 640),
    "num_ffn": (2, 4, 6),
}

_NAME_RE = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)_(\d+)$")


@dataclasses.dataclass(frozen=True, order=True)
class Arch:
  """One student block: the five factors of 003 Table 1."""

  hidden: int
  bottleneck: int
  heads: int
  intermediate: int
  num_ffn: int

  def __post_init__(self):
    for f in FACTORS:
      v = getattr(self, f)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"Arch.{f} must be a positive integer, got {v!r}")
    if self.bottleneck % self.heads:
      raise ValueError(
          f"Arch {self.name}: heads={self.heads} does not divide bottleneck={self.bottleneck}; "
          "attention runs at the bottleneck width, so the head size must be an integer")

  @property
  def name(self) -> str:
    return f"{self.hidden}_{self.bottleneck}_{self.heads}_{self.intermediate}_{self.num_ffn}"

  @property
  def head_dim(self) -> int:
    return self.bottleneck // self.heads

  def __str__(self) -> str:
    return self.name

  @classmethod
  def parse(cls, name: str) -> "Arch":
    """`'512_128_4_512_4'` -> Arch. Raises ValueError naming the bad input."""
    if isinstance(name, Arch):
      return name
    m = _NAME_RE.match(str(name).strip())
    if not m:
      raise ValueError(
          f"malformed architecture name {name!r}: expected H_B_A_I_F, five positive integers "
          "joined by '_' (hidden, bottleneck, heads, intermediate, stacked FFNs), e.g. 512_128_4_512_4")
    return cls(*(int(g) for g in m.groups()))


MOBILEBERT = Arch(512, 128, 4, 512, 4)  # MobileBERT's block: the paper's baseline.


@dataclasses.dataclass(frozen=True)
class DesignSpace:
  """A product of factor choices; every combination whose heads divide the bottleneck."""

  hidden: tuple[int, ...] = TABLE1["hidden"]
  bottleneck: tuple[int, ...] = TABLE1["bottleneck"]
  heads: tuple[int, ...] = TABLE1["heads"]
  intermediate: tuple[int, ...] = TABLE1["intermediate"]
  num_ffn: tuple[int, ...] = TABLE1["num_ffn"]

  def __post_init__(self):
    for f in FACTORS:
      values = tuple(int(v) for v in getattr(self, f))
      if not values:
        raise ValueError(f"design space factor {f!r} has no values")
      if any(v <= 0 for v in values):
        raise ValueError(f"design space factor {f!r} has a non-positive value: {values}")
      if len(set(values)) != len(values):
        raise ValueError(f"design space factor {f!r} repeats a value: {values}")
      object.__setattr__(self, f, tuple(sorted(values)))

  @classmethod
  def from_config(cls, cfg) -> "DesignSpace":
    """From a mapping (ConfigDict) with one list per factor; unknown keys are errors."""
    keys = set(cfg.keys())
    unknown = keys - set(FACTORS)
    if unknown:
      raise ValueError(f"space config has unknown keys {sorted(unknown)}; expected a subset of {FACTORS}")
    return cls(**{k: tuple(cfg[k]) for k in keys})

  def factor_values(self) -> dict[str, tuple[int, ...]]:
    return {f: getattr(self, f) for f in FACTORS}

  def archs(self) -> list[Arch]:
    """Every valid architecture, in a fixed order (factors in FACTORS order, values ascending)."""
    out = []
    for combo in itertools.product(*(getattr(self, f) for f in FACTORS)):
      hidden, bottleneck, heads, intermediate, num_ffn = combo
      if bottleneck % heads == 0:
        out.append(Arch(*combo))
    return out

  def __len__(self) -> int:
    return len(self.archs())

  def check(self, arch: Arch | str) -> Arch:
    """Parse and check membership; the error names the factor and its allowed values."""
    arch = Arch.parse(arch)
    for f in FACTORS:
      v, allowed = getattr(arch, f), getattr(self, f)
      if v not in allowed:
        raise ValueError(f"architecture {arch.name}: {f}={v} is outside the design space; allowed {list(allowed)}")
    return arch

  def encode(self, archs: Iterable[Arch]) -> np.ndarray:
    """[N] archs -> [N, 5] float64 in [0, 1]: each factor's value index over (choices - 1).

    Ordinal index encoding keeps the GP's length scales comparable across factors whose
    raw values differ by 100x (heads vs intermediate).
    """
    rows = []
    for a in archs:
      a = self.check(a)
      row = []
      for f in FACTORS:
        values = getattr(self, f)
        row.append(values.index(getattr(a, f)) / max(len(values) - 1, 1))
      rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(FACTORS))

  def decode(self, points: np.ndarray) -> list[Arch]:
    """Inverse of `encode` (nearest index per factor)."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    out = []
    for p in points:
      vals = []
      for f, x in zip(FACTORS, p):
        values = getattr(self, f)
        vals.append(values[int(round(float(x) * max(len(values) - 1, 1)))])
      out.append(Arch(*vals))
    return out

  def describe(self) -> str:
    lines = [f"  {f:<13} {list(getattr(self, f))}" for f in FACTORS]
    full = int(np.prod([len(getattr(self, f)) for f in FACTORS]))
    n = len(self)
    lines.append(f"  {n} architectures per block" + ("" if n == full else f" ({full - n} dropped: heads do not divide bottleneck)"))
    return "\n".join(lines)


def parse_archs(names: Sequence[str] | str) -> list[Arch]:
  if isinstance(names, str):
    names = [n for n in names.split(",") if n.strip()]
  return [Arch.parse(n) for n in names]
