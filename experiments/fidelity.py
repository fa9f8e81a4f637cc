"""Flash-distillation fidelity (003 section 4.7, Figs. 5-6; 004 Table 3).

Does a short flash distillation rank students the way the regular one does? For `count`
architectures spread over the Pareto region of the tabular benchmark (non-dominated ranks
1-3, evenly spaced in latency) plus the MobileBERT-shaped baseline, this runs the regular
distillation; 5% flash is the table's own run (the same config, seed and data, and distillation
here is deterministic). For `curve_count` of them (003 Fig. 5 shows one student) it also runs
flash at 1.25%, 2.5% and 10% of the regular steps. A fraction f
scales the table's flash schedule (20 pre-training + 10 progressive steps, 2 warm-up, at 5%) by
f / 5%, keeping 003's progressive ratio 0.48 at every fraction, as the paper does.

Reported: Kendall tau-b and pairwise ranking accuracy of MLM accuracy between the 5% flash run
and the regular run (a pair counts as agreeing when both orders are the same strictly, or both
are ties), accuracy vs steps (Fig. 5), and the students' flash vs regular positions (Fig. 6).

Command:  .venv/bin/python -m experiments.fidelity [--config tabular] [--workers 2]
Machine:  the 2-core CPU dev machine, after experiments.tabular; wall time in experiments/README.md.
Output:   experiments/results/fidelity.{csv,json} and fidelity_steps.png, fidelity_shift.png;
          one JSON per (architecture, schedule) under runs/fidelity/ (a rerun skips those).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np

from ad import configs
from ad import space as space_lib
from ad.search import pareto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")
TABLE_FRACTION = 0.05  # the table's flash schedule is 5% of the regular one (003 4.7)


def choose(rows: list[dict], count: int) -> list[str]:
  """`count` architectures of the Pareto region (ranks 1..r, r grown until enough), evenly
  spaced in latency, plus the MobileBERT-shaped baseline."""
  y = pareto.to_min([[float(r["mlm_accuracy"]), float(r["latency_ms_median"])] for r in rows], ["max", "min"])
  ranks = pareto.pareto_ranks(y)
  depth = 3
  while (ranks <= depth).sum() < count and depth < ranks.max():
    depth += 1
  region = [i for i in np.flatnonzero(ranks <= depth)]
  region.sort(key=lambda i: y[i, 1])
  picks = sorted({region[int(round(k))] for k in np.linspace(0, len(region) - 1, count)}, key=lambda i: y[i, 1])
  names = [rows[i]["arch"] for i in picks]
  if space_lib.MOBILEBERT.name not in names:
    names.append(space_lib.MOBILEBERT.name)
  return names


def pairwise_accuracy(a, b) -> float:
  """Fraction of pairs ordered the same by a and b (both strict the same way, or both tied)."""
  agree = total = 0
  for i, j in itertools.combinations(range(len(a)), 2):
    total += 1
    agree += int(np.sign(a[i] - a[j]) == np.sign(b[i] - b[j]))
  return agree / total


def schedule_overrides(cfg, fraction: float) -> list[str]:
  """--set overrides that make distill.flash the flash schedule at `fraction` of the regular one."""
  scale = fraction / TABLE_FRACTION
  steps = max(1, int(round(cfg.distill.flash.pretrain_steps * scale)))
  warmup = max(1, int(round(cfg.distill.flash.warmup_steps * scale)))
  return [f"distill.flash.pretrain_steps={steps}", f"distill.flash.warmup_steps={warmup}"]


def curve_archs(cfg, archs) -> list[str]:
  """The students whose accuracy-vs-steps curve is traced (003 Fig. 5 shows one): the fastest,
  the middle one in latency, and the baseline (the last of `archs`)."""
  picks = [archs[0], archs[(len(archs) - 1) // 2], archs[-1]]
  return list(dict.fromkeys(picks))[:cfg.fidelity.curve_count]


def job_list(cfg, archs) -> list[tuple[str, str]]:
  """(arch, tag) jobs, the long regular runs first so the workers finish together."""
  jobs = [(a, "regular") for a in archs]
  jobs += [(a, f"flash_{f}") for f in cfg.fidelity.fractions if f != TABLE_FRACTION for a in curve_archs(cfg, archs)]
  return jobs


def run_job(config: str, overrides, arch_name: str, tag: str, run_dir: str) -> None:
  from ad.distill import trainer
  d = os.path.join(run_dir, arch_name)
  os.makedirs(d, exist_ok=True)
  out = os.path.join(d, f"{tag}.json")
  if os.path.exists(out):
    return
  base = configs.load_config(config, overrides)
  extra = [] if tag == "regular" else schedule_overrides(base, float(tag.split("_", 1)[1]))
  cfg = configs.load_config(config, list(overrides) + extra)
  schedule = "regular" if tag == "regular" else "flash"
  workdir = os.path.join(d, tag)
  t0 = time.time()
  try:
    metrics = trainer.distill(space_lib.Arch.parse(arch_name), cfg, schedule, workdir, resume=True,
                              log=lambda *a: None, progress=False)
  except Exception:
    with open(os.path.join(d, "error.txt"), "a") as f:
      f.write(f"--- {tag}\n{traceback.format_exc()}\n")
    print(f"{arch_name} {tag}: FAILED, see {d}/error.txt", flush=True)
    return
  metrics["distill_s"] = time.time() - t0
  with open(out + ".tmp", "w") as f:
    json.dump(metrics, f, indent=1, default=str)
  os.replace(out + ".tmp", out)
  shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
  print(f"{arch_name} {tag}: MLM {metrics['mlm_accuracy']:.4f} after {metrics['steps']} steps "
        f"({metrics['distill_s']:.0f} s)", flush=True)


def collect(cfg, archs, table_rows: dict, table_run_dir: str, run_dir: str) -> tuple[list[dict], list[str]]:
  """One row per student: latency, and accuracy/steps/seconds per schedule (flash fractions only
  for the curve students)."""
  rows, missing = [], []
  curve = curve_archs(cfg, archs)
  for a in archs:
    row = dict(arch=a, latency_ms=float(table_rows[a]["latency_ms_median"]), curve=a in curve)
    runs = {f"flash_{TABLE_FRACTION}": os.path.join(table_run_dir, "archs", a, "flash.json"),
            "regular": os.path.join(run_dir, a, "regular.json")}
    if a in curve:
      runs.update({f"flash_{f}": os.path.join(run_dir, a, f"flash_{f}.json") for f in cfg.fidelity.fractions
                   if f != TABLE_FRACTION})
    for tag, path in runs.items():
      if not os.path.exists(path):
        missing.append(f"{a}/{tag}")
        continue
      with open(path) as f:
        m = json.load(f)
      row[f"{tag}_accuracy"] = m["mlm_accuracy"]
      row[f"{tag}_steps"] = m["steps"]
      row[f"{tag}_s"] = round(m["distill_s"] if "distill_s" in m else m["wall_s"], 1)
    rows.append(row)
  return rows, missing


def analyse(cfg, rows: list[dict]) -> dict:
  """Ranking agreement of flash (5%, every student) with regular; the curves' accuracy and cost."""
  from scipy import stats
  reg = np.asarray([r["regular_accuracy"] for r in rows])
  fl = np.asarray([r[f"flash_{TABLE_FRACTION}_accuracy"] for r in rows])
  tau = stats.kendalltau(fl, reg)
  out = dict(n=len(rows), regular_steps=rows[0]["regular_steps"], flash_steps=rows[0][f"flash_{TABLE_FRACTION}_steps"],
             kendall_tau=float(tau.statistic), kendall_p=float(tau.pvalue), pairwise_accuracy=pairwise_accuracy(fl, reg),
             regular_distinct_accuracies=len(set(reg.tolist())),
             regular_mean_accuracy=float(reg.mean()), flash_mean_accuracy=float(fl.mean()),
             regular_mean_seconds=float(np.mean([r["regular_s"] for r in rows])), curves={})
  for r in rows:
    if r["curve"]:
      tags = [f"flash_{f}" for f in cfg.fidelity.fractions] + ["regular"]
      out["curves"][r["arch"]] = {t: dict(steps=r[f"{t}_steps"], accuracy=r[f"{t}_accuracy"], seconds=r[f"{t}_s"])
                                  for t in tags}
  return out


