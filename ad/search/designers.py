"""Designers: who proposes the next architectures (003 section 3.2; baselines of 003 4.3 and 004).

Interface (docs/DESIGN.md): `update(trials)` hands over the whole history, `suggest(count, pending)`
returns `count` architectures that are neither evaluated nor pending. A trial is a dict with
`arch` (Arch), `status` ('ok', 'failed' or 'infeasible'), `values` ([M] objective values in
their own units, for 'ok') and optionally `noise` ([M] standard errors; the BO designer's GPs
weight each observation by it, the others ignore it), and where the BO designer models constraints
(search.bo.constraints = 'model') `constraints` and `constraint_noise` ([C] measured values and
standard errors, for 'ok' and 'infeasible'). Every designer is a function of (seed, history): it re-seeds from
the number of observations, so a resumed search makes the same suggestions as an uninterrupted
one and the same seed with the same observations gives the same suggestions.

- `TriesteDesigner`: one GP per objective + EHVI (HIPPO for batches) in the trieste service
  (ad/search/trieste_service.py), a separate process in the optimizer environment.
- `RandomDesigner`: uniform over the unevaluated feasible architectures (003 4.3).
- `EvolutionaryDesigner`: AutoTinyBERT's Algorithm 2 (004 appendix C): generations of S
  architectures; each child is drawn by roulette from the previous generation, mutated with
  probability pm, replaced by a fresh sample with probability pe.
- `FireflyDesigner`: the firefly algorithm (Yang 2010) used as a baseline in 003 4.3: a
  firefly moves towards every brighter one with attractiveness beta0 * exp(-gamma r^2) plus a
  random step, in the encoded space, and lands on the nearest free architecture.
The two baselines were single-objective in their papers; here brightness/fitness is
1 / Pareto rank (non-dominated sorting) within the population, so they search for the front.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from typing import Callable, Sequence

import numpy as np

from ad import space as space_lib
from ad.search import pareto, settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DESIGNERS = ("bo", "random", "evolutionary", "firefly")


class Candidates:
  """The feasible architectures of a search, in a fixed order, with their [N, D] encoding."""

  def __init__(self, archs: Sequence[space_lib.Arch], space: space_lib.DesignSpace):
    if not archs:
      raise ValueError("no feasible architecture: the constraints removed the whole design space")
    self.archs = list(archs)
    self.points = space.encode(self.archs)  # [N, D] in [0, 1]
    self.index = {a.name: i for i, a in enumerate(self.archs)}
    self.space = space

  def __len__(self) -> int:
    return len(self.archs)

  def indices(self, archs) -> list[int]:
    return [self.index[a.name] for a in archs if a.name in self.index]

  def free(self, trials: Sequence[dict], pending: Sequence) -> np.ndarray:
    """Indices of candidates neither evaluated (any status) nor pending."""
    taken = set(self.indices([t["arch"] for t in trials])) | set(self.indices(pending))
    return np.asarray([i for i in range(len(self.archs)) if i not in taken], dtype=int)


def _rng(seed: int, trials: Sequence[dict], pending: Sequence, salt: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, len(trials), len(pending), salt])


def _check_count(count: int, free: np.ndarray) -> None:
  if count < 1 or count > len(free):
    raise ValueError(f"suggest(count={count}): {len(free)} feasible architectures are left unevaluated")


def initial_design(cands: Candidates, count: int, seed: int) -> list[space_lib.Arch]:
  """The shared initial design: `count` distinct architectures drawn uniformly for the seed.

  Every designer starts from the same points for the same seed (a fair comparison, 003 4.3).
  """
  rng = np.random.default_rng([seed, 7919])
  order = rng.permutation(len(cands))
  return [cands.archs[i] for i in order[:count]]


def _ok(trials: Sequence[dict], directions, cands: Candidates) -> tuple[list[dict], np.ndarray]:
  """The successful trials among the candidates (a baseline outside the space is not a parent)."""
  ok = [t for t in trials if t["status"] == "ok" and t["arch"].name in cands.index]
  y = pareto.to_min([t["values"] for t in ok], directions) if ok else np.zeros((0, len(directions)))
  return ok, y


class RandomDesigner:

  def __init__(self, cands: Candidates, directions: Sequence[str], seed: int = 0):
    self.cands, self.directions, self.seed = cands, list(directions), seed
    self.trials: list[dict] = []

  def update(self, trials: Sequence[dict]) -> None:
    self.trials = list(trials)

  def suggest(self, count: int = 1, pending: Sequence = ()) -> list[space_lib.Arch]:
    free = self.cands.free(self.trials, pending)
    _check_count(count, free)
    rng = _rng(self.seed, self.trials, pending)
    return [self.cands.archs[i] for i in rng.choice(free, size=count, replace=False)]


class EvolutionaryDesigner:
  """004 Algorithm 2 (T generations of S, pm = pe = 1/2), run until the trial budget ends."""

  def __init__(self, cands: Candidates, directions: Sequence[str], seed: int = 0, population: int = 25,
               mutation_prob: float = 0.5, explore_prob: float = 0.5):
    if population < 2:
      raise ValueError(f"search.evolution.population={population}: need at least 2")
    self.cands, self.directions, self.seed = cands, list(directions), seed
    self.population, self.pm, self.pe = population, mutation_prob, explore_prob
    self.trials: list[dict] = []

  def update(self, trials: Sequence[dict]) -> None:
    self.trials = list(trials)

  def _mutate(self, i: int, rng) -> int:
    """Mut(*): each factor moves to another of its values with probability 1/D (at least one moves)."""
    arch = self.cands.archs[i]
    values = self.cands.space.factor_values()
    factors = list(values)
    moving = [f for f in factors if rng.random() < 1 / len(factors)] or [factors[rng.integers(len(factors))]]
    fields = {f: getattr(arch, f) for f in factors}
    for f in moving:
      others = [v for v in values[f] if v != fields[f]]
      if others:
        fields[f] = others[rng.integers(len(others))]
    return self.cands.index.get(space_lib.Arch(**fields).name, -1)  # -1: infeasible (pruned or heads)

  def suggest(self, count: int = 1, pending: Sequence = ()) -> list[space_lib.Arch]:
    free = set(self.cands.free(self.trials, pending).tolist())
    _check_count(count, np.asarray(sorted(free)))
    rng = _rng(self.seed, self.trials, pending)
    ok, y = _ok(self.trials, self.directions, self.cands)
    out: list[int] = []
    if len(ok) < self.population:  # generation 1: sampled from the space
      out = list(rng.choice(sorted(free), size=count, replace=False))
      return [self.cands.archs[i] for i in out]
    parents = ok[-self.population:]  # the previous generation
    fitness = 1.0 / pareto.pareto_ranks(y[-self.population:])
    p = fitness / fitness.sum()
    for _ in range(count):
      child = -1
      for _attempt in range(100):
        i = self.cands.index.get(parents[rng.choice(len(parents), p=p)]["arch"].name, -1)
        if i >= 0 and rng.random() < self.pm:
          i = self._mutate(i, rng)
        if rng.random() < self.pe:
          i = int(rng.choice(sorted(free)))
        if i in free and i not in out:
          child = i
          break
      if child < 0:  # the neighbourhood is used up: explore
        child = int(rng.choice(sorted(free - set(out))))
      out.append(child)
    return [self.cands.archs[i] for i in out]


class FireflyDesigner:
  """Yang (2010): x_i += beta0 exp(-gamma r_ij^2) (x_j - x_i) for brighter j, + alpha (u - 1/2)."""

  def __init__(self, cands: Candidates, directions: Sequence[str], seed: int = 0, population: int = 10,
               beta0: float = 1.0, gamma: float = 1.0, alpha: float = 0.2):
    if population < 2:
      raise ValueError(f"search.firefly.population={population}: need at least 2")
    self.cands, self.directions, self.seed = cands, list(directions), seed
    self.population, self.beta0, self.gamma, self.alpha = population, beta0, gamma, alpha
    self.trials: list[dict] = []

  def update(self, trials: Sequence[dict]) -> None:
    self.trials = list(trials)

  def suggest(self, count: int = 1, pending: Sequence = ()) -> list[space_lib.Arch]:
    free = self.cands.free(self.trials, pending)
    _check_count(count, free)
    rng = _rng(self.seed, self.trials, pending)
    ok, y = _ok(self.trials, self.directions, self.cands)
    if len(ok) < 2:
      return [self.cands.archs[i] for i in rng.choice(free, size=count, replace=False)]
    swarm = ok[-self.population:]
    x = self.cands.space.encode([t["arch"] for t in swarm])  # [P, D]
    brightness = 1.0 / pareto.pareto_ranks(y[-self.population:])
    out: list[int] = []
    for _ in range(count):
      i = int(rng.integers(len(swarm)))
      xi = x[i].copy()
      for j in np.argsort(-brightness):
        if brightness[j] > brightness[i]:
          r2 = float(np.sum((x[j] - xi) ** 2))
          xi += self.beta0 * np.exp(-self.gamma * r2) * (x[j] - xi)
      xi += self.alpha * (rng.random(xi.shape) - 0.5)
      left = np.asarray([k for k in free if k not in out])
      out.append(int(left[np.argmin(np.sum((self.cands.points[left] - xi) ** 2, axis=1))]))
    return [self.cands.archs[i] for i in out]


class OptimizerServiceError(RuntimeError):
  pass


def optimizer_python(configured: str = "") -> str:
  """The optimizer environment's interpreter: config, then $AD_OPTIMIZER_PYTHON, then .venv-opt."""
  path = configured or os.environ.get("AD_OPTIMIZER_PYTHON") or os.path.join(ROOT, ".venv-opt", "bin", "python")
  if not os.path.exists(path):
    raise OptimizerServiceError(
        f"the optimizer environment's Python {path} does not exist. The BO designer runs trieste in its own "
        "environment (docs/DESIGN.md): run `make setup` to create .venv-opt from requirements/optimizer.txt, or point "
        "search.optimizer_python / $AD_OPTIMIZER_PYTHON at a Python with trieste 4.6.1; or pass --designer random")
  return path


