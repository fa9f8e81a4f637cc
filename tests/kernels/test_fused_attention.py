"""Fused attention against its jnp reference: interpret mode (always, on CPU) and, on a few
small shapes, the TPU interpret mode that checks TPU memory spaces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from kernels import fused_attention as fa
from tests.kernels.modes import CompiledOrInterpreted

# (B, T, A, D, padded): head counts 1-8 and head sizes of the design space (bottleneck / heads).
SHAPES = [(1, 32, 1, 16, False), (2, 64, 4, 24, True), (1, 32, 8, 20, True)]
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}
BLOCKS = fa.BlockSizes(block_q=16, block_k=16, block_q_bwd=16)  # several tiles per axis even at T=32


def _inputs(B, T, A, D, padded, dtype, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  q, k, v = (jax.random.normal(x, (B, T, A, D), jnp.float32).astype(dtype) for x in ks)
  mask = jnp.ones((B, T), jnp.int32)
  if padded:  # ragged padding, including a key block that is masked entirely
    mask = mask.at[-1, T // 2:].set(0)
  bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
  return q, k, v, bias


def _tol(dtype, D):
  return TOL[dtype] * max(1.0, np.sqrt(D / 16))


class TestFusedAttention(CompiledOrInterpreted):
  """Compiled on a GPU/TPU (skipped elsewhere); TestFusedAttentionInterpret runs the same cases in interpret mode."""

  @pytest.mark.parametrize("shape,dtype", [(SHAPES[0], jnp.float32), (SHAPES[1], jnp.float32), (SHAPES[2], jnp.float32),
                                           (SHAPES[1], jnp.bfloat16)])
  def test_forward_matches_reference(self, shape, dtype):
    q, k, v, bias = _inputs(*shape, dtype)
    out, probs = fa.mha(q, k, v, bias, return_probs=True, block_sizes=BLOCKS, interpret=self.INTERPRET)
    ref_out, ref_probs = fa.attention_reference(q, k, v, bias)
    assert out.dtype == dtype and out.shape == q.shape and probs.shape == ref_probs.shape
    tol = _tol(dtype, shape[3])
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref_out, np.float32), atol=tol, rtol=tol)
    np.testing.assert_allclose(np.asarray(probs), np.asarray(ref_probs), atol=tol, rtol=tol)
    alone, none = fa.mha(q, k, v, bias, block_sizes=BLOCKS, interpret=self.INTERPRET)
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
                                                interpret=self.INTERPRET)), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(lambda q, k, v: fa.attention_reference(q, k, v, bias)), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", ours, ref):
      a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
      scale = np.abs(b).max()
      assert np.abs(a - b).max() <= 4 * _tol(dtype, D) * scale, f"d{name}: max error {np.abs(a - b).max()} vs {scale}"


class TestFusedAttentionInterpret(TestFusedAttention):
  """The same cases in Pallas interpret mode: runs on every backend, CPU included."""

  INTERPRET = True


def test_tpu_interpret_mode_small_shape():
  """The TPU interpreter checks block shapes against TPU memory spaces and detects races."""
  q, k, v, bias = _inputs(1, 32, 2, 16, True, jnp.float32)
  interp = pltpu.InterpretParams(detect_races=True)
  out, probs = fa.mha(q, k, v, bias, return_probs=True, block_sizes=BLOCKS, interpret=interp)
  ref_out, ref_probs = fa.attention_reference(q, k, v, bias)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(np.asarray(probs), np.asarray(ref_probs), atol=2e-5, rtol=2e-5)
  dq = jax.grad(lambda q: jnp.sum(fa.mha(q, k, v, bias, block_sizes=BLOCKS, interpret=interp)[0]))(q)
  dq_ref = jax.grad(lambda q: jnp.sum(fa.attention_reference(q, k, v, bias)[0]))(q)
  np.testing.assert_allclose(np.asarray(dq), np.asarray(dq_ref), atol=1e-4, rtol=1e-4)


def test_shape_errors_name_the_argument():
  q, k, v, bias = _inputs(1, 32, 2, 16, False, jnp.float32)
  with pytest.raises(ValueError, match=r"mask_bias must be \[B, 1, 1, T\]"):
    fa.mha(q, k, v, bias[:, :, :, :16], interpret=True)
  with pytest.raises(ValueError, match="q, k, v must share"):
    fa.mha(q, k[:, :16], v, bias, interpret=True)
  with pytest.raises(ValueError, match="block_q=24 must divide"):
    fa.mha(q, k, v, bias, block_sizes=fa.BlockSizes(block_q=24), interpret=True)
