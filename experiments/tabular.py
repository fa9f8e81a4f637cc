"""A tabular benchmark of the design space: every architecture of a sub-space, measured and
flash-distilled once, so that search algorithms can be compared by lookup (issue #8, 003 4.3).

Phases (each resumable: a finished architecture has its JSON and is skipped):
  measure  batch-1 latency etc. from XLA traces, one architecture at a time and nothing else
           running, so the timings are not disturbed by the training workers;
  distill  flash distillation, split over --workers processes (accuracy does not depend on
           contention; 2 workers use both cores while one of them is compiling);
  export   experiments/results/tabular.csv (+ .json summary, + .png accuracy vs latency with
           the Pareto front).
A failure is written to the architecture's error.txt and the rest go on; rerunning retries it.

Command:  .venv/bin/python -m experiments.tabular [--config tabular] [--run-dir runs/tabular] [--workers 2]
Machine:  the 2-core CPU dev machine; wall time in experiments/README.md.
Output:   experiments/results/tabular.{csv,json,png}; per-architecture runs under --run-dir.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np

from ad import configs, files
from ad import space as space_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")
# The measurement fields that are scalars (top_ops / time_by_scope are nested, kept in measure.json).
MEASURE_FIELDS = ("latency_ms_median", "latency_ms_mean", "latency_ms_p90", "latency_cv", "latency_rel_ci95",
                  "repetitions", "converged", "throughput_per_s", "tokens_per_s", "flops", "bytes_accessed",
                  "flops_utilization", "bandwidth_utilization", "peak_memory_bytes", "peak_flops_per_s",
                  "peak_bytes_per_s", "compile_s", "wall_ms_median", "threads", "backend", "device_kind", "batch",
                  "seq")


def table_archs(cfg) -> list[space_lib.Arch]:
  """The sub-space: config.space with the factors in config.table.fixed pinned to one value."""
  factors = {k: list(v) for k, v in cfg.space.items()}
  for k, v in cfg.table.fixed.items():
    if k not in factors:
      raise ValueError(f"table.fixed.{k}: not a design-space factor; expected one of {space_lib.FACTORS}")
    if v not in factors[k]:
      raise ValueError(f"table.fixed.{k}={v}: not among the space's values {factors[k]}")
    factors[k] = [v]
  return space_lib.DesignSpace.from_config(factors).archs()


def _arch_dir(run_dir: str, arch) -> str:
  d = os.path.join(run_dir, "archs", arch.name)
  os.makedirs(d, exist_ok=True)
  return d


def _record_error(d: str, what: str) -> None:
  with open(os.path.join(d, "error.txt"), "a") as f:
    f.write(f"--- {what} {time.strftime('%Y-%m-%d %H:%M:%S')}\n{traceback.format_exc()}\n")


def measure_phase(cfg, run_dir: str, archs) -> None:
  from ad.search import measurement
  for i, arch in enumerate(archs):
    d = _arch_dir(run_dir, arch)
    out = os.path.join(d, "measure.json")
    if os.path.exists(out):
      continue
    t0 = time.time()
    try:
      r = measurement.measure(arch, cfg, os.path.join(d, "trace"))  # the search's own measurement
    except Exception:
      _record_error(d, "measure")
      print(f"[measure {i + 1}/{len(archs)}] {arch.name}: FAILED, see {d}/error.txt", flush=True)
      continue
    r["measure_s"] = time.time() - t0
    files.write_json(out, r)
    print(f"[measure {i + 1}/{len(archs)}] {arch.name}: {r['latency_ms_median']:.3f} ms "
          f"({r['repetitions']} reps, {r['measure_s']:.1f} s)", flush=True)


def distill_phase(cfg, run_dir: str, archs, worker: int, workers: int) -> None:
  from ad.distill import trainer
  mine = archs[worker::workers]
  for i, arch in enumerate(mine):
    d = _arch_dir(run_dir, arch)
    out = os.path.join(d, "flash.json")
    if os.path.exists(out):
      continue
    t0 = time.time()
    workdir = os.path.join(d, "flash")
    try:
      metrics = trainer.distill(arch, cfg, "flash", workdir, resume=True, log=lambda *a: None, progress=False)
    except Exception:
      _record_error(d, "flash distillation")
      print(f"[worker {worker}: {i + 1}/{len(mine)}] {arch.name}: FAILED, see {d}/error.txt", flush=True)
      continue
    metrics["distill_s"] = time.time() - t0
    files.write_json(out, metrics)
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)  # 130 MB each; the metrics stay
    print(f"[worker {worker}: {i + 1}/{len(mine)}] {arch.name}: MLM {metrics['mlm_accuracy']:.4f} "
          f"({metrics['distill_s']:.1f} s)", flush=True)


def load_rows(cfg, run_dir: str, archs) -> tuple[list[dict], list[str]]:
  """One row per architecture with both results; the names of those missing either."""
  from ad.search import objectives
  rows, missing = [], []
  for arch in archs:
    d = os.path.join(run_dir, "archs", arch.name)
    try:
      with open(os.path.join(d, "measure.json")) as f:
        m = json.load(f)
      with open(os.path.join(d, "flash.json")) as f:
        fl = json.load(f)
    except FileNotFoundError:
      missing.append(arch.name)
      continue
    s = objectives.screening(arch, cfg.model, cfg.search.measure.seq)
    row = dict(arch=arch.name, hidden=arch.hidden, bottleneck=arch.bottleneck, heads=arch.heads,
               intermediate=arch.intermediate, num_ffn=arch.num_ffn, num_blocks=s["num_blocks"],
               params=s["params"], encoder_params=s["encoder_params"],
               mlm_accuracy=fl["mlm_accuracy"], nsp_accuracy=fl["nsp_accuracy"], masked_tokens=fl["masked_tokens"],
               seed=cfg.distill.seed, steps=fl["steps"], steps_per_block=fl["steps_per_block"],
               pretrain_steps=fl["pretrain_steps"], batch_size=fl["batch_size"], train_seq=fl["seq_len"],
               distill_wall_s=round(fl["distill_s"], 2), measure_wall_s=round(m["measure_s"], 2))
    row.update({k: m.get(k) for k in MEASURE_FIELDS})
    rows.append(row)
  return rows, missing


def export(cfg, run_dir: str, archs, out_dir: str, wall_s: float | None, command: str) -> dict:
  from ad.search import pareto
  rows, missing = load_rows(cfg, run_dir, archs)
  if not rows:
    raise RuntimeError(f"{run_dir}: no architecture has both measure.json and flash.json yet")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "tabular.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  y = np.asarray([[r["mlm_accuracy"], r["latency_ms_median"]] for r in rows])
  front = pareto.pareto_mask(pareto.to_min(y, ["max", "min"]))
  base = next((r for r in rows if r["arch"] == space_lib.MOBILEBERT.name), None)
  dominating = []
  if base is not None:
    b = pareto.to_min([[base["mlm_accuracy"], base["latency_ms_median"]]], ["max", "min"])[0]
    dominating = [r["arch"] for r, yi in zip(rows, pareto.to_min(y, ["max", "min"])) if pareto.dominates(yi, b)]
  acc = y[:, 0]
  summary = dict(command=command, n=len(rows), missing=missing, wall_s=wall_s,
                 fixed=dict(cfg.table.fixed), flash_steps=rows[0]["steps"], masked_tokens=rows[0]["masked_tokens"],
                 mlm_accuracy=dict(min=float(acc.min()), max=float(acc.max()), mean=float(acc.mean()),
                                   std=float(acc.std())),
                 latency_ms=dict(min=float(y[:, 1].min()), max=float(y[:, 1].max())),
                 pareto=[rows[i]["arch"] for i in np.flatnonzero(front)],
                 baseline=base and dict(arch=base["arch"], mlm_accuracy=base["mlm_accuracy"],
                                        latency_ms=base["latency_ms_median"]),
                 dominating_baseline=dominating,
                 distill_s_total=float(sum(r["distill_wall_s"] for r in rows)),
                 measure_s_total=float(sum(r["measure_wall_s"] for r in rows)))
  files.write_json(os.path.join(out_dir, "tabular.json"), summary)
  plot(rows, front, os.path.join(out_dir, "tabular.png"))
  return summary


def plot(rows, front, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  lat = np.asarray([r["latency_ms_median"] for r in rows])
  acc = np.asarray([r["mlm_accuracy"] for r in rows])
  fig, ax = plt.subplots(figsize=(7, 4.5))
  sc = ax.scatter(lat, acc, c=[r["hidden"] for r in rows], cmap="viridis", s=18, alpha=0.8)
  fig.colorbar(sc, ax=ax, label="hidden size")
  order = np.flatnonzero(front)[np.argsort(lat[front])]
  ax.step(lat[order], acc[order], where="post", color="tab:red", lw=1.2, label="Pareto front")
  ax.scatter(lat[order], acc[order], facecolors="none", edgecolors="tab:red", s=50)
  for r in rows:
    if r["arch"] == space_lib.MOBILEBERT.name:
      ax.scatter([r["latency_ms_median"]], [r["mlm_accuracy"]], marker="*", s=220, color="black",
                 label=f"MobileBERT-shaped {r['arch']}")
  ax.set_xlabel("latency on this CPU, batch 1, seq %d (ms)" % rows[0]["seq"])
  ax.set_ylabel(f"flash-distilled MLM accuracy ({rows[0]['steps']} steps)")
  ax.set_title(f"Tabular benchmark: {len(rows)} architectures, {rows[0]['num_blocks']} block")
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="tabular")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--run-dir", default=os.path.join(ROOT, "runs", "tabular"))
  p.add_argument("--out", default=RESULTS)
  p.add_argument("--phase", choices=("all", "measure", "distill", "export"), default="all")
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--worker", type=int, default=None, help="(internal) this process's share of the distill phase")
  p.add_argument("--limit", type=int, default=0, help="only the first N architectures (a smoke run)")
  args = p.parse_args(argv)
  cfg = configs.load_config(args.config, args.overrides)
  archs = table_archs(cfg)
  if args.limit:
    archs = archs[:args.limit]
  os.makedirs(args.run_dir, exist_ok=True)
  t0 = time.time()
  if args.worker is not None:
    distill_phase(cfg, args.run_dir, archs, args.worker, args.workers)
    return 0
  if args.phase in ("all", "measure"):
    measure_phase(cfg, args.run_dir, archs)
  if args.phase in ("all", "distill"):
    base = [sys.executable, "-m", "experiments.tabular", "--config", args.config, "--run-dir", args.run_dir,
            "--workers", str(args.workers), "--limit", str(args.limit)]
    base += [a for o in args.overrides for a in ("--set", o)]
    procs = [subprocess.Popen(base + ["--worker", str(k)], cwd=ROOT) for k in range(args.workers)]
    codes = [pr.wait() for pr in procs]
    if any(codes):
      print(f"distill workers exited with {codes}; rerun the same command to retry what is missing", flush=True)
  command = "python -m experiments.tabular " + " ".join(argv if argv is not None else sys.argv[1:])
  summary = export(cfg, args.run_dir, archs, args.out, time.time() - t0 if args.phase == "all" else None, command)
  print(json.dumps({k: summary[k] for k in ("n", "missing", "mlm_accuracy", "latency_ms", "pareto", "baseline",
                                            "dominating_baseline")}, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
