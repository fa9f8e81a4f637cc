"""Mixed precision on this CPU: the dense layer's forward + backward in f32, in bf16 with JAX's own
transpose, and in bf16 with the explicit VJP of ad/models/layers.py (what the models use).

Command:  .venv/bin/python -m experiments.bench_mixed_precision
Prints GFLOP/s (best of `--reps` after a warm-up) for each shape and the ratio to f32. The
numbers behind BUILD.md "Mixed precision on this CPU".
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from ad.models import layers

SHAPES = [(16 * 128, 384, 1536), (16 * 128, 1536, 384), (16 * 64, 512, 128), (16 * 64, 128, 512)]


def plain_f32(x, w, b):
  return jnp.einsum("ni,io->no", x, w) + b


def jax_transpose_bf16(x, w, b):
  """bf16 operands, f32 accumulation, and whatever backward pass JAX derives for it."""
  y = jnp.einsum("ni,io->no", x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
  return (y + b).astype(jnp.bfloat16)


def project_bf16(x, w, b):
  return layers.linear(x.astype(jnp.bfloat16), w, b)


def best_seconds(f, args, reps: int) -> float:
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--reps", type=int, default=10)
  args = p.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; forward + backward of y = x @ w + b")
  for n, i, o in SHAPES:
    k = jax.random.split(jax.random.key(0), 3)
    x, w = jax.random.normal(k[0], (n, i)), 0.02 * jax.random.normal(k[1], (i, o))
    b = jnp.zeros((o,))
    flops = 3 * 2 * n * i * o  # forward, input gradient, weight gradient
    rates = {}
    for name, fn in (("f32", plain_f32), ("bf16, JAX transpose", jax_transpose_bf16), ("bf16, ad VJP", project_bf16)):
      grad = jax.jit(jax.grad(lambda x, w, b, fn=fn: fn(x, w, b).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
      rates[name] = flops / best_seconds(grad, (x, w, b), args.reps) / 1e9
    print(f"[{n}, {i}] x [{i}, {o}]: " + ", ".join(f"{k} {v:.0f} GFLOP/s ({v / rates['f32']:.2f}x)"
                                                   for k, v in rates.items()))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
