"""The Bayesian-optimization designer as a service: trieste in the optimizer environment.

Run with the optimizer environment's Python (.venv-opt, see docs/DESIGN.md "Two environments");
the search starts it itself (ad/search/designers.py, TriesteDesigner). It imports no JAX and
hides every accelerator from TensorFlow. Protocol: one JSON object per line on stdin, one
JSON reply per line on stdout ({"ok": true, ...} or {"ok": false, "error": "..."}):

  {"op": "init", "points": [[...], ...], "directions": ["max", "min"], "reference": [0.0, 50.0],
   "seed": 0, "likelihood_variance": 1e-3, "prior_columns": 0, "constraints": [6.0]}
        points: [N, D] the encoded feasible architectures (a DiscreteSearchSpace); their last
        prior_columns columns are training-free features, on which the GPs' mean is linear;
        reference: the reference point in the objectives' own units; constraints: the limits of
        the constraints known only once a trial runs (a measured latency), each met when its
        value is <= the limit; each gets a GP, and suggestions weigh the acquisition by the
        probability of feasibility (none: filtered only, failed trials excluded).
  {"op": "update", "trials": [{"index": 3, "status": "ok", "values": [0.1, 5.2], "noise": [0.004, 0.05],
                               "constraints": [5.2], "constraint_noise": [0.05]},
                              {"index": 5, "status": "infeasible", "constraints": [7.9]},
                              {"index": 7, "status": "failed"}]}
        noise: each value's standard error in its own units (optional; null where unknown);
        constraints: the constraint values where measured (an infeasible trial has only these),
        constraint_noise their standard errors (optional). Failed and infeasible points are never
        suggested again.
  {"op": "suggest", "count": 1, "pending": [12], "pending_method": "exclude"}  -> {"ok": true, "indices": [...]}
        pending: points being evaluated (by other workers); never suggested. pending_method:
        'exclude' only that; 'believer' also conditions the GPs on them (Kriging believer: each
        pending point observed at its posterior mean, hyperparameters kept from the real data),
        so EHVI counts the improvement they are expected to bring as made already; 'hippo'
        multiplies EHVI by trieste's HIPPO penalty, which is small where a candidate's predicted
        objectives are close to a pending point's.
  {"op": "predict", "indices": [3, 7]}  -> the GPs' posterior mean and variance there, in the
        objectives' own units (fitted on the current observations; a diagnostic and a test hook)
  {"op": "state"}  -> observations, failures, fixed-noise refits, hypervolume of the observed front

Models: one GP per objective on standardized, minimized objectives: trieste's build_gpr kernel
(Matern-5/2 with its priors) and mean, and a heteroscedastic Gaussian likelihood: observation
i's noise variance is its own squared standard error, standardized like the observations,
plus a trainable floor (initial value `likelihood_variance`) for what the standard error does
not capture (training noise of a flash distillation, model misfit). gpflow's GPR takes a
likelihood whose variance is a function of the inputs; the known variances ride along as
extra input columns that the kernel ignores (active_dims), zero for candidate points, whose
latent predictions (what EHVI uses) involve no observation noise.
Acquisition: Expected Hypervolume Improvement for one candidate (what the pending points do to
it: see suggest's pending_method; on the fresh path below they are only excluded); HIPPO (EHVI
with a diversity penalty) for a batch; with a single objective (003 4.6's single-objective
searches), Expected Improvement, one candidate at a time. Both are maximized by enumerating the discrete space,
which never contains an evaluated, failed or pending point, so nothing is suggested twice.
With fewer than 2 feasible observations (an initial design mostly infeasible or failed) there
are no GPs to fit: the suggestion is a seeded draw over the free points (_explore).
Constraints (init's constraints): one GP per constraint, built like the objectives' and fitted on
every trial whose constraint was measured, feasible or not; the acquisition is multiplied by
trieste's ProbabilityOfFeasibility of each (EHVI x PoF, Gardner et al. 2014), so a student the
GPs expect to break a limit is not suggested, while the observed front holds feasible trials
only. A batch (count > 1) uses the same product as HIPPO's base acquisition.
Seeded: the TF and numpy seeds are reset from (seed, number of observations) before each
suggestion, so the same seed and the same observations give the same suggestions.
Speed: one-point suggestions keep their GPs and EHVI between calls (data replaced, hyper-
parameters reset before each fit), because re-tracing them made a suggestion cost 20 s
instead of 5 on 2 busy CPU cores; batches and degenerate data take the fresh path.
"""

