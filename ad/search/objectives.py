"""The search's objectives: which it knows, how a config names them, their values and standard
errors for one trial, the closed-form screening that prunes the space before training, and the
designer's view of the store's rows."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ad import space as space_lib
from ad.models import student as student_lib
from ad.search import latency_model, pareto, report as report_lib, settings
from ad.search.measurement import latency_of
from ad.search.store import IN_FLIGHT, Trial


# Objectives the search knows how to read from a trial; those in TRAINED need flash distillation
# (ad/distill/evaluation.py scores them, each with its standard error as `<name>_se`).
TRAINED = ("mlm_accuracy", "mlm_cross_entropy", "teacher_agreement", "nsp_accuracy")


MEASURED = {"latency_ms": "latency_ms_median", "peak_memory_bytes": "peak_memory_bytes",
            "throughput_per_s": "throughput_per_s", "flops_utilization": "flops_utilization"}


# Measured objectives whose noise is the latency's: the 95% CI of the median, as a relative half-width.
TIMED = ("latency_ms", "throughput_per_s", "flops_utilization")


SCREENED = ("params", "flops")


# Predicted before anything runs by the learned latency predictor (ad/search/latency_model.py),
# fitted on the measurements in search.latency_model.source; its noise is the held-out error.
PREDICTED = ("predicted_latency_ms",)


def objective_spec(search_cfg) -> tuple[list[str], list[str], list[float]]:
  """(names, directions, reference point) from config.search.objectives, checked."""
  names, directions, reference = [], [], []
  objectives = search_cfg.objectives
  if isinstance(objectives, (str, bytes)) or not hasattr(objectives, "__len__"):
    raise ValueError(f"search.objectives={objectives!r}: expected a list of dicts with name, direction, reference")
  for i, o in enumerate(objectives):
    if not hasattr(o, "keys") or not {"name", "direction", "reference"} <= set(o.keys()):
      raise ValueError(f"search.objectives[{i}]={o!r}: expected a dict with keys name, direction and reference, e.g. "
                       "dict(name='mlm_accuracy', direction='max', reference=0.0)")
    name, direction = o["name"], o["direction"]
    if name not in TRAINED + tuple(MEASURED) + SCREENED + PREDICTED:
      raise ValueError(f"search.objectives[{i}].name={name!r}: expected one of "
                       f"{list(TRAINED) + list(MEASURED) + list(SCREENED) + list(PREDICTED)}")
    if direction not in pareto.DIRECTIONS:
      raise ValueError(f"search.objectives[{i}].direction={direction!r}: expected one of {pareto.DIRECTIONS}")
    ratio = o.get("reference_ratio")
    if ratio is not None and (name != "latency_ms" or isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                              or not ratio > 0):
      raise ValueError(f"search.objectives[{i}].reference_ratio={ratio!r}: expected a positive number on the "
                       "latency_ms objective (its reference point as a multiple of the reference architecture's "
                       "latency while latencies are paired)")
    names.append(name)
    directions.append(direction)
    reference.append(float(o["reference"]))
  if len(set(names)) != len(names) or len(names) < 1:
    raise ValueError(f"search.objectives: names {names} must be distinct and non-empty")
  if set(PREDICTED) & set(names):
    source = settings.search_settings_from(search_cfg).latency_model.source
    if not source or not os.path.exists(source):
      raise ValueError(f"search.latency_model.source={source!r}: the objective predicted_latency_ms needs measured "
                       "architectures to learn from: a search's run directory or a CSV of measurements (e.g. "
                       "experiments/results/tabular.csv)")
  return names, directions, reference


def screening(arch: space_lib.Arch, model_cfg, seq: int) -> dict[str, Any]:
  """Closed-form size and inference cost of one student (no model is built).

  flops: 2 * (encoder weight parameters) * tokens + the attention score/context matmuls
  (4 * T^2 * bottleneck per block), batch 1: the forward's multiply-adds, which
  profiling/proxy_correlation measured to rank latency well on CPU.
  """
  return screening_of(student_lib.config_from_dict(arch, model_cfg), seq)


def screening_of(cfg, seq: int) -> dict[str, Any]:
  """`screening` of a StudentConfig."""
  arch = cfg.arch
  counts = student_lib.param_counts(cfg)
  weights = counts["encoder"]  # biases and norms add a negligible 2*T*(...) each
  flops = 2 * weights * seq + 4 * seq * seq * arch.bottleneck * cfg.num_blocks
  return dict(params=int(counts["paper_total"]), encoder_params=int(counts["encoder"]), flops=int(flops),
              num_blocks=cfg.num_blocks)


def feasible_candidates(space: space_lib.DesignSpace, model_cfg, constraints, seq: int):
  """(feasible archs, {arch name: why pruned}) under the constraints known before training."""
  keep, pruned = [], {}
  for a in space.archs():
    s = screening(a, model_cfg, seq)
    if constraints.max_params and s["params"] > constraints.max_params:
      pruned[a.name] = f"params {s['params']:,} > constraints.max_params {constraints.max_params:,}"
    elif constraints.max_flops and s["flops"] > constraints.max_flops:
      pruned[a.name] = f"flops {s['flops']:.3g} > constraints.max_flops {constraints.max_flops:.3g}"
    else:
      keep.append(a)
  return keep, pruned


class MissingObjectiveError(ValueError):
  """A trial's results lack an objective the search optimizes."""


