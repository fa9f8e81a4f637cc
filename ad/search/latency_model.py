"""A learned latency predictor (AutoTinyBERT, 004 section 3.5: a feed-forward network fitted to
inference times measured on the target device, after HAT): an MLP from an architecture's numbers
to its measured latency, trained on measurements a search or the tabular benchmark already made,
and its error on architectures it was not trained on.

Inputs: hidden, bottleneck, heads, intermediate size, stacked FFNs and block count, each divided
by its largest value in the training data (kept with the model, so a prediction outside that range
is an extrapolation the caller can see: `Predictor.covers`). Target: log latency (a latency's
noise is multiplicative). The model is an ensemble of small MLPs (two hidden layers of 64, ReLU)
fitted full-batch with Adam from different seeds; the prediction is the mean of their log outputs.

`held_out_error` is k-fold cross-validation over architectures: every architecture's latency is
predicted by a model fitted without it. It reports the mean absolute percentage error with its
standard error over architectures, the RMS log error (a predicted objective's relative standard
error in `ad search`), the rank agreement (Kendall tau) of predicted and measured
latency, and the same for a one-variable baseline (log latency linear in log FLOPs) when FLOPs are
given, so a user sees whether the network earns its keep.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ad import space as space_lib
from ad.search import store as store_lib

HIDDEN = (64, 64)


def features(archs: Sequence[space_lib.Arch], num_blocks: Sequence[int]) -> np.ndarray:
  """[N, 6]: hidden, bottleneck, heads, intermediate, FFNs, blocks (raw values, float64)."""
  if len(archs) != len(num_blocks):
    raise ValueError(f"{len(archs)} architectures but {len(num_blocks)} block counts")
  return np.asarray([[a.hidden, a.bottleneck, a.heads, a.intermediate, a.num_ffn, k]
                     for a, k in zip(archs, num_blocks)], np.float64).reshape(-1, 6)


def _mlp_init(key, sizes):
  params = []
  for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    params.append(dict(w=jax.random.normal(k, (n_in, n_out)) * math.sqrt(2.0 / n_in), b=jnp.zeros(n_out)))
  return params


def _mlp(params, x):
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["w"] + layer["b"])
  return (x @ params[-1]["w"] + params[-1]["b"])[..., 0]


@dataclasses.dataclass
class Predictor:
  scale: np.ndarray  # [6] the training data's largest value per input
  y_mean: float  # mean log latency of the training data
  y_std: float
  members: list  # MLP parameters, one per seed

  def covers(self, x: np.ndarray) -> np.ndarray:
    """[N] bool: each row lies within the training data's range (no input above its largest value)."""
    return np.all(np.asarray(x) <= self.scale + 1e-9, axis=-1)

  def predict_ms(self, x: np.ndarray) -> np.ndarray:
    """Features [N, 6] (`features`) -> predicted latency in ms [N]."""
    z = jnp.asarray(np.asarray(x, np.float64) / self.scale, jnp.float32)
    logs = np.mean([np.asarray(_mlp(m, z)) for m in self.members], axis=0)
    return np.exp(logs * self.y_std + self.y_mean)


@functools.partial(jax.jit, static_argnums=(3,))
def _train(key, z, t, steps: int, lr, weight_decay):
  """One MLP fitted full-batch to targets t [N] from inputs z [N, 6] (one compiled program per data
  shape, shared by every fit and fold)."""
  tx = optax.adamw(optax.cosine_decay_schedule(lr, steps), weight_decay=weight_decay)
  params = _mlp_init(key, (z.shape[1],) + HIDDEN + (1,))

  def step(carry, _):
    params, opt = carry
    loss, g = jax.value_and_grad(lambda p: jnp.mean((_mlp(p, z) - t) ** 2))(params)
    updates, opt = tx.update(g, opt, params)
    return (optax.apply_updates(params, updates), opt), loss
  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return params