import functools
import json
import os
import sys
import traceback

if __name__ == "__main__":  # the service process; imported (for PENDING_METHODS) it changes nothing
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the optimizer must never take an accelerator
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from ad.search import pareto  # noqa: E402  (numpy only)


@functools.lru_cache(maxsize=None)
def _kept_loss_optimizer():
  from trieste.models.optimizer import Optimizer

  class KeptLossOptimizer(Optimizer):
    """trieste's Optimizer, but one loss closure per model for its lifetime: gpflow caches the
    compiled L-BFGS objective by closure, and a new closure per fit would be traced again."""

    def create_loss(self, model, dataset):
      if getattr(self, "_loss", None) is None:
        self._loss = super().create_loss(model, dataset)  # reads the model's data variables
      return self._loss

  return KeptLossOptimizer


def tf_constant(x):
  import tensorflow as tf
  return tf.constant(np.asarray(x, dtype=np.float64))


@functools.lru_cache(maxsize=None)
def _known_noise_class():
  import gpflow
  from gpflow.utilities import positive

  class KnownNoisePlusFloor(gpflow.functions.Function):
    """Observation noise variance: the input's column `col` (a known, standardized squared
    standard error) plus a floor."""

    def __init__(self, col: int, floor: float, trainable: bool):
      super().__init__()
      self.col = col
      self.floor = gpflow.Parameter(floor, transform=positive(lower=1e-6), trainable=trainable)

    def __call__(self, X):
      return X[..., self.col:self.col + 1] + self.floor

  return KnownNoisePlusFloor


def KnownNoisePlusFloor(col: int, floor: float, trainable: bool):
  return _known_noise_class()(col, floor, trainable)


@functools.lru_cache(maxsize=None)
def _linear_prior_class():
  import gpflow

  class LinearInColumns(gpflow.functions.MeanFunction):
    """A constant plus a linear function of the input's columns [start, stop): the GP's prior mean
    from the training-free features, fitted with the kernel, so the GP models what they miss."""

    def __init__(self, start: int, stop: int, constant: float):
      super().__init__()
      self.start, self.stop = start, stop
      self.A = gpflow.Parameter(np.zeros((stop - start, 1)))
      self.b = gpflow.Parameter(np.asarray([constant], dtype=np.float64))

    def __call__(self, X):
      import tensorflow as tf
      return tf.linalg.matmul(X[..., self.start:self.stop], self.A) + self.b

  return LinearInColumns


def _kept_models(fresh: list, kept: list | None = None) -> list:
  """trieste models kept across suggestions: built around the gpflow GPRs `fresh` (their loss
  traced once, _kept_loss_optimizer), or, given `kept`, those with their hyperparameters reset to
  fresh's starting values (the data are replaced by the caller)."""
  import gpflow
  from trieste.models.gpflow import GaussianProcessRegression
  if kept is not None:
    for model, g in zip(kept, fresh):
      gpflow.utilities.multiple_assign(model.model, gpflow.utilities.parameter_dict(g))
    return kept
  # num_kernel_samples=0: no random restarts of the hyperparameters (trieste would trace a new
  # loss function for them on every call); each fit starts from build_gpr's values instead.
  return [GaussianProcessRegression(g, optimizer=_kept_loss_optimizer()(gpflow.optimizers.Scipy()),
                                    num_kernel_samples=0) for g in fresh]


