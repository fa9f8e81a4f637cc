"""Kernel benchmark: fused Pallas kernels vs their XLA references, plus a roofline estimate.

  python -m profiling.bench_kernels            # every kernel and shape, forward and forward+backward
  python -m profiling.bench_kernels --quick    # one shape per kernel

Per kernel and shape: median time of the compiled fused kernel and of the XLA reference
(profiling/harness.py measure_fn: warm-up, repetitions until the median's CI is tight),
achieved FLOP/s and bytes/s from the kernel's cost estimate, the speedup, and the max error
against the reference. On CPU the kernels run in Pallas' interpreter: their timings mean
nothing and the bench reports correctness only (and says so). The roofline table (always
printed) gives, for TPU v5e and H100, the FLOPs and HBM bytes of the fused kernel and of the
unfused XLA sequence and the time each needs at the chip's peaks: the expected gain, on record
before anyone runs it on hardware.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from kernels import fused_attention, fused_ffn
from profiling import harness, peaks as peaks_lib

# Student-block shapes from the design space at training batch 8: (B, T, A, D) and (N rows, Bn, I, F).
ATTENTION_SHAPES = [(8, 128, 4, 32), (8, 128, 8, 20), (8, 512, 4, 32), (8, 512, 1, 160)]
FFN_SHAPES = [(8 * 128, 128, 512, 4), (8 * 128, 64, 384, 2), (8 * 512, 160, 640, 6)]
ROOFLINE_CHIPS = [("TPU v5e", "tpu"), ("NVIDIA H100 80GB HBM3", "gpu")]


def attention_traffic(B, T, A, D, itemsize, with_probs=True):
  """(flops, fused HBM bytes, unfused XLA HBM bytes) of one forward.

  Unfused: XLA writes the f32 scores, reads them for the softmax, writes the probabilities and
  reads them back for P V (the probabilities are an output in distillation either way).
  """
  qkvo = 4 * B * A * T * D * itemsize
  tt = B * A * T * T * 4
  flops = 4 * B * A * T * T * D
  fused = qkvo + (tt if with_probs else 0) + B * A * T * 4  # + lse
  unfused = qkvo + 4 * tt
  return flops + (2 * B * A * T * T * D if with_probs else 0), flops, fused, unfused


def ffn_traffic(N, Bn, I, F, itemsize):
  """(flops, fused HBM bytes, unfused XLA HBM bytes) of one forward: unfused, each FFN writes and
  reads its [N, I] activation and its [N, Bn] output; fused, only the block's input and output move."""
  weights = F * (2 * Bn * I + I + 3 * Bn) * 4
  flops = 4 * N * F * Bn * I
  fused = 2 * N * Bn * itemsize + weights
  unfused = F * (2 * N * Bn * itemsize + 2 * N * I * itemsize) + weights
  return flops, flops, fused, unfused


def roofline_rows(dtype: str = "bfloat16"):
  itemsize = jnp.dtype(dtype).itemsize
  rows = []
  for kind, backend in ROOFLINE_CHIPS:
    p = peaks_lib.tpu_peaks(kind, dtype) if backend == "tpu" else peaks_lib.gpu_peaks(kind, dtype)
    for shape in ATTENTION_SHAPES:
      fused_flops, xla_flops, fb, ub = attention_traffic(*shape, itemsize)
      rows.append(_roof(kind, "attention", shape, fused_flops, xla_flops, fb, ub, p))
    for shape in FFN_SHAPES:
      fused_flops, xla_flops, fb, ub = ffn_traffic(*shape, itemsize)
      rows.append(_roof(kind, "stacked_ffn", shape, fused_flops, xla_flops, fb, ub, p))
  return rows


def _roof(chip, kernel, shape, fused_flops, xla_flops, fused_bytes, xla_bytes, p):
  t_fused = max(fused_flops / p.flops_per_s, fused_bytes / p.bytes_per_s)
  t_xla = max(xla_flops / p.flops_per_s, xla_bytes / p.bytes_per_s)
  return dict(chip=chip, kernel=kernel, shape=list(shape), fused_gflops=fused_flops / 1e9, xla_gflops=xla_flops / 1e9,
              fused_mb=fused_bytes / 1e6, xla_mb=xla_bytes / 1e6, fused_us=t_fused * 1e6, xla_us=t_xla * 1e6,
              expected_speedup=t_xla / t_fused,
              bound="memory" if fused_bytes / p.bytes_per_s > fused_flops / p.flops_per_s else "compute")


def _attention_case(shape, dtype, interpret):
  B, T, A, D = shape
  ks = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(x, (B, T, A, D)).astype(dtype) for x in ks)
  bias = jnp.zeros((B, 1, 1, T), jnp.float32)
  fused = jax.jit(lambda q, k, v: fused_attention.mha(q, k, v, bias, return_probs=True, interpret=interpret))
  ref = jax.jit(lambda q, k, v: fused_attention.attention_reference(q, k, v, bias))
  loss = lambda f: jax.jit(jax.grad(lambda q, k, v: sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in f(q, k, v)),
                                    argnums=(0, 1, 2)))
  flops, _, fused_bytes, _ = attention_traffic(B, T, A, D, jnp.dtype(dtype).itemsize)
  return (q, k, v), fused, ref, loss(fused), loss(ref), flops, fused_bytes


