"""Optimizer pieces: parameter groups from regex rules over parameter paths, and schedules.

Which parameters a stage trains, and how fast, is declared as an ordered list of
(regex, label) rules over '/'-joined parameter paths (big_vision's frozen / multiplier lists);
the first rule that matches decides. `labels` turns the rules into a pytree of labels for
`optax.multi_transform`; `mask` into a boolean pytree. No string slicing of names elsewhere.
"""

from __future__ import annotations

import re
from typing import Sequence

import jax
import optax


def path_str(path) -> str:
  parts = []
  for k in path:
    k = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
    parts.append(str(k))
  return "/".join(p for p in parts if p != "value")


def labels(tree, rules: Sequence[tuple[str, str]], default: str | None = None):
  """A pytree like `tree` whose leaves are the label of the first rule whose regex matches the
  leaf's path (re.fullmatch); `default` for none (an error if None, naming the path)."""
  compiled = [(re.compile(r), lab) for r, lab in rules]

  def one(path, _):
    p = path_str(path)
    for rx, lab in compiled:
      if rx.fullmatch(p):
        return lab
    if default is None:
      raise ValueError(f"parameter {p!r} matches none of the rules {[r for r, _ in rules]}")
    return default
  return jax.tree_util.tree_map_with_path(one, tree)


def warmup_linear_decay(lr: float, warmup: int, steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `lr` over `warmup` steps, then linear decay to 0 at `steps`."""
  warmup = max(1, min(warmup, steps - 1))
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                               optax.linear_schedule(lr, 0.0, max(steps - warmup, 1))], [warmup])


def decay_mask(tree):
  """Weight decay on matrices only (not on biases, norms or the output bias)."""
  return jax.tree.map(lambda x: getattr(x, "ndim", 0) >= 2, tree)
