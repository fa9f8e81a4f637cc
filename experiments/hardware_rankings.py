"""Does the target hardware change the answer? (003's premise, issue: TPU pods from this machine.)

    python -m experiments.hardware_rankings [--n 64] [--blocks 24] [--seed 0] [--chips v4,v5e,v6e]

For n architectures drawn from the Table 1 space (24 blocks, batch 1, seq 128, bf16): this CPU's
latency measured from XLA traces (profiling/harness.py, as the search measures), and the latency
XLA's TPU cost model estimates for one chip of each of `--chips` (ad/aot.py estimate_latency: the
inference program compiled here for that chip, never run). Reports, for every pair of targets,
Kendall's tau between their latency rankings, and how many architectures are on the (parameters,
latency) Pareto front of one target and not of the other; for each chip, the tau between XLA's
estimate and a plain roofline of the same program (max of FLOPs / bf16 peak, bytes / HBM
bandwidth). The CPU figures are measurements (with the 95% CI of each median); the TPU figures are
estimates. Resumable: rows already in the CSV are kept.

Output: experiments/results/hardware_rankings.{csv,json}
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

from ad import aot, space as space_lib
from ad.models import student as student_lib
from ad.search import pareto
from profiling import harness

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODEL = dict(num_blocks=24, dtype="bfloat16")  # student_model's other defaults (paper_table1's shape)


def sample(n: int, seed: int) -> list[space_lib.Arch]:
  archs = space_lib.DesignSpace.from_config({k: list(v) for k, v in space_lib.TABLE1.items()}).archs()
  archs = sorted(archs)
  return sorted(random.Random(seed).sample(archs, n)) if n < len(archs) else archs


def measure_row(arch, chips, blocks: int, max_reps: int) -> dict:
  model = dict(MODEL, num_blocks=blocks)
  cfg = student_lib.config_from_dict(arch, model)
  row = dict(arch=arch.name, params=student_lib.param_counts(cfg)["paper_total"])
  m = harness.measure_arch(arch, model, batch=1, seq=128, max_reps=max_reps, target_rel_ci=0.02)
  row.update(cpu_ms=m["latency_ms_median"], cpu_rel_ci95=m["latency_rel_ci95"], cpu_flops=m["flops"])
  for chip in chips:
    e = aot.estimate_latency(arch, model, chip, batch=1, seq=128, log=lambda *_: None)
    row.update({f"{chip}_ms": e["latency_ms_median"], f"{chip}_roofline_ms": e["roofline_ms"],
                f"{chip}_sentinels": e["sentinel_ops"]})
  return row


def front(params, latency) -> np.ndarray:
  return pareto.pareto_mask(np.stack([np.asarray(params, float), np.asarray(latency, float)], 1))


def analyse(rows: list[dict], chips) -> dict:
  targets = ["cpu"] + list(chips)
  lat = {t: [r[f"{t}_ms"] for r in rows] for t in targets}
  params = [r["params"] for r in rows]
  fronts = {t: front(params, lat[t]) for t in targets}
  pairs = {}
  for i, a in enumerate(targets):
    for b in targets[i + 1:]:
      tau = stats.kendalltau(lat[a], lat[b])
      pairs[f"{a} vs {b}"] = dict(kendall_tau=float(tau.statistic), p_value=float(tau.pvalue),
                                  front_only_first=[r["arch"] for r, x, y in zip(rows, fronts[a], fronts[b]) if x and not y],
                                  front_only_second=[r["arch"] for r, x, y in zip(rows, fronts[a], fronts[b]) if y and not x])
  roofline = {c: float(stats.kendalltau(lat[c], [r[f"{c}_roofline_ms"] for r in rows]).statistic) for c in chips}
  return dict(architectures=len(rows), pairs=pairs, estimate_vs_roofline_tau=roofline,
              fronts={t: [r["arch"] for r, m in zip(rows, fronts[t]) if m] for t in targets},
              cpu_rel_ci95_median=float(np.median([r["cpu_rel_ci95"] for r in rows])),
              sentinel_programs={c: sum(1 for r in rows if r[f"{c}_sentinels"]) for c in chips})


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--n", type=int, default=64)
  p.add_argument("--blocks", type=int, default=24)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--chips", default="v4,v5e,v6e")
  p.add_argument("--max-reps", type=int, default=60)
  p.add_argument("--out", default=OUT)
  args = p.parse_args(argv)
  chips = args.chips.split(",")
  csv_path = os.path.join(args.out, "hardware_rankings.csv")
  done = {}
  if os.path.isfile(csv_path):
    with open(csv_path) as f:
      done = {r["arch"]: {k: (json.loads(v) if k != "arch" else v) for k, v in r.items()} for r in csv.DictReader(f)}
  t0 = time.time()
  rows = []
  for i, arch in enumerate(sample(args.n, args.seed)):
    if arch.name not in done:
      done[arch.name] = measure_row(arch, chips, args.blocks, args.max_reps)
      fields = list(done[arch.name])
      with open(csv_path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in done.values():
          w.writerow({k: json.dumps(r[k]) if k != "arch" else r[k] for k in fields})
      os.replace(csv_path + ".tmp", csv_path)
      print(f"[{i + 1}/{args.n}] {arch.name}: cpu {done[arch.name]['cpu_ms']:.2f} ms, "
            + ", ".join(f"{c} {done[arch.name][f'{c}_ms']:.3f} ms" for c in chips), flush=True)
    rows.append(done[arch.name])
  result = dict(command=f"python -m experiments.hardware_rankings --n {args.n} --blocks {args.blocks} --seed "
                        f"{args.seed} --chips {args.chips}", wall_s_this_run=time.time() - t0, **analyse(rows, chips))
  with open(os.path.join(args.out, "hardware_rankings.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps({k: v for k, v in result.items() if k != "fronts"}, indent=1))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
