"""The search's report, rebuilt from the trial store alone (`ad report RUN_DIR`).

Writes RUN_DIR/report.md (the objectives with their standard errors, the Pareto set, the
hypervolume, every trial, the final distillations) and RUN_DIR/pareto.png (the first two
objectives: every trial with a 2-standard-error bar on each axis, the Pareto front, the
MobileBERT-shaped baseline and the baseline checkpoint marked). Returns a summary dict.

"Dominates the baseline" means better by more than 2 standard errors of the difference in
every objective (`noise_margins`): for scores of the shared evaluation set, the paired standard
error of the per-sequence differences; otherwise sqrt(se_a^2 + se_b^2), with a latency's
standard error taken from the 95% confidence interval of its median. The noise-blind Pareto
comparison is listed beside it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from ad import export, files, rundir, stats
from ad.search import calibration, pareto, settings
from ad.search.store import Trial, TrialStore

# Objectives scored per sequence on the shared evaluation set: name -> per-sequence numerator.
PAIRED = {"mlm_accuracy": "mlm_correct", "mlm_cross_entropy": "mlm_ce", "teacher_agreement": "teacher_agree"}

CHOICES = ("knee", "spread", "accuracy", "latency")
# Rows evaluated beside the search, never part of its front: the MobileBERT-shaped baseline
# (flash-distilled like a trial) and search.baseline_checkpoint (a trained checkpoint, as it is).
CHECKPOINT_ROLE = "checkpoint"
BASELINE_ROLES = ("baseline", CHECKPOINT_ROLE)


def checkpoint_name(path: str) -> str:
  """The store's name of the baseline checkpoint at `path`."""
  return "checkpoint:" + os.path.basename(os.path.normpath(path))


def _existing(path: str) -> str:
  """`path`, or its nearest parent that exists."""
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def _spec(store: TrialStore):
  record = store.get_meta("record")
  if record is None:
    raise ValueError(f"{store.path}: the store has no search record; was the search started?")
  objs = record["config"]["search"]["objectives"]
  return ([o["name"] for o in objs], [o["direction"] for o in objs], [float(o["reference"]) for o in objs], record)


def hypervolume_reference(objectives, reference, rows: list[Trial]) -> list[float]:
  """The hypervolume's reference point: each objective's `reference`, except a latency objective
  with `reference_ratio` once its latencies are paired: that many times the run's latency scale
  (search.measure.scale's reading of the reference, which every paired trial records), so the point
  moves with the machine as the paired latencies do. A fixed point in ms lay below every trial
  of a run whose scale read 49 ms under load where another's read 15 (experiments/README.md 16)."""
  scale = next((r.measurement["reference_scale_ms"] for r in rows
                if (r.measurement or {}).get("reference_scale_ms")), None)
  return [float(o["reference_ratio"]) * float(scale) if scale and o.get("reference_ratio") else float(ref)
          for o, ref in zip(objectives, reference)]


def card_latencies(run_dir: str) -> dict:
  """arch -> the latency record a final's model card states (export.card_latency of its trial),
  from the run directory's SQLite store; empty where it has none (a distillation workdir)."""
  if not os.path.isfile(os.path.join(run_dir, rundir.STORE_FILE)):
    return {}
  store = TrialStore(run_dir, readonly=True)
  try:
    trials = store.trials("ok")
  finally:
    store.close()
  latencies = {t.arch: export.card_latency(t.objectives, t.measurement) for t in trials}
  return {arch: lat for arch, lat in latencies.items() if lat is not None}


def front(rows: list[Trial], names, directions) -> tuple[list[Trial], np.ndarray]:
  """The 'ok' search trials (baselines excluded) and the Pareto mask over them."""
  ok = [r for r in rows if r.status == "ok" and r.role not in BASELINE_ROLES]
  if not ok:
    return [], np.zeros(0, dtype=bool)
  return ok, pareto.pareto_mask(pareto.to_min([[r.objectives[n] for n in names] for r in ok], directions))