def objective_values(names, distill: dict | None, measurement: dict | None,
                     screen: dict) -> tuple[dict[str, float], dict[str, float]]:
  """(values, standard errors) of the objectives `names` for one trial.

  Trained objectives carry the evaluation's sequence-level standard error; timed ones the 95%
  confidence interval of the median latency turned into a standard error (half-width / 1.96);
  exact ones (params, FLOPs, peak memory) 0.
  """
  vals, ses = {}, {}
  for n in names:
    if n in TRAINED:
      if n not in (distill or {}) or f"{n}_se" not in distill:
        raise MissingObjectiveError(f"the trial's evaluation gave no {n} (an objective of search.objectives), only "
                         f"{sorted(distill or {})}")
      vals[n], ses[n] = float(distill[n]), float(distill[f"{n}_se"])
    elif n in PREDICTED:
      vals[n], ses[n] = float(screen[n]), float(screen[f"{n}_se"])
    elif n in TIMED:  # all three follow the latency, paired where it was
      latency, rel_ci = latency_of(measurement)
      if n == "latency_ms":
        vals[n] = latency
      elif n == "throughput_per_s":
        vals[n] = measurement["batch"] * 1e3 / latency
      else:  # the utilization at the paired latency instead of the median alone
        vals[n] = float(measurement["flops_utilization"]) * float(measurement["latency_ms_median"]) / latency
      ses[n] = abs(vals[n]) * rel_ci / 1.96
    elif n in MEASURED:
      vals[n], ses[n] = float(measurement[MEASURED[n]]), 0.0
    else:
      vals[n], ses[n] = float(screen[n]), 0.0
  return vals, ses


def with_prediction(screen: dict, arch: space_lib.Arch, names, cfg) -> dict:
  """`screen` plus the predicted latency when an objective asks for it."""
  if not set(PREDICTED) & set(names):
    return screen
  return dict(screen, **latency_model.predict(arch, screen["num_blocks"],
                                                    settings.search_settings(cfg).latency_model.source))


def nonfinite_objectives(objectives: dict | None) -> str | None:
  """The error of objectives with a NaN or infinite value (the trial fails), else None."""
  bad = [n for n, v in (objectives or {}).items() if not np.isfinite(v)]
  return f"non-finite objective(s) {', '.join(f'{n}={objectives[n]}' for n in bad)}" if bad else None


def checked_objectives(names, distill: dict | None, measurement: dict | None,
                       screen: dict) -> tuple[dict | None, dict | None, str | None]:
  """(values, standard errors, None) of a finished trial, or (None, None, the error) when its
  results lack an objective or hold a non-finite one: such a trial fails, and never reaches the
  designer or the Pareto set (the error names the values; the store holds finite numbers only)."""
  try:
    objectives, ses = objective_values(names, distill, measurement, screen)
  except MissingObjectiveError as e:
    return None, None, str(e)
  error = nonfinite_objectives(objectives)
  return (None, None, error) if error else (objectives, ses, None)


def modelled_constraints(cfg) -> list[float]:
  """The limits BO models rather than only filters (search.bo.constraints = 'model'): those known
  only once a trial runs. Today that is constraints.max_latency_ms, a measurement; the params and
  FLOPs limits are closed-form and prune the space before the search (feasible_candidates). Only the
  BO designer uses them; the others ignore them."""
  limit = float(cfg.constraints.max_latency_ms)
  return [limit] if limit and settings.search_settings(cfg).bo.constraints == "model" else []


def designer_trials(rows: list[Trial], names, constraints: Sequence[float] = ()) -> list[dict]:
  """Store rows -> the designer's view (arch, status, values and standard errors in objective
  order). Trials in flight are the designer's pending points, not observations; failed ones are
  reported as failed (never as an observation of the GP). With modelled `constraints` (the latency
  limit), every measured trial, feasible or not, also carries its latency and standard error."""
  out = []
  for r in rows:
    if r.status in IN_FLIGHT or r.role == report_lib.CHECKPOINT_ROLE:  # not a student of the space
      continue
    t = dict(arch=r.architecture, status=r.status)
    if r.status == "ok":
      t["values"] = [r.objectives[n] for n in names]
      se = r.objective_se or {}
      t["noise"] = [se.get(n) for n in names]  # None where an older store has no standard error
    if constraints and r.measurement:
      latency, rel_ci95 = latency_of(r.measurement)
      t.update(constraints=[latency], constraint_noise=[latency * rel_ci95 / 1.96])
    out.append(t)
  return out