def fit(x: np.ndarray, latency_ms: np.ndarray, *, seeds: int = 3, steps: int = 2000, lr: float = 3e-3,
        weight_decay: float = 1e-4) -> Predictor:
  """An ensemble of `seeds` MLPs fitted to log(latency_ms) on features x [N, 6]."""
  x, latency_ms = np.asarray(x, np.float64), np.asarray(latency_ms, np.float64)
  if len(x) < 2 or len(x) != len(latency_ms):
    raise ValueError(f"a latency model needs at least 2 measured architectures with one latency each; got "
                     f"{len(x)} rows and {len(latency_ms)} latencies")
  if not np.all(np.isfinite(latency_ms)) or np.any(latency_ms <= 0):
    raise ValueError(f"latencies must be positive and finite; got {latency_ms[~(np.isfinite(latency_ms) & (latency_ms > 0))][:5]}")
  scale = np.maximum(x.max(0), 1e-9)
  y = np.log(latency_ms)
  y_mean, y_std = float(y.mean()), float(max(y.std(), 1e-6))
  z = jnp.asarray(x / scale, jnp.float32)
  t = jnp.asarray((y - y_mean) / y_std, jnp.float32)
  members = [jax.device_get(_train(jax.random.key(s), z, t, steps, lr, weight_decay)) for s in range(seeds)]
  return Predictor(scale=scale, y_mean=y_mean, y_std=y_std, members=members)


def held_out_error(x: np.ndarray, latency_ms: np.ndarray, *, folds: int = 5, seed: int = 0,
                   flops: np.ndarray | None = None, **fit_kw) -> dict:
  """k-fold cross-validation over architectures (see the module docstring). Returns the held-out
  predictions, the folds (each architecture's fold index) and the error summaries."""
  x, latency_ms = np.asarray(x, np.float64), np.asarray(latency_ms, np.float64)
  n = len(x)
  if n < 2 * folds:
    raise ValueError(f"{folds}-fold cross-validation needs at least {2 * folds} measured architectures; got {n}")
  fold = np.random.default_rng(seed).permutation(np.arange(n) % folds)
  predicted = np.empty(n)
  baseline = np.empty(n) if flops is not None else None
  for f in range(folds):
    train, test = fold != f, fold == f
    predicted[test] = fit(x[train], latency_ms[train], **fit_kw).predict_ms(x[test])
    if baseline is not None:
      slope, intercept = np.polyfit(np.log(flops[train]), np.log(latency_ms[train]), 1)
      baseline[test] = np.exp(intercept + slope * np.log(flops[test]))
  out = dict(architectures=n, folds=folds, seed=seed, fold=fold.tolist(), predicted_ms=predicted.tolist(),
             mlp=_errors(predicted, latency_ms))
  if baseline is not None:
    out["flops_baseline"] = _errors(baseline, latency_ms)
    out["flops_baseline_predicted_ms"] = baseline.tolist()
  return out


def _errors(predicted: np.ndarray, measured: np.ndarray) -> dict:
  ape = np.abs(predicted - measured) / measured
  from scipy.stats import kendalltau
  return dict(mape=float(ape.mean()), mape_se=float(ape.std(ddof=1) / math.sqrt(len(ape))),
              median_ape=float(np.median(ape)), max_ape=float(ape.max()),
              # the typical relative error of one prediction: a predicted objective's standard error
              rms_log_error=float(np.sqrt(np.mean(np.log(predicted / measured) ** 2))),
              kendall_tau=float(kendalltau(predicted, measured).statistic))


# ---------------------------------------------------------------------------------------------
# Where measurements come from: a search's trial store, or a CSV such as the tabular benchmark's.

