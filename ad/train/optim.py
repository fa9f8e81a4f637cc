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
import jax.numpy as jnp
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


def decay_mask_for(stacked):
  """A weight-decay mask function for optax: matrices only (not biases, norms or output biases),
  counting a stacked parameter's dimensions without its 'layers' axis."""
  # `stacked` leads: under optax.multi_transform, another group's parameters arrive as MaskedNode.
  return lambda params: jax.tree.map(lambda st, p: getattr(p, "ndim", 0) - int(bool(st)) >= 2, stacked, params)


def stacked_leaves(module) -> dict:
  """A pure tree like `nnx.state(module, nnx.Param).to_pure_dict()`: True where the parameter is
  stacked on a leading 'layers' axis (ad/models/stack.py records it in the declared axes)."""
  from flax import nnx
  state = nnx.state(module, nnx.Param)
  is_stacked = lambda v: (v.get_metadata().get("out_sharding") or (None,))[0] == "layers"
  return jax.tree.map(is_stacked, state, is_leaf=lambda x: isinstance(x, nnx.Variable)).to_pure_dict()


def _per_layer_norm(x, stacked: bool):
  """||x|| per leaf, or per slice of the leading 'layers' axis (shape [K, 1, ...]) when stacked."""
  x = x.astype(jnp.float32)
  if stacked and x.ndim >= 1:
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)), keepdims=True))
  return jnp.sqrt(jnp.sum(jnp.square(x)))


def scale_by_layerwise_trust_ratio(stacked) -> optax.GradientTransformation:
  """LAMB's trust ratio ||p|| / ||u|| (1 where either is 0), one per layer's matrix: per
  parameter, and per slice for parameters stacked on a 'layers' axis, so a stacked student
  adapts exactly as one with separate block parameters would."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params):
    def one(u, p, st):
      pn, un = _per_layer_norm(p, st), _per_layer_norm(u, st)
      return u * jnp.where((pn > 0) & (un > 0), pn / jnp.maximum(un, 1e-30), 1.0).astype(u.dtype)
    return jax.tree.map(one, updates, params, stacked), state
  return optax.GradientTransformation(init, update)


def lamb_direction(weight_decay: float, stacked, eps: float = 1e-6) -> optax.GradientTransformation:
  """optax.lamb's chain (Adam, decoupled weight decay on matrices, trust ratio) without the final
  learning-rate scaling, with the trust ratio per layer of stacked parameters; `stacked`: tree of
  bools like the parameters. The caller multiplies by -lr, passed to its step as data, so flash
  and regular schedules of one architecture compile to the same program."""
  return optax.chain(optax.scale_by_adam(eps=eps), optax.add_decayed_weights(weight_decay, mask=decay_mask_for(stacked)),
                     scale_by_layerwise_trust_ratio(stacked))
