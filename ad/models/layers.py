"""Layers shared by the student and the teacher: parameters with declared logical axes, mixed-
precision dense layers, NoNorm / LayerNorm.

Parameters are f32; a bf16 (or f16) model computes its dense layers on low-precision operands
with an f32 accumulator and rounds the output to the compute dtype: what the TPU MXU and GPU
tensor cores do by default. XLA:CPU only takes its fast (AMX/oneDNN) path for a dot whose
operands are both bf16 and whose output is f32, so the backward pass is written out too: JAX's
own transpose of such a dot multiplies an f32 cotangent by a bf16 operand, which falls back to
a slow loop, and the bias gradient becomes a slow windowed reduction. Measured on this 2-core
AVX512-BF16/AMX machine by experiments/bench_mixed_precision.py, a [2048, 384] x [384, 1536]
layer forward + backward: 354 GFLOP/s in f32, 312 with JAX's transpose, 488 with the VJP below.
In f32 nothing changes.
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


def init_weight(key, shape, std: float = 0.02):
  """Random f32 weights of standard deviation `std`, drawn uniformly on [-std sqrt 3, std sqrt 3].

  BERT draws from a truncated normal of the same scale; the uniform draw compiles to a few bit
  operations instead of erf/erf_inv chains (XLA:CPU spent 4 s compiling a student's
  initialization with truncated normals), and training does not care which of the two it starts from."""
  return jax.random.uniform(key, shape, jnp.float32, -std * 3 ** 0.5, std * 3 ** 0.5)


def param(value, axes: tuple | None = None) -> nnx.Param:
  """An f32 parameter with its logical axis names (e.g. ('embed', 'mlp'); None for a replicated
  dimension) declared where it is made; ad/train/sharding.py resolves them to mesh axes.
  Every parameter carries them, so stacking (stack.py) records its 'layers' axis on all."""
  axes = (None,) * value.ndim if axes is None else tuple(axes)
  if len(axes) != value.ndim:
    raise ValueError(f"logical axes {axes} for a parameter of shape {value.shape}")
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Dense(nnx.Module):
  """y = x @ kernel + bias; kernel [din, dout] and bias [dout] f32 (nnx.Linear's names and layout,
  so checkpoints and parameter paths are the same), computed in `compute_dtype`. `axes`: the
  logical names of (din, dout), for sharding."""

  def __init__(self, din: int, dout: int, compute_dtype, rngs: nnx.Rngs, axes: tuple | None = None):
    kernel = init_weight(rngs.params(), (din, dout))
    self.kernel = param(kernel, axes)
    self.bias = param(jnp.zeros((dout,), jnp.float32), None if axes is None else axes[1:])
    self.compute_dtype = jnp.dtype(compute_dtype)

  def __call__(self, x):
    """x: [..., din] -> [..., dout] in the compute dtype."""
    return linear(x.astype(self.compute_dtype), self.kernel[...], self.bias[...])


NORMS = ("no_norm", "layer_norm")


def apply_norm(x, scale, bias, kind: str, eps: float):
  """x: [..., D] -> [..., D]. NoNorm (MobileBERT) is an elementwise affine map; LayerNorm's
  statistics are computed in f32 whatever the compute dtype."""
  if kind == "no_norm":
    return x * scale.astype(x.dtype) + bias.astype(x.dtype)
  xf = x.astype(jnp.float32)
  mean = xf.mean(-1, keepdims=True)
  var = jnp.square(xf - mean).mean(-1, keepdims=True)
  y = (xf - mean) * jax.lax.rsqrt(var + eps)
  return (y * scale + bias).astype(x.dtype)


class Norm(nnx.Module):
  """NoNorm or LayerNorm over the last axis: scale and bias [dim] (nnx.LayerNorm's names)."""

  def __init__(self, dim: int, kind: str, eps: float):
    if kind not in NORMS:
      raise ValueError(f"norm {kind!r}: expected one of {NORMS}")
    self.scale = param(jnp.ones((dim,), jnp.float32))
    self.bias = param(jnp.zeros((dim,), jnp.float32))
    self.kind, self.eps = kind, eps

  def __call__(self, x):
    return apply_norm(x, self.scale[...], self.bias[...], self.kind, self.eps)
