"""Pareto fronts and hypervolume over named objectives with directions (numpy only).

The optimizer service (numpy 1.x, no JAX) imports this file too, so it must stay
dependency-free. Internally everything is minimized: maximized objectives are negated.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DIRECTIONS = ("max", "min")


def signs(directions: Sequence[str]) -> np.ndarray:
  """[M] +1 for minimized, -1 for maximized objectives (multiply to get minimization form)."""
  bad = [d for d in directions if d not in DIRECTIONS]
  if bad:
    raise ValueError(f"objective direction {bad[0]!r}: expected one of {DIRECTIONS}")
  return np.asarray([1.0 if d == "min" else -1.0 for d in directions])


def to_min(values, directions: Sequence[str]) -> np.ndarray:
  """values: [N, M] in the objectives' own units -> [N, M] all minimized."""
  return np.asarray(values, dtype=np.float64).reshape(-1, len(directions)) * signs(directions)


def dominates(a, b, margin=None) -> np.ndarray:
  """Whether a dominates b, all minimized: a [..., M], b [..., M] (broadcast) -> [...] bool.

  Without `margin`: Pareto dominance, no worse in every objective and better in one. With a
  margin [..., M] (e.g. 2 standard errors of each difference): better than b by more than the
  margin in every objective, the claim that survives the noise of both measurements.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if margin is None:
    return np.all(a <= b, axis=-1) & np.any(a < b, axis=-1)
  return np.all(b - a > np.asarray(margin, np.float64), axis=-1)


def pareto_mask(y_min: np.ndarray) -> np.ndarray:
  """y_min: [N, M] minimized -> [N] bool, True where no other point dominates (duplicates all stay)."""
  y = np.asarray(y_min, dtype=np.float64)
  return np.asarray([not dominates(y, y[i]).any() for i in range(len(y))], dtype=bool)


def pareto_ranks(y_min: np.ndarray) -> np.ndarray:
  """[N, M] -> [N] int, 1 for the first non-dominated front, 2 for the next (non-dominated sorting)."""
  y = np.asarray(y_min, dtype=np.float64)
  ranks = np.zeros(len(y), dtype=int)
  left = np.arange(len(y))
  r = 1
  while left.size:
    front = pareto_mask(y[left])
    ranks[left[front]] = r
    left = left[~front]
    r += 1
  return ranks


def hypervolume(y_min: np.ndarray, ref_min: np.ndarray) -> float:
  """Volume dominated by the points and bounded by the reference point (all minimized).

  Points not strictly better than the reference in every objective add nothing. Exact
  slicing along the last objective: O(N^M), fine for the few hundred trials of a search.
  """
  y = np.asarray(y_min, dtype=np.float64).reshape(-1, len(ref_min))
  ref = np.asarray(ref_min, dtype=np.float64)
  y = y[np.all(y < ref, axis=1)]
  if not len(y):
    return 0.0
  if y.shape[1] == 1:
    return float(ref[0] - y[:, 0].min())
  y = y[pareto_mask(y)]
  y = y[np.argsort(y[:, -1], kind="stable")]
  volume = 0.0
  for i in range(len(y)):
    upper = y[i + 1, -1] if i + 1 < len(y) else ref[-1]
    if upper > y[i, -1]:
      volume += (upper - y[i, -1]) * hypervolume(y[:i + 1, :-1], ref[:-1])
  return float(volume)


def hypervolume_history(y_min: np.ndarray, ref_min: np.ndarray) -> np.ndarray:
  """[N, M] in evaluation order -> [N] hypervolume after each evaluation."""
  y = np.asarray(y_min, dtype=np.float64)
  return np.asarray([hypervolume(y[:i + 1], ref_min) for i in range(len(y))])
