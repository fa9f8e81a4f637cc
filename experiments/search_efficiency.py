"""Search efficiency (003 section 4.3, Fig. 3) and multi- vs single-objective search (003 4.6),
by lookup instead of training.

Problems:
  table     the tabular benchmark (experiments/results/tabular.csv): maximize flash-distilled MLM
            accuracy, minimize measured latency; the baseline is the MobileBERT-shaped 512_128_4_512_4.
  analytic  DTLZ2 (Deb et al. 2002) with two objectives on the 576-point Table 1 encoding, where
            the whole front is known by enumeration: position s = mean of the hidden, bottleneck and
            intermediate coordinates, distance g = (x_heads - 1/3)^2 + (x_ffn - 1/2)^2 (zero at 2 heads
            and 4 FFNs), f1 = (1 + g) cos(pi s / 2), f2 = (1 + g) sin(pi s / 2), both minimized.
            The baseline is the same MobileBERT-shaped point, off the front (4 heads: g = 1/9);
            9 of the 576 points dominate it, 48 are on the front.
Every designer (bo = trieste GP + EHVI, random, evolutionary, firefly) starts from the same
initial design per seed and knows the baseline; an iteration is one evaluated architecture,
initial design included, the baseline not. Reported per designer over the seeds: iterations to
the first and to three architectures that dominate the baseline, and the hypervolume (as a
fraction of the true front's, same reference point) after each iteration.

`--study objectives` runs BO with accuracy only, latency only and both on the table (003 4.6).

Command:  .venv/bin/python -m experiments.search_efficiency --problem table|analytic [--seeds 5]
          .venv/bin/python -m experiments.search_efficiency --study objectives [--seeds 3]
Output:   experiments/results/search_<problem>.{json,png}, experiments/results/objectives.{json,png};
          one JSON per (problem, designer, seed) under runs/search_efficiency/ (a rerun skips those).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import time

import numpy as np

from ad import files, space as space_lib
from ad.search import designers as designers_lib
from ad.search import pareto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")
DESIGNERS = ("bo", "random", "evolutionary", "firefly")


@dataclasses.dataclass
class Problem:
  """A fully known search problem: every candidate's objective values, looked up."""

  name: str
  cands: designers_lib.Candidates
  values: np.ndarray  # [N, M] in the objectives' own units
  objectives: list[str]
  directions: list[str]
  reference: list[float]  # the hypervolume's reference point, own units
  baseline: space_lib.Arch

  def value(self, arch) -> list[float]:
    return [float(v) for v in self.values[self.cands.index[arch.name]]]

  def true_hypervolume(self) -> float:
    return pareto.hypervolume(pareto.to_min(self.values, self.directions), pareto.to_min([self.reference],
                                                                                         self.directions)[0])

  def dominates_baseline(self) -> np.ndarray:
    """[N] bool: candidates that dominate the baseline (no worse in all, better in one)."""
    y = pareto.to_min(self.values, self.directions)
    return pareto.dominates(y, y[self.cands.index[self.baseline.name]])

  def restricted(self, objectives: list[str]) -> "Problem":
    """The same candidates with a subset of the objectives (the single-objective searches)."""
    keep = [self.objectives.index(o) for o in objectives]
    return Problem(self.name, self.cands, self.values[:, keep], list(objectives),
                   [self.directions[i] for i in keep], [self.reference[i] for i in keep], self.baseline)


def table_problem(csv_path: str) -> Problem:
  if not os.path.exists(csv_path):
    raise FileNotFoundError(f"{csv_path}: the tabular benchmark is missing; run `python -m experiments.tabular`")
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  for i, r in enumerate(rows):
    for key in ("arch", "mlm_accuracy", "latency_ms_median"):
      if not r.get(key):
        raise ValueError(f"{csv_path}: row {i + 2} has no {key!r}; expected the columns written by experiments.tabular")
  archs = [space_lib.Arch.parse(r["arch"]) for r in rows]
  space = space_lib.DesignSpace(**{f: tuple(sorted({getattr(a, f) for a in archs})) for f in space_lib.FACTORS})
  values = np.asarray([[float(r["mlm_accuracy"]), float(r["latency_ms_median"])] for r in rows])
  if space_lib.MOBILEBERT.name not in {a.name for a in archs}:
    raise ValueError(f"{csv_path}: the baseline {space_lib.MOBILEBERT.name} is not in the table")
  # Reference: accuracy 0, latency 10% beyond the slowest, so every architecture counts.
  return Problem("table", designers_lib.Candidates(archs, space), values, ["mlm_accuracy", "latency_ms"],
                 ["max", "min"], [0.0, 1.1 * float(values[:, 1].max())], space_lib.MOBILEBERT)