def choose_finals(rows: list[Trial], names, directions, final_cfg) -> list[str]:
  """The Pareto students to distill fully: `final.count` of them by `final.choose`.

  knee: closest to the ideal point after scaling each objective to [0, 1] over the front;
  spread: evenly spaced along the front sorted by the first objective (ends included);
  accuracy / latency: best in `mlm_accuracy` / `latency_ms`.
  """
  if final_cfg.choose not in CHOICES:
    raise ValueError(f"final.choose={final_cfg.choose!r}: expected one of {CHOICES}")
  ok, mask = front(rows, names, directions)
  pts = [r for r, m in zip(ok, mask) if m]
  if not pts or final_cfg.count <= 0:
    return []
  y = pareto.to_min([[r.objectives[n] for n in names] for r in pts], directions)
  k = min(final_cfg.count, len(pts))
  if final_cfg.choose == "knee":
    span = np.where(np.ptp(y, 0) > 0, np.ptp(y, 0), 1.0)
    order = np.argsort(np.linalg.norm((y - y.min(0)) / span, axis=1), kind="stable")
  elif final_cfg.choose == "spread":
    by_first = np.argsort(y[:, 0], kind="stable")
    order = by_first[np.unique(np.round(np.linspace(0, len(pts) - 1, k)).astype(int))]
  else:
    key = "mlm_accuracy" if final_cfg.choose == "accuracy" else "latency_ms"
    if key not in names:
      raise ValueError(f"final.choose={final_cfg.choose!r} needs the objective {key!r}; objectives are {names}")
    order = np.argsort(y[:, names.index(key)], kind="stable")
  return [pts[i].arch for i in order[:k]]


REMEASURED_KEY = "remeasured"  # store meta: the Pareto set and the reference timed together before the finals


def _measured_latency(m: dict) -> str:
  """A measurement's latency in ms ('' when not measured): 'paired (alone median)' where it was
  timed against the reference, else 'median (p90)'; an estimate says so."""
  if m.get("estimate") and m.get("latency_ms_median"):
    return f"{_fmt(m['latency_ms_median'])} (estimate, {m.get('target', 'TPU')})"
  if m.get("latency_ms_paired"):
    return f"{_fmt(m['latency_ms_paired'])} (alone {_fmt(m['latency_ms_median'])})"
  return f"{_fmt(m['latency_ms_median'])} ({_fmt(m.get('latency_ms_p90'))})" if m.get("latency_ms_median") else ""


SCALE_WORDS = {"machine": "this machine's first quiet reading of the reference, shared by every search on it",
               "run": "the reference's first reading in this run"}


def paired_latency_lines(rows: list[Trial], remeasured: dict | None) -> list[str]:
  """report.md's account of the paired latencies: how far the reference itself drifted over the
  run (what pairing removes), and the Pareto set timed together before the finals."""
  paired = [r for r in rows if (r.measurement or {}).get("latency_ms_paired")]
  if not paired:
    return []
  m0 = paired[0].measurement
  ref_ms = np.asarray([r.measurement["reference_ms_median"] for r in paired])
  L = ["", "## Latency, paired with the reference", "",
       f"Each student was timed alternately with the reference `{m0['reference']}`; its latency is its ratio to the "
       f"reference x the run's scale, {_fmt(m0['reference_scale_ms'])} ms ({SCALE_WORDS[m0.get('reference_scale_source', 'run')]}), "
       f"with the ratio's standard error. Over the {len(paired)} paired measurements the reference itself read "
       f"{_fmt(float(np.median(ref_ms)))} ms (median), {_fmt(float(ref_ms.min()))} to {_fmt(float(ref_ms.max()))}: "
       f"the drift the pairing takes out."]
  if remeasured:
    L += ["", f"Before the finals the Pareto set and the reference were timed together, in turn, in one process "
          f"(scale {_fmt(remeasured['scale_ms'])} ms):", "",
          "| arch | search (paired) | re-measured together | ratio to reference | alone now |", "|---|---|---|---|---|"]
    by_arch = {r.arch: r for r in rows}
    for name, t in remeasured["rows"].items():
      trial = (by_arch[name].measurement if name in by_arch else None) or {}
      L.append(f"| `{name}` | {_fmt(trial.get('latency_ms_paired'))} | {_fmt(t['latency_ms'])} ± "
               f"{_fmt(t['latency_ms'] * t['rel_ci95'] / 1.96)} | {_fmt(t['latency_ratio'])} | {_fmt(t['alone_ms'])} |")
  return L


