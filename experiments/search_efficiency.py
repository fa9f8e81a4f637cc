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

  fidelity  the 12 + 1 students of the fidelity study (experiments/README.md section 3b): their 5%
            flash accuracy and measured latency, each with its standard error; their regular
            accuracy is the truth a search is after.
  table48   the same for the 47 + 1 students of the table at the quickstart's scale (section 17):
            the quickstart's flash (74 steps) and regular (222) runs, latency paired with the baseline.
The table and fidelity problems tell the designer each value's standard error (the table's
accuracy: binomial over its masked tokens; latency: its median's CI), as a search does (since
2026-12-02; section 2's runs of 2026-11-22 gave values only).

`--study objectives` runs BO with accuracy only, latency only and both on the table (003 4.6).
`--study workers` simulates 1, 2, 4 workers (rounds of trials of equal length) with each of
search.bo.pending's ways to treat the trials in flight (issue 30 item 4).
`--study priors` runs BO with and without the training-free features (log parameters, log FLOPs)
as extra GP inputs, search.bo.training_free (issue 30 item 2).
`--study constraints --max-latency MS` adds a latency limit that binds: a trial over it is
infeasible (it counts as a trial, with no accuracy), as in a search with constraints.max_latency_ms.
BO either only excludes infeasible points (search.bo.constraints = 'filter') or models the
constraint with a GP and weighs EHVI by its probability of feasibility ('model'); reported: the
infeasible suggestions and the trials to the first and three feasible architectures that
dominate the baseline (issue 30 item 5).

Command:  .venv/bin/python -m experiments.search_efficiency --problem table|analytic [--seeds 5]
          .venv/bin/python -m experiments.search_efficiency --study objectives [--seeds 3]
          .venv/bin/python -m experiments.search_efficiency --problem analytic --study workers
              --workers 4,1 --pending exclude,hippo,believer --seeds 5 --budget 40
          .venv/bin/python -m experiments.search_efficiency --problem table|fidelity --study priors
              [--initial 4] [--budget N]
          .venv/bin/python -m experiments.search_efficiency --problem table --study constraints
              --max-latency 3.5 [--budget 30]
Output:   experiments/results/search_<problem>.{json,png}, experiments/results/objectives.{json,png},
          search_workers_<problem>.json, search_priors_<problem>.json,
          search_constraints_<problem>.json; one JSON per run under
          runs/search_efficiency/ (a rerun skips those).
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

from ad import configs, files, space as space_lib
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
  noise: np.ndarray | None = None  # [N, M] standard errors of the values (None: exact)
  features: np.ndarray | None = None  # [N, 2] training_free_features (log params, log FLOPs)
  truth: np.ndarray | None = None  # [N] what the values stand in for (regular-distilled accuracy)

  def value(self, arch) -> list[float]:
    return [float(v) for v in self.values[self.cands.index[arch.name]]]

  def trial(self, arch, max_latency: float = 0.0, modelled: bool = False) -> dict:
    """What a designer is told of `arch`: its values, with their standard errors where known. With
    a latency limit, a slower architecture is infeasible (its accuracy never measured); `modelled`:
    the designer also gets the measured latency as the constraint's value (search.bo.constraints)."""
    i = self.cands.index[arch.name]
    t = dict(arch=arch, status="ok", values=self.value(arch))
    if self.noise is not None:
      t["noise"] = [float(e) for e in self.noise[i]]
    if max_latency:
      lat = self.objectives.index("latency_ms")
      if modelled:
        t.update(constraints=[t["values"][lat]], constraint_noise=[t["noise"][lat]] if "noise" in t else None)
      if t["values"][lat] > max_latency:
        t = dict(t, status="infeasible", values=None, noise=None)
    return t

  def feasible(self, max_latency: float) -> np.ndarray:
    """[N] bool: candidates within the latency limit (all of them with none)."""
    return self.values[:, self.objectives.index("latency_ms")] <= max_latency if max_latency else np.ones(
        len(self.values), bool)

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
    for key in ("arch", "mlm_accuracy", "latency_ms_median", "latency_rel_ci95", "masked_tokens", "params", "flops"):
      if not r.get(key):
        raise ValueError(f"{csv_path}: row {i + 2} has no {key!r}; expected the columns written by experiments.tabular")
  archs = [space_lib.Arch.parse(r["arch"]) for r in rows]
  space = space_lib.DesignSpace(**{f: tuple(sorted({getattr(a, f) for a in archs})) for f in space_lib.FACTORS})
  values = np.asarray([[float(r["mlm_accuracy"]), float(r["latency_ms_median"])] for r in rows])
  if space_lib.MOBILEBERT.name not in {a.name for a in archs}:
    raise ValueError(f"{csv_path}: the baseline {space_lib.MOBILEBERT.name} is not in the table")
  # The noise the search would be told: the accuracy's binomial SE over the masked tokens, the
  # latency's median CI as an SE; and the closed-form size the table recorded.
  acc_se = [float(np.sqrt(v * (1 - v) / float(r["masked_tokens"]))) for v, r in zip(values[:, 0], rows)]
  lat_se = [float(r["latency_rel_ci95"]) * v / 1.96 for v, r in zip(values[:, 1], rows)]
  sizes = [(float(r["params"]), float(r["flops"])) for r in rows]
  # Reference: accuracy 0, latency 10% beyond the slowest, so every architecture counts.
  return Problem("table", designers_lib.Candidates(archs, space), values, ["mlm_accuracy", "latency_ms"],
                 ["max", "min"], [0.0, 1.1 * float(values[:, 1].max())], space_lib.MOBILEBERT,
                 noise=np.stack([acc_se, lat_se], 1), features=designers_lib.training_free_features(sizes))


