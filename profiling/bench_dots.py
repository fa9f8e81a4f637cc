"""The student's matmuls alone: XLA:CPU's dot against PyTorch's on the same shapes and CPU.

    python -m profiling.bench_dots [--archs A,B] [--blocks 24] [--batch 1] [--seq 128]
                                   [--chain 50] [--rounds 9] [--json OUT]

How fast can a student's forward be on this backend? `ad profile` says how much of a forward's
op time its matmuls take (`matmul_share`); this says how fast those matmuls run, shape by shape,
through XLA:CPU's own (Eigen) dot, through the YNNPACK library fusion jax enables by default,
and through PyTorch's (oneDNN/MKL) matmul, in one process on the same threads.

Each of a block's matmuls is timed as a pair that maps its input back to itself (x @ W then @ V,
e.g. the FFN's [Bn -> I] then [I -> Bn]), `--chain` pairs long in one program, so that neither
side can skip, batch or overlap work. Rounds alternate the implementations, each timed after
two untimed calls (bench_inference.time_alternating); medians are reported with the 10th-90th
percentile over rounds. From the per-pair speeds and the block's matmul FLOPs the table also
gives the time the matmuls of one `--blocks`-block forward take on each side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from profiling.bench_inference import parse_archs, time_alternating
from ad.space import Arch

DEFAULT_ARCHS = ("512_128_4_512_4", "256_64_2_384_2")
IMPLS = ("xla eigen", "xla ynnpack", "torch")


def matmul_pairs(arch: str, batch: int, seq: int) -> list[dict]:
  """The block's matmuls as round-trip pairs: name, the two matmuls' shapes (batch dims, m, k, n),
  and the block's FLOPs in matmuls of that shape. The block is the default one of
  ad/models/student.py (MobileBERT's: a shared query/key bottleneck, values from the wide input)."""
  a = Arch.parse(arch)
  M, H, Bn, I, A = batch * seq, a.hidden, a.bottleneck, a.intermediate, a.heads
  D = Bn // A
  bottlenecks_in = 3  # [H -> Bn]: the input bottleneck, the shared query/key bottleneck, the values
  return [
      dict(name=f"bottleneck {H}->{Bn}->{H}", dims=((), M, H, Bn), back=((), M, Bn, H),
           flops_per_block=2 * M * H * Bn * (bottlenecks_in + 1)),
      dict(name=f"projection {Bn}->{Bn}", dims=((), M, Bn, Bn), back=((), M, Bn, Bn),
           flops_per_block=2 * M * Bn * Bn * 3),  # query, key, attention output
      dict(name=f"ffn {Bn}->{I}->{Bn} x{a.num_ffn}", dims=((), M, Bn, I), back=((), M, I, Bn),
           flops_per_block=2 * M * Bn * I * 2 * a.num_ffn),
      dict(name=f"attention {A}x[{seq},{D}]x[{D},{seq}]", dims=((batch * A,), seq, D, seq),
           back=((batch * A,), seq, seq, D), flops_per_block=2 * batch * A * seq * seq * D * 2),
  ]


def _chain_inputs(pair, rng):
  (bd, m, k, n), (_, _, _, k2) = pair["dims"], pair["back"]
  x = rng.standard_normal(bd + (m, k), dtype=np.float32)
  w = rng.standard_normal(bd + (k, n), dtype=np.float32) / np.float32(np.sqrt(k))  # keeps x's scale
  v = rng.standard_normal(bd + (n, k2), dtype=np.float32) / np.float32(np.sqrt(n))
  return x, w, v


def bench_pair(pair, *, chain: int, rounds: int, seed: int = 0) -> dict:
  import jax
  import torch

  x, w, v = _chain_inputs(pair, np.random.default_rng(seed))

  def run(x, w, v):  # numpy-style: works on jax and torch arrays alike
    for _ in range(chain):
      x = (x @ w) @ v
    return x

  lowered = jax.jit(run).lower(x, w, v)
  jx = [jax.device_put(t) for t in (x, w, v)]
  eigen = lowered.compile({"xla_cpu_experimental_ynn_fusion_type": ""})
  ynn = lowered.compile()
  tx = [torch.from_numpy(t) for t in (x, w, v)]

  def torch_run():
    with torch.inference_mode():
      return run(*tx)
  impls = {"xla eigen": lambda: eigen(*jx).block_until_ready(), "xla ynnpack": lambda: ynn(*jx).block_until_ready(),
           "torch": torch_run}
  ref = np.asarray(eigen(*jx))
  agree = {n: float(np.abs(np.asarray(f()) - ref).max() / max(np.abs(ref).max(), 1e-30)) for n, f in impls.items()}
  times = time_alternating(impls, rounds, calls=1)
  (bd, m, k, n), (_, _, _, k2) = pair["dims"], pair["back"]
  batch = int(np.prod(bd)) if bd else 1
  flops = 2 * batch * m * n * (k + k2) * chain  # [m, k] @ [k, n], then [m, n] @ [n, k2]
  gflops = {name: flops / np.asarray(t) / 1e9 for name, t in times.items()}
  return dict(pair, gflop_per_s={n: float(np.median(g)) for n, g in gflops.items()},
              spread_gflop_per_s={n: (float(np.percentile(g, 10)), float(np.percentile(g, 90)))
                                  for n, g in gflops.items()},
              max_rel_diff_vs_xla_eigen=agree)


def bench_arch(arch: str, *, blocks: int, batch: int, seq: int, chain: int, rounds: int) -> dict:
  pairs = [bench_pair(p, chain=chain, rounds=rounds) for p in matmul_pairs(arch, batch, seq)]
  matmul_ms = {n: sum(blocks * p["flops_per_block"] / (p["gflop_per_s"][n] * 1e9) for p in pairs) * 1e3
               for n in IMPLS}
  gflop = sum(blocks * p["flops_per_block"] for p in pairs) / 1e9
  return dict(arch=arch, blocks=blocks, batch=batch, seq=seq, chain=chain, rounds=rounds, pairs=pairs,
              encoder_matmul_gflop=gflop, encoder_matmul_ms=matmul_ms)


def format_table(rows: list[dict]) -> str:
  lines = ["| arch | matmul pair | " + " | ".join(f"{n} GFLOP/s (p10-p90)" for n in IMPLS) + " | torch / xla eigen |",
           "|---|---|" + "---|" * (len(IMPLS) + 1)]
  for r in rows:
    for p in r["pairs"]:
      g, s = p["gflop_per_s"], p["spread_gflop_per_s"]
      cells = " | ".join(f"{g[n]:.0f} ({s[n][0]:.0f}-{s[n][1]:.0f})" for n in IMPLS)
      lines.append(f"| {r['arch']} | {p['name']} | {cells} | {g['torch'] / g['xla eigen']:.2f}x |")
    ms = r["encoder_matmul_ms"]
    lines.append(f"| {r['arch']} | **all of {r['blocks']} blocks' matmuls, {r['encoder_matmul_gflop']:.2f} GFLOP** | " +
                 " | ".join(f"**{ms[n]:.1f} ms**" for n in IMPLS) + f" | {ms['xla eigen'] / ms['torch']:.2f}x |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m profiling.bench_dots", description=__doc__.split("\n\n")[0])
  p.add_argument("--archs", default=",".join(DEFAULT_ARCHS), help="comma-separated architectures")
  p.add_argument("--blocks", type=int, default=24)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--chain", type=int, default=50, help="matmul pairs per timed program")
  p.add_argument("--rounds", type=int, default=9)
  p.add_argument("--json", default="", help="write the rows as JSON here")
  args = p.parse_args(argv)
  for name in ("blocks", "batch", "seq", "chain", "rounds"):
    if getattr(args, name) <= 0:
      p.error(f"--{name} must be positive, got {getattr(args, name)}")
  archs = parse_archs(p, args.archs)
  import jax
  import torch
  if jax.default_backend() != "cpu":
    p.error(f"compares XLA:CPU's matmuls with torch's on the CPU; jax's backend here is {jax.default_backend()} "
            "(run with JAX_PLATFORMS=cpu)")
  rows = []
  for arch in archs:
    t0 = time.time()
    rows.append(bench_arch(arch, blocks=args.blocks, batch=args.batch, seq=args.seq, chain=args.chain,
                           rounds=args.rounds))
    print(f"{arch}: {time.time() - t0:.0f} s", file=sys.stderr)
  print(f"batch {args.batch}, seq {args.seq}, f32; {args.rounds} alternating rounds of {args.chain}-pair chains; "
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads)")
  print(format_table(rows))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(dict(rows=rows, command="python -m profiling.bench_dots " + " ".join(sys.argv[1:])), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