def latency_source(cfg: dict) -> str:
  """How the search's latency objective was obtained, in words (for report.md and pareto.png)."""
  m = settings.search_settings_from(settings.record_config(cfg)["search"]).measure
  target = m.target
  if target.startswith("tpu:"):
    return (f"latency estimated by XLA's TPU cost model for one {target[4:]} chip at batch {m.batch}, seq "
            f"{m.seq} (compiled ahead of time, never run: an estimate, not a measurement)")
  where = f"on `{target}` by its measure workers" if target else "on the machine the trials ran on"
  return f"latency measured from XLA traces {where} at batch {m.batch}, seq {m.seq}"


def se_of(row: Trial, name: str) -> float:
  """A trial's standard error of objective `name` (0 where the store has none: exact or older rows)."""
  return float((row.objective_se or {}).get(name) or 0.0)


def noise_margins(a: Trial, b: Trial, names) -> np.ndarray:
  """[M] two standard errors of the difference a - b in each objective (see the module docstring)."""
  out = []
  for n in names:
    pa = ((a.distill or {}).get("per_sequence") or {})
    pb = ((b.distill or {}).get("per_sequence") or {})
    key = PAIRED.get(n)
    same_set = (a.distill or {}).get("eval_set") == (b.distill or {}).get("eval_set")
    if key and same_set and key in pa and key in pb and pa.get("masked") == pb.get("masked") and pa.get("masked"):
      out.append(2 * stats.paired_difference(pa[key], pb[key], pa["masked"])[1])
    else:
      out.append(2 * stats.difference_se(se_of(a, n), se_of(b, n)))
  return np.asarray(out)


def dominating_baseline(ok: list[Trial], baseline: Trial | None, names, directions) -> tuple[list[str], list[str]]:
  """(trials that dominate the baseline beyond 2 standard errors, trials that dominate it at all)."""
  if not baseline or baseline.status != "ok" or not ok:
    return [], []
  b = pareto.to_min([[baseline.objectives[n] for n in names]], directions)[0]
  y = pareto.to_min([[r.objectives[n] for n in names] for r in ok], directions)
  raw = [r.arch for r, yi in zip(ok, y) if pareto.dominates(yi, b)]
  beyond = [r.arch for r, yi in zip(ok, y) if pareto.dominates(yi, b, noise_margins(r, baseline, names))]
  return beyond, raw


def final_rows(finals: list[dict], rows: list[Trial], names, remeasured: dict | None = None) -> list[Trial]:
  """Each successful final distillation as a trial-like row: the trained objectives (and their
  standard errors and per-sequence counts) from the regular run, the measured ones from its trial,
  the latency from the re-measurement before the finals where the final was in it."""
  by_arch = {r.arch: r for r in rows}
  together = (remeasured or {}).get("rows") or {}
  out = []
  for f in finals:
    trial, m = by_arch.get(f["arch"]), f["metrics"] or {}
    if f["status"] != "ok" or trial is None or trial.status != "ok":
      continue
    obj, se = dict(trial.objectives), dict(trial.objective_se or {})
    for n in names:
      if n in m:
        obj[n], se[n] = float(m[n]), float(m.get(f"{n}_se") or 0.0)
    if "latency_ms" in names and f["arch"] in together:
      t = together[f["arch"]]
      obj["latency_ms"], se["latency_ms"] = t["latency_ms"], t["latency_ms"] * t["rel_ci95"] / 1.96
    out.append(dataclasses.replace(trial, objectives=obj, objective_se=se, distill=m))
  return out


def time_split(rows: list[Trial]) -> dict[str, float]:
  """Mean seconds per trial of each part of a trial's wall time, over trials that trained."""
  timed = [r.timings for r in rows if r.timings and r.timings.get("distill_wall_s")]
  if not timed:
    return {}
  keys = ("designer_s", "measure_s", "distill_setup_s", "distill_compile_wall_s", "distill_train_steps_s",
          "distill_checkpoint_s", "distill_eval_s", "total_s")
  out = {k: float(np.mean([t.get(k, 0.0) for t in timed])) for k in keys}
  out["train_steps_share"] = float(np.mean([t["distill_train_steps_s"] / t["total_s"] for t in timed if t["total_s"]]))
  out["trials"] = len(timed)
  return out


def _pm(row: Trial, name: str) -> str:
  """'value ± se' of one objective of a trial."""
  se = se_of(row, name)
  return _fmt(row.objectives[name]) + (f" ± {_fmt(se, 2)}" if se else "")


