"""How repeatable is batch-1 latency on this machine, and how many repetitions does it take?

Command:  .venv/bin/python -m experiments.latency_repeatability [--blocks 4]
Machine:  the 2-core CPU dev machine; about 1-2 minutes.
Output:   one line per architecture (median, cv, 95% CI of the median, repetitions) and
          experiments/results/latency_repeatability.json
"""

import argparse
import json
import os

from profiling import harness

ARCHS = ("512_128_4_512_4", "256_96_2_384_2", "128_64_1_640_6")


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--blocks", type=int, default=4)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--target-ci", type=float, default=0.02)
  p.add_argument("--max-reps", type=int, default=300)
  args = p.parse_args(argv)
  out = []
  for arch in ARCHS:
    r = harness.measure_arch(arch, num_blocks=args.blocks, seq=args.seq, target_rel_ci=args.target_ci,
                             max_reps=args.max_reps, trace_dir=f"/tmp/ad_repeat/{arch}")
    row = {k: r[k] for k in ("arch", "num_blocks", "seq", "latency_ms_median", "latency_ms_mean", "latency_cv",
                             "latency_rel_ci95", "repetitions", "converged", "wall_ms_median", "wall_minus_device_ms")}
    out.append(row)
    print(json.dumps(row), flush=True)
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latency_repeatability.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=2)


if __name__ == "__main__":
  main()
