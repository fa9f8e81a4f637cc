"""Layers of one shape stacked on a leading axis, and the three ways the models run them.

The student's blocks and the teacher's layers are each one module whose parameters carry a
leading [K] 'layers' axis (nnx.vmap at construction). A whole forward is one `lax.scan` over
them, so a program's size, and its compile time, do not grow with the block count; training
the progressive stage of block k runs blocks 0..k-1 in a while loop (forward only: they are
frozen) and block k alone, with k a traced value, so one compiled step serves every stage.

Inference takes the stacked parameters cut into per-layer arrays (`unstack_params`, once) and
stacks them back inside the program (`restack`): on XLA:CPU a slice of a stacked parameter is a
copy made on every call (360 of them in a 24-block MobileBERT forward), while a slice of a
stack of separate arrays folds back to the array itself.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def stacked(n: int, make: Callable[[nnx.Rngs], nnx.Module], rngs: nnx.Rngs) -> nnx.Module:
  """n modules built by make(rngs), their parameters stacked on a leading 'layers' axis
  (prepended to each parameter's declared logical axes)."""
  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def build(rngs):
    return make(rngs)
  return build(rngs)


STACK_AXES = ("layers", "ffn_layers")  # logical names of the leading axes that stack modules / FFNs


def unstack_params(state: nnx.State) -> dict:
  """The pure dict of `state` with each stacked parameter cut along its leading STACK_AXES into
  nested lists of per-slice arrays (abstract values give abstract slices). Made once, outside jit."""
  def cut(x, axes):
    if not axes or axes[0] not in STACK_AXES:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return [cut(jax.ShapeDtypeStruct(x.shape[1:], x.dtype), axes[1:]) for _ in range(x.shape[0])]
    return [cut(x[i], axes[1:]) for i in range(x.shape[0])]

  def one(v):
    return cut(v.get_value(), tuple(v.get_metadata().get("out_sharding") or ()))
  pure = state.to_pure_dict()
  for path, v in nnx.to_flat_state(state):
    node = pure
    for key in path[:-1]:
      node = node[key]
    node[path[-1]] = one(v)
  return pure


def restack(tree) -> dict:
  """Inverse of `unstack_params`, inside the program (every list becomes one stacked array)."""
  def join(x):
    return jnp.stack([join(y) for y in x]) if isinstance(x, list) else x
  return jax.tree.map(join, tree, is_leaf=lambda x: isinstance(x, list))


def _take(state, k):
  return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, k, 0, keepdims=False), state)


def at(stack: nnx.Module, k) -> nnx.Module:
  """Module k of the stack (k an int or a traced scalar; differentiable in the parameters)."""
  graphdef, state = nnx.split(stack)
  return nnx.merge(graphdef, _take(state, k))


def scan(stack: nnx.Module, step: Callable, carry, length: int | None = None, unroll: bool = False):
  """lax.scan of step(module, carry) -> (carry, y) over the first `length` modules (default all);
  returns (carry, ys stacked on a leading axis).

  unroll=True unrolls the loop in the program: XLA's cost analysis counts a loop body once, so
  FLOP counts (`ad arch`, the latency harness's utilization) need the unrolled form."""
  graphdef, state = nnx.split(stack)
  if length is not None:
    state = jax.tree.map(lambda x: x[:length], state)
  return jax.lax.scan(lambda c, s: step(nnx.merge(graphdef, s), c), carry, state, unroll=unroll)


def run_first(stack: nnx.Module, step: Callable, carry, k):
  """carry after step(module_j, carry) -> carry for j = 0..k-1, k possibly traced.

  A while loop: forward only (no reverse-mode gradient); the frozen prefix of a progressive stage.
  k a Python int: the loop is unrolled in the program instead (XLA's cost analysis counts a while
  loop's body once, so a cost estimate of one stage needs it unrolled: ad/aot.py).
  """
  graphdef, state = nnx.split(stack)
  if isinstance(k, int):
    for j in range(k):
      carry = step(nnx.merge(graphdef, _take(state, j)), carry)
    return carry
  return jax.lax.fori_loop(0, k, lambda j, c: step(nnx.merge(graphdef, _take(state, j)), c), carry)