def _rel(path: str | None, run_dir: str) -> str:
  return "" if not path else os.path.relpath(path, run_dir)


def _metric(metrics: dict, name: str) -> str:
  """'value ± se' of an evaluation field (`name` and `name_se`) of a distillation's metrics."""
  v, se = metrics.get(name), metrics.get(f"{name}_se")
  return _fmt(v) + (f" ± {_fmt(se, 2)}" if v is not None and se else "")


def _fmt(v, digits=4) -> str:
  if v is None:
    return ""
  if isinstance(v, float):
    return f"{v:.{digits}g}"
  return str(v)


def plot(path: str, rows: list[Trial], names, directions, latency_note: str = "") -> dict:
  """Draws pareto.png; returns what was drawn (points and their 2-standard-error bars), for tests.
  latency_note: appended to the latency axis' label (e.g. that it is a TPU estimate)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ok, mask = front(rows, names, directions)
  fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
  xn, yn = (names[1], names[0]) if len(names) > 1 else (names[0], names[0])
  drawn = dict(x_name=xn, y_name=yn, trials=[], baseline=None)
  if ok:
    x = np.asarray([r.objectives[xn] for r in ok])
    y = np.asarray([r.objectives[yn] for r in ok])
    xerr = np.asarray([2 * se_of(r, xn) for r in ok])
    yerr = np.asarray([2 * se_of(r, yn) for r in ok])
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="none", ecolor="0.6", elinewidth=0.8, capsize=2, zorder=1)
    ax.scatter(x, y, c=[r.id for r in ok], cmap="viridis", s=28, label="trials (colour = order; bars: 2 SE)",
               zorder=2)
    drawn["trials"] = [dict(arch=r.arch, x=float(a), y=float(b), xerr=float(c), yerr=float(d))
                       for r, a, b, c, d in zip(ok, x, y, xerr, yerr)]
    fx, fy = x[mask], y[mask]
    o = np.argsort(fx)
    ax.step(fx[o], fy[o], where="post", color="C3", lw=1.5, label="Pareto front", zorder=3)
    ax.scatter(fx, fy, facecolors="none", edgecolors="C3", s=90, zorder=3)
    for r, m in zip(ok, mask):
      if m:
        ax.annotate(r.arch, (r.objectives[xn], r.objectives[yn]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
  for r in rows:
    if r.role == "baseline" and r.status == "ok":
      bx, by, bxe, bye = r.objectives[xn], r.objectives[yn], 2 * se_of(r, xn), 2 * se_of(r, yn)
      ax.errorbar([bx], [by], xerr=[bxe], yerr=[bye], fmt="none", ecolor="C1", elinewidth=1.0, capsize=3, zorder=3)
      ax.scatter([bx], [by], marker="*", s=220, c="C1", edgecolors="k",
                 label=f"baseline {r.arch} (MobileBERT-shaped)", zorder=4)
      drawn["baseline"] = dict(arch=r.arch, x=bx, y=by, xerr=bxe, yerr=bye)
    if r.role == CHECKPOINT_ROLE and r.status == "ok":
      bx, by, bxe, bye = r.objectives[xn], r.objectives[yn], 2 * se_of(r, xn), 2 * se_of(r, yn)
      ax.errorbar([bx], [by], xerr=[bxe], yerr=[bye], fmt="none", ecolor="C2", elinewidth=1.0, capsize=3, zorder=3)
      ax.scatter([bx], [by], marker="D", s=90, c="C2", edgecolors="k", label=f"{r.arch} (as it is)", zorder=4)
      drawn["checkpoint"] = dict(arch=r.arch, x=bx, y=by, xerr=bxe, yerr=bye)
  label = lambda n: (f"{n} ({'lower' if directions[names.index(n)] == 'min' else 'higher'} is better)"
                     + (f"\n{latency_note}" if latency_note and n == "latency_ms" else ""))
  ax.set_xlabel(label(xn))
  ax.set_ylabel(label(yn))
  drawn.update(x_label=label(xn), y_label=label(yn))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  tmp = f"{path}.{os.getpid()}.tmp.png"
  fig.savefig(tmp)
  plt.close(fig)
  os.replace(tmp, path)  # a reader never sees half a PNG
  return drawn


PROXY_WORDS = {"flash": "flash distillation of each candidate (003)",
               "superlm": "sub-networks of a one-shot weight-sharing SuperLM, scored without training (004)",
               "fewshot": "sub-networks of few-shot weight-sharing SuperLMs, scored without training (001)"}


def finals_section(finals: list[dict], rows: list[Trial], names, directions, remeasured, baseline: Trial | None,
                   checkpoint: Trial | None, run_dir: str) -> tuple[list[str], list[str], list[str], list[str]]:
  """The report's finals: their comparison with the regular-distilled baseline and with the baseline
  checkpoint, and their table; returns the lines and the finals dominating the baseline beyond the
  noise, noise-blind, and the checkpoint beyond the noise."""
  L = ["", "## Final distillation (regular schedule)", ""]
  fin = final_rows(finals, rows, names, remeasured)
  base_final = next((f for f in fin if baseline and f.arch == baseline.arch), None)
  others = [f for f in fin if f is not base_final]
  fin_beyond, fin_raw = dominating_baseline(others, base_final, names, directions)
  if base_final:
    L += [f"After regular distillation, against the regular-distilled baseline `{base_final.arch}` ("
          + ", ".join(f"{n} {_pm(base_final, n)}" for n in names) + "): dominating it beyond the noise: "
          f"**{', '.join(fin_beyond) or 'none'}**; noise-blind: {', '.join(fin_raw) or 'none'}."
          + (" Latencies here are those re-measured together before the finals." if remeasured else ""), ""]
  fin_over_ckpt, fin_over_ckpt_raw = dominating_baseline(others, checkpoint, names, directions)
  if checkpoint and fin:
    L += [f"Against the baseline checkpoint `{checkpoint.arch}`: finals dominating it beyond the noise: "
          f"**{', '.join(fin_over_ckpt) or 'none'}**; noise-blind: {', '.join(fin_over_ckpt_raw) or 'none'}.", ""]
  if finals:
    L += ["| arch | status | mlm_accuracy | teacher_agreement | nsp_accuracy | steps | orbax checkpoint | HF MobileBERT |",
          "|---|---|---|---|---|---|---|---|"]
    for f in finals:
      m = f["metrics"] or {}
      L.append(f"| `{f['arch']}` | {f['status']} | {_metric(m, 'mlm_accuracy')} | {_metric(m, 'teacher_agreement')} | "
               f"{_metric(m, 'nsp_accuracy')} | {_fmt(m.get('steps'))} | {_rel(f['checkpoint'], run_dir)} | "
               f"{_rel(f['hf_dir'], run_dir)} |")
      if f["error"]:
        L.append(f"\n    {f['error'].splitlines()[0]}\n")
  else:
    L.append("None yet (config `final.count`).")
  return L, fin_beyond, fin_raw, fin_over_ckpt


def trials_table(rows: list[Trial], names) -> list[str]:
  """Every trial, one row each: its objectives, measurement, screening and times."""
  L = ["", "## Trials", "",
       "| id | arch | role | status | " + " | ".join(names) + " | nsp_accuracy | latency ms (paired (alone), "
       "median (p90) or estimate) | peak mem MB | params | GFLOPs | measure s | distill s | note |",
       "|" + "---|" * (len(names) + 12)]
  for r in rows:
    mm, dd = r.measurement or {}, r.distill or {}
    obj = r.objectives or {}
    note = (r.error or "").splitlines()[0][:120] if r.error else ""
    peak = mm.get("peak_memory_bytes")
    L.append(f"| {r.id} | `{r.arch}` | {r.role} | {r.status} | "
             + " | ".join(_pm(r, n) if n in obj else "" for n in names)
             + f" | {_metric(dd, 'nsp_accuracy')} | {_measured_latency(mm)} | "
             f"{_fmt(peak / 1e6 if peak else None)} | {r.screening['params']:,} | "
             f"{_fmt(r.screening['flops'] / 1e9)} | {_fmt(r.measure_s, 3)} | {_fmt(r.distill_s, 3)} | {note} |")
  return L


def time_and_worker_lines(rows: list[Trial], split: dict | None, per_worker: list[dict]) -> list[str]:
  """Where a trial's time goes and, for a parallel search, what each worker did."""
  L = []
  if split:
    L += ["", "## Where a trial's time goes", "",
          f"Mean over {split['trials']} trained trials, seconds: designer {_fmt(split['designer_s'], 3)}, measurement "
          f"{_fmt(split['measure_s'], 3)}, distillation setup {_fmt(split['distill_setup_s'], 3)}, compilation "
          f"{_fmt(split['distill_compile_wall_s'], 3)}, training steps {_fmt(split['distill_train_steps_s'], 3)}, "
          f"checkpoints {_fmt(split['distill_checkpoint_s'], 3)}, evaluation {_fmt(split['distill_eval_s'], 3)}; "
          f"total {_fmt(split['total_s'], 3)}. Training steps are {100 * split['train_steps_share']:.0f}% of a trial."]
  if per_worker:
    L += ["", "## Workers", "", "Trials finished per worker and the share of the search's span (first start to last "
          "finish) it spent on them; takeovers are trials claimed again after a lease ran out.", "",
          "| worker | trials | busy s | utilization | in flight |", "|---|---|---|---|---|"]
    for w in per_worker:
      L.append(f"| {w['worker']} | {w['trials']} | {_fmt(w['busy_s'], 3)} | {100 * w['utilization']:.0f}% | "
               f"{', '.join(w['in_flight']) or ''} |")
    takeovers = [r.arch for r in rows if (r.attempts or 0) > 1]
    L += ["", f"Takeovers: {', '.join(f'`{a}`' for a in takeovers) or 'none'}."]
  return L