PENDING_METHODS = ("exclude", "believer", "hippo")
CONSTRAINT_TAG = "constraint{}"  # trieste's tag of constraint c's model and data (the objectives': OBJECTIVE)


class Service:

  def __init__(self):
    self.points = None

  def init(self, points, directions, reference, seed=0, likelihood_variance=1e-3, prior_columns=0, constraints=()):
    import tensorflow as tf
    import trieste
    tf.config.set_visible_devices([], "GPU")
    self.points = np.asarray(points, dtype=np.float64)
    if self.points.ndim != 2 or not len(self.points):
      raise ValueError(f"init: points must be a non-empty [N, D] list, got shape {self.points.shape}")
    self.signs = pareto.signs(directions)
    self.reference = np.asarray(reference, dtype=np.float64)
    if self.reference.shape != self.signs.shape:
      raise ValueError(f"init: reference has {self.reference.size} values for {self.signs.size} objectives")
    self.seed = int(seed)
    self.likelihood_variance = float(likelihood_variance)
    # the last `prior_columns` columns of the points are training-free features (log parameters, log
    # FLOPs): inputs like the others, and the GPs' prior mean is linear in them
    self.prior_columns = int(prior_columns)
    if not 0 <= self.prior_columns < self.points.shape[1]:
      raise ValueError(f"init: prior_columns={prior_columns}; expected 0 <= it < {self.points.shape[1]} columns")
    self.limits = np.asarray(constraints, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(self.limits)):
      raise ValueError(f"init: constraints={constraints}; expected finite limits")
    self.values: dict[int, np.ndarray] = {}
    self.noise: dict[int, np.ndarray] = {}  # standard errors in the objectives' units (0 where unknown)
    self.cvalues: dict[int, np.ndarray] = {}  # measured constraint values (feasible or not)
    self.cnoise: dict[int, np.ndarray] = {}
    self.failed: set[int] = set()  # failed or infeasible: never suggested again
    self.infeasible: set[int] = set()
    self.refits = 0  # suggestions that needed the fixed-noise refit (see suggest)
    self.kept = None  # models and acquisition kept across one-point suggestions (see _suggest_one)
    self.kept_constraints = None  # the same for the constraints' GPs and PoF functions (_feasibility)
    return dict(points=len(self.points), trieste=trieste.__version__, tensorflow=tf.__version__,
                numpy=np.__version__)

  def update(self, trials):
    self._need_init()
    for t in trials:
      i = int(t["index"])
      if not 0 <= i < len(self.points):
        raise ValueError(f"update: index {i} is outside the {len(self.points)} points")
      if t["status"] == "ok":
        v = np.asarray(t["values"], dtype=np.float64)
        if v.shape != self.signs.shape or not np.all(np.isfinite(v)):
          raise ValueError(f"update: trial {i} has values {t['values']}; expected {self.signs.size} finite numbers")
        se = t.get("noise")
        se = np.zeros_like(v) if se is None else np.asarray([np.nan if e is None else e for e in se], np.float64)
        if se.shape != v.shape or np.any(se < 0):
          raise ValueError(f"update: trial {i} has noise {t.get('noise')}; expected {self.signs.size} standard errors "
                           ">= 0 (or null)")
        self.values[i] = v
        self.noise[i] = np.nan_to_num(se, nan=0.0)
        self.failed.discard(i)
      elif t["status"] in ("failed", "infeasible"):
        self.failed.add(i)
        if t["status"] == "infeasible":
          self.infeasible.add(i)
      else:
        raise ValueError(f"update: trial {i} has status {t['status']!r}; expected 'ok', 'failed' or 'infeasible'")
      if t.get("constraints") is not None and len(self.limits):
        c = np.asarray(t["constraints"], dtype=np.float64)
        ce = np.asarray([0.0 if e is None else e for e in (t.get("constraint_noise") or [None] * c.size)], np.float64)
        if c.shape != self.limits.shape or not np.all(np.isfinite(c)) or ce.shape != c.shape or np.any(ce < 0):
          raise ValueError(f"update: trial {i} has constraints {t['constraints']} (noise {t.get('constraint_noise')}); "
                           f"expected {self.limits.size} finite values and standard errors >= 0")
        self.cvalues[i], self.cnoise[i] = c, ce
    return self.state()

  def state(self):
    self._need_init()
    y = self._y_min()
    import trieste
    return dict(observations=len(self.values), failed=len(self.failed - self.infeasible),
                infeasible=len(self.infeasible), refits=self.refits,
                trieste=trieste.__version__, numpy=np.__version__,
                hypervolume=pareto.hypervolume(y, self.reference * self.signs) if len(y) else 0.0)

  def suggest(self, count, pending=(), pending_method="exclude"):
    import tensorflow as tf
    from trieste.acquisition.combination import Product
    from trieste.acquisition.function import (HIPPO, ExpectedHypervolumeImprovement, ExpectedImprovement,
                                              ProbabilityOfFeasibility)
    from trieste.acquisition.rule import EfficientGlobalOptimization
    from trieste.ask_tell_optimization import AskTellOptimizer
    from trieste.data import Dataset
    from trieste.observer import OBJECTIVE
    from trieste.models.gpflow import GaussianProcessRegression
    from trieste.models.interfaces import TrainableModelStack
    from trieste.space import DiscreteSearchSpace

    self._need_init()
    if pending_method not in PENDING_METHODS:
      raise ValueError(f"suggest: pending_method={pending_method!r}; expected one of {PENDING_METHODS}")
    count = int(count)
    pending = sorted({int(p) for p in pending} - set(self.values) - self.failed)
    taken = set(self.values) | self.failed | set(pending)
    free = np.asarray([i for i in range(len(self.points)) if i not in taken])
    if count < 1 or count > len(free):
      raise ValueError(f"suggest: count={count}, but {len(free)} points are neither evaluated nor pending")
    tf.random.set_seed(self.seed * 1_000_003 + len(self.values))
    if len(self.values) < 2:
      return dict(indices=self._explore(count, free))
    np.random.seed((self.seed * 1_000_003 + len(self.values)) % 2**32)

    x, yz, ref, mu, sd = self._standardized()
    space = DiscreteSearchSpace(tf.constant(self._candidates(free)))
    data = Dataset(tf.constant(x), tf.constant(yz))
    if yz.shape[1] == 1 and count != 1:
      raise ValueError(f"suggest: count={count}; a single-objective search asks for one point at a time")
    if count == 1 and np.all(np.ptp(yz, axis=0) > 1e-12):
      try:
        return dict(indices=[self._suggest_one(x, yz, ref, free, pending, pending_method)])
      except tf.errors.InvalidArgumentError:
        self.kept = None  # a singular fit: the fresh path below refits with a noise floor

    constrained = self._modelled_constraints()
    if constrained:
      xc, zc, limits = self._constraint_data()
    tags = [CONSTRAINT_TAG.format(c) for c in range(len(self.limits))] if constrained else []

    def rule():  # a fresh one per attempt: acquisition builders keep state
      # the 1-D hypervolume is the best value: Expected Improvement for a single objective
      base = ExpectedImprovement() if yz.shape[1] == 1 else ExpectedHypervolumeImprovement(reference_point_spec=ref)
      if constrained:  # x the probability that each constraint is met
        base = Product(base.using(OBJECTIVE), *[ProbabilityOfFeasibility(float(limits[c])).using(tag)
                                                for c, tag in enumerate(tags)])
      if count == 1:
        return EfficientGlobalOptimization(base)
      return EfficientGlobalOptimization(HIPPO(base_acquisition_function_builder=base), num_query_points=count)

    def ask(noise_floor: float | None):
      models = TrainableModelStack(*[(GaussianProcessRegression(g), 1) for g in self._gprs(x, yz, noise_floor)])
      if not constrained:
        return AskTellOptimizer(space, data, models, rule(), fit_model=True).ask().numpy()  # [count, D]
      datasets, all_models = {OBJECTIVE: data}, {OBJECTIVE: models}
      for c, (tag, g) in enumerate(zip(tags, self._gprs(xc, zc, noise_floor))):
        datasets[tag] = Dataset(tf.constant(xc), tf.constant(zc[:, c:c + 1]))
        all_models[tag] = GaussianProcessRegression(g)
      return AskTellOptimizer(space, datasets, all_models, rule(), fit_model=True).ask().numpy()

    try:
      q = ask(None)
    except tf.errors.InvalidArgumentError:
      # A noise-free objective (an analytic test problem, or latency measured to many digits) can
      # drive the trained noise to ~0 and the Cholesky factor to NaN: refit with a fixed noise of
      # 1% of the standardized variance.
      self.refits += 1
      q = ask(1e-2)
    out = []
    for row in q:
      i = int(free[np.argmin(np.abs(self.points[free] - row[:self.points.shape[1]]).sum(1))])
      if i in out or i in taken:
        raise RuntimeError(f"suggest: trieste proposed point {row.tolist()} twice or outside the free points")
      out.append(i)
    return dict(indices=out)

  def _suggest_one(self, x, yz, ref, free, pending=(), pending_method="exclude") -> int:
    """One suggestion with the GPs and the acquisition function kept from the previous call.

    Building new gpflow models and a new EHVI per call makes TensorFlow trace the training loss
    and the acquisition again each time (about 15 s of a 20 s suggestion on 2 CPU cores). Here
    the models' data are replaced and their hyperparameters reset to build_gpr's starting values
    before each fit, and the acquisition is evaluated on every point (a fixed shape) with the
    evaluated ones masked, so the result is the same function of (seed, observations) as a fresh
    build, which a restarted service relies on. The priors are the first call's; build_gpr's
    depend only on the search-space bounds and the standardized variance (1), which stay put.
    pending, pending_method: the points in flight and what the GPs make of them (see suggest).
    """
    import tensorflow as tf
    from trieste.acquisition.function import ExpectedHypervolumeImprovement, ExpectedImprovement
    from trieste.acquisition.function.multi_objective import hippo_penalizer
    from trieste.data import Dataset
    from trieste.models.interfaces import TrainableModelStack

    data = Dataset(tf.constant(x), tf.constant(yz))
    fresh = self._gprs(x, yz, None)
    if self.kept is None or len(self.kept["models"]) != yz.shape[1]:
      models = _kept_models(fresh)
      self.kept = dict(models=models, stack=TrainableModelStack(*[(m, 1) for m in models]), fn=None, hippo=None,
                       builder=(ExpectedImprovement() if yz.shape[1] == 1 else
                                ExpectedHypervolumeImprovement(reference_point_spec=lambda mean: self.kept["ref"])))
    else:
      _kept_models(fresh, self.kept["models"])
    self.kept["ref"] = tf.constant(ref)
    stack = self.kept["stack"]
    stack.update(data)
    stack.optimize(data)
    q = tf.constant(self._candidates(pending)) if len(pending) else None
    if q is not None and pending_method == "believer":  # the pending points observed at their latent mean
      mean, _ = stack.predict(q)
      data = Dataset(tf.concat([data.query_points, q], 0), tf.concat([data.observations, mean], 0))
      stack.update(data)  # the hyperparameters stay those fitted on the real observations
    if self.kept["fn"] is None:
      self.kept["fn"] = self.kept["builder"].prepare_acquisition_function(stack, dataset=data)
    else:
      self.kept["fn"] = self.kept["builder"].update_acquisition_function(self.kept["fn"], stack, dataset=data)
    everything = tf.constant(self._candidates(np.arange(len(self.points))))[:, None, :]
    values = self.kept["fn"](everything).numpy()[:, 0]
    if self._modelled_constraints():
      values = values * self._feasibility(everything)
    if q is not None and pending_method == "hippo" and yz.shape[1] > 1:
      if self.kept["hippo"] is None:
        self.kept["hippo"] = hippo_penalizer(stack, q)
      else:
        self.kept["hippo"].update(q)
      values = values * self.kept["hippo"](everything).numpy().reshape(-1)
    return int(free[np.argmax(values[free])])

  def _explore(self, count: int, free) -> list[int]:
    """Suggestions without objective GPs (fewer than 2 feasible observations: an initial design
    mostly infeasible or failed): a uniform draw over the free points, seeded by (seed, history),
    among those the constraints' GPs expect to be feasible (PoF >= 0.5) where they are modelled."""
    pool = np.asarray(free)
    if self._modelled_constraints():
      import tensorflow as tf
      pof = self._feasibility(tf.constant(self._candidates(pool))[:, None, :])
      if (pof >= 0.5).sum() >= count:
        pool = pool[pof >= 0.5]
    rng = np.random.default_rng((self.seed * 1_000_003 + len(self.values) + len(self.failed)) % 2**32)
    return [int(i) for i in rng.choice(pool, size=count, replace=False)]

  def _modelled_constraints(self) -> bool:
    return len(self.limits) > 0 and len(self.cvalues) >= 2  # a GP needs two observations

  def _constraint_data(self):
    """(x [N, D + C] with the standardized noise variances appended, z [N, C], limits [C]) of the
    trials whose constraints were measured, standardized like the objectives."""
    idx = np.asarray(sorted(self.cvalues))
    c = np.stack([self.cvalues[i] for i in idx])
    mu, sd = c.mean(0), c.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    noise_var = np.stack([self.cnoise[i] for i in idx]) ** 2 / sd ** 2
    return np.concatenate([self.points[idx], noise_var], axis=1), (c - mu) / sd, (self.limits - mu) / sd

  def _feasibility(self, everything):
    """[N] probability that every constraint is met at each candidate of `everything` (the GP input
    layout), from constraint GPs kept across calls like the objectives' (see _suggest_one)."""
    import tensorflow as tf
    from trieste.acquisition.function import ProbabilityOfFeasibility
    from trieste.data import Dataset
    xc, zc, limits = self._constraint_data()
    fresh = self._gprs(xc, zc, None)
    kept = self.kept_constraints
    if kept is None:
      kept = self.kept_constraints = dict(fns=[None] * len(fresh), models=_kept_models(fresh))
    else:
      _kept_models(fresh, kept["models"])
    p = np.ones(len(everything))
    for c, model in enumerate(kept["models"]):
      data = Dataset(tf.constant(xc), tf.constant(zc[:, c:c + 1]))
      model.update(data)
      model.optimize(data)
      if kept["fns"][c] is None:
        kept["fns"][c] = ProbabilityOfFeasibility(float(limits[c])).prepare_acquisition_function(model)
      else:
        kept["fns"][c].update(float(limits[c]))  # the standardized limit moves with the data
      p *= kept["fns"][c](everything).numpy().reshape(-1)
    return p

  def _standardized(self):
    """(x [N, D + M] with the standardized noise variances appended, yz [N, M], reference, mu, sd).

    Each objective is standardized; EHVI is invariant to positive affine maps of the objectives
    as long as the reference point goes through the same map, and standard errors scale by 1/sd.
    """
    idx = np.asarray(sorted(self.values))
    y = self._y_min()
    mu, sd = y.mean(0), y.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    noise_var = np.stack([self.noise[i] for i in idx]) ** 2 / sd ** 2  # [N, M]
    x = np.concatenate([self.points[idx], noise_var], axis=1)
    return x, (y - mu) / sd, (self.reference * self.signs - mu) / sd, mu, sd

  def _candidates(self, indices) -> np.ndarray:
    """Candidate points in the GPs' input layout: the encoding plus zero noise columns."""
    pts = self.points[np.asarray(indices, dtype=int)]
    return np.concatenate([pts, np.zeros((len(pts), self.signs.size))], axis=1)

  def _gprs(self, x, yz, noise_floor: float | None) -> list:
    """One gpflow GPR per objective: build_gpr's kernel and mean over the encoding's D columns,
    a likelihood whose variance is the point's known noise (column D + m) plus a floor that is
    trainable (from `likelihood_variance`), or fixed at `noise_floor` for the singular-fit refit."""
    import gpflow
    from trieste.data import Dataset
    from trieste.models.gpflow import build_gpr
    from trieste.space import DiscreteSearchSpace
    D = self.points.shape[1]
    space = DiscreteSearchSpace(tf_constant(self.points))
    out = []
    for m in range(yz.shape[1]):
      kernel = None
      if np.ptp(yz[:, m]) < 1e-12:
        # Every observation equal (e.g. the same accuracy twice): build_gpr would start the kernel
        # variance at the empirical variance, 0, which gpflow cannot represent. Start it at the
        # standardized scale instead.
        kernel = gpflow.kernels.Matern52(variance=1.0, lengthscales=np.full(D, 0.2 * np.sqrt(D)))
      base = build_gpr(Dataset(tf_constant(x[:, :D]), tf_constant(yz[:, m:m + 1])), space, kernel=kernel,
                       likelihood_variance=self.likelihood_variance)
      base.kernel.active_dims = slice(0, D)
      floor = self.likelihood_variance if noise_floor is None else noise_floor
      noise = KnownNoisePlusFloor(D + m, floor, trainable=noise_floor is None)
      mean = base.mean_function
      if self.prior_columns:
        mean = _linear_prior_class()(D - self.prior_columns, D, float(np.ravel(base.mean_function.c.numpy())[0]))
      out.append(gpflow.models.GPR((tf_constant(x), tf_constant(yz[:, m:m + 1])), base.kernel, mean,
                                   likelihood=gpflow.likelihoods.Gaussian(variance=noise)))
    return out

  def predict(self, indices):
    """Posterior mean and variance of the latent objectives at `indices`, in the objectives' units."""
    import gpflow
    import tensorflow as tf
    self._need_init()
    if len(self.values) < 2:
      raise ValueError(f"predict: the GPs need at least 2 observations, have {len(self.values)}")
    x, yz, _, mu, sd = self._standardized()
    tf.random.set_seed(self.seed * 1_000_003 + len(self.values))
    q = tf.constant(self._candidates(indices))
    means, variances = [], []
    for m, g in enumerate(self._gprs(x, yz, None)):
      gpflow.optimizers.Scipy().minimize(g.training_loss, g.trainable_variables)
      f_mean, f_var = g.predict_f(q)
      means.append(f_mean.numpy()[:, 0] * sd[m] + mu[m])
      variances.append(f_var.numpy()[:, 0] * sd[m] ** 2)
    signs = self.signs
    return dict(mean=(np.stack(means, 1) * signs).tolist(), variance=np.stack(variances, 1).tolist())

  def _y_min(self):
    if not self.values:
      return np.zeros((0, self.signs.size))
    return np.stack([self.values[i] for i in sorted(self.values)]) * self.signs

  def _need_init(self):
    if self.points is None:
      raise ValueError("the first request must be {'op': 'init', ...}")


def main() -> int:
  if "jax" in sys.modules:
    raise RuntimeError("the optimizer service imported jax; it must not")
  service = Service()
  ops = dict(init=service.init, update=service.update, suggest=service.suggest, state=service.state,
             predict=service.predict)
  for line in sys.stdin:
    if not line.strip():
      continue
    try:
      req = json.loads(line)
      op = req.pop("op", None)
      if op not in ops:
        raise ValueError(f"unknown op {op!r}; expected one of {sorted(ops)}")
      reply = dict(ok=True, **ops[op](**req))
    except Exception as e:  # the client gets the error text; the service stays up
      traceback.print_exc(file=sys.stderr)
      reply = dict(ok=False, error=f"{type(e).__name__}: {e}")
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
