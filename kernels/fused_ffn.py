"""Fused stacked FFN for the student block (Pallas; TPU via Mosaic, GPU via Triton).

A MobileBERT-style block runs F small FFNs back to back on the bottleneck width Bn
(003 Fig. 2): h <- Norm(h + W2 relu(W1 h + b1) + b2), F times, with NoNorm (h * s + b) or
LayerNorm. Unfused, XLA writes and reads the [N, I] intermediate and the [N, Bn] activations
of every FFN to HBM. Here one grid step owns a block of rows and runs all F FFNs on it with
every weight resident on chip, so only the input and output rows cross HBM: the weights are
read once per row block and nothing else is.

Backward (custom_vjp): per row block, recompute the F layers (keeping the F layer inputs and
pre-activations on chip), then backpropagate through them in reverse. Weight gradients are
written per row block ([num_blocks, ...] partials, summed by XLA) so no two grid steps write
the same output: safe on TPU cores and GPU programs that run in parallel.

Shapes: h [B, T, Bn]; w_in [F, Bn, I]; b_in [F, I]; w_out [F, I, Bn]; b_out, scale, bias
[F, Bn]. When the F FFNs' weights do not fit on chip together (`BlockSizes.max_weight_bytes`),
they run as consecutive kernels over groups of FFNs that do (one HBM round trip of the [N, Bn]
activations per group); only an FFN too large on its own runs the reference (below, the model's
own XLA path), with a warning. `ImplementationLog` records which ran.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels import devices

NORMS = ("no_norm", "layer_norm")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  block_rows: int = 256  # rows (batch x sequence positions) per grid step
  # On-chip bytes a group of FFNs may take: f32 weights double-buffered, plus (backward) their f32
  # gradient partials double-buffered. 12 MiB keeps within v4's 16 MiB VMEM (and v5e's default
  # scoped limit); every Table 1 shape compiles with it (experiments/tpu_kernel_sweep.py).
  max_weight_bytes: int = 12 * 2**20


def _linear(x, w):
  """x: [..., I] in the compute dtype, w: [I, O] f32 -> [..., O] in x.dtype, accumulated in f32."""
  return jnp.einsum("...i,io->...o", x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


def _apply_norm(x, scale, bias, kind: str, eps: float):
  """NoNorm (x * scale + bias) or LayerNorm with f32 statistics, over the last axis."""
  if kind == "no_norm":
    return x * scale.astype(x.dtype) + bias.astype(x.dtype)
  xf = x.astype(jnp.float32)
  mean = xf.mean(-1, keepdims=True)
  y = (xf - mean) * jax.lax.rsqrt(jnp.square(xf - mean).mean(-1, keepdims=True) + eps)
  return (y * scale + bias).astype(x.dtype)


def stacked_ffn_reference(h, w_in, b_in, w_out, b_out, norm_scale, norm_bias, *, norm="no_norm", eps=1e-12,
                          act=jax.nn.relu, linear=_linear, apply_norm=_apply_norm):
  """h: [B, T, Bn]; w_in: [F, Bn, I]; w_out: [F, I, Bn] -> [B, T, Bn]; matmuls accumulate in f32;
  eps: a float or one per FFN (per_ffn_eps); act: the activation (the fused kernel's is relu).

  The model's XLA path (ad/models/student.py StackedFFN passes its own `linear` and `apply_norm`,
  the same maths with a VJP tuned for XLA:CPU), and what the kernel is checked against. Each w[f]
  is a separate array when the inference path passes per-FFN weights (a list), so it indexes
  without copying (ad/models/stack.py)."""
  dtype = h.dtype
  eps = per_ffn_eps(eps, len(w_in))
  for f in range(len(w_in)):
    u = linear(h, w_in[f]).astype(jnp.float32) + b_in[f]
    u = act(u).astype(dtype)  # [B, T, I]
    y = linear(u, w_out[f]).astype(jnp.float32) + b_out[f]
    h = apply_norm((y + h.astype(jnp.float32)).astype(dtype), norm_scale[f], norm_bias[f], norm, eps[f])
  return h


def per_ffn_eps(eps, F: int) -> tuple[float, ...]:
  """LayerNorm epsilon of each of the F FFNs: one float for all, or a sequence of F (transformers'
  MobileBERT gives the last FFN a different one, ad/models/student.py)."""
  if isinstance(eps, (tuple, list)):
    if len(eps) != F:
      raise ValueError(f"fused_ffn: eps has {len(eps)} values for {F} FFNs")
    return tuple(float(e) for e in eps)
  return (float(eps),) * F


# Which implementation each traced call chose ("pallas", or "xla" when the weights do not fit on
# chip): the latency harness reads it so a report never calls an XLA fallback a fused kernel.
_chosen: list[str] = []


class ImplementationLog:
  """`with ImplementationLog() as log:` -> log.chosen: the implementations traced in the block."""

  def __enter__(self):
    self._start = len(_chosen)
    return self

  def __exit__(self, *exc):
    self.chosen = sorted(set(_chosen[self._start:]))
    return False


def _norm_fwd(z, s, b, norm: str, eps: float):
  """z [R, Bn] f32 -> (out, saved) ; saved is what the backward needs."""
  if norm == "no_norm":
    return z * s + b, None
  mu = z.mean(axis=-1, keepdims=True)
  zc = z - mu
  rstd = jax.lax.rsqrt((zc * zc).mean(axis=-1, keepdims=True) + eps)
  zh = zc * rstd
  return zh * s + b, (zh, rstd)


def _norm_bwd(dout, z, s, saved, norm: str):
  """-> (dz, ds, db) for out = norm(z) * s + b."""
  if norm == "no_norm":
    return dout * s, jnp.sum(dout * z, axis=0), jnp.sum(dout, axis=0)
  zh, rstd = saved
  dzh = dout * s
  dz = rstd * (dzh - dzh.mean(axis=-1, keepdims=True) - zh * (dzh * zh).mean(axis=-1, keepdims=True))
  return dz, jnp.sum(dout * zh, axis=0), jnp.sum(dout, axis=0)


def _dot(a, b, contract_a: int, contract_b: int):
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())), preferred_element_type=jnp.float32)


def _layer(x, w_in, b_in, w_out, b_out, s, b, norm, eps, dtype):
  """One FFN on a row block: x [R, Bn] f32 -> (out f32, pre-activation u, pre-norm z, norm saved)."""
  u = _dot(x.astype(dtype), w_in.astype(dtype), 1, 0) + b_in  # [R, I]
  y = _dot(jnp.maximum(u, 0).astype(dtype), w_out.astype(dtype), 1, 0) + b_out  # [R, Bn]
  z = y + x
  out, saved = _norm_fwd(z, s, b, norm, eps)
  return out, u, z, saved


def _fwd_kernel(x_ref, w_in_ref, b_in_ref, w_out_ref, b_out_ref, s_ref, b_ref, o_ref, *, norm, eps):
  x = x_ref[...].astype(jnp.float32)  # [R, Bn]
  for f in range(w_in_ref.shape[0]):  # the F layers (1-6 in Table 1), unrolled; weights already on chip
    x, _, _, _ = _layer(x, w_in_ref[f], b_in_ref[f], w_out_ref[f], b_out_ref[f], s_ref[f], b_ref[f], norm, eps[f],
                        x_ref.dtype)
  o_ref[...] = x.astype(o_ref.dtype)


def _bwd_kernel(x_ref, dy_ref, w_in_ref, b_in_ref, w_out_ref, b_out_ref, s_ref, b_ref,
                dx_ref, dw_in_ref, db_in_ref, dw_out_ref, db_out_ref, ds_ref, dbias_ref, *, norm, eps):
  dtype = x_ref.dtype
  F = w_in_ref.shape[0]
  x = x_ref[...].astype(jnp.float32)
  saved = []
  for f in range(F):  # recompute, keeping each layer's input on chip
    out, u, z, ns = _layer(x, w_in_ref[f], b_in_ref[f], w_out_ref[f], b_out_ref[f], s_ref[f], b_ref[f], norm, eps[f],
                           dtype)
    saved.append((x, u, z, ns))
    x = out
  d = dy_ref[...].astype(jnp.float32)  # [R, Bn]
  for f in reversed(range(F)):
    xf, u, z, ns = saved[f]
    dz, ds, db = _norm_bwd(d, z, s_ref[f], ns, norm)
    a = jnp.maximum(u, 0)
    dw_out_ref[0, f] = _dot(a.astype(dtype), dz.astype(dtype), 0, 0)  # [I, Bn]
    db_out_ref[0, f] = jnp.sum(dz, axis=0)
    du = jnp.where(u > 0, _dot(dz.astype(dtype), w_out_ref[f].astype(dtype), 1, 1), 0.0)  # [R, I]
    dw_in_ref[0, f] = _dot(xf.astype(dtype), du.astype(dtype), 0, 0)  # [Bn, I]
    db_in_ref[0, f] = jnp.sum(du, axis=0)
    ds_ref[0, f] = ds
    dbias_ref[0, f] = db
    d = dz + _dot(du.astype(dtype), w_in_ref[f].astype(dtype), 1, 1)  # residual + through W1
  dx_ref[...] = d.astype(dx_ref.dtype)


def _compiler_params(backend: str):
  if backend == "tpu":
    return pltpu.CompilerParams(dimension_semantics=("parallel",))
  if backend == "gpu":
    from jax.experimental.pallas import triton as plgpu
    return plgpu.CompilerParams(num_warps=4, num_stages=1)
  return None


def _whole(shape):
  return pl.BlockSpec(shape, lambda i: (0,) * len(shape))


def _forward(x, w_in, b_in, w_out, b_out, s, b, *, norm, eps, rows, interpret, backend):
  N, Bn = x.shape
  F, _, I = w_in.shape
  weights = [w_in, b_in, w_out, b_out, s, b]
  w_bytes = sum(w.size * w.dtype.itemsize for w in weights)
  return pl.pallas_call(
      functools.partial(_fwd_kernel, norm=norm, eps=eps),
      out_shape=jax.ShapeDtypeStruct((N, Bn), x.dtype),
      grid=(N // rows,),
      in_specs=[pl.BlockSpec((rows, Bn), lambda i: (i, 0))] + [_whole(w.shape) for w in weights],
      out_specs=pl.BlockSpec((rows, Bn), lambda i: (i, 0)),
      compiler_params=_compiler_params(backend),
      cost_estimate=pl.CostEstimate(flops=4 * N * F * Bn * I, transcendentals=N * F if norm == "layer_norm" else 0,
                                    bytes_accessed=2 * N * Bn * x.dtype.itemsize + w_bytes),
      interpret=interpret,
      name="student_stacked_ffn_fwd",
  )(x, *weights)


def _backward(x, dy, w_in, b_in, w_out, b_out, s, b, *, norm, eps, rows, interpret, backend):
  N, Bn = x.shape
  F, _, I = w_in.shape
  nb = N // rows
  weights = [w_in, b_in, w_out, b_out, s, b]
  part = lambda w: pl.BlockSpec((1,) + w.shape, lambda i: (i,) + (0,) * w.ndim)  # one partial per row block
  outs = pl.pallas_call(
      functools.partial(_bwd_kernel, norm=norm, eps=eps),
      out_shape=[jax.ShapeDtypeStruct((N, Bn), x.dtype)]
      + [jax.ShapeDtypeStruct((nb,) + w.shape, jnp.float32) for w in weights],
      grid=(nb,),
      in_specs=[pl.BlockSpec((rows, Bn), lambda i: (i, 0))] * 2 + [_whole(w.shape) for w in weights],
      out_specs=[pl.BlockSpec((rows, Bn), lambda i: (i, 0))] + [part(w) for w in weights],
      compiler_params=_compiler_params(backend),
      cost_estimate=pl.CostEstimate(flops=12 * N * F * Bn * I, transcendentals=0,
                                    bytes_accessed=3 * N * Bn * x.dtype.itemsize
                                    + sum(w.size * 4 * (nb + 1) for w in weights)),
      interpret=interpret,
      name="student_stacked_ffn_bwd",
  )(x, dy, *weights)
  dx, partials = outs[0], outs[1:]
  return (dx,) + tuple(p.sum(0).astype(w.dtype) for p, w in zip(partials, weights))


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def _ffn(x, w_in, b_in, w_out, b_out, s, b, norm, eps, rows, interpret, backend):
  return _forward(x, w_in, b_in, w_out, b_out, s, b, norm=norm, eps=eps, rows=rows, interpret=interpret,
                  backend=backend)


def _ffn_fwd(x, w_in, b_in, w_out, b_out, s, b, norm, eps, rows, interpret, backend):
  out = _forward(x, w_in, b_in, w_out, b_out, s, b, norm=norm, eps=eps, rows=rows, interpret=interpret,
                 backend=backend)
  return out, (x, w_in, b_in, w_out, b_out, s, b)


def _ffn_bwd(norm, eps, rows, interpret, backend, res, dy):
  return _backward(res[0], dy, *res[1:], norm=norm, eps=eps, rows=rows, interpret=interpret, backend=backend)


_ffn.defvjp(_ffn_fwd, _ffn_bwd)


def ffn_groups(weights, max_weight_bytes: int) -> list[tuple[int, int]] | None:
  """[start, end) ranges of consecutive FFNs whose weights fit on chip together (ffn_onchip_bytes
  each), or None when one FFN alone does not fit."""
  F, Bn, I = weights[0].shape
  per_group = max_weight_bytes // ffn_onchip_bytes(Bn, I)
  if per_group == 0:
    return None
  return [(s, min(s + per_group, F)) for s in range(0, F, per_group)]


def stacked_ffn(h, w_in, b_in, w_out, b_out, norm_scale, norm_bias, *, norm: str = "no_norm", eps=1e-12,
                block_sizes: BlockSizes | None = None, interpret=None, backend: str | None = None):
  """The F FFNs of a block in one kernel (or one per group of FFNs that fit on chip together).
  h: [B, T, Bn] -> [B, T, Bn] (h's dtype).

  backend: the platform compiled for (default: the context mesh's, kernels/devices.py). When one
  FFN's weights alone do not fit `block_sizes.max_weight_bytes` the XLA reference runs instead, with
  a warning, and the choice is logged (ImplementationLog)."""
  if h.ndim != 3:
    raise ValueError(f"fused_ffn.stacked_ffn: h must be [B, T, Bn], got shape {h.shape}")
  B, T, Bn = h.shape
  if w_in.ndim != 3 or w_in.shape[1] != Bn:
    raise ValueError(f"fused_ffn.stacked_ffn: w_in must be [F, Bn={Bn}, I], got {w_in.shape}")
  F, _, I = w_in.shape
  expected = dict(b_in=(F, I), w_out=(F, I, Bn), b_out=(F, Bn), norm_scale=(F, Bn), norm_bias=(F, Bn))
  for name, arr in dict(b_in=b_in, w_out=w_out, b_out=b_out, norm_scale=norm_scale, norm_bias=norm_bias).items():
    if arr.shape != expected[name]:
      raise ValueError(f"fused_ffn.stacked_ffn: {name} must be {expected[name]}, got {arr.shape}")
  if norm not in NORMS:
    raise ValueError(f"fused_ffn.stacked_ffn: norm={norm!r}, expected one of {NORMS}")
  blocks = block_sizes or BlockSizes()
  weights = (w_in, b_in, w_out, b_out, norm_scale, norm_bias)
  groups = ffn_groups(weights, blocks.max_weight_bytes)
  if groups is None:
    warnings.warn(f"fused_ffn.stacked_ffn: one FFN's weights ({Bn} x {I}, {ffn_onchip_bytes(Bn, I) / 2**20:.1f} MiB "
                  f"on chip) exceed BlockSizes.max_weight_bytes={blocks.max_weight_bytes / 2**20:.1f} MiB; running the "
                  "XLA reference instead of the fused kernel", stacklevel=2)
    _chosen.append("xla")
    return stacked_ffn_reference(h, *weights, norm=norm, eps=eps)
  _chosen.append("pallas")
  backend = backend or devices.target_platform()
  if interpret is None:
    interpret = backend not in devices.COMPILED_PLATFORMS
  eps = per_ffn_eps(eps, F)
  for start, end in groups:
    h = _stacked_ffn_fused(h, *(w[start:end] for w in weights), norm=norm, eps=eps[start:end], block_sizes=blocks,
                           interpret=interpret, kernel_backend="interpret" if interpret else backend)
  return h


def ffn_onchip_bytes(Bn: int, I: int) -> int:
  """What one FFN of width Bn and intermediate I takes on chip in the kernel: its parameters in f32,
  double-buffered, and (backward) their f32 gradient partials, double-buffered."""
  return 4 * (2 * Bn * I + I + 3 * Bn) * 4


@functools.partial(jax.jit, static_argnames=("norm", "eps", "block_sizes", "interpret", "kernel_backend"))
def _stacked_ffn_fused(h, w_in, b_in, w_out, b_out, norm_scale, norm_bias, *, norm, eps, block_sizes, interpret,
                       kernel_backend):
  B, T, Bn = h.shape
  weights = (w_in, b_in, w_out, b_out, norm_scale, norm_bias)
  N = B * T
  rows = min(block_sizes.block_rows, N)
  rows = max(8, rows - rows % 8)  # sublane multiple
  x = h.reshape(N, Bn)
  pad = (-N) % rows
  if pad:  # zero rows: their outputs are dropped and their gradients are zero
    x = jnp.pad(x, ((0, pad), (0, 0)))
  out = _ffn(x, *weights, norm, eps, rows, interpret, kernel_backend)
  return out[:N].reshape(B, T, Bn)