def write_report(run_dir: str, store: TrialStore | None = None, out_dir: str | None = None) -> dict[str, Any]:
  """Rebuilds report.md and pareto.png in `out_dir` (default `run_dir`) from the run's trial store
  (opened read-only when not given); returns the summary."""
  out_dir = out_dir or run_dir
  if not os.access(_existing(out_dir), os.W_OK):
    raise PermissionError(f"{out_dir} is read-only: give the report another place (`ad report RUN_DIR --out DIR`)")
  os.makedirs(out_dir, exist_ok=True)
  own = store is None
  store = store or TrialStore(run_dir, readonly=True)
  try:
    names, directions, reference, record = _spec(store)
    rows, finals, finetunes = store.trials(), store.finals(), store.finetunes()
    remeasured = store.get_meta(REMEASURED_KEY)
    calibrated = store.get_meta(calibration.CALIBRATION_KEY)
  finally:
    if own:
      store.close()
  reference = hypervolume_reference(record["config"]["search"]["objectives"], reference, rows)
  ref_min = pareto.to_min([reference], directions)[0]
  ok, mask = front(rows, names, directions)
  y = pareto.to_min([[r.objectives[n] for n in names] for r in ok], directions) if ok else np.zeros((0, len(names)))
  hv_hist = pareto.hypervolume_history(y, ref_min) if ok else np.zeros(0)
  baseline = next((r for r in rows if r.role == "baseline"), None)
  dominating, dominating_raw = dominating_baseline(ok, baseline, names, directions)
  checkpoint = next((r for r in rows if r.role == CHECKPOINT_ROLE), None)
  over_checkpoint, over_checkpoint_raw = dominating_baseline(ok, checkpoint, names, directions)
  cfg = record["config"]
  target = settings.search_settings_from(settings.record_config(cfg)["search"]).measure.target
  drawn = plot(os.path.join(out_dir, "pareto.png"), rows, names, directions,
               latency_note=f"estimated by XLA's TPU cost model ({target}), not measured"
       if target.startswith("tpu:") else "")

  counts = {st: sum(1 for r in rows if r.status == st) for st in ("ok", "failed", "infeasible", "running", "queued")}
  L = [f"# Search report: {os.path.basename(os.path.normpath(run_dir))}", "",
       f"Designer **{record['designer']}**, seed {cfg['search']['seed']}, {cfg['model']['num_blocks']}-block students, "
       f"teacher `{cfg['teacher']['source'] or 'MiniLM-L6-H384 (packaged)'}`, {latency_source(cfg)}. Accuracy proxy: "
       f"**{PROXY_WORDS[cfg['search'].get('proxy', 'flash')]}**.", "",
       "Objectives: " + ", ".join(f"`{n}` ({'maximize' if d == 'max' else 'minimize'}, reference {_fmt(r)})"
                                  for n, d, r in zip(names, directions, reference)) + ".", "",
       f"Trials: {len(rows)} ({counts['ok']} ok, {counts['failed']} failed, {counts['infeasible']} infeasible, "
       f"{counts['running'] + counts['queued']} interrupted or in flight). Hypervolume of the search trials: "
       f"**{_fmt(float(hv_hist[-1]) if len(hv_hist) else 0.0, 6)}**.", ""]
  if baseline:
    L += [f"Baseline `{baseline.arch}` (MobileBERT-shaped, evaluated like every trial): "
          + (", ".join(f"{n} {_pm(baseline, n)}" for n in names) if baseline.status == "ok"
             else baseline.status) + ".", "",
          f"Trials that dominate it beyond the noise (better by more than 2 standard errors of the difference in "
          f"every objective): **{', '.join(dominating) or 'none'}**. Noise-blind Pareto dominance (for comparison): "
          f"{', '.join(dominating_raw) or 'none'}.", ""]
  if checkpoint:
    L += [f"Baseline checkpoint `{checkpoint.arch}` ({checkpoint.workdir}; "
          f"{checkpoint.screening['num_blocks']} blocks; scored as it is, no distillation): "
          + (", ".join(f"{n} {_pm(checkpoint, n)}" for n in names) if checkpoint.status == "ok"
             else checkpoint.status) + f". Trials that dominate it beyond the noise: "
          f"**{', '.join(over_checkpoint) or 'none'}**; noise-blind: {', '.join(over_checkpoint_raw) or 'none'}.", ""]
  L += ["![Pareto front](pareto.png)", "", "Values are given as value ± one standard error; the plot's bars are 2 SE.",
        "", "## Pareto set", "",
        "| arch | " + " | ".join(names) + " | params | trial |", "|---|" + "---|" * (len(names) + 2)]
  for r, m in zip(ok, mask):
    if m:
      L.append(f"| `{r.arch}` | " + " | ".join(_pm(r, n) for n in names)
               + f" | {r.screening['params']:,} | {r.id} |")
  fin_lines, fin_beyond, fin_raw, fin_over_ckpt = finals_section(finals, rows, names, directions, remeasured,
                                                               baseline, checkpoint, run_dir)
  L += fin_lines
  L += trials_table(rows, names)
  graded = calibration.agreement(calibration.students(rows, finals, calibrated))
  if "mlm_accuracy" in names and graded["count"] >= 2:  # (before the finals: none yet)
    L += calibration.report_lines(graded, PROXY_WORDS[settings.record_config(cfg)["search"]["proxy"]])
  L += finetune_table(finetunes, finals, rows, baseline)
  L += paired_latency_lines(rows, remeasured)
  split, per_worker = time_split(rows), worker_utilization(rows)
  L += time_and_worker_lines(rows, split, per_worker)
  L += ["", f"Hypervolume after each search trial: {', '.join(_fmt(float(h), 4) for h in hv_hist)}", "",
        "Profiles: `traces/<arch>/` (open with TensorBoard's profile plugin); trial runs: `trials/<arch>/` "
        "(losses.jsonl, tb/); search scalars: `tb/`.", ""]
  files.write_text(os.path.join(out_dir, "report.md"), "\n".join(L))
  return dict(trials=len(rows), pareto_axes=[drawn["x_label"], drawn["y_label"]], status_counts=counts,
              hypervolume=float(hv_hist[-1]) if len(hv_hist) else 0.0,
              hypervolume_history=[float(h) for h in hv_hist],
              pareto=[_with_se(r, names) for r, m in zip(ok, mask) if m],
              baseline=_with_se(baseline, names) if baseline else None,
              checkpoint=_with_se(checkpoint, names) if checkpoint else None,
              dominating_checkpoint=over_checkpoint, finals_dominating_checkpoint=fin_over_ckpt,
              dominating_baseline=dominating, dominating_baseline_noise_blind=dominating_raw,
              finals_dominating_baseline=fin_beyond, finals_dominating_baseline_noise_blind=fin_raw,
              time_split=split, workers=per_worker, remeasured=remeasured, calibration=graded,
              finetune=[dict(model=f["model"], task=f["task"], status=f["status"],
                             **({k: f["result"]["test"][k] for k in ("metric", "value", "se", "ci95")}
                                if f["status"] == "ok" else {})) for f in finetunes],
              finals=[dict(arch=f["arch"], status=f["status"], hf_dir=f["hf_dir"], checkpoint=f["checkpoint"],
                           mlm_accuracy=(f["metrics"] or {}).get("mlm_accuracy"),
                           mlm_accuracy_se=(f["metrics"] or {}).get("mlm_accuracy_se")) for f in finals])