def dtlz2(points: np.ndarray) -> np.ndarray:
  """[N, 5] encoded (hidden, bottleneck, heads, intermediate, num_ffn) in [0, 1] -> [N, 2] minimized."""
  s = points[:, [0, 1, 3]].mean(1)
  g = (points[:, 2] - 1 / 3) ** 2 + (points[:, 4] - 0.5) ** 2
  return np.stack([(1 + g) * np.cos(np.pi * s / 2), (1 + g) * np.sin(np.pi * s / 2)], axis=1)


def analytic_problem() -> Problem:
  space = space_lib.DesignSpace()
  cands = designers_lib.Candidates(space.archs(), space)
  return Problem("analytic", cands, dtlz2(cands.points), ["f1", "f2"], ["min", "min"], [1.5, 1.5],
                 space_lib.MOBILEBERT)


def run_one(problem: Problem, designer: str, seed: int, budget: int, num_initial: int,
            log_path: str | None = None) -> dict:
  """One search by lookup: returns the evaluated architectures in order and the derived metrics."""
  cands = problem.cands
  d = designers_lib.make_designer(designer, cands, problem.directions, problem.reference, seed, log_path=log_path)
  trials = [dict(arch=problem.baseline, status="ok", values=problem.value(problem.baseline))]
  # The shared initial design, minus the baseline (already known to every designer).
  initial = [a for a in designers_lib.initial_design(cands, num_initial + 1, seed) if a != problem.baseline]
  order = initial[:num_initial]
  trials += [dict(arch=a, status="ok", values=problem.value(a)) for a in order]
  t0 = time.time()
  try:
    while len(order) < budget:
      d.update(trials)
      (arch,) = d.suggest(1)
      order.append(arch)
      trials.append(dict(arch=arch, status="ok", values=problem.value(arch)))
  finally:
    if hasattr(d, "close"):
      d.close()
  return dict(problem=problem.name, designer=designer, seed=seed, budget=budget, num_initial=num_initial,
              objectives=problem.objectives, order=[a.name for a in order], wall_s=time.time() - t0)


def metrics(problem: Problem, result: dict) -> dict:
  """Iterations (1-based, initial design included) to the first and third baseline-dominating
  architecture (None if not reached), and the hypervolume fraction after each iteration."""
  idx = [problem.cands.index[n] for n in result["order"]]
  dom = problem.dominates_baseline()[idx]
  hits = np.flatnonzero(dom) + 1
  y = pareto.to_min(problem.values[idx], problem.directions)
  ref = pareto.to_min([problem.reference], problem.directions)[0]
  hv = pareto.hypervolume_history(y, ref) / problem.true_hypervolume()
  return dict(first=int(hits[0]) if len(hits) >= 1 else None, three=int(hits[2]) if len(hits) >= 3 else None,
              hv=hv.tolist())


def _summarize(values: list, budget: int) -> str:
  """Median over seeds; a seed that never got there counts as > budget."""
  found = [v for v in values if v is not None]
  if len(found) < len(values):
    med = np.median([v if v is not None else np.inf for v in values])
    return (f"{med:.0f}" if np.isfinite(med) else f">{budget}") + f" ({len(found)}/{len(values)} seeds)"
  return f"{np.median(found):.0f} (range {min(found)}-{max(found)})"


