"""Standard errors of the evaluation's ratios and of differences between two evaluations, and the
downstream-task metrics with their bootstrap noise, and how two rankings of the same students
agree (numpy; scipy for Spearman and Kendall).

An evaluation score is a ratio over sequences: accuracy = sum_i c_i / sum_i n_i, with c_i the
correct masked tokens and n_i the masked tokens of sequence i. Tokens of one sequence are not
independent (one hard passage makes several misses), so the binomial standard error
sqrt(p (1 - p) / N) understates the noise. The standard error reported everywhere is the
sequence-level (cluster) one: the delta-method variance of the ratio estimator,

  se^2 = m / (m - 1) * sum_i (c_i - p n_i)^2 / (sum_i n_i)^2,

which is what a bootstrap over sequences estimates (tests check both against each other). The
binomial one is kept beside it for reference. Two students scored on the same evaluation set
are compared by the same formula applied to the per-sequence differences c_i^A - c_i^B (a
paired test: the shared hard passages cancel).

The optimizer service (numpy 1.x) never imports this; the report and the search do.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def ratio(num, den) -> float:
  """sum(num) / sum(den)."""
  d = float(np.sum(den))
  if d <= 0:
    raise ValueError("ratio over an empty evaluation (no masked tokens or no sequences)")
  return float(np.sum(num)) / d


def ratio_se(num, den) -> float:
  """Sequence-level standard error of sum(num) / sum(den); num, den: [m] per sequence."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  m = len(num)
  if m < 2:
    return float("nan")
  p = ratio(num, den)
  return math.sqrt(m / (m - 1) * float(np.sum((num - p * den) ** 2))) / float(np.sum(den))


def binomial_se(p: float, n: int) -> float:
  """sqrt(p (1 - p) / n): the standard error if every token were independent."""
  return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


def bootstrap_se(num, den, resamples: int = 1000, seed: int = 0) -> float:
  """Bootstrap over sequences of sum(num) / sum(den) (the check of `ratio_se`)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(num), (resamples, len(num)))
  return float(np.std(num[idx].sum(1) / den[idx].sum(1), ddof=1))


def paired_difference(num_a, num_b, den) -> tuple[float, float]:
  """(ratio_a - ratio_b, its standard error) for two scores on the same sequences."""
  num_a, num_b = np.asarray(num_a, np.float64), np.asarray(num_b, np.float64)
  if num_a.shape != num_b.shape or num_a.shape != np.shape(den):
    raise ValueError(f"paired difference needs per-sequence counts of one evaluation set, got shapes "
                     f"{num_a.shape}, {num_b.shape}, {np.shape(den)}")
  d = num_a - num_b
  return ratio(d, den), ratio_se(d, den)


def difference_se(se_a: float, se_b: float) -> float:
  """Standard error of a difference of two independent estimates."""
  return math.sqrt(se_a ** 2 + se_b ** 2)


# ---------------------------------------------------------------------------------------------
# Agreement of two rankings of the same students (a proxy's against regular distillation's).

def kendall_tau(a, b) -> float:
  """Kendall's tau-b of two scorings of the same students."""
  from scipy import stats as sstats  # scipy: only where rankings are compared
  return float(sstats.kendalltau(a, b).statistic)


def pairwise_accuracy(a, b) -> float:
  """Fraction of pairs ordered the same by a and b (both strict the same way, or both tied)."""
  agree = total = 0
  for i, j in itertools.combinations(range(len(a)), 2):
    total += 1
    agree += int(np.sign(a[i] - a[j]) == np.sign(b[i] - b[j]))
  return agree / total