def worker_utilization(rows: list[Trial]) -> list[dict]:
  """Per worker of a parallel search: trials finished, seconds spent on them (the last claim's
  run of each), and that as a share of the search's span; [] for a sequential search."""
  mine = [r for r in rows if r.worker]
  if not mine:
    return []
  done = [r for r in mine if r.finished]
  span = (max(r.finished for r in done) - min(r.started for r in mine)) if done else 0.0
  out = []
  for w in sorted({r.worker for r in mine}):
    theirs = [r for r in done if r.worker == w]
    busy = sum(r.finished - r.started for r in theirs)
    out.append(dict(worker=w, trials=len(theirs), busy_s=busy, utilization=busy / span if span > 0 else 0.0,
                    in_flight=[r.arch for r in mine if r.worker == w and r.status == "running"]))
  return out


def finetune_table(finetunes: list[dict], finals: list[dict], rows: list[Trial], baseline: Trial | None) -> list[str]:
  """Report lines: the downstream scores of the finals and the teacher (003 Table 3's layout):
  pre-training MLM accuracy, each task's test score +- its bootstrap SE [95% interval], encoder
  parameters, latency."""
  if not finetunes:
    return []
  tasks = list(dict.fromkeys(f["task"] for f in finetunes))
  models = list(dict.fromkeys(f["model"] for f in finetunes))
  by = {(f["model"], f["task"]): f for f in finetunes}
  fin = {f["arch"]: f["metrics"] or {} for f in finals}
  trial = {r.arch: r for r in rows if r.status == "ok"}
  any_final = next(iter(m for m in fin.values() if m), {})
  L = ["", "## Downstream fine-tuning (003 Table 3 layout)", "",
       "Test scores with the best-validation parameters; ± one bootstrap standard error over test examples, "
       "[95% interval].", "",
       "| model | role | pre-training MLM accuracy | " + " | ".join(f"{t} ({_task_metric(by, t)})" for t in tasks)
       + " | encoder params | latency ms |", "|---|---|---|" + "---|" * len(tasks) + "---|---|"]
  for m in models:
    if m == "teacher":
      role, mlm = "teacher", _fmt(any_final.get("teacher_mlm_accuracy"))
      se = any_final.get("teacher_mlm_accuracy_se")
    else:
      role = "baseline (regular-distilled)" if baseline and m == baseline.arch else "final (regular-distilled)"
      mlm, se = _fmt(fin.get(m, {}).get("mlm_accuracy")), fin.get(m, {}).get("mlm_accuracy_se")
    cells = []
    for t in tasks:
      f = by.get((m, t))
      if f is None or f["status"] != "ok":
        cells.append(f["status"] if f else "")
        continue
      r, em = f["result"]["test"], f["result"].get("test_exact_match")  # SQuAD: F1, then exact match
      cells.append(f"{_fmt(r['value'])} ± {_fmt(r['se'], 2)} [{_fmt(r['ci95'][0])}, {_fmt(r['ci95'][1])}]"
                   + (f" (EM {_fmt(em['value'])} ± {_fmt(em['se'], 2)})" if em else ""))
    params = next((f["result"]["encoder_params"] for t in tasks if (f := by.get((m, t))) and f["status"] == "ok"), None)
    lat = (trial[m].objectives or {}).get("latency_ms") if m in trial else None
    L.append(f"| `{m}` | {role} | {mlm}{f' ± {_fmt(se, 2)}' if se else ''} | " + " | ".join(cells)
             + f" | {f'{params:,}' if params else ''} | {_fmt(lat)} |")
  return L


def _task_metric(by: dict, task: str) -> str:
  return next((f["result"]["metric"] for (m, t), f in by.items() if t == task and f["status"] == "ok"), "")


def _with_se(row: Trial, names) -> dict:
  out = dict(arch=row.arch, status=row.status, **(row.objectives or {}))
  out.update({f"{n}_se": se_of(row, n) for n in names if row.objectives})
  return out