def efficiency(problem: Problem, seeds: int, budget: int, num_initial: int, run_dir: str, designers) -> dict:
  os.makedirs(run_dir, exist_ok=True)
  out = dict(problem=problem.name, candidates=len(problem.cands), budget=budget, num_initial=num_initial,
             dominating_in_space=int(problem.dominates_baseline().sum()), designers={})
  for name in designers:
    runs = []
    for seed in range(seeds):
      path = os.path.join(run_dir, f"{name}_{seed}.json")
      if os.path.exists(path):
        with open(path) as f:
          r = json.load(f)
      else:
        r = run_one(problem, name, seed, budget, num_initial, log_path=os.path.join(run_dir, "trieste.log"))
        files.write_json(path, r)
      r.update(metrics(problem, r))
      runs.append(r)
      print(f"{problem.name} {name} seed {seed}: first {r['first']}, three {r['three']}, "
            f"final HV {r['hv'][-1]:.3f} ({r['wall_s']:.0f} s)", flush=True)
    hv = np.asarray([r["hv"] for r in runs])
    out["designers"][name] = dict(
        first=[r["first"] for r in runs], three=[r["three"] for r in runs],
        first_summary=_summarize([r["first"] for r in runs], budget),
        three_summary=_summarize([r["three"] for r in runs], budget),
        hv_mean=hv.mean(0).tolist(), hv_std=hv.std(0).tolist(), wall_s=[r["wall_s"] for r in runs])
  return out