def bootstrap_interval(a, b, fn, resamples: int, seed: int) -> tuple[float, float]:
  """95% percentile interval of fn(a, b) over students resampled with replacement (resamples with
  fewer than 3 distinct students skipped; NaN, NaN when none is left, e.g. with 3 students)."""
  rng = np.random.default_rng(seed)
  a, b = np.asarray(a), np.asarray(b)
  vals = []
  for _ in range(resamples):
    idx = rng.integers(0, len(a), len(a))
    if len(set(idx.tolist())) < 3:
      continue
    v = fn(a[idx], b[idx])
    if np.isfinite(v):
      vals.append(v)
  if not vals:
    return float("nan"), float("nan")
  return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def resolved_pairs(scores, ses, per_sequence=None) -> list[tuple[int, int, int]]:
  """(i, j, sign of scores_i - scores_j) for the pairs whose scores differ by more than 2 standard
  errors of the difference: paired over the shared evaluation set where every student has its
  per-sequence counts (dicts with 'mlm_correct' and 'masked'), else unpaired."""
  out = []
  for i, j in itertools.combinations(range(len(scores) if scores is not None else len(per_sequence)), 2):
    if per_sequence is not None and per_sequence[i] and per_sequence[j]:
      d, se = paired_difference(per_sequence[i]["mlm_correct"], per_sequence[j]["mlm_correct"],
                                per_sequence[i]["masked"])
    else:
      d, se = scores[i] - scores[j], difference_se(ses[i], ses[j])
    if abs(d) > 2 * se:
      out.append((i, j, int(np.sign(d))))
  return out


def agreement_on(resolved: list[tuple[int, int, int]], proxy) -> int:
  """How many of the `resolved` pairs `proxy` orders the same way."""
  return sum(int(np.sign(proxy[i] - proxy[j]) == sign) for i, j, sign in resolved)


# ---------------------------------------------------------------------------------------------
# Downstream-task metrics (fine-tuning), each with its noise over examples.

def task_metric(name: str, labels, predictions) -> float:
  """accuracy | matthews (CoLA) | f1 (of class 1: MRPC, QQP) | spearman (STS-B; predictions are
  scores) over examples."""
  y, p = np.asarray(labels), np.asarray(predictions)
  if len(y) == 0 or y.shape != p.shape:
    raise ValueError(f"task metric {name}: need labels and predictions of one non-empty shape, got {y.shape}, "
                     f"{p.shape}")
  if name == "accuracy":
    return float(np.mean(y == p))
  if name == "spearman":
    from scipy.stats import spearmanr
    r = spearmanr(y, p).statistic
    return float(r) if np.isfinite(r) else 0.0
  tp, fp = float(np.sum((p == 1) & (y == 1))), float(np.sum((p == 1) & (y != 1)))
  fn, tn = float(np.sum((p != 1) & (y == 1))), float(np.sum((p != 1) & (y != 1)))
  if name == "f1":
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
  if name == "matthews":
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / den if den else 0.0
  raise ValueError(f"task metric {name!r}: expected accuracy, matthews, f1 or spearman")


def task_metric_with_noise(name: str, labels, predictions, resamples: int = 1000, seed: int = 0) -> dict:
  """The metric, its bootstrap standard error and 95% percentile interval over examples (for
  accuracy the bootstrap matches the binomial sqrt(p (1 - p) / n), reported beside it)."""
  y, p = np.asarray(labels), np.asarray(predictions)
  value = task_metric(name, y, p)
  idx = np.random.default_rng(seed).integers(0, len(y), (resamples, len(y)))
  boot = np.asarray([task_metric(name, y[i], p[i]) for i in idx])
  lo, hi = np.percentile(boot, [2.5, 97.5])
  out = dict(metric=name, value=value, se=float(np.std(boot, ddof=1)), ci95=[float(lo), float(hi)], examples=len(y))
  if name == "accuracy":
    out["binomial_se"] = binomial_se(value, len(y))
  return out


def mean_with_noise(name: str, values, resamples: int = 1000, seed: int = 0) -> dict:
  """The mean of per-example scores (SQuAD's exact match or F1) with its bootstrap standard error
  and 95% percentile interval over examples (task_metric_with_noise's layout)."""
  v = np.asarray(values, np.float64)
  if v.ndim != 1 or len(v) == 0:
    raise ValueError(f"{name}: need a non-empty 1-D array of per-example scores, got shape {v.shape}")
  idx = np.random.default_rng(seed).integers(0, len(v), (resamples, len(v)))
  boot = v[idx].mean(axis=1)
  lo, hi = np.percentile(boot, [2.5, 97.5])
  return dict(metric=name, value=float(v.mean()), se=float(np.std(boot, ddof=1)), ci95=[float(lo), float(hi)],
              examples=len(v))