def plot(cfg, rows, summary, out_dir: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tags = [f"flash_{f}" for f in cfg.fidelity.fractions] + ["regular"]
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  for r in [r for r in rows if r["curve"]]:
    ax.plot([r[f"{t}_steps"] for t in tags], [r[f"{t}_accuracy"] for t in tags], marker="o", ms=3, lw=1,
            color="black" if r["arch"] == space_lib.MOBILEBERT.name else None, label=r["arch"])
  ax.set_xscale("log")
  ax.set_xlabel("distillation steps (progressive + pre-training), log scale")
  ax.set_ylabel("MLM accuracy")
  fr = ", ".join(f"{100 * f:g}%" for f in cfg.fidelity.fractions)
  ax.set_title(f"Flash ({fr}) vs regular ({summary['regular_steps']} steps)")
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "fidelity_steps.png"), dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  key = f"flash_{TABLE_FRACTION}"
  for r in rows:
    base = r["arch"] == space_lib.MOBILEBERT.name
    ax.annotate("", xy=(r["regular_accuracy"], r["latency_ms"]), xytext=(r[f"{key}_accuracy"], r["latency_ms"]),
                arrowprops=dict(arrowstyle="->", color="gray", lw=0.6))
    ax.scatter([r[f"{key}_accuracy"]], [r["latency_ms"]], color="tab:blue", marker="p" if base else "o", s=60 if base else 18)
    ax.scatter([r["regular_accuracy"]], [r["latency_ms"]], color="tab:red", marker="p" if base else "o", s=60 if base else 18)
  ax.scatter([], [], color="tab:blue", label=f"flash, {100 * TABLE_FRACTION:g}%")
  ax.scatter([], [], color="tab:red", label="regular")
  ax.scatter([], [], color="gray", marker="p", label="MobileBERT-shaped baseline")
  ax.set_xlabel("MLM accuracy")
  ax.set_ylabel("latency (ms)")
  ax.set_title(f"Same students, flash vs regular (Kendall tau {summary['kendall_tau']:.2f})")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "fidelity_shift.png"), dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="tabular")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--table", default=os.path.join(RESULTS, "tabular.csv"))
  p.add_argument("--table-run-dir", default=os.path.join(ROOT, "runs", "tabular"))
  p.add_argument("--run-dir", default=os.path.join(ROOT, "runs", "fidelity"))
  p.add_argument("--out", default=RESULTS)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--worker", type=int, default=None, help="(internal) this process's share of the jobs")
  args = p.parse_args(argv)
  cfg = configs.load_config(args.config, args.overrides)
  if TABLE_FRACTION not in list(cfg.fidelity.fractions):
    raise ValueError(f"fidelity.fractions={list(cfg.fidelity.fractions)} must include {TABLE_FRACTION}, the table's own flash run")
  with open(args.table) as f:
    table_rows = {r["arch"]: r for r in csv.DictReader(f)}
  os.makedirs(args.run_dir, exist_ok=True)
  chosen_path = os.path.join(args.run_dir, "chosen.json")
  if os.path.exists(chosen_path):  # a rerun keeps the first choice even if the table grew
    with open(chosen_path) as f:
      archs = json.load(f)
  else:
    archs = choose(list(table_rows.values()), cfg.fidelity.count)
    with open(chosen_path, "w") as f:
      json.dump(archs, f)
  jobs = job_list(cfg, archs)
  if args.worker is not None:
    for arch, tag in jobs[args.worker::args.workers]:
      run_job(args.config, args.overrides, arch, tag, args.run_dir)
    return 0
  t0 = time.time()
  base = [sys.executable, "-m", "experiments.fidelity", "--config", args.config, "--table", args.table,
          "--run-dir", args.run_dir, "--workers", str(args.workers)]
  base += [a for o in args.overrides for a in ("--set", o)]
  codes = [pr.wait() for pr in [subprocess.Popen(base + ["--worker", str(k)], cwd=ROOT) for k in range(args.workers)]]
  if any(codes):
    print(f"workers exited with {codes}; rerun the same command to retry what is missing", flush=True)
  rows, missing = collect(cfg, archs, table_rows, args.table_run_dir, args.run_dir)
  if missing:
    raise RuntimeError(f"missing runs {missing}; rerun the same command (finished runs are kept)")
  summary = analyse(cfg, rows)
  summary.update(archs=archs, wall_s=time.time() - t0,
                 command="python -m experiments.fidelity " + " ".join(argv if argv is not None else sys.argv[1:]))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "fidelity.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  with open(os.path.join(args.out, "fidelity.json"), "w") as f:
    json.dump(summary, f, indent=1)
  plot(cfg, rows, summary, args.out)
  print(f"flash {100 * TABLE_FRACTION:g}% ({summary['flash_steps']} steps) vs regular ({summary['regular_steps']} steps), "
        f"{summary['n']} students: Kendall tau {summary['kendall_tau']:+.3f} (p {summary['kendall_p']:.3f}), "
        f"pairwise accuracy {100 * summary['pairwise_accuracy']:.1f}%, {summary['regular_distinct_accuracies']} distinct "
        f"regular accuracies; mean MLM flash {summary['flash_mean_accuracy']:.4f}, regular {summary['regular_mean_accuracy']:.4f}")
  for arch, curve in summary["curves"].items():
    print(arch, ", ".join(f"{d['steps']} steps: {d['accuracy']:.4f} ({d['seconds']:.0f} s)" for d in curve.values()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