def from_measurements(measurements: Sequence[dict]) -> dict:
  """Harness measurements (each with arch, num_blocks, latency_ms_median, flops) -> arrays:
  names, features [N, 6], latency_ms [N], flops [N]. A later measurement of the same architecture
  and depth replaces an earlier one."""
  by_key = {}
  for i, m in enumerate(measurements):
    where = m.get("_where") or f"the measurement of {m.get('arch', '?')}"
    for k in ("arch", "num_blocks", "latency_ms_median", "flops"):
      if m.get(k) in (None, ""):
        raise ValueError(f"{where} lacks {k!r}; expected the harness's fields (profiling/harness.py measure_arch)")
    try:
      arch = space_lib.Arch.parse(m["arch"])
    except ValueError as e:
      raise ValueError(f"{where}: column 'arch': {e}") from None
    values = {k: _positive(m, k, where) for k in ("num_blocks", "latency_ms_median", "flops")}
    by_key[(arch.name, int(values["num_blocks"]))] = (arch, values)
  rows = list(by_key.values())
  return dict(names=[f"{a.name}x{int(v['num_blocks'])}" for a, v in rows],
              x=features([a for a, _ in rows], [int(v["num_blocks"]) for _, v in rows]),
              latency_ms=np.asarray([v["latency_ms_median"] for _, v in rows]),
              flops=np.asarray([v["flops"] for _, v in rows]))


def _positive(m: dict, key: str, where: str) -> float:
  """m[key] as a finite positive number, or an error naming the row and column."""
  try:
    value = float(m[key])
  except (TypeError, ValueError):
    raise ValueError(f"{where}: column {key!r} is {m[key]!r}, expected a number") from None
  if not np.isfinite(value) or value <= 0:
    raise ValueError(f"{where}: column {key!r} is {value}, expected a finite positive number")
  return value


def load_measurements(source: str, store_url: str | None = None) -> list[dict]:
  """The measurements in `source`: a search's run directory (its trial store, or `store_url`) or
  a CSV with the harness's columns (arch, num_blocks, latency_ms_median, flops), e.g.
  experiments/results/tabular.csv."""
  import csv
  if os.path.isdir(source) or store_url:
    store = store_lib.TrialStore(source, url=store_url, readonly=True)
    try:
      return [dict(t.measurement, _where=f"{store.path} trial {t.id} ({t.arch}), measurement")
              for t in store.trials() if t.measurement]
    finally:
      store.close()
  if not os.path.isfile(source):
    raise FileNotFoundError(f"{source}: expected a search's run directory or a CSV of measurements")
  with open(source, newline="") as f:
    rows = list(csv.DictReader(f))
  need = {"arch", "num_blocks", "latency_ms_median", "flops"}
  if not rows or not need <= set(rows[0]):
    raise ValueError(f"{source}: expected a CSV with the columns {sorted(need)}; got {sorted(rows[0]) if rows else 'no rows'}")
  return [dict(r, _where=f"{source} row {i}") for i, r in enumerate(rows, 2)]  # row 1 is the header


# ---------------------------------------------------------------------------------------------
# The predicted-latency objective of `ad search` (search.objectives name "predicted_latency_ms").

_FITTED: dict = {}


def predictor_for(source: str) -> tuple[Predictor, dict]:
  """The predictor fitted on every measurement in `source` and its held-out error there, once
  per process (and again when `source` changes)."""
  key = (os.path.realpath(source), os.path.getmtime(source))
  if key not in _FITTED:
    data = from_measurements(load_measurements(source))
    _FITTED[key] = (fit(data["x"], data["latency_ms"]), held_out_error(data["x"], data["latency_ms"]))
  return _FITTED[key]


def predict(arch: space_lib.Arch, num_blocks: int, source: str) -> dict:
  """A trial's predicted latency, its standard error (the value times the held-out RMS log error)
  and whether the architecture lies outside the measured range."""
  predictor, err = predictor_for(source)
  x = features([arch], [num_blocks])
  value = float(predictor.predict_ms(x)[0])
  return dict(predicted_latency_ms=value, predicted_latency_ms_se=value * err["mlp"]["rms_log_error"],
              predicted_latency_extrapolated=not bool(predictor.covers(x)[0]))
