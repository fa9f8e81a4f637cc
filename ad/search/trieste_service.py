"""The Bayesian-optimization designer as a service: trieste in the optimizer environment.

Run with the optimizer environment's Python (.venv-opt, see DESIGN.md "Two environments");
the search starts it itself (ad/search/designers.py, TriesteDesigner). It imports no JAX and
hides every accelerator from TensorFlow. Protocol: one JSON object per line on stdin, one
JSON reply per line on stdout ({"ok": true, ...} or {"ok": false, "error": "..."}):

  {"op": "init", "points": [[...], ...], "directions": ["max", "min"], "reference": [0.0, 50.0],
   "seed": 0, "likelihood_variance": 1e-3}
        points: [N, D] the encoded feasible architectures (a DiscreteSearchSpace);
        reference: the reference point in the objectives' own units.
  {"op": "update", "trials": [{"index": 3, "status": "ok", "values": [0.1, 5.2]},
                              {"index": 7, "status": "failed"}]}
  {"op": "suggest", "count": 1, "pending": [12]}  -> {"ok": true, "indices": [...]}
  {"op": "state"}  -> observations, failures, hypervolume of the observed front, versions

Models: one GP per objective (trieste's build_gpr: Matern-5/2, priors, a trainable noise
variance because flash-distilled accuracy is noisy) on standardized, minimized objectives.
Acquisition: Expected Hypervolume Improvement for one candidate; HIPPO (EHVI with a
diversity penalty) for a batch. Both are maximized by enumerating the discrete space,
which never contains an evaluated, failed or pending point, so nothing is suggested twice.
Seeded: the TF and numpy seeds are reset from (seed, number of observations) before each
suggestion, so the same seed and the same observations give the same suggestions.
"""

import json
import os
import sys
import traceback

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the optimizer must never take an accelerator
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ad.search import pareto  # noqa: E402  (numpy only)


class Service:

  def __init__(self):
    self.points = None

  def init(self, points, directions, reference, seed=0, likelihood_variance=1e-3):
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
    self.values: dict[int, np.ndarray] = {}
    self.failed: set[int] = set()
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
        self.values[i] = v
        self.failed.discard(i)
      else:
        self.failed.add(i)
    return self.state()

  def state(self):
    self._need_init()
    y = self._y_min()
    return dict(observations=len(self.values), failed=len(self.failed),
                hypervolume=pareto.hypervolume(y, self.reference * self.signs) if len(y) else 0.0)

  def suggest(self, count, pending=()):
    import tensorflow as tf
    from trieste.acquisition.function import HIPPO, ExpectedHypervolumeImprovement
    from trieste.acquisition.rule import EfficientGlobalOptimization
    from trieste.ask_tell_optimization import AskTellOptimizer
    from trieste.data import Dataset
    from trieste.models.gpflow import GaussianProcessRegression, build_gpr
    from trieste.models.interfaces import TrainableModelStack
    from trieste.space import DiscreteSearchSpace

    self._need_init()
    count = int(count)
    taken = set(self.values) | self.failed | {int(p) for p in pending}
    free = np.asarray([i for i in range(len(self.points)) if i not in taken])
    if count < 1 or count > len(free):
      raise ValueError(f"suggest: count={count}, but {len(free)} points are neither evaluated nor pending")
    if len(self.values) < 2:
      raise ValueError(f"suggest: the GPs need at least 2 observations, have {len(self.values)}; "
                       "the search evaluates its initial design first")
    tf.random.set_seed(self.seed * 1_000_003 + len(self.values))
    np.random.seed((self.seed * 1_000_003 + len(self.values)) % 2**32)

    idx = np.asarray(sorted(self.values))
    x = self.points[idx]
    y = self._y_min()
    # Standardize each objective; EHVI is invariant to positive affine maps of the objectives
    # as long as the reference point goes through the same map.
    mu, sd = y.mean(0), y.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    yz = (y - mu) / sd
    ref = (self.reference * self.signs - mu) / sd
    space = DiscreteSearchSpace(tf.constant(self.points[free]))
    data = Dataset(tf.constant(x), tf.constant(yz))
    models = []
    for m in range(yz.shape[1]):
      d = Dataset(data.query_points, data.observations[:, m:m + 1])
      kernel = None
      if np.ptp(yz[:, m]) < 1e-12:
        # Every observation equal (e.g. the same accuracy twice): build_gpr would start the kernel
        # variance at the empirical variance, 0, which gpflow cannot represent. Start it at the
        # standardized scale instead.
        import gpflow
        kernel = gpflow.kernels.Matern52(variance=1.0, lengthscales=np.full(x.shape[1], 0.2 * np.sqrt(x.shape[1])))
      gpr = build_gpr(d, space, likelihood_variance=self.likelihood_variance, trainable_likelihood=True, kernel=kernel)
      models.append((GaussianProcessRegression(gpr), 1))
    stack = TrainableModelStack(*models)
    ehvi = ExpectedHypervolumeImprovement(reference_point_spec=ref)
    if count == 1:
      rule = EfficientGlobalOptimization(ehvi)
    else:
      rule = EfficientGlobalOptimization(HIPPO(base_acquisition_function_builder=ehvi), num_query_points=count)
    opt = AskTellOptimizer(space, data, stack, rule, fit_model=True)
    q = opt.ask().numpy()  # [count, D]
    out = []
    for row in q:
      i = int(free[np.argmin(np.abs(self.points[free] - row).sum(1))])
      if i in out or i in taken:
        raise RuntimeError(f"suggest: trieste proposed point {row.tolist()} twice or outside the free points")
      out.append(i)
    return dict(indices=out)

  def _y_min(self):
    if not self.values:
      return np.zeros((0, self.signs.size))
    return np.stack([self.values[i] for i in sorted(self.values)]) * self.signs

  def _need_init(self):
    if self.points is None:
      raise ValueError("the first request must be {'op': 'init', ...}")


def main() -> int:
  global np
  import numpy as np
  if "jax" in sys.modules:
    raise RuntimeError("the optimizer service imported jax; it must not")
  service = Service()
  ops = dict(init=service.init, update=service.update, suggest=service.suggest, state=service.state)
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