def _ffn_case(shape, dtype, interpret):
  N, Bn, I, F = shape
  ks = jax.random.split(jax.random.key(0), 3)
  h = jax.random.normal(ks[0], (8, N // 8, Bn)).astype(dtype)
  w = (jax.random.normal(ks[1], (F, Bn, I)) * Bn ** -0.5, jnp.zeros((F, I)),
       jax.random.normal(ks[2], (F, I, Bn)) * I ** -0.5, jnp.zeros((F, Bn)), jnp.ones((F, Bn)), jnp.zeros((F, Bn)))
  fused = jax.jit(lambda h, *w: fused_ffn.stacked_ffn(h, *w, interpret=interpret))
  ref = jax.jit(lambda h, *w: fused_ffn.stacked_ffn_reference(h, *w))
  loss = lambda f: jax.jit(jax.grad(lambda h, *w: jnp.sum(f(h, *w).astype(jnp.float32) ** 2), argnums=(0, 1, 3)))
  flops, _, fused_bytes, _ = ffn_traffic(N, Bn, I, F, jnp.dtype(dtype).itemsize)
  return (h,) + w, fused, ref, loss(fused), loss(ref), flops, fused_bytes


def _max_err(a, b):
  """Largest error relative to the reference's largest magnitude, over every output leaf."""
  return max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))
                   / max(float(jnp.max(jnp.abs(y.astype(jnp.float32)))), 1e-30))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def bench(quick: bool, dtype: str):
  backend = jax.default_backend()
  interpret = backend not in ("tpu", "gpu")
  cases = [("attention", s, _attention_case) for s in ATTENTION_SHAPES[:1 if quick else None]]
  cases += [("stacked_ffn", s, _ffn_case) for s in FFN_SHAPES[:1 if quick else None]]
  if interpret:  # the interpreter is slow; small versions of the same kernels check correctness
    cases = [("attention", (2, 128, 4, 32), _attention_case), ("stacked_ffn", (256, 128, 512, 4), _ffn_case)]
  rows = []
  for name, shape, make in cases:
    args, fused, ref, gfused, gref, flops, fused_bytes = make(shape, dtype, interpret)
    row = dict(kernel=name, shape=list(shape), dtype=dtype, backend=backend, interpret=interpret,
               fwd_max_err=_max_err(fused(*args), ref(*args)), grad_max_err=_max_err(gfused(*args), gref(*args)))
    if not interpret:
      for label, f_fused, f_ref in (("fwd", fused, ref), ("fwd_bwd", gfused, gref)):
        m_f = harness.measure_fn(f_fused, args, name=f"{name}_{label}_fused", batch=1, max_reps=200)
        m_r = harness.measure_fn(f_ref, args, name=f"{name}_{label}_xla", batch=1, max_reps=200)
        scale = 3 if label == "fwd_bwd" else 1  # backward ~ 2x the forward's FLOPs
        row.update({f"{label}_fused_ms": m_f["latency_ms_median"], f"{label}_xla_ms": m_r["latency_ms_median"],
                    f"{label}_speedup": m_r["latency_ms_median"] / m_f["latency_ms_median"],
                    f"{label}_fused_tflops": scale * flops / (m_f["latency_ms_median"] * 1e-3) / 1e12,
                    f"{label}_fused_gb_per_s": scale * fused_bytes / (m_f["latency_ms_median"] * 1e-3) / 1e9})
    rows.append(row)
  return rows


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  ap.add_argument("--json", default=None, help="also write the results here")
  args = ap.parse_args(argv)
  rows = bench(args.quick, args.dtype)
  backend = jax.default_backend()
  print(f"backend {backend} ({jax.devices()[0].device_kind}), jax {jax.__version__}, dtype {args.dtype}")
  if backend not in ("tpu", "gpu"):
    print("CPU: the Pallas kernels run in the interpreter here; their timings mean nothing, so only correctness "
          "is reported. Run this on a TPU or GPU for speedups.")
  for r in rows:
    line = (f"{r['kernel']:<12} {str(r['shape']):<22} max rel. error vs XLA: fwd {r['fwd_max_err']:.2e}, "
            f"grad {r['grad_max_err']:.2e}")
    if "fwd_speedup" in r:
      line += (f"  fwd {r['fwd_fused_ms']:.3f} ms vs XLA {r['fwd_xla_ms']:.3f} ms ({r['fwd_speedup']:.2f}x, "
               f"{r['fwd_fused_tflops']:.1f} TFLOP/s, {r['fwd_fused_gb_per_s']:.0f} GB/s)  fwd+bwd "
               f"{r['fwd_bwd_fused_ms']:.3f} vs {r['fwd_bwd_xla_ms']:.3f} ms ({r['fwd_bwd_speedup']:.2f}x)")
    print(line)
  roof = roofline_rows(args.dtype)
  print(f"\nroofline ({args.dtype}, forward; time = max(FLOPs / peak, HBM bytes / bandwidth)):")
  print(f"{'chip':<22} {'kernel':<12} {'shape':<22} {'GFLOP f/x':>12} {'MB fused':>9} {'MB XLA':>9} "
        f"{'us fused':>9} {'us XLA':>9} {'gain':>6} bound")
  for r in roof:
    print(f"{r['chip']:<22} {r['kernel']:<12} {str(r['shape']):<22} {r['fused_gflops']:>5.2f}/{r['xla_gflops']:<6.2f} "
          f"{r['fused_mb']:>9.2f} {r['xla_mb']:>9.2f} {r['fused_us']:>9.2f} {r['xla_us']:>9.2f} "
          f"{r['expected_speedup']:>5.2f}x {r['bound']}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(bench=rows, roofline=roof), f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