def plot_efficiency(out: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for name, d in out["designers"].items():
    m, s = np.asarray(d["hv_mean"]), np.asarray(d["hv_std"])
    it = np.arange(1, len(m) + 1)
    ax.plot(it, m, label=f"{name} (first better: {d['first_summary'].split(' (')[0]})")
    ax.fill_between(it, m - s, m + s, alpha=0.15)
  ax.axvline(out["num_initial"], color="gray", ls=":", lw=1)
  ax.set_xlabel("iteration (architectures evaluated, shared initial design left of the dotted line)")
  ax.set_ylabel("hypervolume / true front's")
  ax.set_title(f"{out['problem']}: {out['candidates']} candidates, mean ± std over "
               f"{len(next(iter(out['designers'].values()))['first'])} seeds")
  ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def objectives_study(problem: Problem, seeds: int, budget: int, num_initial: int, run_dir: str) -> dict:
  """BO on accuracy only, latency only and both (003 4.6): where does each end up?"""
  os.makedirs(run_dir, exist_ok=True)
  modes = {"accuracy only": ["mlm_accuracy"], "latency only": ["latency_ms"], "both": ["mlm_accuracy", "latency_ms"]}
  y_all = pareto.to_min(problem.values, problem.directions)
  front = set(np.flatnonzero(pareto.pareto_mask(y_all)).tolist())
  ref = pareto.to_min([problem.reference], problem.directions)[0]
  out = dict(budget=budget, num_initial=num_initial, seeds=seeds, front_size=len(front), modes={})
  for mode, objs in modes.items():
    sub = problem.restricted(objs)
    per_seed = []
    for seed in range(seeds):
      path = os.path.join(run_dir, f"{mode.replace(' ', '_')}_{seed}.json")
      # BO is a function of (seed, history), so a longer two-objective efficiency run with the same
      # seed and initial design holds this search as its first `budget` iterations.
      longer = os.path.join(os.path.dirname(run_dir), problem.name, f"bo_{seed}.json")
      if not os.path.exists(path) and len(objs) == 2 and os.path.exists(longer):
        with open(longer) as f:
          r = json.load(f)
        if r["budget"] >= budget and r["num_initial"] == num_initial:
          r = dict(r, order=r["order"][:budget], budget=budget, wall_s=None, reused=longer)
          with open(path, "w") as f:
            json.dump(r, f)
      if os.path.exists(path):
        with open(path) as f:
          r = json.load(f)
      else:
        r = run_one(sub, "bo", seed, budget, num_initial, log_path=os.path.join(run_dir, "trieste.log"))
        files.write_json(path, r)
      idx = [problem.cands.index[n] for n in r["order"]]
      designed = idx[num_initial:]
      per_seed.append(dict(
          seed=seed, order=r["order"], wall_s=r["wall_s"],
          hv=pareto.hypervolume(y_all[idx], ref) / problem.true_hypervolume(),
          front_found=len(front & set(idx)),
          best_accuracy=float(problem.values[idx, 0].max()), best_latency_ms=float(problem.values[idx, 1].min()),
          designed_accuracy_mean=float(problem.values[designed, 0].mean()),
          designed_latency_mean=float(problem.values[designed, 1].mean())))
      print(f"objectives {mode} seed {seed}: HV {per_seed[-1]['hv']:.3f}, front found {per_seed[-1]['front_found']}, "
            + (f"(the first {budget} iterations of {r['reused']})" if r.get("reused") else f"({r['wall_s']:.0f} s)"),
            flush=True)
    out["modes"][mode] = dict(
        runs=per_seed, **{k: float(np.mean([p[k] for p in per_seed]))
                         for k in ("hv", "front_found", "best_accuracy", "best_latency_ms", "designed_accuracy_mean",
                                   "designed_latency_mean")})
  return out


def plot_objectives(problem: Problem, out: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  y = problem.values
  front = pareto.pareto_mask(pareto.to_min(y, problem.directions))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  ax.scatter(y[:, 1], y[:, 0], s=10, color="lightgray", label="table")
  order = np.flatnonzero(front)[np.argsort(y[front, 1])]
  ax.step(y[order, 1], y[order, 0], where="post", color="black", lw=1, label="true Pareto front")
  styles = {"accuracy only": ("tab:blue", "D"), "latency only": ("tab:orange", "^"), "both": ("tab:green", "o")}
  for mode, d in out["modes"].items():
    idx = sorted({problem.cands.index[n] for r in d["runs"] for n in r["order"][out["num_initial"]:]})
    c, mk = styles[mode]
    ax.scatter(y[idx, 1], y[idx, 0], s=22, color=c, marker=mk, alpha=0.7, label=f"BO, {mode} (designed points)")
  b = problem.cands.index[problem.baseline.name]
  ax.scatter([y[b, 1]], [y[b, 0]], marker="p", s=160, color="red", label="MobileBERT-shaped baseline")
  ax.set_xlabel("latency (ms)")
  ax.set_ylabel("flash MLM accuracy")
  ax.set_title(f"Multi- vs single-objective BO, {out['budget']} iterations x {out['seeds']} seeds")
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--problem", choices=("table", "analytic"), default="table")
  p.add_argument("--study", choices=("efficiency", "objectives"), default="efficiency")
  p.add_argument("--table", default=os.path.join(RESULTS, "tabular.csv"))
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--budget", type=int, default=0, help="iterations per search (default: 50 table, 80 analytic)")
  p.add_argument("--initial", type=int, default=8, help="shared initial design size")
  p.add_argument("--designers", default=",".join(DESIGNERS))
  p.add_argument("--run-dir", default=os.path.join(ROOT, "runs", "search_efficiency"))
  p.add_argument("--out", default=RESULTS)
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  command = "python -m experiments.search_efficiency " + " ".join(argv if argv is not None else sys.argv[1:])
  if args.study == "objectives":
    problem = table_problem(args.table)
    budget = args.budget or 30
    out = objectives_study(problem, args.seeds, budget, args.initial, os.path.join(args.run_dir, "objectives"))
    out.update(command=command, wall_s=time.time() - t0)
    with open(os.path.join(args.out, "objectives.json"), "w") as f:
      json.dump(out, f, indent=1)
    plot_objectives(problem, out, os.path.join(args.out, "objectives.png"))
    for mode, d in out["modes"].items():
      print(f"{mode:14s} HV {d['hv']:.3f}  front points found {d['front_found']:.1f}/{out['front_size']}  "
            f"best acc {d['best_accuracy']:.4f}  best latency {d['best_latency_ms']:.3f} ms")
    return 0
  problem = table_problem(args.table) if args.problem == "table" else analytic_problem()
  budget = args.budget or (50 if args.problem == "table" else 80)
  designers = [d for d in args.designers.split(",") if d]
  bad = [d for d in designers if d not in DESIGNERS]
  if bad:
    raise ValueError(f"--designers: {bad} not among {DESIGNERS}")
  out = efficiency(problem, args.seeds, budget, args.initial, os.path.join(args.run_dir, problem.name), designers)
  out.update(command=command, wall_s=time.time() - t0)
  with open(os.path.join(args.out, f"search_{problem.name}.json"), "w") as f:
    json.dump(out, f, indent=1)
  plot_efficiency(out, os.path.join(args.out, f"search_{problem.name}.png"))
  print(f"{problem.name}: {out['candidates']} candidates, {out['dominating_in_space']} dominate the baseline")
  for name, d in out["designers"].items():
    print(f"{name:13s} first better: {d['first_summary']:28s} three better: {d['three_summary']:28s} "
          f"HV@{budget}: {d['hv_mean'][-1]:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