def fidelity_problem(runs_dir: str, config: str = "fidelity", name: str = "fidelity") -> Problem:
  """Students with flash and regular runs laid out by experiments.fidelity: a search sees their
  flash accuracy at the config's fidelity.base_fraction (with its SE) and their measured latency
  (paired where it was, with its SE); the truth is their regular accuracy. The 12 + 1 students of
  the fidelity study (experiments/README.md section 3b; experiments/flash_signals.py unpacks their
  runs), or the 47 + 1 of the table at the quickstart's scale (config table_quickstart, section 17)."""
  from ad.search import measurement, objectives
  cfg = configs.load_config(config)
  flash_json = f"flash_{cfg.fidelity.base_fraction}.json"
  names = sorted(a for a in (os.listdir(runs_dir) if os.path.isdir(runs_dir) else [])
                 if os.path.isfile(os.path.join(runs_dir, a, "regular.json"))
                 and os.path.isfile(os.path.join(runs_dir, a, flash_json)))
  if not names:
    raise FileNotFoundError(f"{runs_dir}: no student has both regular.json and {flash_json}; unpack the saved runs "
                            "(experiments/results/fidelity_12/runs_fidelity_12.tar.gz, "
                            "experiments/results/table_quickstart/runs_table_quickstart.tar.gz) into runs/ first")
  read = lambda a, f: files.read_json(os.path.join(runs_dir, a, f))
  archs = [space_lib.Arch.parse(a) for a in names]
  space = space_lib.DesignSpace(**{f: tuple(sorted({getattr(a, f) for a in archs})) for f in space_lib.FACTORS})
  flash = [read(a, flash_json) for a in names]
  latency = [measurement.latency_of(read(a, "measure.json")) for a in names]  # (ms, relative 95% half-width)
  values = np.asarray([[f["mlm_accuracy"], ms] for f, (ms, _) in zip(flash, latency)])
  noise = np.asarray([[f["mlm_accuracy_se"], rel * ms / 1.96] for f, (ms, rel) in zip(flash, latency)])
  sizes = [(s["params"], s["flops"]) for s in (objectives.screening(a, cfg.model, cfg.search.measure.seq) for a in archs)]
  return Problem(name, designers_lib.Candidates(archs, space), values, ["mlm_accuracy", "latency_ms"],
                 ["max", "min"], [0.0, 1.1 * float(values[:, 1].max())], space_lib.MOBILEBERT, noise=noise,
                 features=designers_lib.training_free_features(sizes),
                 truth=np.asarray([read(a, "regular.json")["mlm_accuracy"] for a in names]))


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


