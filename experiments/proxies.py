"""Accuracy proxies side by side (issue: AutoTinyBERT and AutoDistil in the same framework).

The students of the flash-fidelity study (experiments/results/fidelity_12: 11 + the MobileBERT-
shaped baseline, regular-distilled for 1,480 steps, and flash-distilled at 5%) are ranked by
- flash distillation at 5% (003; from the fidelity study),
- a one-shot SuperLM (004): one weight-sharing SuperLM over the whole space, trained once,
- few-shot SuperLMs (001): superlm.fewshot.count SuperLMs over a partition of the space, the same
  total step budget,
- training-free proxies: parameters and closed-form FLOPs,
and each ranking is compared with regular distillation's: Kendall tau-b and pairwise accuracy, each
with a 95% bootstrap interval over students (ad/stats.py). The cost of each
proxy is its wall time on this machine: flash sums the students' flash runs (fidelity study, two
runs side by side), a SuperLM proxy is its training plus scoring every student.

The partition factor of the few-shot SuperLMs is chosen by measurement: the factor whose levels
explain the largest share of the regular accuracies' variance (eta squared) over these students.

Budget: superlm.steps x superlm.samples_per_step sub-network steps (quickstart: 240 x 4 = 960, the
13 trials' flash runs of a quickstart search, 13 x 74).

Command:  .venv/bin/python -m experiments.proxies [--config fidelity] [--set KEY=VALUE ... --tag NAME]
          (the two runs of experiments/README.md section 8: `--set superlm.sampling=sandwich --set
          superlm.samples_per_step=4 --set superlm.steps=240 --tag sandwich`, the config's default
          since; and, with the earlier defaults, uniform sampling of 2 per step for 480 steps:
          `--set superlm.sampling=random --set superlm.samples_per_step=2 --set superlm.steps=480`)
Output:   experiments/results/proxies{_TAG}.{json,csv,png}; SuperLMs under runs/proxies{_TAG}/ (resumable).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import numpy as np

from ad import configs, files, startup, stats
from ad import space as space_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")
FIDELITY = os.path.join(RESULTS, "fidelity_12", "fidelity.csv")


def eta_squared(values, groups) -> float:
  """Share of the variance of `values` explained by the group means (one-way ANOVA's eta^2)."""
  values, groups = np.asarray(values, float), np.asarray(groups)
  total = np.square(values - values.mean()).sum()
  between = sum(np.square(values[groups == g].mean() - values.mean()) * (groups == g).sum()
                for g in set(groups.tolist()))
  return float(between / total) if total > 0 else 0.0


def regular_resolved(archs, runs_dir: str) -> list[tuple[int, int, int]] | None:
  """(i, j, sign of regular_i - regular_j) for the pairs the regular runs separate beyond 2 SE of
  the paired difference on the shared evaluation set (the fidelity study's per-sequence counts),
  or None without those runs."""
  per_seq = []
  for a in archs:
    path = os.path.join(runs_dir, a.name, "regular.json")
    if not os.path.isfile(path):
      return None
    per_seq.append(files.read_json(path, "fidelity run")["per_sequence"])
  return stats.resolved_pairs(None, None, per_seq)


def ranking(name: str, proxy, regular, cfg, cost_s: float | None, ses=None, resolved=None, **extra) -> dict:
  """Agreement of `proxy` scores with the regular ones; with their standard errors `ses`, also how
  many pairs the proxy itself tells apart and its spread (best - worst) in standard errors."""
  b, seed = cfg.fidelity.bootstrap, cfg.fidelity.seed
  proxy, regular = np.asarray(proxy, float), np.asarray(regular, float)
  if resolved:  # agreement on the pairs the reference itself tells apart
    extra["agreement_on_regular_resolved_pairs"] = f"{stats.agreement_on(resolved, proxy)}/{len(resolved)}"
  if ses is not None:
    n = len(proxy)
    extra.update(pairs_resolved_beyond_2se=f"{len(stats.resolved_pairs(proxy, ses))}/{n * (n - 1) // 2}",
                 spread_in_se=float((proxy.max() - proxy.min()) / np.mean(ses)))
  return dict(proxy=name, kendall_tau=stats.kendall_tau(proxy, regular),
              kendall_tau_ci95=stats.bootstrap_interval(proxy, regular, stats.kendall_tau, b, seed),
              pairwise_accuracy=stats.pairwise_accuracy(proxy, regular),
              pairwise_accuracy_ci95=stats.bootstrap_interval(proxy, regular, stats.pairwise_accuracy, b, seed),
              cost_s=cost_s, **extra)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="fidelity")
  p.add_argument("--set", dest="overrides", action="append", default=[])
  p.add_argument("--tag", default="", help="suffix of the run and result names (a variant, e.g. sandwich)")
  p.add_argument("--reference", default=FIDELITY, help="the fidelity study's CSV (regular and flash accuracies)")
  p.add_argument("--fidelity-runs", default=os.path.join(ROOT, "runs", "fidelity_12"),
                 help="the fidelity study's run directory (per-sequence counts of the regular runs: which pairs "
                      "the reference resolves; experiments/results/fidelity_12/runs_fidelity_12.tar.gz holds them)")
  args = p.parse_args(argv)
  from ad.distill import superlm
  from ad.search import objectives
  startup.enable_compile_cache()
  cfg = configs.load_config(args.config, args.overrides)
  suffix = f"_{args.tag}" if args.tag else ""
  run_dir = os.path.join(ROOT, "runs", f"proxies{suffix}")
  with open(args.reference) as f:
    ref = [r for r in csv.DictReader(f) if r.get("regular_accuracy")]
  archs = [space_lib.Arch.parse(r["arch"]) for r in ref]
  regular = [float(r["regular_accuracy"]) for r in ref]
  t_all = time.time()

  factors = {f: eta_squared(regular, [getattr(a, f) for a in archs]) for f in space_lib.FACTORS}
  print("share of the regular accuracies' variance explained by each factor (eta^2): "
        + ", ".join(f"{f} {v:.2f}" for f, v in factors.items()), flush=True)
  chosen = max(factors, key=factors.get)
  if chosen != cfg.superlm.fewshot.factor:
    print(f"note: the measured factor {chosen} differs from superlm.fewshot.factor={cfg.superlm.fewshot.factor}; "
          f"the few-shot SuperLMs use {chosen}", flush=True)
    cfg.unlock()
    cfg.superlm.fewshot.factor = chosen
    cfg.lock()

  log = lambda m: print(m, file=sys.stderr, flush=True)
  scores, costs, trained = {}, {}, {}
  for proxy in ("superlm", "fewshot"):
    workdir = os.path.join(run_dir, proxy)
    trained[proxy] = superlm.ensure_trained(cfg, workdir, proxy, log=log, progress=False)
    t0 = time.time()
    scores[proxy] = [superlm.proxy_scores(a, cfg, workdir, log=log) for a in archs]
    score_s = time.time() - t0
    costs[proxy] = dict(train_s=trained[proxy]["wall_s"], score_s=score_s, total_s=trained[proxy]["wall_s"] + score_s)
    print(f"{proxy}: trained in {trained[proxy]['wall_s']:.0f}s, {len(archs)} students scored in {score_s:.0f}s",
          flush=True)

  flash = [float(r["flash_0.05_accuracy"]) for r in ref]
  flash_cost = sum(float(r["flash_0.05_s"]) for r in ref)
  accuracy = lambda proxy: [s["mlm_accuracy"] for s in scores[proxy]]
  se = lambda proxy: [s["mlm_accuracy_se"] for s in scores[proxy]]
  resolved = regular_resolved(archs, args.fidelity_runs)
  rankings = [
      ranking("regular (reference)", regular, regular, cfg, sum(float(r["regular_s"]) for r in ref),
              ses=[float(r["regular_se"]) for r in ref], note="sum of the students' regular runs (two side by side)"),
      ranking("flash 5%", flash, regular, cfg, flash_cost, ses=[float(r["flash_0.05_se"]) for r in ref],
              resolved=resolved, note="sum of the students' flash runs (two side by side)"),
      ranking("one-shot SuperLM", accuracy("superlm"), regular, cfg, costs["superlm"]["total_s"], ses=se("superlm"),
              resolved=resolved, **costs["superlm"]),
      ranking("few-shot SuperLMs", accuracy("fewshot"), regular, cfg, costs["fewshot"]["total_s"], ses=se("fewshot"),
              resolved=resolved, **costs["fewshot"]),
  ]
  for name, key in (("parameters", "params"), ("FLOPs", "flops")):
    rankings.append(ranking(name, [objectives.screening(a, cfg.model, cfg.search.measure.seq)[key] for a in archs],
                            regular, cfg, 0.0, resolved=resolved))

  rows = []
  for i, (a, r) in enumerate(zip(archs, ref)):
    rows.append(dict(arch=a.name, regular_accuracy=regular[i], regular_se=float(r["regular_se"]),
                     flash_accuracy=flash[i], superlm_accuracy=scores["superlm"][i]["mlm_accuracy"],
                     superlm_se=scores["superlm"][i]["mlm_accuracy_se"],
                     fewshot_accuracy=scores["fewshot"][i]["mlm_accuracy"],
                     fewshot_se=scores["fewshot"][i]["mlm_accuracy_se"]))
  summary = dict(students=len(archs), reference=os.path.relpath(args.reference, ROOT), factor_eta_squared=factors,
                 fewshot_factor=chosen, superlm=cfg.superlm.to_dict(), trained=trained, rankings=rankings, rows=rows,
                 wall_s=time.time() - t_all,
                 command=" ".join(["python -m experiments.proxies"] + (argv if argv is not None else sys.argv[1:])))
  os.makedirs(RESULTS, exist_ok=True)
  files.write_json(os.path.join(RESULTS, f"proxies{suffix}.json"), files.portable(summary, ROOT))
  with open(os.path.join(RESULTS, f"proxies{suffix}.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  plot(rankings, os.path.join(RESULTS, f"proxies{suffix}.png"))
  print(f"\n{len(archs)} students, rankings against regular distillation (95% bootstrap intervals):")
  for r in rankings:
    cost = "" if r["cost_s"] is None else f"{r['cost_s'] / 60:6.1f} min"
    if "spread_in_se" in r:
      cost += f"  resolves {r['pairs_resolved_beyond_2se']} pairs, spread {r['spread_in_se']:.1f} SE"
    if "agreement_on_regular_resolved_pairs" in r:
      cost += f"  agrees on {r['agreement_on_regular_resolved_pairs']} of regular's resolved pairs"
    print(f"  {r['proxy']:<19} tau {r['kendall_tau']:+.2f} [{r['kendall_tau_ci95'][0]:+.2f}, "
          f"{r['kendall_tau_ci95'][1]:+.2f}]  pairwise {100 * r['pairwise_accuracy']:.1f}% "
          f"[{100 * r['pairwise_accuracy_ci95'][0]:.0f}, {100 * r['pairwise_accuracy_ci95'][1]:.0f}]  {cost}")
  return 0


def plot(rankings, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  rankings = [r for r in rankings if r["proxy"] != "regular (reference)"]
  names = [r["proxy"] for r in rankings]
  y = np.arange(len(names))
  for ax, key, label in ((axes[0], "kendall_tau", "Kendall tau vs regular"),
                         (axes[1], "pairwise_accuracy", "pairwise accuracy vs regular")):
    v = np.asarray([r[key] for r in rankings])
    lo = v - np.asarray([r[f"{key}_ci95"][0] for r in rankings])
    hi = np.asarray([r[f"{key}_ci95"][1] for r in rankings]) - v
    ax.errorbar(v, y, xerr=[lo, hi], fmt="o", capsize=3)
    ax.set_yticks(y, names)
    ax.set_xlabel(label + " (95% CI)")
    ax.grid(alpha=0.3)
  axes[2].barh(y, [(r["cost_s"] or 0) / 60 for r in rankings])
  axes[2].set_yticks(y, names)
  axes[2].set_xlabel("cost on this 2-core CPU (minutes)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  sys.exit(main())
