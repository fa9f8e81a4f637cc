"""Which signal of a flash run ranks students like regular distillation? (issue 30 item 1)

A flash run yields more than its held-out accuracy: its cross-entropy, its agreement with the
teacher's top-1 predictions, its final distillation losses, and the slope of its loss curve. For
the students of the fidelity study (experiments/results/fidelity_12: 12 + the MobileBERT-shaped
baseline, regular-distilled for 1,480 steps), each signal ranks them at every fraction the study
ran, against regular accuracy: Kendall tau-b with a 95% bootstrap interval over students, and
agreement on the pairs that regular distillation itself separates beyond 2 standard errors of the
paired difference. The parameter count and closed-form FLOPs are ranked the same way.

Saved runs are reused: the evaluation signals (accuracy, cross-entropy, agreement) come from the
study's JSON files (experiments/results/fidelity_12/runs_fidelity_12.tar.gz, unpacked into
runs/fidelity_12). The loss signals need each run's losses.jsonl, which the study did not keep:
the 5% flash runs are re-run into runs/flash_signals (resumable; a rerun does only what is
missing) and each re-run's accuracy is checked against the saved one.

Orientation: a higher accuracy (held-out or the training step's) or agreement, a lower
cross-entropy or loss, and a steeper descent (a more negative slope) are taken to mean a better
student.

Command:  .venv/bin/python -m experiments.flash_signals [--rerun]   (--rerun: the 13 flash runs,
          about 20-40 min here; without it only the saved signals)
Output:   experiments/results/flash_signals.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time

import numpy as np

from ad import configs, files, startup
from ad import space as space_lib
from experiments import fidelity, proxies

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED = os.path.join(ROOT, "experiments", "results", "fidelity_12")
SAVED_RUNS = os.path.join(ROOT, "runs", "fidelity_12")
RERUN_DIR = os.path.join(ROOT, "runs", "flash_signals")
OUT = os.path.join(ROOT, "experiments", "results", "flash_signals.json")
OVERRIDES = ["fidelity.count=12", "fidelity.fractions=[0.05]"]  # the 12 + 1 study (experiments/README.md 3b)
TAIL = 10  # steps averaged for a run's final losses


def unpack_saved_runs() -> None:
  """runs/fidelity_12 from the committed archive of the study's JSON files (once)."""
  if os.path.isdir(SAVED_RUNS):
    return
  with tarfile.open(os.path.join(SAVED, "runs_fidelity_12.tar.gz")) as tar:
    tar.extractall(os.path.join(ROOT, "runs"), filter="data")