def saved_or_run(path: str, run) -> dict:
  """The search saved at `path` (a rerun skips it), else run() saved there."""
  if os.path.exists(path):
    return files.read_json(path)
  r = run()
  files.write_json(path, r)
  return r


def run_one(problem: Problem, designer: str, seed: int, budget: int, num_initial: int,
            log_path: str | None = None, training_free: bool = False, max_latency: float = 0.0,
            constraints: str = "filter") -> dict:
  """One search by lookup: returns the evaluated architectures in order and the derived metrics.
  training_free: BO's GPs also see the problem's training-free features (search.bo.training_free);
  max_latency: a latency limit, 'filter'ed or 'model'led (search.bo.constraints)."""
  cands = problem.cands
  modelled = bool(max_latency) and constraints == "model"
  d = designers_lib.make_designer(designer, cands, problem.directions, problem.reference, seed, log_path=log_path,
                                  features=problem.features if training_free else None,
                                  constraints=[max_latency] if modelled else ())
  observe = lambda a: problem.trial(a, max_latency, modelled)
  trials = [observe(problem.baseline)]
  # The shared initial design, minus the baseline (already known to every designer).
  initial = [a for a in designers_lib.initial_design(cands, num_initial + 1, seed) if a != problem.baseline]
  order = initial[:num_initial]
  trials += [observe(a) for a in order]
  t0 = time.time()
  try:
    while len(order) < budget:
      d.update(trials)
      (arch,) = d.suggest(1)
      order.append(arch)
      trials.append(observe(arch))
  finally:
    if hasattr(d, "close"):
      d.close()
  return dict(problem=problem.name, designer=designer, seed=seed, budget=budget, num_initial=num_initial,
              objectives=problem.objectives, order=[a.name for a in order], wall_s=time.time() - t0)