class TriesteDesigner:
  """Client of ad/search/trieste_service.py. If the service dies it is restarted once per call
  and re-fed the whole history (the trial store is the truth, the service holds no state of its own)."""

  def __init__(self, cands: Candidates, directions: Sequence[str],
               reference: Sequence[float] | Callable[[], Sequence[float]], seed: int = 0,
               python: str = "", likelihood_variance: float = 1e-3, timeout_s: float = 600.0,
               log_path: str | None = None, pending_method: str = "exclude", features: np.ndarray | None = None,
               constraints: Sequence[float] = ()):
    self.cands, self.directions, self.seed = cands, list(directions), seed
    # limits of the constraints measured with each trial (values <= limit are feasible): the service
    # models them and weighs its suggestions by the probability that they are met
    self.constraints = [float(c) for c in constraints]
    # [N, K] columns the GPs see beside the encoding (training_free_features): what is known for free
    self.features = None if features is None else np.asarray(features, dtype=np.float64)
    if self.features is not None and (self.features.ndim != 2 or len(self.features) != len(cands)):
      raise ValueError(f"features: expected [{len(cands)}, K] values per candidate, got shape {self.features.shape}")
    self.pending_method = pending_method  # what the GPs make of trials in flight (trieste_service.suggest)
    # the hypervolume's reference point, or a function giving it when the service starts (a latency
    # reference set as a ratio is known in ms only after the first paired measurement)
    self.reference = reference if callable(reference) else [float(r) for r in reference]
    self.python = optimizer_python(python)
    self.likelihood_variance, self.timeout_s, self.log_path = likelihood_variance, timeout_s, log_path
    self.trials: list[dict] = []
    self.proc: subprocess.Popen | None = None
    self.sent = 0  # how many of self.trials the running service has seen

  # ---- process -------------------------------------------------------------------------------
  def _start(self) -> None:
    self.close()
    self._stderr = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TPU_VISIBLE_CHIPS": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONPATH", None)  # the main environment's packages must not leak into the optimizer's
    self.proc = subprocess.Popen([self.python, os.path.join(ROOT, "ad", "search", "trieste_service.py")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                 env=env)
    self.sent = 0
    points = self.cands.points if self.features is None else np.concatenate([self.cands.points, self.features], 1)
    self._call(dict(op="init", points=points.tolist(), directions=self.directions,
                    reference=[float(r) for r in (self.reference() if callable(self.reference) else self.reference)],
                    seed=self.seed, likelihood_variance=self.likelihood_variance,
                    prior_columns=0 if self.features is None else self.features.shape[1],
                    constraints=self.constraints))

  def _call(self, req: dict) -> dict:
    proc = self.proc
    reply: list[str] = []
    reader = threading.Thread(target=lambda: reply.append(proc.stdout.readline()), daemon=True)
    try:
      proc.stdin.write(json.dumps(req) + "\n")
      proc.stdin.flush()
    except (BrokenPipeError, OSError) as e:
      raise OptimizerServiceError(f"the optimizer service exited (code {proc.poll()}): {e}{self._log_hint()}") from e
    reader.start()
    reader.join(self.timeout_s)
    if not reply or not reply[0]:
      code = proc.poll()
      self.close()
      what = f"exited with code {code}" if code is not None else f"gave no answer in {self.timeout_s:.0f} s"
      raise OptimizerServiceError(f"the optimizer service {what} on {req['op']!r}{self._log_hint()}")
    out = json.loads(reply[0])
    if not out.pop("ok"):
      raise OptimizerServiceError(f"the optimizer service refused {req['op']!r}: {out['error']}")
    return out

  def _log_hint(self) -> str:
    return f"; its log is {self.log_path}" if self.log_path else ""

  def close(self) -> None:
    if self.proc is not None:
      if self.proc.poll() is None:
        self.proc.kill()
      self.proc.wait()
      self.proc = None
    if getattr(self, "_stderr", None) not in (None, subprocess.DEVNULL):
      self._stderr.close()
    self._stderr = None

  def _with_restart(self, fn):
    try:
      if self.proc is None or self.proc.poll() is not None:
        self._start()
      return fn()
    except OptimizerServiceError:
      if self.proc is not None and self.proc.poll() is None:
        raise  # the service is alive and refused the request: restarting would not help
      self._start()  # once: a fresh service re-fed from the history
      return fn()

  # ---- designer interface ----------------------------------------------------------------------
  def update(self, trials: Sequence[dict]) -> None:
    self.trials = list(trials)

  def _sync(self) -> None:
    new = self.trials[self.sent:]
    msgs = []
    for t in new:
      i = self.cands.index.get(t["arch"].name)
      if i is None:
        continue  # outside the candidates (e.g. a baseline outside the space): nothing to model
      floats = lambda xs: None if xs is None else [None if e is None else float(e) for e in xs]
      if t["status"] == "ok":
        msg = dict(index=i, status="ok", values=[float(v) for v in t["values"]], noise=floats(t.get("noise")))
      else:
        msg = dict(index=i, status="infeasible" if t["status"] == "infeasible" else "failed")
      if self.constraints and t.get("constraints") is not None:
        msg.update(constraints=floats(t["constraints"]), constraint_noise=floats(t.get("constraint_noise")))
      msgs.append(msg)
    if msgs:
      self._call(dict(op="update", trials=msgs))
    self.sent = len(self.trials)

  def suggest(self, count: int = 1, pending: Sequence = ()) -> list[space_lib.Arch]:
    _check_count(count, self.cands.free(self.trials, pending))

    def ask():
      self._sync()
      return self._call(dict(op="suggest", count=count, pending=self.cands.indices(pending),
                             pending_method=self.pending_method))["indices"]
    return [self.cands.archs[i] for i in self._with_restart(ask)]

  def state(self) -> dict:
    def ask():
      self._sync()
      return self._call(dict(op="state"))
    return self._with_restart(ask)

  def predict(self, archs) -> dict:
    """The GPs' posterior mean and variance at `archs` (objectives' units): {'mean': [[M]...], 'variance': ...}."""
    def ask():
      self._sync()
      return self._call(dict(op="predict", indices=self.cands.indices(archs)))
    return self._with_restart(ask)


def training_free_features(sizes: Sequence[tuple[float, float]]) -> np.ndarray:
  """[N, 2] GP inputs from each candidate's (parameters, FLOPs): their logarithms scaled to [0, 1]
  over the candidates, like the encoding. With them the GPs start from what the size predicts
  (accuracy and latency grow with it) and the flash measurements refine it."""
  x = np.log(np.asarray(sizes, dtype=np.float64))
  span = np.ptp(x, axis=0)
  return (x - x.min(0)) / np.where(span > 0, span, 1.0)


def make_designer(name: str, cands: Candidates, directions: Sequence[str],
                  reference: Sequence[float] | Callable[[], Sequence[float]], seed: int,
                  search_cfg=None, log_path: str | None = None, features: np.ndarray | None = None,
                  constraints: Sequence[float] = ()):
  """The designer called `name` with its options from the config's `search` section; `features`:
  [N, K] inputs BO's GPs see beside the encoding (training_free_features; search.bo.training_free);
  `constraints`: limits BO models (search.bo.constraints = 'model'); the other designers only
  avoid what the search filtered out or found infeasible."""
  s = settings.search_settings_from(search_cfg)  # absent settings: their defaults (settings.py)
  if name == "bo":
    return TriesteDesigner(cands, directions, reference, seed, python=s.bo.optimizer_python,
                           likelihood_variance=s.bo.likelihood_variance, log_path=log_path,
                           pending_method=s.bo.pending, features=features, constraints=constraints)
  if name == "random":
    return RandomDesigner(cands, directions, seed)
  if name == "evolutionary":
    return EvolutionaryDesigner(cands, directions, seed, population=s.evolution.population,
                                mutation_prob=s.evolution.mutation_prob, explore_prob=s.evolution.explore_prob)
  if name == "firefly":
    return FireflyDesigner(cands, directions, seed, population=s.firefly.population, beta0=s.firefly.beta0,
                           gamma=s.firefly.gamma, alpha=s.firefly.alpha)
  raise ValueError(f"search.designer={name!r}: expected one of {DESIGNERS}")
