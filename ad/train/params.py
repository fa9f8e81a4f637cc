"""Parameters as pure nested dicts (what optax, orbax and jit see), and modules rebuilt from them."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ad.train.optim import path_str


def _module(graphdef, template, pure):
  state = jax.tree.map(lambda x: x, template)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


class Rebuild:
  """graphdef + abstract state of a module: turns a pure parameter dict back into the module.

  Zero-size parameters (MobileBERT's extra decoder when embedding == hidden) hold nothing to
  train or save: they are kept out of the pure dict and put back here."""

  def __init__(self, module: nnx.Module):
    self.graphdef, state = nnx.split(module)
    self.template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    pure = state.to_pure_dict()
    self.empty = {p: np.zeros(np.shape(v), v.dtype) for p, v in _leaves(pure) if math.prod(np.shape(v)) == 0}
    self.params = without(pure, self.empty)

  def __call__(self, pure):
    return _module(self.graphdef, self.template, _with(pure, self.empty))


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, dict):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def without(tree, paths):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out[k] = without(v, {p[1:] for p in paths if p[0] == k})
    elif (k,) not in paths:
      out[k] = v
  return out


def _with(tree, extra: dict):
  out = jax.tree.map(lambda x: x, tree) if extra else tree
  for path, v in extra.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def nonfinite(tree) -> list[str]:
  """Paths of the leaves of `tree` holding a NaN or an inf (one compiled check for the whole tree)."""
  flags = jax.jit(lambda t: jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), t))(tree)
  return [path_str(p) for p, ok in jax.tree_util.tree_leaves_with_path(flags) if not bool(ok)]
