"""Do parameter count and FLOPs predict latency? (003 section 2: proxies mislead.)

Measures batch-1 latency from XLA traces for a random sample of the Table 1 space on this
machine, and reports the Spearman rank correlation of params vs latency and FLOPs vs latency,
with a scatter plot.

Command:  .venv/bin/python -m experiments.proxy_correlation [--n 64] [--blocks 4] [--seq 128]
Machine:  the 2-core CPU dev machine (no accelerator); about 5-8 minutes for 64 archs, 4 blocks.
Output:   experiments/results/proxy_correlation.{csv,json,png}
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import time

import numpy as np
from scipy import stats

from ad import space as space_lib
from ad.models import student as student_lib
from profiling import harness

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--n", type=int, default=64)
  p.add_argument("--blocks", type=int, default=4)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-reps", type=int, default=100)
  p.add_argument("--out", default=OUT)
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)

  archs = random.Random(args.seed).sample(space_lib.DesignSpace().archs(), args.n)
  if space_lib.MOBILEBERT not in archs:
    archs[0] = space_lib.MOBILEBERT
  rows = []
  t_start = time.time()
  for i, arch in enumerate(archs):
    r = harness.measure_arch(arch, num_blocks=args.blocks, batch=args.batch, seq=args.seq,
                             trace_dir=os.path.join("/tmp", "ad_proxy_traces", arch.name), max_reps=args.max_reps)
    counts = student_lib.param_counts(student_lib.StudentConfig(arch=arch, num_blocks=args.blocks))
    rows.append(dict(arch=arch.name, params=counts["paper_total"], encoder_params=counts["encoder"], flops=r["flops"],
                     latency_ms=r["latency_ms_median"], latency_cv=r["latency_cv"], reps=r["repetitions"],
                     rel_ci95=r["latency_rel_ci95"], flops_utilization=r["flops_utilization"]))
    print(f"[{i + 1}/{len(archs)}] {arch.name}: {r['latency_ms_median']:.3f} ms (cv {r['latency_cv']:.3f}, "
          f"{r['repetitions']} reps), {r['flops'] / 1e9:.3f} GFLOP, {counts['paper_total'] / 1e6:.2f}M params", flush=True)

  lat = np.array([r["latency_ms"] for r in rows])
  summary = dict(
      n=len(rows), blocks=args.blocks, seq=args.seq, batch=args.batch, seed=args.seed,
      spearman_params_latency=float(stats.spearmanr([r["params"] for r in rows], lat).statistic),
      spearman_encoder_params_latency=float(stats.spearmanr([r["encoder_params"] for r in rows], lat).statistic),
      spearman_flops_latency=float(stats.spearmanr([r["flops"] for r in rows], lat).statistic),
      wall_s=time.time() - t_start, device=rows and harness.jax.devices()[0].device_kind,
  )
  with open(os.path.join(args.out, "proxy_correlation.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  with open(os.path.join(args.out, "proxy_correlation.json"), "w") as f:
    json.dump(summary, f, indent=2)
  _plot(rows, summary, os.path.join(args.out, "proxy_correlation.png"))
  print(json.dumps(summary, indent=2))


def _plot(rows, summary, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  lat = [r["latency_ms"] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, key, label, rho in ((axes[0], "params", "parameters (M, 003 Table 2 counting)", summary["spearman_params_latency"]),
                              (axes[1], "flops", "forward GFLOP (XLA cost analysis)", summary["spearman_flops_latency"])):
    x = [r[key] / (1e6 if key == "params" else 1e9) for r in rows]
    ax.scatter(x, lat, s=14)
    mb = [r for r in rows if r["arch"] == space_lib.MOBILEBERT.name]
    if mb:
      ax.scatter([mb[0][key] / (1e6 if key == "params" else 1e9)], [mb[0]["latency_ms"]], marker="p", s=90,
                 color="red", label="MobileBERT block")
      ax.legend()
    ax.set_xlabel(label)
    ax.set_ylabel("latency, ms (median, XLA trace)")
    ax.set_title(f"Spearman rho = {rho:.3f}")
  fig.suptitle(f"{summary['n']} archs, {summary['blocks']} blocks, batch {summary['batch']}, seq {summary['seq']}, "
               f"{summary['device']}")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  main()
