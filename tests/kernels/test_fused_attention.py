"""Fused attention: numerics against its jnp reference (compiled on an accelerator, interpreted
elsewhere), the TPU interpreter on a small shape, and Mosaic compilation for TPU v5e and v4 over a
sample of the Table 1 shapes (tests/kernels/modes.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from kernels import fused_attention as fa
from tests.kernels import modes

# (B, T, A, D, padded): head counts 1-8 and head sizes of the design space (bottleneck / heads).
SHAPES = [(1, 32, 1, 16, False), (2, 64, 4, 24, True), (1, 32, 8, 20, True)]
# Largest error relative to the reference's largest value (outputs, gradients) or absolute
# (probabilities, always f32). Interpret mode, measured here over SHAPES: f32 outputs 4.8e-7,
# gradients 5.2e-7, probabilities 1.8e-7; bf16 outputs 7.8e-3 (one bf16 step), gradients 6.9e-3.
# Compiled: not measured yet (no accelerator so far), so the bounds the tests had before.
TOL = dict(interpret={jnp.float32: dict(out=2e-6, probs=1e-6, grad=2e-6),
                      jnp.bfloat16: dict(out=1.6e-2, probs=1e-6, grad=1.5e-2)},
           compiled={jnp.float32: dict(out=4e-5, probs=4e-5, grad=3e-4),
                     jnp.bfloat16: dict(out=6e-2, probs=6e-2, grad=0.13)})[modes.MODE]
BLOCKS = fa.BlockSizes(block_q=16, block_k=16, block_q_bwd=16)  # several tiles per axis even at T=32


def _inputs(B, T, A, D, padded, dtype, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(x, (B, T, A, D), jnp.float32).astype(dtype) for x in ks)
  mask = jnp.ones((B, T), jnp.int32)
  if padded:  # ragged padding, including a key block that is masked entirely
    mask = mask.at[-1, T // 2:].set(0)
  bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
  return q, k, v, bias


def _rel(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.abs(a - b).max() / np.abs(b).max())


class TestFusedAttention:
  """Numerics: compiled on a GPU/TPU, in Pallas' interpreter elsewhere."""

  @pytest.mark.parametrize("shape,dtype", [(SHAPES[0], jnp.float32), (SHAPES[1], jnp.float32), (SHAPES[2], jnp.float32),
                                           (SHAPES[1], jnp.bfloat16), (SHAPES[2], jnp.bfloat16)])
  def test_forward_matches_reference(self, shape, dtype):
    q, k, v, bias = _inputs(*shape, dtype)
    out, probs = fa.mha(q, k, v, bias, return_probs=True, block_sizes=BLOCKS, interpret=modes.INTERPRET)
    ref_out, ref_probs = fa.attention_reference(q, k, v, bias)
    assert out.dtype == dtype and out.shape == q.shape and probs.shape == ref_probs.shape
    assert _rel(out, ref_out) <= TOL[dtype]["out"]
    assert float(np.abs(np.asarray(probs) - np.asarray(ref_probs)).max()) <= TOL[dtype]["probs"]
    alone, none = fa.mha(q, k, v, bias, block_sizes=BLOCKS, interpret=modes.INTERPRET)
    assert none is None
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(out))

  @pytest.mark.parametrize("shape,dtype", [(SHAPES[1], jnp.float32), (SHAPES[2], jnp.bfloat16)])
  def test_gradients_through_output_and_probabilities_match_reference(self, shape, dtype):
    """The loss uses both outputs, as distillation does (context downstream, probabilities in the KL)."""
    q, k, v, bias = _inputs(*shape, dtype)
    B, T, A, D, _ = shape
    w_out = jax.random.normal(jax.random.key(1), (B, T, A, D))
    w_p = jax.random.normal(jax.random.key(2), (B, A, T, T))

    def loss(f):
      def value(q, k, v):
        out, probs = f(q, k, v)
        return jnp.sum(out.astype(jnp.float32) * w_out) + jnp.sum(probs * w_p)
      return value
    ours = jax.grad(loss(lambda q, k, v: fa.mha(q, k, v, bias, return_probs=True, block_sizes=BLOCKS,
                                                interpret=modes.INTERPRET)), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(lambda q, k, v: fa.attention_reference(q, k, v, bias)), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", ours, ref):
      assert _rel(a, b) <= TOL[dtype]["grad"], f"d{name}: relative error {_rel(a, b):.2e}"


# Table 1 attention shapes (bottleneck / heads = D), sampled: every head count, the smallest and the
# largest head size, both sequence-length ends and both dtypes, the chips taking turns. Every shape on
# both chips: experiments/tpu_kernel_sweep.py (672 programs per chip).
MOSAIC_SHAPES = [(1, 128, 1, 160, jnp.bfloat16, "v5e"), (2, 128, 2, 48, jnp.float32, "v4"),
                 (2, 512, 4, 24, jnp.bfloat16, "v4"), (2, 128, 8, 8, jnp.float32, "v5e"),
                 (1, 512, 8, 20, jnp.float32, "v5e")]


class TestFusedAttentionMosaic:
  """Compiled through Mosaic for TPU chips (compile-only devices; nothing runs)."""

  @pytest.mark.parametrize("B,T,A,D,dtype,chip", MOSAIC_SHAPES)
  def test_forward_probabilities_and_backward_compile_to_mosaic(self, chip, B, T, A, D, dtype):
    S = jax.ShapeDtypeStruct
    args = (S((B, T, A, D), dtype),) * 3 + (S((B, 1, 1, T), jnp.float32),)
    forward = lambda q, k, v, b: fa.mha(q, k, v, b)[0]
    hlo = modes.compile_for_tpu(forward, args, chip)
    assert modes.mosaic_calls(hlo, "student_attention_fwd") == 1
    loss = lambda q, k, v, b: sum(jnp.sum(x.astype(jnp.float32)) for x in fa.mha(q, k, v, b, return_probs=True))
    hlo = modes.compile_for_tpu(jax.grad(loss, argnums=(0, 1, 2)), args, chip)
    assert modes.mosaic_calls(hlo, "student_attention_fwd") == 1  # with probabilities
    assert modes.mosaic_calls(hlo, "student_attention_bwd") == 1


def test_tpu_interpret_mode_small_shape():
  """The TPU interpreter checks block shapes against TPU memory spaces and detects races."""
  q, k, v, bias = _inputs(1, 32, 2, 16, True, jnp.float32)
  interp = pltpu.InterpretParams(detect_races=True)
  out, probs = fa.mha(q, k, v, bias, return_probs=True, block_sizes=BLOCKS, interpret=interp)
  ref_out, ref_probs = fa.attention_reference(q, k, v, bias)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=2e-6, rtol=2e-6)
  np.testing.assert_allclose(np.asarray(probs), np.asarray(ref_probs), atol=1e-6, rtol=1e-6)
  dq = jax.grad(lambda q: jnp.sum(fa.mha(q, k, v, bias, block_sizes=BLOCKS, interpret=interp)[0]))(q)
  dq_ref = jax.grad(lambda q: jnp.sum(fa.attention_reference(q, k, v, bias)[0]))(q)
  assert _rel(dq, dq_ref) <= 2e-6


def test_shape_errors_name_the_argument():
  q, k, v, bias = _inputs(1, 32, 2, 16, False, jnp.float32)
  with pytest.raises(ValueError, match=r"mask_bias must be \[B, 1, 1, T\]"):
    fa.mha(q, k, v, bias[:, :, :, :16], interpret=True)
  with pytest.raises(ValueError, match="q, k, v must share"):
    fa.mha(q, k[:, :16], v, bias, interpret=True)
  with pytest.raises(ValueError, match="block_q=24 must divide"):
    fa.mha(q, k, v, bias, block_sizes=fa.BlockSizes(block_q=24), interpret=True)
