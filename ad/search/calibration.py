"""Per-search calibration (search.calibrate = K): does this search's accuracy proxy rank its own
students like regular distillation, and better than the parameter count?

After the finals, K more search students, chosen to span the Pareto front, are distilled with the
finals' (regular) schedule. Beside the finals they give a set of students with both the proxy's
score (the search objective mlm_accuracy: flash distillation, or the SuperLM score with
search.proxy = superlm / fewshot) and the regular one. On them (study: experiments/README.md
sections 3b, 8 and 11):
  - the pairs regular resolves: scores apart by more than 2 standard errors of the paired
    difference on the shared evaluation set;
  - for the proxy, the closed-form parameter count and FLOPs: how many of those pairs each orders
    like regular, and Kendall's tau with its 95% bootstrap interval over students.
The report (report.md, summary.json) prints these and says in words when the proxy does not beat
the parameter count. The regular runs live in `calibration/<arch>/` (resumable); their scores in
the store's meta row CALIBRATION_KEY, one entry per finished student, so a resumed search
distills only what is missing.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Callable

import numpy as np

from ad import interrupt, stats
from ad.search import settings
from ad.search.store import Trial

CALIBRATION_KEY = "calibration"  # store meta: {arch: the regular run's scores} of the calibration students
RESAMPLES, SEED = 2000, 0  # the bootstrap over students, as in the fidelity studies
RANKINGS = ("proxy", "params", "flops")  # what is compared with regular distillation


def _spaced(items: list, k: int) -> list:
  """k of `items` evenly spaced over their order, both ends included."""
  if k >= len(items):
    return list(items)
  return [items[i] for i in np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))]


def choose(ok: list[Trial], on_front, exclude, k: int) -> list[str]:
  """K of the search's 'ok' students (`on_front`: their Pareto mask, report.front) to regular-distill
  besides `exclude` (the finals): spread along the front by proxy accuracy; if the front has fewer,
  the rest spread over the other students' proxy accuracy, so the pairs span what the search saw."""
  exclude = set(exclude)
  keep = [(r, m) for r, m in zip(ok, on_front) if r.arch not in exclude]
  accuracy = lambda r: r.objectives["mlm_accuracy"]
  picks = _spaced(sorted((r for r, m in keep if m), key=accuracy), k)
  if len(picks) < k:
    picks += _spaced(sorted((r for r, m in keep if not m), key=accuracy), k - len(picks))
  return [r.arch for r in picks]


def todo(store, ok: list[Trial], on_front, finals: list[str], k: int, log: Callable) -> list[str]:
  """The calibration students (chosen from the 'ok' search students `ok` and their Pareto mask,
  besides the finals) whose regular run is not yet recorded in the store."""
  picks = choose(ok, on_front, finals, k)
  if len(picks) < k:
    log(f"search: search.calibrate={k}, but only {len(picks)} search student(s) besides the finals are left; "
        f"calibrating with those")
  done = store.get_meta(CALIBRATION_KEY) or {}
  return [a for a in picks if done.get(a, {}).get("status") != "ok"]


