"""profiling/bench_dots.py: the block's matmuls as round-trip pairs, timed on XLA and torch."""

import numpy as np
import pytest

from profiling import bench_dots


def test_pairs_cover_every_matmul_of_the_block():
  """The pairs' FLOPs are the block's matmul FLOPs, counted from the architecture directly:
  three [H -> Bn] bottlenecks (input, shared query/key, value) and one [Bn -> H], query, key and
  attention output, F FFNs, and the two attention products."""
  H, Bn, A, I, F, T = 512, 128, 4, 512, 4, 128
  pairs = bench_dots.matmul_pairs("512_128_4_512_4", batch=1, seq=T)
  expected = 2 * T * (4 * H * Bn + 3 * Bn * Bn + 2 * F * Bn * I) + 2 * 2 * A * T * T * (Bn // A)
  assert sum(p["flops_per_block"] for p in pairs) == expected
  for p in pairs:  # every pair maps its input back to its own shape
    (bd, m, k, n), (bd2, m2, n2, k2) = p["dims"], p["back"]
    assert (bd, m, n) == (bd2, m2, n2) and k2 == k


def test_pairs_hold_most_of_a_blocks_flops_as_xla_counts_them():
  """Against the model itself: one more block adds XLA-counted FLOPs of which the pairs' matmuls
  are nearly all (the rest is bias, residual, norm and softmax arithmetic)."""
  from profiling import harness
  arch, T = "256_64_2_384_2", 32
  per_block = (harness.compile_only_arch(arch, num_blocks=2, seq=T, dtype="float32")["flops"]
               - harness.compile_only_arch(arch, num_blocks=1, seq=T, dtype="float32")["flops"])
  matmuls = sum(p["flops_per_block"] for p in bench_dots.matmul_pairs(arch, batch=1, seq=T))
  assert 0.9 * per_block <= matmuls <= per_block, (matmuls, per_block)


def test_every_implementation_computes_the_same_chain():
  pytest.importorskip("torch")
  row = bench_dots.bench_arch("128_64_2_128_2", blocks=2, batch=1, seq=16, chain=2, rounds=1)
  for p in row["pairs"]:
    assert max(p["max_rel_diff_vs_xla_eigen"].values()) < 1e-5, p["name"]
    assert all(g > 0 for g in p["gflop_per_s"].values())
  assert set(row["encoder_matmul_ms"]) == set(bench_dots.IMPLS)
  assert np.isclose(row["encoder_matmul_gflop"],
                    2 * sum(p["flops_per_block"] for p in bench_dots.matmul_pairs("128_64_2_128_2", 1, 16)) / 1e9)
