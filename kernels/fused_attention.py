"""Fused multi-head attention for the student block (Pallas; TPU via Mosaic, GPU via Triton).

Algorithm: flash attention (Dao et al. 2022; Rabe & Staats 2021). Per (batch, head, query
block) the kernel streams key/value blocks and keeps a running max m, normalizer l and
accumulator acc in f32 (online softmax), so the [T, T] scores never reach HBM. When
distillation needs the attention probabilities (003 eq. 1), a second sweep over the key
blocks writes P = exp(S - lse) with the final log-sum-exp: one extra Q K^T per block instead
of an XLA softmax over a materialized score tensor.

Backward (custom_vjp): per (batch, head), sweep query blocks, recompute P from the saved lse
and accumulate dK, dV in f32. The probabilities' own cotangent G (from the KL loss) enters as
dS = P * (dO V^T + G - delta - rowsum(P * G)), delta = rowsum(dO * O).

Shapes: q, k, v [B, T, A, D] (the model's layout); mask_bias [B, 1, 1, T] additive (0 or a
large negative). The design space has A in 1..8, D = bottleneck / A (8..160), T in 128..512.
On GPU the head dim is zero-padded to a power of two (Triton's block rule); zeros change no
score and the padded output columns are dropped.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels import devices

MASK_FLOOR = -1e30  # finite: a fully masked key block must not make (s - m) = -inf - -inf = nan


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  block_q: int = 128  # query rows per grid step (forward)
  block_k: int = 128  # key rows per inner step (forward)
  block_q_bwd: int = 128  # query rows per inner step (backward)

  def fit(self, T: int) -> "BlockSizes":
    """Clip to T; every block must divide T."""
    out = BlockSizes(*(min(b, T) for b in (self.block_q, self.block_k, self.block_q_bwd)))
    for name, b in dataclasses.asdict(out).items():
      if b <= 0 or T % b:
        raise ValueError(f"fused_attention: BlockSizes.{name}={b} must divide the sequence length T={T}")
    return out


def attention_reference(q, k, v, mask_bias):
  """q, k, v: [B, T, A, D]; mask_bias [B, 1, 1, T] additive -> (out [B, T, A, D], probs [B, A, T, T] f32).

  The model's XLA path (softmax in f32 whatever the compute dtype), so the kernel is checked
  against what it replaces. Inference uses only `out`: XLA drops the unused probabilities.
  """
  scale = q.shape[-1] ** -0.5
  s = jnp.einsum("btad,bsad->bats", q, k, preferred_element_type=jnp.float32) * scale
  s = s + mask_bias
  p = jax.nn.softmax(s, axis=-1)  # [B, A, T, S] f32
  out = jnp.einsum("bats,bsad->btad", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype), p


# ---- kernels: refs carry a leading [1, 1] (batch, head) block ------------------------------------

def _dot(a, b, contract_a: int, contract_b: int):
  return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                             preferred_element_type=jnp.float32)


def _fwd_kernel(q_ref, k_ref, v_ref, bias_ref, o_ref, lse_ref, *p_refs, scale: float, block_k: int):
  q = q_ref[0, 0]  # [bq, D]
  T = k_ref.shape[2]
  bq = q.shape[0]

  def scores(j):
    ks = k_ref[0, 0, pl.ds(j * block_k, block_k), :]  # [bk, D]
    bias = jnp.maximum(bias_ref[0, :, pl.ds(j * block_k, block_k)], MASK_FLOOR)  # [1, bk]
    return _dot(q, ks, 1, 1) * scale + bias  # [bq, bk] f32

  def body(j, carry):
    m, l, acc = carry  # [bq, 1], [bq, 1], [bq, D] f32
    s = scores(j)
    m_new = jnp.maximum(m, s.max(axis=-1, keepdims=True))
    p = jnp.exp(s - m_new)
    alpha = jnp.exp(m - m_new)
    vs = v_ref[0, 0, pl.ds(j * block_k, block_k), :]  # [bk, D]
    acc = alpha * acc + _dot(p.astype(vs.dtype), vs, 1, 0)
    return m_new, alpha * l + p.sum(axis=-1, keepdims=True), acc

  init = (jnp.full((bq, 1), MASK_FLOOR, jnp.float32), jnp.zeros((bq, 1), jnp.float32),
          jnp.zeros((bq, q.shape[1]), jnp.float32))
  m, l, acc = jax.lax.fori_loop(0, T // block_k, body, init)
  o_ref[0, 0] = (acc / l).astype(o_ref.dtype)
  lse = m + jnp.log(l)  # [bq, 1]
  lse_ref[0, 0] = lse
  if p_refs:  # second sweep: normalized probabilities, one [bq, bk] tile at a time
    (p_ref,) = p_refs

    def write(j, _):
      p_ref[0, 0, :, pl.ds(j * block_k, block_k)] = jnp.exp(scores(j) - lse)
      return 0
    jax.lax.fori_loop(0, T // block_k, write, 0)


def _bwd_kernel(q_ref, k_ref, v_ref, bias_ref, o_ref, lse_ref, do_ref, *rest, scale: float, block_q: int,
                with_probs_grad: bool):
  if with_probs_grad:
    g_ref, dq_ref, dk_ref, dv_ref = rest
  else:
    dq_ref, dk_ref, dv_ref = rest
  k, v = k_ref[0, 0], v_ref[0, 0]  # [T, D]
  T = k.shape[0]
  bias = jnp.maximum(bias_ref[0], MASK_FLOOR)  # [1, T]

  def body(i, carry):
    dk, dv = carry  # [T, D] f32
    rows = pl.ds(i * block_q, block_q)
    qi, doi, oi = q_ref[0, 0, rows, :], do_ref[0, 0, rows, :], o_ref[0, 0, rows, :]  # [bq, D]
    p = jnp.exp(_dot(qi, k, 1, 1) * scale + bias - lse_ref[0, 0, rows, :])  # [bq, T]
    dv = dv + _dot(p.astype(doi.dtype), doi, 0, 0)  # P^T dO: [T, D]
    dp = _dot(doi, v, 1, 1)  # dO V^T: [bq, T]
    delta = jnp.sum(doi.astype(jnp.float32) * oi.astype(jnp.float32), axis=-1, keepdims=True)  # [bq, 1]
    if with_probs_grad:
      g = g_ref[0, 0, rows, :]  # [bq, T] cotangent of the returned probabilities
      dp = dp + g - jnp.sum(p * g, axis=-1, keepdims=True)
    ds = p * (dp - delta) * scale  # [bq, T]
    dq_ref[0, 0, rows, :] = _dot(ds.astype(k.dtype), k, 1, 0).astype(dq_ref.dtype)
    dk = dk + _dot(ds.astype(qi.dtype), qi, 0, 0)
    return dk, dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, T // block_q, body, (zeros, zeros))
  dk_ref[0, 0] = dk.astype(dk_ref.dtype)
  dv_ref[0, 0] = dv.astype(dv_ref.dtype)


# ---- pallas_call wrappers over [B, A, T, D] ----------------------------------------------------

def _compiler_params(backend: str, n_grid: int):
  if backend == "tpu":
    return pltpu.CompilerParams(dimension_semantics=("parallel",) * n_grid)
  if backend == "gpu":
    from jax.experimental.pallas import triton as plgpu
    return plgpu.CompilerParams(num_warps=4, num_stages=2)
  return None


def _forward(q, k, v, bias, *, scale: float, blocks: BlockSizes, return_probs: bool, interpret, backend: str):
  B, A, T, D = q.shape
  bq = blocks.block_q
  itemsize = q.dtype.itemsize
  flops = 4 * B * A * T * T * D + (2 * B * A * T * T * D if return_probs else 0)
  bytes_accessed = 4 * B * A * T * D * itemsize + B * T * 4 + B * A * T * 4 + (B * A * T * T * 4 if return_probs else 0)
  out_shape = [jax.ShapeDtypeStruct((B, A, T, D), q.dtype), jax.ShapeDtypeStruct((B, A, T, 1), jnp.float32)]
  out_specs = [pl.BlockSpec((1, 1, bq, D), lambda b, a, i: (b, a, i, 0)),
               pl.BlockSpec((1, 1, bq, 1), lambda b, a, i: (b, a, i, 0))]
  if return_probs:
    out_shape.append(jax.ShapeDtypeStruct((B, A, T, T), jnp.float32))
    out_specs.append(pl.BlockSpec((1, 1, bq, T), lambda b, a, i: (b, a, i, 0)))
  return pl.pallas_call(
      functools.partial(_fwd_kernel, scale=scale, block_k=blocks.block_k),
      out_shape=out_shape,
      grid=(B, A, T // bq),
      in_specs=[pl.BlockSpec((1, 1, bq, D), lambda b, a, i: (b, a, i, 0)),
                pl.BlockSpec((1, 1, T, D), lambda b, a, i: (b, a, 0, 0)),  # K, V resident for the (b, a) pair
                pl.BlockSpec((1, 1, T, D), lambda b, a, i: (b, a, 0, 0)),
                pl.BlockSpec((1, 1, T), lambda b, a, i: (b, 0, 0))],
      out_specs=out_specs,
      compiler_params=_compiler_params(backend, 3),
      cost_estimate=pl.CostEstimate(flops=flops, transcendentals=B * A * T * T * (2 if return_probs else 1),
                                    bytes_accessed=bytes_accessed),
      interpret=interpret,
      name="student_attention_fwd",
  )(q, k, v, bias)


def _backward(q, k, v, bias, o, lse, do, g, *, scale: float, blocks: BlockSizes, interpret, backend: str):
  B, A, T, D = q.shape
  full = pl.BlockSpec((1, 1, T, D), lambda b, a: (b, a, 0, 0))
  in_specs = [full, full, full, pl.BlockSpec((1, 1, T), lambda b, a: (b, 0, 0)), full,
              pl.BlockSpec((1, 1, T, 1), lambda b, a: (b, a, 0, 0)), full]
  args = [q, k, v, bias, o, lse, do]
  if g is not None:
    in_specs.append(pl.BlockSpec((1, 1, T, T), lambda b, a: (b, a, 0, 0)))
    args.append(g)
  itemsize = q.dtype.itemsize
  return pl.pallas_call(
      functools.partial(_bwd_kernel, scale=scale, block_q=blocks.block_q_bwd, with_probs_grad=g is not None),
      out_shape=[jax.ShapeDtypeStruct((B, A, T, D), q.dtype)] * 3,
      grid=(B, A),
      in_specs=in_specs,
      out_specs=[full, full, full],
      compiler_params=_compiler_params(backend, 2),
      cost_estimate=pl.CostEstimate(flops=10 * B * A * T * T * D, transcendentals=B * A * T * T,
                                    bytes_accessed=8 * B * A * T * D * itemsize
                                    + (B * A * T * T * 4 if g is not None else 0)),
      interpret=interpret,
      name="student_attention_bwd",
  )(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _attention(q, k, v, bias, scale, blocks, return_probs, interpret, backend):
  outs = _forward(q, k, v, bias, scale=scale, blocks=blocks, return_probs=return_probs, interpret=interpret,
                  backend=backend)
  return outs[0], (outs[2] if return_probs else None)


def _attention_fwd(q, k, v, bias, scale, blocks, return_probs, interpret, backend):
  outs = _forward(q, k, v, bias, scale=scale, blocks=blocks, return_probs=return_probs, interpret=interpret,
                  backend=backend)
  o, lse = outs[0], outs[1]
  return (o, outs[2] if return_probs else None), (q, k, v, bias, o, lse)


def _attention_bwd(scale, blocks, return_probs, interpret, backend, res, cts):
  q, k, v, bias, o, lse = res
  do, g = cts
  if g is not None and isinstance(g, jax.custom_derivatives.SymbolicZero):
    g = None
  dq, dk, dv = _backward(q, k, v, bias, o, lse, do.astype(q.dtype), g if return_probs else None, scale=scale,
                         blocks=blocks, interpret=interpret, backend=backend)
  return dq, dk, dv, jnp.zeros_like(bias)  # the padding mask is not trained


_attention.defvjp(_attention_fwd, _attention_bwd)


def _next_pow2(n: int) -> int:
  return 1 << (n - 1).bit_length()


def mha(q, k, v, mask_bias, *, return_probs: bool = False, block_sizes: BlockSizes | None = None, interpret=None,
        backend: str | None = None):
  """Fused attention. q, k, v: [B, T, A, D]; mask_bias: [B, 1, 1, T] additive (f32).

  Returns (out [B, T, A, D] in q's dtype, probs [B, A, T, T] f32 or None). backend: the platform
  compiled for ('tpu', 'gpu', 'cpu'; default: the context mesh's, kernels/devices.py). interpret:
  None runs compiled on TPU/GPU and in Pallas' interpreter elsewhere; True or
  pltpu.InterpretParams() force the interpreter.
  """
  if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
    raise ValueError(f"fused_attention.mha: q, k, v must share one [B, T, A, D] shape; got {q.shape}, {k.shape}, "
                     f"{v.shape}")
  B, T, A, D = q.shape
  if mask_bias.shape != (B, 1, 1, T):
    raise ValueError(f"fused_attention.mha: mask_bias must be [B, 1, 1, T] = {(B, 1, 1, T)}, got {mask_bias.shape}")
  if q.dtype not in (jnp.float32, jnp.bfloat16):
    raise ValueError(f"fused_attention.mha: dtype {q.dtype} not supported; expected float32 or bfloat16")
  blocks = (block_sizes or BlockSizes()).fit(T)
  backend = backend or devices.target_platform()
  if interpret is None:
    interpret = backend not in devices.COMPILED_PLATFORMS
  return _mha(q, k, v, mask_bias, return_probs=return_probs, blocks=blocks, interpret=interpret,
              kernel_backend="interpret" if interpret else backend)


@functools.partial(jax.jit, static_argnames=("return_probs", "blocks", "interpret", "kernel_backend"))
def _mha(q, k, v, mask_bias, *, return_probs, blocks, interpret, kernel_backend):
  B, T, A, D = q.shape
  scale = D ** -0.5
  to_bat = lambda t: jnp.transpose(t, (0, 2, 1, 3))  # [B, T, A, D] -> [B, A, T, D]: one (b, a) tile per step
  qb, kb, vb = to_bat(q), to_bat(k), to_bat(v)
  Dp = _next_pow2(D) if kernel_backend == "gpu" else D  # Triton blocks are powers of two
  if Dp != D:
    pad = lambda t: jnp.pad(t, ((0, 0), (0, 0), (0, 0), (0, Dp - D)))
    qb, kb, vb = pad(qb), pad(kb), pad(vb)
  bias = mask_bias.reshape(B, 1, T).astype(jnp.float32)
  out, probs = _attention(qb, kb, vb, bias, scale, blocks, return_probs, interpret, kernel_backend)
  return to_bat(out[..., :D]), probs