def distill_students(cfg, run_dir: str, names: list[str], distill: Callable, record: Callable, log: Callable,
                     progress: bool) -> None:
  """Regular-distills `names` one at a time with the finals' schedule (each resumes from its own
  checkpoints) and hands each one's scores to `record(name, entry)` (the store, on the main
  process). `distill`: trainer.distill (the caller's import: this module loads no JAX)."""
  schedule = settings.final_settings(cfg).schedule
  for name in names:
    interrupt.check("a calibration distillation boundary")
    workdir = os.path.join(run_dir, "calibration", name)
    log(f"search: calibration: regular distillation of {name} into {workdir}")
    t0 = time.time()
    try:
      m = distill(name, cfg, schedule, workdir, resume=True, log=lambda msg: None, progress=progress)
      entry = dict(status="ok", mlm_accuracy=m["mlm_accuracy"], mlm_accuracy_se=m["mlm_accuracy_se"],
                   per_sequence=dict(masked=m["per_sequence"]["masked"],
                                     mlm_correct=m["per_sequence"]["mlm_correct"]),
                   steps=m["steps"], wall_s=time.time() - t0)
    except (KeyboardInterrupt, SystemExit, interrupt.Interrupted):
      raise
    except Exception as e:
      log(f"search: calibration distillation of {name} failed: {type(e).__name__}: {str(e)[:300]}")
      entry = dict(status="failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
    record(name, entry)


def record_in(store) -> Callable:
  """record(name, entry) for distill_students: one meta row holds every calibration student."""
  return lambda name, entry: store.set_meta(CALIBRATION_KEY, dict(store.get_meta(CALIBRATION_KEY) or {},
                                                                  **{name: entry}))


def students(rows: list[Trial], finals: list[dict], calibration: dict | None) -> list[dict]:
  """Every student with both a proxy score (its search trial) and a regular one (a final or a
  calibration run): arch, proxy, proxy_se, regular, regular_se, per_sequence, params, flops, role."""
  trials = {r.arch: r for r in rows if r.status == "ok" and "mlm_accuracy" in (r.objectives or {})}
  regular = [(f["arch"], f["metrics"], "final") for f in finals if f["status"] == "ok" and f["metrics"]]
  regular += [(a, e, "calibration") for a, e in (calibration or {}).items() if e.get("status") == "ok"]
  out = []
  for arch, m, role in regular:
    t = trials.get(arch)
    if t is None or "mlm_accuracy" not in m:
      continue
    out.append(dict(arch=arch, role=role, proxy=t.objectives["mlm_accuracy"],
                    proxy_se=(t.objective_se or {}).get("mlm_accuracy"), regular=m["mlm_accuracy"],
                    regular_se=m.get("mlm_accuracy_se"), per_sequence=m.get("per_sequence"),
                    params=t.screening["params"], flops=t.screening["flops"]))
  return out


def agreement(studs: list[dict]) -> dict:
  """The proxy's, the parameter count's and the FLOPs' agreement with regular distillation on
  `studs` (see the module docstring), and a verdict in words."""
  n = len(studs)
  out = dict(students=[{k: v for k, v in s.items() if k != "per_sequence"} for s in studs], count=n,
             pairs=n * (n - 1) // 2, rankings={})
  if n < 2:
    out["verdict"] = (f"{n} student(s) with both a proxy and a regular score: nothing to compare (more finals or "
                      "search.calibrate > 0 give more)")
    return out
  reg = np.asarray([s["regular"] for s in studs])
  resolved = stats.resolved_pairs(reg, [s["regular_se"] or 0.0 for s in studs], [s["per_sequence"] for s in studs])
  out["regular_resolved_pairs"] = len(resolved)
  for key in RANKINGS:
    v = np.asarray([s[key] for s in studs], dtype=np.float64)
    out["rankings"][key] = dict(
        agrees=stats.agreement_on(resolved, v), of=len(resolved), kendall_tau=stats.kendall_tau(v, reg),
        kendall_tau_ci95=list(stats.bootstrap_interval(v, reg, stats.kendall_tau, RESAMPLES, SEED)))
  p, q = out["rankings"]["proxy"], out["rankings"]["params"]
  if not resolved:
    out["verdict"] = (f"regular distillation resolves none of the {out['pairs']} pairs of these {n} students beyond "
                      "2 standard errors: this search cannot tell whether its proxy ranks like regular distillation")
  elif p["agrees"] <= q["agrees"]:
    out["verdict"] = (f"WARNING: the accuracy proxy does not beat the parameter count on this search's students: of "
                      f"the {len(resolved)} pairs regular distillation resolves it orders {p['agrees']} like regular, "
                      f"the parameter count {q['agrees']} (at no cost)")
  else:
    out["verdict"] = (f"the accuracy proxy orders {p['agrees']} of the {len(resolved)} pairs regular distillation "
                      f"resolves like regular, the parameter count {q['agrees']}")
  return out


def report_lines(summary: dict, proxy_words: str) -> list[str]:
  """report.md's calibration section."""
  fmt = lambda x: "n/a" if x is None or not np.isfinite(x) else f"{x:+.2f}"
  L = ["", "## Calibration: the accuracy proxy against regular distillation", "",
       f"Students with both scores: {summary['count']} (the finals and search.calibrate's students; "
       f"proxy: {proxy_words}). **{summary['verdict'][0].upper() + summary['verdict'][1:]}.**", ""]
  if summary["rankings"]:
    L += [f"Regular distillation resolves {summary['regular_resolved_pairs']} of {summary['pairs']} pairs (beyond 2 "
          "standard errors of the paired difference on the held-out set). Tau's interval: 95% bootstrap over students "
          "(n/a below 4 students).", "",
          "| ranking by | agrees on regular's resolved pairs | Kendall tau vs regular [95%] |", "|---|---|---|"]
    words = dict(proxy="the search's proxy (mlm_accuracy)", params="parameters (closed form)",
                 flops="FLOPs (closed form)")
    for key, r in summary["rankings"].items():
      L.append(f"| {words[key]} | {r['agrees']}/{r['of']} | {fmt(r['kendall_tau'])} "
               f"[{fmt(r['kendall_tau_ci95'][0])}, {fmt(r['kendall_tau_ci95'][1])}] |")
    L += ["", "| student | role | proxy | regular | params |", "|---|---|---|---|---|"]
    for s in summary["students"]:
      L.append(f"| `{s['arch']}` | {s['role']} | {s['proxy']:.4f} | {s['regular']:.4f} ± {s['regular_se'] or 0:.4f} | "
               f"{s['params']:,} |")
  return L