def loss_signals(losses_path: str) -> dict[str, float]:
  """Final losses (mean of the pre-training distillation stage's last TAIL steps: the total and
  each term) and the total loss's least-squares slope per step over that stage's second half."""
  recs = [json.loads(line) for line in open(losses_path)]
  pre = [r for r in recs if r["stage"] != recs[0]["stage"]] or recs  # the stage after the progressive one
  tail = pre[-TAIL:]
  out = {f"final_{k}": float(np.mean([r[k] for r in tail])) for k in tail[0] if k not in ("step", "stage", "lr")}
  half = pre[len(pre) // 2:]
  out["loss_slope"] = float(np.polyfit([r["step"] for r in half], [r["loss"] for r in half], 1)[0])
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rerun", action="store_true", help="re-run the 5%% flash runs for their loss curves")
  args = p.parse_args(argv)
  from ad.search import objectives
  t_all = time.time()
  unpack_saved_runs()
  cfg = configs.load_config("fidelity", OVERRIDES)
  students = sorted(os.listdir(SAVED_RUNS))
  regular = {a: files.read_json(os.path.join(SAVED_RUNS, a, "regular.json")) for a in students
             if os.path.isfile(os.path.join(SAVED_RUNS, a, "regular.json"))}
  students = [a for a in students if a in regular]
  archs = [space_lib.Arch.parse(a) for a in students]
  reg = [regular[a]["mlm_accuracy"] for a in students]
  resolved = proxies.regular_resolved(archs, SAVED_RUNS)

  reruns, checks = {}, []
  if args.rerun:
    startup.enable_compile_cache()
    for a in students:
      fidelity.run_job("fidelity", OVERRIDES, a, "flash_0.05", RERUN_DIR)
  for a in students:
    path = os.path.join(RERUN_DIR, a, "flash_0.05")
    if os.path.isfile(os.path.join(path, "losses.jsonl")) and os.path.isfile(path + ".json"):
      reruns[a] = dict(loss_signals(os.path.join(path, "losses.jsonl")), metrics=files.read_json(path + ".json"))
      saved = files.read_json(os.path.join(SAVED_RUNS, a, "flash_0.05.json"))
      checks.append(dict(arch=a, saved=saved["mlm_accuracy"], rerun=reruns[a]["metrics"]["mlm_accuracy"]))

  rankings = []
  def rank(name, fraction, scores, **extra):
    idx = [i for i, s in enumerate(scores) if s is not None]
    if len(idx) < 4:
      return
    sub_resolved = [(idx.index(i), idx.index(j), s) for i, j, s in (resolved or []) if i in idx and j in idx]
    r = proxies.ranking(name, [scores[i] for i in idx], [reg[i] for i in idx], cfg, None, resolved=sub_resolved,
                        **extra)
    r.update(fraction=fraction, students=len(idx))
    rankings.append(r)

  for tag in ("flash_0.025", "flash_0.05", "flash_0.1"):
    runs = [files.read_json(os.path.join(SAVED_RUNS, a, f"{tag}.json"))
            if os.path.isfile(os.path.join(SAVED_RUNS, a, f"{tag}.json")) else None for a in students]
    frac = float(tag.split("_")[1])
    rank("held-out accuracy", frac, [r and r["mlm_accuracy"] for r in runs])
    rank("cross-entropy (lower)", frac, [r and -r["mlm_cross_entropy"] for r in runs])
    rank("teacher agreement", frac, [r and r["teacher_agreement"] for r in runs])
  if reruns:
    rank("held-out accuracy (the re-runs)", 0.05,
         [reruns[a]["metrics"]["mlm_accuracy"] if a in reruns else None for a in students])
    keys = sorted(k for k in next(iter(reruns.values())) if k.startswith("final_")) + ["loss_slope"]
    for k in keys:  # a training accuracy term is better higher, a loss lower
      sign, word = (1, "higher") if k.endswith("_acc") else (-1, "lower")
      rank(f"{k} ({word})", 0.05, [sign * reruns[a][k] if a in reruns else None for a in students],
           note="from the re-run's losses.jsonl")
  for name, key in (("parameters", "params"), ("FLOPs", "flops")):
    rank(name, 0.0, [float(objectives.screening(a, cfg.model, cfg.search.measure.seq)[key]) for a in archs])

  out = dict(students=students, regular_accuracy=reg, regular_resolved_pairs=len(resolved or []),
             rankings=rankings, rerun_checks=checks, wall_s=time.time() - t_all,
             command=" ".join(["python -m experiments.flash_signals"] + (argv if argv is not None else sys.argv[1:])))
  files.write_json(OUT, out)
  print(f"{len(students)} students; regular distillation separates {len(resolved or [])} pairs beyond 2 SE")
  for c in checks:
    print(f"re-run {c['arch']}: accuracy {c['rerun']:.6f} (saved {c['saved']:.6f})")
  print("| signal | fraction | students | Kendall tau [95% CI] | agrees on regular's resolved pairs |")
  print("|---|---|---|---|---|")
  for r in rankings:
    lo, hi = r["kendall_tau_ci95"]
    print(f"| {r['proxy']} | {r['fraction']:g} | {r['students']} | {r['kendall_tau']:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
          f"{r.get('agreement_on_regular_resolved_pairs', '')} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