def run_workers(problem: Problem, seed: int, budget: int, num_initial: int, workers: int, pending: str,
                log_path: str | None = None, designer: str = "bo") -> dict:
  """A BO search with `workers` simulated workers and every trial taking one unit of time: trials
  run in rounds of `workers` (the initial design too), and within a round each suggestion is asked
  for with the round's earlier ones in flight (search.bo.pending = `pending` says what the GPs make
  of them), as the coordinator asks when workers free up together. The GPs see the problem's
  training-free features where it has them (search.bo.training_free, on by default). Returns the
  evaluated architectures in order and the round each ran in."""
  cands = problem.cands
  d = designers_lib.make_designer(designer, cands, problem.directions, problem.reference, seed,
                                  search_cfg=dict(bo=dict(pending=pending)), log_path=log_path,
                                  features=problem.features)
  trials = [problem.trial(problem.baseline)]
  initial = [a for a in designers_lib.initial_design(cands, num_initial + 1, seed) if a != problem.baseline]
  order = initial[:num_initial]
  rounds = [i // workers for i in range(len(order))]
  trials += [problem.trial(a) for a in order]
  t0 = time.time()
  try:
    while len(order) < budget:
      d.update(trials)
      in_flight: list = []
      for _ in range(min(workers, budget - len(order))):
        (arch,) = d.suggest(1, pending=in_flight)
        in_flight.append(arch)
      rounds += [(rounds[-1] + 1) if rounds else 0] * len(in_flight)
      order += in_flight
      trials += [problem.trial(a) for a in in_flight]
  finally:
    if hasattr(d, "close"):
      d.close()
  return dict(problem=problem.name, designer=designer, pending=pending, workers=workers, seed=seed, budget=budget,
              num_initial=num_initial, training_free=problem.features is not None, order=[a.name for a in order], rounds=rounds, wall_s=time.time() - t0)


def workers_study(problem: Problem, seeds: int, budget: int, num_initial: int, run_dir: str, workers: list[int],
                  methods: list[str]) -> dict:
  """Trials and rounds (wall time in units of one trial) to the first and to three architectures
  that dominate the baseline, per (workers, pending method), over the seeds. Seed by seed, every
  setting in turn, so a study cut short has whole seeds."""
  os.makedirs(run_dir, exist_ok=True)
  settings = [(n, m) for n in workers for m in (methods if n > 1 else ["exclude"])]  # one worker: nothing in flight
  runs: dict[str, list] = {f"{n}_{m}": [] for n, m in settings}
  for seed in range(seeds):
    for n, method in settings:
      path = os.path.join(run_dir, f"{n}_{method}_{seed}.json")
      r = saved_or_run(path, lambda: run_workers(problem, seed, budget, num_initial, n, method,
                                                 log_path=os.path.join(run_dir, "trieste.log")))
      r.update(metrics(problem, r))
      if problem.truth is not None:
        r["top3"] = truth_top3_found(problem, r["order"])
      to_round = lambda k: None if k is None else (r["rounds"][k - 1] + 1 if k else 0)
      r.update(first_round=to_round(r["first"]), three_round=to_round(r["three"]), top3_round=to_round(r.get("top3")))
      runs[f"{n}_{method}"].append(r)
      print(f"{problem.name} workers {n} {method} seed {seed}: first {r['first']} (round {r['first_round']}), "
            f"three {r['three']} (round {r['three_round']}), top3 {r.get('top3')} (round {r['top3_round']}), "
            f"HV {r['hv'][-1]:.3f} ({r['wall_s']:.0f} s)", flush=True)
  out = dict(problem=problem.name, budget=budget, num_initial=num_initial, seeds=seeds,
             training_free=problem.features is not None,
             dominating_in_space=int(problem.dominates_baseline().sum()), runs={})
  keys = ("first", "three", "first_round", "three_round")
  keys += ("top3", "top3_round") if problem.truth is not None else ()
  for (n, method), (key, rs) in zip(settings, runs.items()):
    hv = np.asarray([r["hv"] for r in rs])
    out["runs"][key] = dict(workers=n, pending=method, **{k: [r[k] for r in rs] for k in keys},
                            **{f"{k}_summary": _summarize([r[k] for r in rs], budget) for k in keys},
                            hv_mean=hv.mean(0).tolist(), hv_std=hv.std(0).tolist(), wall_s=[r["wall_s"] for r in rs])
  return out


def priors_study(problem: Problem, seeds: int, budget: int, num_initial: int, run_dir: str) -> dict:
  """BO with and without the training-free features as GP inputs (search.bo.training_free), seed
  by seed: trials to the first and to three baseline-dominating architectures, hypervolume after
  each trial, and where the problem has a truth (the fidelity set), trials until the truth's top 3
  have all been evaluated."""
  os.makedirs(run_dir, exist_ok=True)
  runs: dict[str, list] = {"encoding": [], "encoding + log params, log FLOPs": []}
  for seed in range(seeds):
    for key, free in zip(runs, (False, True)):
      path = os.path.join(run_dir, f"{'with' if free else 'without'}_{seed}.json")
      r = saved_or_run(path, lambda: run_one(problem, "bo", seed, budget, num_initial,
                                             log_path=os.path.join(run_dir, "trieste.log"), training_free=free))
      r.update(metrics(problem, r))
      if problem.truth is not None:
        r["top3"] = truth_top3_found(problem, r["order"])
      runs[key].append(r)
      print(f"{problem.name} {key} seed {seed}: first {r['first']}, three {r['three']}, top3 {r.get('top3')}, "
            f"HV {r['hv'][-1]:.3f} ({r['wall_s']:.0f} s)", flush=True)
  out = dict(problem=problem.name, candidates=len(problem.cands), budget=budget, num_initial=num_initial, seeds=seeds,
             dominating_in_space=int(problem.dominates_baseline().sum()), inputs={})
  for key, rs in runs.items():
    hv = np.asarray([r["hv"] for r in rs])
    keys = ("first", "three") + (("top3",) if problem.truth is not None else ())
    out["inputs"][key] = dict(**{k: [r[k] for r in rs] for k in keys},
                              **{f"{k}_summary": _summarize([r[k] for r in rs], budget) for k in keys},
                              hv_mean=hv.mean(0).tolist(), hv_std=hv.std(0).tolist(), wall_s=[r["wall_s"] for r in rs])
  return out


def constraints_study(problem: Problem, seeds: int, budget: int, num_initial: int, run_dir: str,
                      max_latency: float) -> dict:
  """BO under a latency limit that binds, the constraint filtered (infeasible points excluded) or
  modelled (a GP, EHVI x probability of feasibility), seed by seed: infeasible suggestions (initial
  design excluded, the same for both) and trials to the first and to three feasible architectures
  that dominate the baseline."""
  os.makedirs(run_dir, exist_ok=True)
  feasible = problem.feasible(max_latency)
  methods = ("filter", "model")
  runs: dict[str, list] = {m: [] for m in methods}
  for seed in range(seeds):
    for method in methods:
      path = os.path.join(run_dir, f"{method}_{max_latency:g}_{seed}.json")
      r = saved_or_run(path, lambda: run_one(problem, "bo", seed, budget, num_initial,
                                             log_path=os.path.join(run_dir, "trieste.log"), max_latency=max_latency,
                                             constraints=method))
      r.update(metrics(problem, r, max_latency))
      idx = [problem.cands.index[n] for n in r["order"][num_initial:]]
      r["infeasible"] = int((~feasible[idx]).sum())
      # what reaching three costs where an infeasible trial is only measured, never trained (the
      # search measures before it trains): the feasible trials up to the third hit
      every = [problem.cands.index[n] for n in r["order"]]
      r["three_trained"] = int(feasible[every[:r["three"]]].sum()) if r["three"] else None
      runs[method].append(r)
      print(f"{problem.name} constraints {method} seed {seed}: infeasible {r['infeasible']}/{len(idx)} designed, "
            f"first {r['first']}, three {r['three']} ({r['wall_s']:.0f} s)", flush=True)
  out = dict(problem=problem.name, candidates=len(problem.cands), max_latency_ms=max_latency,
             feasible_in_space=int(feasible.sum()),
             feasible_dominating_in_space=int((problem.dominates_baseline() & feasible).sum()),
             budget=budget, num_initial=num_initial, seeds=seeds, methods={})
  for method, rs in runs.items():
    keys = ("first", "three", "three_trained", "infeasible")
    out["methods"][method] = dict(**{k: [r[k] for r in rs] for k in keys},
                                  **{f"{k}_summary": _summarize([r[k] for r in rs], budget) for k in keys},
                                  infeasible_mean=float(np.mean([r["infeasible"] for r in rs])),
                                  infeasible_se=float(np.std([r["infeasible"] for r in rs], ddof=1) / np.sqrt(len(rs)))
                                  if len(rs) > 1 else None, wall_s=[r["wall_s"] for r in rs])
  return out


def truth_top3_found(problem: Problem, order: list[str]) -> int | None:
  """Trials (1-based) until the three best architectures by the problem's truth (regular
  distillation) have all been evaluated; None if they were not within the order."""
  top3 = {problem.cands.archs[i].name for i in np.argsort(-problem.truth)[:3]}
  when = dict({n: k + 1 for k, n in enumerate(order)}, **{problem.baseline.name: 0})  # known from the start
  return max(when[n] for n in top3) if top3 <= set(when) else None


def metrics(problem: Problem, result: dict, max_latency: float = 0.0) -> dict:
  """Iterations (1-based, initial design included) to the first and third baseline-dominating
  architecture (within the latency limit, if any; None if not reached), and the hypervolume
  fraction after each iteration."""
  idx = [problem.cands.index[n] for n in result["order"]]
  dom = (problem.dominates_baseline() & problem.feasible(max_latency))[idx]
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
      r = saved_or_run(path, lambda: run_one(problem, name, seed, budget, num_initial,
                                             log_path=os.path.join(run_dir, "trieste.log")))
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
      r = saved_or_run(path, lambda: run_one(sub, "bo", seed, budget, num_initial,
                                             log_path=os.path.join(run_dir, "trieste.log")))
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
  p.add_argument("--problem", choices=("table", "analytic", "fidelity", "table48"), default="table")
  p.add_argument("--study", choices=("efficiency", "objectives", "workers", "priors", "constraints"),
                 default="efficiency")
  p.add_argument("--max-latency", type=float, default=3.5, help="--study constraints: the latency limit (ms)")
  p.add_argument("--workers", default="1,2,4", help="--study workers: simulated worker counts")
  p.add_argument("--pending", default="exclude,believer,hippo",
                 help="--study workers: what BO makes of trials in flight (search.bo.pending)")
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
  problem = {"table": lambda: table_problem(args.table), "analytic": analytic_problem,
             "fidelity": lambda: fidelity_problem(os.path.join(ROOT, "runs", "fidelity_12")),
             "table48": lambda: fidelity_problem(os.path.join(ROOT, "runs", "table_quickstart"), "table_quickstart",
                                                 "table48")}[args.problem]()
  if args.study == "priors":
    budget = args.budget or min(30, len(problem.cands) - 1)  # the baseline is known, not searched for
    out = priors_study(problem, args.seeds, budget, args.initial, os.path.join(args.run_dir, f"priors_{problem.name}"))
    out.update(command=command, wall_s=time.time() - t0)
    files.write_json(os.path.join(args.out, f"search_priors_{problem.name}.json"), out)
    print(f"{problem.name}: {out['candidates']} candidates, {out['dominating_in_space']} dominate the baseline; "
          f"median over {args.seeds} seeds (range):")
    for key, d in out["inputs"].items():
      extra = f", all of regular's top 3 after {d['top3_summary']}" if "top3_summary" in d else ""
      print(f"  GP inputs {key}: first better {d['first_summary']}, three {d['three_summary']}{extra}; "
            f"HV after {min(10, budget)} {d['hv_mean'][min(9, budget - 1)]:.3f}, after {budget} {d['hv_mean'][-1]:.3f}")
    return 0
  if args.study == "constraints":
    if "latency_ms" not in problem.objectives:
      raise ValueError(f"--study constraints: the {problem.name} problem has no latency (use --problem table)")
    budget = args.budget or 30
    out = constraints_study(problem, args.seeds, budget, args.initial,
                            os.path.join(args.run_dir, f"constraints_{problem.name}"), args.max_latency)
    out.update(command=command, wall_s=time.time() - t0)
    files.write_json(os.path.join(args.out, f"search_constraints_{problem.name}.json"), out)
    print(f"{problem.name}: {out['feasible_in_space']} of {out['candidates']} within {args.max_latency} ms, "
          f"{out['feasible_dominating_in_space']} of them dominate the baseline; median over {args.seeds} seeds (range):")
    for method, d in out["methods"].items():
      print(f"  {method:6s}: infeasible designed trials {d['infeasible_mean']:.1f} ± {d['infeasible_se'] or 0:.1f}; "
            f"trials to the first feasible better {d['first_summary']}, to three {d['three_summary']} "
            f"({d['three_trained_summary']} of them feasible, i.e. trained)")
    return 0
  if args.study == "workers":
    budget = args.budget or 40
    workers = [int(w) for w in args.workers.split(",") if w]
    methods = [m for m in args.pending.split(",") if m]
    from ad.search import trieste_service
    bad = [m for m in methods if m not in trieste_service.PENDING_METHODS]
    if bad:
      raise ValueError(f"--pending: {bad} not among {trieste_service.PENDING_METHODS}")
    out = workers_study(problem, args.seeds, budget, args.initial,
                        os.path.join(args.run_dir, f"workers_{problem.name}"), workers, methods)
    out.update(command=command, wall_s=time.time() - t0)
    files.write_json(os.path.join(args.out, f"search_workers_{problem.name}.json"), out)
    print(f"{problem.name}: {out['dominating_in_space']} architectures dominate the baseline; median over "
          f"{args.seeds} seeds (range), trials and rounds (wall time in trials) to the first / three better:")
    for key, d in out["runs"].items():
      print(f"  {d['workers']} worker(s), {d['pending']:9s}: trials {d['first_summary']} / {d['three_summary']}; "
            f"rounds {d['first_round_summary']} / {d['three_round_summary']}; HV@{budget} {d['hv_mean'][-1]:.3f}"
            + (f"; regular's top 3 after {d['top3_summary']} trials, {d['top3_round_summary']} rounds"
               if "top3_summary" in d else ""))
    return 0
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
