"""Mixed-precision dense layers shared by the student and the teacher.

Parameters are f32; a bf16 (or f16) model computes its dense layers on low-precision operands
with an f32 accumulator and rounds the output to the compute dtype: what the TPU MXU and GPU
tensor cores do by default. XLA:CPU only takes its fast (AMX/oneDNN) path for a dot whose
operands are both bf16 and whose output is f32, so the backward pass is written out too: JAX's
own transpose of such a dot multiplies an f32 cotangent by a bf16 operand, which falls back to
a slow loop, and the bias gradient becomes a slow windowed reduction. Measured on this 2-core
AVX512-BF16/AMX machine, a [16*128, 384] x [384, 1536] layer forward + backward: 168 GFLOP/s in
f32, 190 with JAX's transpose, 620 with the VJP below. In f32 nothing changes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def _ones_like_rows(g):
  return jnp.ones(g.shape[:-1], g.dtype)


@jax.custom_vjp
def _linear_low(x, w, b):
  """x: [..., I] low precision, w: [I, O] f32, b: [O] f32 -> [..., O] in x.dtype (f32 accumulation)."""
  y = jnp.einsum("...i,io->...o", x, w.astype(x.dtype), preferred_element_type=jnp.float32)
  return (y + b).astype(x.dtype)


def _linear_low_fwd(x, w, b):
  return _linear_low(x, w, b), (x, w.astype(x.dtype))


def _linear_low_bwd(res, g):
  x, w_low = res  # [..., I], [I, O]
  g = g.astype(x.dtype)  # [..., O]
  dx = jnp.einsum("...o,io->...i", g, w_low, preferred_element_type=jnp.float32).astype(x.dtype)
  dw = jnp.einsum("...i,...o->io", x, g, preferred_element_type=jnp.float32)  # f32, like the parameter
  db = jnp.einsum("...,...o->o", _ones_like_rows(g), g, preferred_element_type=jnp.float32)  # a dot, not a reduce
  return dx, dw, db


_linear_low.defvjp(_linear_low_fwd, _linear_low_bwd)


@jax.custom_vjp
def _linear_t_low(x, w):
  """x: [..., I] low precision, w: [O, I] f32 (e.g. tied word embeddings) -> [..., O] in x.dtype."""
  return jnp.einsum("...i,oi->...o", x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


def _linear_t_low_fwd(x, w):
  return _linear_t_low(x, w), (x, w.astype(x.dtype))


def _linear_t_low_bwd(res, g):
  x, w_low = res  # [..., I], [O, I]
  g = g.astype(x.dtype)  # [..., O]
  dx = jnp.einsum("...o,oi->...i", g, w_low, preferred_element_type=jnp.float32).astype(x.dtype)
  dw = jnp.einsum("...o,...i->oi", g, x, preferred_element_type=jnp.float32)
  return dx, dw


_linear_t_low.defvjp(_linear_t_low_fwd, _linear_t_low_bwd)


def linear(x, w, b=None):
  """x: [..., I] in the compute dtype, w: [I, O] f32, b: [O] f32 or None -> [..., O] in x.dtype,
  accumulated in f32."""
  if x.dtype in LOW_PRECISION:
    return _linear_low(x, w, jnp.zeros(w.shape[-1], jnp.float32) if b is None else b)
  y = jnp.einsum("...i,io->...o", x, w.astype(x.dtype), preferred_element_type=jnp.float32)
  return (y if b is None else y + b).astype(x.dtype)


def linear_transposed(x, w):
  """x: [..., I], w: [O, I] f32 -> x @ w^T: [..., O] in x.dtype, accumulated in f32.

  Its own VJP rather than `linear(x, w.T)`: XLA folds the transpose into the weight-gradient dot,
  and XLA:CPU has no kernel for that bf16 x bf16 -> f32 dot layout ("Unsupported element type
  for DotThunk")."""
  if x.dtype in LOW_PRECISION:
    return _linear_t_low(x, w)
  return jnp.einsum("...i,oi->...o", x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


class Dense(nnx.Module):
  """y = x @ kernel + bias; kernel [din, dout] and bias [dout] f32 (nnx.Linear's names and layout,
  so checkpoints and parameter paths are the same), computed in `compute_dtype`."""

  def __init__(self, din: int, dout: int, compute_dtype, rngs: nnx.Rngs):
    self.kernel = nnx.Param(nnx.initializers.truncated_normal(0.02)(rngs.params(), (din, dout), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32))
    self.compute_dtype = jnp.dtype(compute_dtype)

  def __call__(self, x):
    """x: [..., din] -> [..., dout] in the compute dtype."""
    return linear(x.astype(self.compute_dtype), self.kernel[...], self.bias[...])
