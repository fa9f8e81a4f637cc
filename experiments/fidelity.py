"""Flash-distillation fidelity (003 section 4.7, Figs. 5-6; 004 Table 3).

Does a short flash distillation rank students the way the regular one does? For `count`
architectures spread over the design space (closed-form FLOPs quantiles, heads varied) plus the
MobileBERT-shaped baseline, this runs the regular distillation and flash distillations at every
fraction of it in `fidelity.fractions` (003: 5%), keeping the schedule's proportions (progressive
steps per block, pre-training steps and warm-up all scale by the fraction).

Reported, per fraction: Kendall tau-b and pairwise ranking accuracy of held-out MLM accuracy
against the regular run, each with a 95% bootstrap interval over students (a pair counts as
agreeing when both orders are the same strictly, or both are ties); the regular run's own
resolution (pairs whose difference exceeds 2 standard errors of the paired difference on the
shared evaluation set); accuracy vs steps for every student (Fig. 5); flash vs regular positions
against the measured latency (Fig. 6).

Command:  .venv/bin/python -m experiments.fidelity [--config fidelity] [--workers 2]
Machine:  the 2-core CPU dev machine; wall time in experiments/README.md.
Output:   experiments/results/fidelity.{csv,json}, fidelity_steps.png, fidelity_shift.png; one JSON
          per (architecture, schedule) under runs/fidelity/ (a rerun skips those).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np

from ad import configs, files, startup, stats
from ad.stats import bootstrap_interval, kendall_tau, pairwise_accuracy
from ad import space as space_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")


def choose(cfg, count: int) -> list[str]:
  """`count` architectures at evenly spaced quantiles of closed-form forward FLOPs over the design
  space (so every width and cost is represented), each moved to the nearest architecture whose
  head count is not yet over-represented, plus the MobileBERT-shaped baseline last."""
  from ad.search import objectives
  archs = space_lib.DesignSpace.from_config(cfg.space).archs()
  flops = np.asarray([objectives.screening(a, cfg.model, cfg.search.measure.seq)["flops"] for a in archs])
  order = np.argsort(flops, kind="stable")
  picks: list[str] = []
  heads_seen: dict[int, int] = {}
  for q in np.linspace(0, len(order) - 1, count):
    target = int(round(q))
    # nearest in FLOPs rank, preferring the head count used least so far
    cands = sorted(range(len(order)), key=lambda j: (abs(j - target) > 8, heads_seen.get(archs[order[j]].heads, 0),
                                                      abs(j - target)))
    for j in cands:
      a = archs[order[j]]
      if a.name not in picks and a.name != space_lib.MOBILEBERT.name:
        picks.append(a.name)
        heads_seen[a.heads] = heads_seen.get(a.heads, 0) + 1
        break
  return picks + [space_lib.MOBILEBERT.name]


def schedule_overrides(cfg, fraction: float) -> list[str]:
  """--set overrides that make distill.flash the schedule at `fraction` of the regular one: the
  base flash schedule (at fidelity.base_fraction) scaled, keeping its proportions."""
  scale = fraction / cfg.fidelity.base_fraction
  f = cfg.distill.flash
  per_block = f.steps_per_block or cfg.distill.progressive_ratio * f.pretrain_steps / cfg.model.num_blocks
  steps = lambda n: max(1, int(round(n * scale)))
  return [f"distill.flash.steps_per_block={steps(per_block)}", f"distill.flash.pretrain_steps={steps(f.pretrain_steps)}",
          f"distill.flash.warmup_steps={steps(f.warmup_steps)}"]


def tags(cfg) -> list[str]:
  return [f"flash_{f}" for f in cfg.fidelity.fractions] + ["regular"]


def job_list(cfg, archs, worker: int, workers: int) -> list[tuple[str, str]]:
  """This worker's (arch, tag) jobs: whole students (regular first, then every flash fraction),
  dealt out in turn, the baseline first, so that students finish one by one and `--partial` has
  whole ones to use."""
  order = sorted(archs, key=lambda a: a != space_lib.MOBILEBERT.name)
  return [(a, t) for a in order[worker::workers] for t in ["regular"] + tags(cfg)[:-1]]


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
  workdir = os.path.join(d, tag)
  t0 = time.time()
  try:
    metrics = trainer.distill(space_lib.Arch.parse(arch_name), cfg, "regular" if tag == "regular" else "flash",
                              workdir, resume=True, log=lambda *a: None, progress=False)
  except Exception:
    with open(os.path.join(d, "error.txt"), "a") as f:
      f.write(f"--- {tag}\n{traceback.format_exc()}\n")
    print(f"{arch_name} {tag}: FAILED, see {d}/error.txt", flush=True)
    return
  metrics["distill_s"] = time.time() - t0
  files.write_json(out, metrics)
  shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
  print(f"{arch_name} {tag}: MLM {metrics['mlm_accuracy']:.4f} +- {metrics['mlm_accuracy_se']:.4f} after "
        f"{metrics['steps']} steps ({metrics['distill_s']:.0f} s)", flush=True)


class RunMeta:
  """The run directory's one-value-per-key record (meta.json), in the role the trial store plays
  for a search's measurements: the first latency scale recorded stays the run's scale."""

  def __init__(self, run_dir: str):
    self.path = os.path.join(run_dir, "meta.json")

  def first_meta(self, key: str, value):
    meta = files.read_json(self.path) if os.path.exists(self.path) else {}
    if key not in meta:
      meta[key] = value
      files.write_json(self.path, meta)
    return meta[key]


def measure_latencies(cfg, archs, run_dir: str) -> dict[str, float]:
  """Batch-1 latency of each student (the search's measurement), measured before any training
  runs: paired with the reference where search.measure.reference is set, on the run's one scale
  (the reference's first reading), as a search measures its trials."""
  from ad.search import measurement
  out = {}
  for a in archs:
    path = os.path.join(run_dir, a, "measure.json")
    if not os.path.exists(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
      files.write_json(path, measurement.measure(space_lib.Arch.parse(a), cfg, os.path.join(run_dir, a, "trace"),
                                          store=RunMeta(run_dir)))
    out[a] = measurement.latency_of(files.read_json(path))[0]
  return out


def collect(cfg, archs, latencies: dict, run_dir: str) -> tuple[list[dict], dict, list[str]]:
  """One row per student (latency; accuracy, its SE, steps and seconds per schedule) and the
  per-sequence counts of each run (for paired comparisons)."""
  from ad.search import objectives
  rows, per_seq, missing = [], {}, []
  for a in archs:
    screen = objectives.screening(space_lib.Arch.parse(a), cfg.model, cfg.search.measure.seq)
    row = dict(arch=a, latency_ms=float(latencies[a]), params=screen["params"], flops=screen["flops"])
    for tag in tags(cfg):
      path = os.path.join(run_dir, a, f"{tag}.json")
      if not os.path.exists(path):
        missing.append(f"{a}/{tag}")
        continue
      m = files.read_json(path)
      row.update({f"{tag}_accuracy": m["mlm_accuracy"], f"{tag}_se": m["mlm_accuracy_se"], f"{tag}_steps": m["steps"],
                  f"{tag}_s": round(m["distill_s"], 1)})
      per_seq[(a, tag)] = m["per_sequence"]
    rows.append(row)
  return rows, per_seq, missing


def analyse(cfg, rows: list[dict], per_seq: dict) -> dict:
  """Ranking agreement of every flash fraction with regular, with bootstrap intervals."""
  reg = np.asarray([r["regular_accuracy"] for r in rows])
  out = dict(n=len(rows), regular_steps=rows[0]["regular_steps"], fractions={},
             regular_mean_accuracy=float(reg.mean()), regular_mean_seconds=float(np.mean([r["regular_s"] for r in rows])))
  # The regular run's own resolution: pairs it separates beyond 2 SE of the paired difference; each
  # signal is also scored by how many of those it orders as regular does (the pairs that mean something).
  pairs = len(rows) * (len(rows) - 1) // 2
  resolved = stats.resolved_pairs(reg, None, [per_seq[(r["arch"], "regular")] for r in rows])
  out["regular_pairs_resolved_beyond_2se"] = f"{len(resolved)}/{pairs}"
  agreeing = lambda signal: f"{stats.agreement_on(resolved, signal)}/{len(resolved)}"
  for f in cfg.fidelity.fractions:
    t = f"flash_{f}"
    fl = np.asarray([r[f"{t}_accuracy"] for r in rows])
    b = cfg.fidelity.bootstrap
    out["fractions"][str(f)] = dict(
        steps=rows[0][f"{t}_steps"], mean_accuracy=float(fl.mean()),
        kendall_tau=kendall_tau(fl, reg), kendall_tau_ci95=bootstrap_interval(fl, reg, kendall_tau, b, cfg.fidelity.seed),
        pairwise_accuracy=pairwise_accuracy(fl, reg),
        pairwise_accuracy_ci95=bootstrap_interval(fl, reg, pairwise_accuracy, b, cfg.fidelity.seed),
        agreeing_on_resolved_pairs=agreeing(fl), mean_seconds=float(np.mean([r[f"{t}_s"] for r in rows])))
  # Training-free proxies (004 and 001 compare against them): rank by closed-form size or cost.
  out["training_free"] = {}
  for proxy in ("params", "flops"):
    v = np.asarray([float(r[proxy]) for r in rows])
    b = cfg.fidelity.bootstrap
    out["training_free"][proxy] = dict(
        kendall_tau=kendall_tau(v, reg), kendall_tau_ci95=bootstrap_interval(v, reg, kendall_tau, b, cfg.fidelity.seed),
        pairwise_accuracy=pairwise_accuracy(v, reg),
        pairwise_accuracy_ci95=bootstrap_interval(v, reg, pairwise_accuracy, b, cfg.fidelity.seed),
        agreeing_on_resolved_pairs=agreeing(v))
  return out


def plot(cfg, rows, summary, out_dir: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ts = tags(cfg)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    base = r["arch"] == space_lib.MOBILEBERT.name
    ax.errorbar([r[f"{t}_steps"] for t in ts], [r[f"{t}_accuracy"] for t in ts], yerr=[2 * r[f"{t}_se"] for t in ts],
                marker="o", ms=3, lw=2 if base else 1, capsize=2, color="black" if base else None, label=r["arch"])
  ax.set_xscale("log")
  ax.set_xlabel("distillation steps (progressive + pre-training), log scale")
  ax.set_ylabel("held-out MLM accuracy (bars: 2 SE)")
  fr = ", ".join(f"{100 * f:g}%" for f in cfg.fidelity.fractions)
  ax.set_title(f"Flash ({fr}) vs regular ({summary['regular_steps']} steps)")
  ax.legend(fontsize=5, ncol=2)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "fidelity_steps.png"), dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  key = f"flash_{cfg.fidelity.base_fraction}"
  for r in rows:
    base = r["arch"] == space_lib.MOBILEBERT.name
    ax.annotate("", xy=(r["regular_accuracy"], r["latency_ms"]), xytext=(r[f"{key}_accuracy"], r["latency_ms"]),
                arrowprops=dict(arrowstyle="->", color="gray", lw=0.6))
    ax.scatter([r[f"{key}_accuracy"]], [r["latency_ms"]], color="tab:blue", marker="p" if base else "o", s=60 if base else 18)
    ax.scatter([r["regular_accuracy"]], [r["latency_ms"]], color="tab:red", marker="p" if base else "o", s=60 if base else 18)
  ax.scatter([], [], color="tab:blue", label=f"flash, {100 * cfg.fidelity.base_fraction:g}%")
  ax.scatter([], [], color="tab:red", label="regular")
  ax.scatter([], [], color="gray", marker="p", label="MobileBERT-shaped baseline")
  ax.set_xlabel("held-out MLM accuracy")
  ax.set_ylabel("latency (ms, batch 1)")
  tau = summary["fractions"][str(cfg.fidelity.base_fraction)]["kendall_tau"]
  ax.set_title(f"Same students, flash vs regular (Kendall tau {tau:.2f})")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "fidelity_shift.png"), dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="fidelity")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--run-dir", default=os.path.join(ROOT, "runs", "fidelity"))
  p.add_argument("--out", default=RESULTS)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--worker", type=int, default=None, help="(internal) this process's share of the jobs")
  p.add_argument("--partial", action="store_true",
                 help="run nothing; analyse the students whose runs are all finished (e.g. while the workers run)")
  args = p.parse_args(argv)
  startup.enable_compile_cache()  # every fraction of one student reuses its compiled programs
  cfg = configs.load_config(args.config, args.overrides)
  if cfg.fidelity.base_fraction not in list(cfg.fidelity.fractions):
    raise ValueError(f"fidelity.fractions={list(cfg.fidelity.fractions)} must include fidelity.base_fraction")
  os.makedirs(args.run_dir, exist_ok=True)
  chosen_path = os.path.join(args.run_dir, "chosen.json")
  if os.path.exists(chosen_path):  # a rerun keeps the first choice
    archs = files.read_json(chosen_path)
  else:
    archs = choose(cfg, cfg.fidelity.count)
    files.write_json(chosen_path, archs)
  if args.worker is not None:
    for arch, tag in job_list(cfg, archs, args.worker, args.workers):
      run_job(args.config, args.overrides, arch, tag, args.run_dir)
    return 0
  t0 = time.time()
  latencies = measure_latencies(cfg, archs, args.run_dir)  # alone on the machine, before training starts
  if not args.partial:
    base = [sys.executable, "-m", "experiments.fidelity", "--config", args.config, "--run-dir", args.run_dir,
            "--workers", str(args.workers)]
    base += [a for o in args.overrides for a in ("--set", o)]
    codes = [pr.wait() for pr in [subprocess.Popen(base + ["--worker", str(k)], cwd=ROOT) for k in range(args.workers)]]
    if any(codes):
      print(f"workers exited with {codes}; rerun the same command to retry what is missing", flush=True)
  rows, per_seq, missing = collect(cfg, archs, latencies, args.run_dir)
  if missing and not args.partial:
    raise RuntimeError(f"missing runs {missing}; rerun the same command (finished runs are kept), or add "
                       "--partial to analyse the students finished so far")
  if missing:
    incomplete = {m.split("/")[0] for m in missing}
    rows = [r for r in rows if r["arch"] not in incomplete]
    print(f"--partial: leaving out {sorted(incomplete)} (missing {missing})", flush=True)
    if len(rows) < 3:
      raise RuntimeError(f"--partial: only {len(rows)} students are finished; a ranking needs at least 3")
  summary = analyse(cfg, rows, per_seq)
  summary.update(archs=[r["arch"] for r in rows], left_out=sorted({m.split("/")[0] for m in missing}),
                 wall_s=None if args.partial else time.time() - t0,
                 command="python -m experiments.fidelity " + " ".join(
                     files.portable(a, ROOT) for a in (argv if argv is not None else sys.argv[1:])))
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "fidelity.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  files.write_json(os.path.join(args.out, "fidelity.json"), summary)
  plot(cfg, rows, summary, args.out)
  print(f"{summary['n']} students, regular {summary['regular_steps']} steps (resolves "
        f"{summary['regular_pairs_resolved_beyond_2se']} pairs beyond 2 SE):")
  for f, s in summary["fractions"].items():
    print(f"  flash {100 * float(f):g}% ({s['steps']} steps): Kendall tau {s['kendall_tau']:+.3f} "
          f"[{s['kendall_tau_ci95'][0]:+.2f}, {s['kendall_tau_ci95'][1]:+.2f}], pairwise accuracy "
          f"{100 * s['pairwise_accuracy']:.1f}% [{100 * s['pairwise_accuracy_ci95'][0]:.0f}, "
          f"{100 * s['pairwise_accuracy_ci95'][1]:.0f}], agreeing on {s['agreeing_on_resolved_pairs']} resolved pairs")
  for proxy, s in summary["training_free"].items():
    print(f"  {proxy} (no training): Kendall tau {s['kendall_tau']:+.3f} [{s['kendall_tau_ci95'][0]:+.2f}, "
          f"{s['kendall_tau_ci95'][1]:+.2f}], pairwise accuracy {100 * s['pairwise_accuracy']:.1f}% "
          f"[{100 * s['pairwise_accuracy_ci95'][0]:.0f}, {100 * s['pairwise_accuracy_ci95'][1]:.0f}], agreeing on "
          f"{s['agreeing_on_resolved_pairs']} resolved pairs")
  return 0


if __name__ == "__main__":
  sys.exit(main())
