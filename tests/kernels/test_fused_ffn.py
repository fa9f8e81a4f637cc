"""Fused stacked FFN against the model's jnp reference, interpret mode and TPU interpret mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from kernels import fused_ffn as ff
from tests.kernels.modes import CompiledOrInterpreted

# (B, T, Bn, I, F): F FFNs of the design space (2, 4, 6 in Table 1; 1 and 3 for odd counts);
# B * T = 40 is not a multiple of the row block, so padding is exercised.
SHAPES = [(1, 16, 32, 64, 1), (2, 20, 64, 128, 2), (1, 24, 32, 96, 4)]
TOL = {jnp.float32: 3e-5, jnp.bfloat16: 4e-2}
BLOCKS = ff.BlockSizes(block_rows=16)


def _inputs(B, T, Bn, I, F, dtype, seed=0):
  ks = jax.random.split(jax.random.key(seed), 7)
  h = jax.random.normal(ks[0], (B, T, Bn)).astype(dtype)
  weights = (jax.random.normal(ks[1], (F, Bn, I)) * Bn ** -0.5, 0.1 * jax.random.normal(ks[2], (F, I)),
             jax.random.normal(ks[3], (F, I, Bn)) * I ** -0.5, 0.1 * jax.random.normal(ks[4], (F, Bn)),
             1 + 0.1 * jax.random.normal(ks[5], (F, Bn)), 0.1 * jax.random.normal(ks[6], (F, Bn)))
  return h, weights


def _tol(dtype, contraction):
  return TOL[dtype] * max(1.0, np.sqrt(contraction / 64))


class TestFusedFFN(CompiledOrInterpreted):
  """Compiled on a GPU/TPU (skipped elsewhere); TestFusedFFNInterpret runs the same cases in interpret mode."""

  @pytest.mark.parametrize("shape,dtype,norm", [(SHAPES[0], jnp.float32, "no_norm"), (SHAPES[1], jnp.float32, "layer_norm"),
                                                (SHAPES[2], jnp.float32, "no_norm"), (SHAPES[2], jnp.bfloat16, "no_norm"),
                                                (SHAPES[1], jnp.bfloat16, "layer_norm")])
  def test_forward_matches_reference(self, shape, dtype, norm):
    h, weights = _inputs(*shape, dtype)
    out = ff.stacked_ffn(h, *weights, norm=norm, block_sizes=BLOCKS, interpret=self.INTERPRET)
    ref = ff.stacked_ffn_reference(h, *weights, norm=norm)
    assert out.dtype == dtype and out.shape == h.shape
    tol = _tol(dtype, shape[3]) * shape[4]
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), atol=tol, rtol=tol)

  @pytest.mark.parametrize("shape,norm", [(SHAPES[1], "no_norm"), (SHAPES[2], "layer_norm")])
  def test_gradients_match_reference(self, shape, norm):
    h, weights = _inputs(*shape, jnp.float32)
    w = jax.random.normal(jax.random.key(3), h.shape)
    loss = lambda f: (lambda h, *ws: jnp.sum(f(h, *ws) * w))
    fused = loss(lambda h, *ws: ff.stacked_ffn(h, *ws, norm=norm, block_sizes=BLOCKS, interpret=self.INTERPRET))
    ref = loss(lambda h, *ws: ff.stacked_ffn_reference(h, *ws, norm=norm))
    ours = jax.grad(fused, argnums=tuple(range(7)))(h, *weights)
    theirs = jax.grad(ref, argnums=tuple(range(7)))(h, *weights)
    for name, a, b in zip(["h", "w_in", "b_in", "w_out", "b_out", "norm_scale", "norm_bias"], ours, theirs):
      scale = float(jnp.abs(b).max())
      err = float(jnp.abs(a - b).max())
      assert err <= 1e-5 * max(scale, 1.0) * shape[4], f"d{name}: max error {err} (scale {scale})"


class TestFusedFFNInterpret(TestFusedFFN):
  """The same cases in Pallas interpret mode: runs on every backend, CPU included."""

  INTERPRET = True


def test_tpu_interpret_mode_small_shape():
  h, weights = _inputs(1, 16, 32, 64, 2, jnp.float32)
  interp = pltpu.InterpretParams(detect_races=True)
  out = ff.stacked_ffn(h, *weights, block_sizes=BLOCKS, interpret=interp)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ff.stacked_ffn_reference(h, *weights)), atol=3e-5, rtol=3e-5)
  dh = jax.grad(lambda h: jnp.sum(ff.stacked_ffn(h, *weights, block_sizes=BLOCKS, interpret=interp)))(h)
  dh_ref = jax.grad(lambda h: jnp.sum(ff.stacked_ffn_reference(h, *weights)))(h)
  np.testing.assert_allclose(np.asarray(dh), np.asarray(dh_ref), atol=1e-4, rtol=1e-4)


def test_weights_too_large_for_chip_use_the_xla_path_and_bad_shapes_are_errors():
  h, weights = _inputs(1, 16, 32, 64, 2, jnp.float32)
  small = ff.BlockSizes(block_rows=16, max_weight_bytes=1024)
  with pytest.warns(UserWarning, match="exceed BlockSizes.max_weight_bytes"), ff.ImplementationLog() as log:
    out = ff.stacked_ffn(h, *weights, block_sizes=small, interpret=True)
  assert log.chosen == ["xla"]  # the harness reports this, never a fused kernel that did not run
  with ff.ImplementationLog() as log:
    ff.stacked_ffn(h, *weights, block_sizes=BLOCKS, interpret=True)
  assert log.chosen == ["pallas"]
  np.testing.assert_allclose(np.asarray(out), np.asarray(ff.stacked_ffn_reference(h, *weights)), atol=1e-6, rtol=1e-6)
  with pytest.raises(ValueError, match=r"w_out must be \(2, 64, 32\)"):
    ff.stacked_ffn(h, weights[0], weights[1], weights[0], *weights[3:], interpret=True)
  with pytest.raises(ValueError, match="norm='batch_norm'"):
    ff.stacked_ffn(h, *weights, norm="batch_norm", interpret=True)
