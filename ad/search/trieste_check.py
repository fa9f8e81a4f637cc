"""One real trieste EHVI step, run with the optimizer environment's Python (.venv-opt).

Checks that the optimizer environment works (DESIGN.md "Two environments") before the
search relies on it: two GPs (one per objective) over a small discrete space, Expected
Hypervolume Improvement, one `ask`. Imports no JAX. Prints one JSON line.

  .venv-opt/bin/python ad/search/trieste_check.py
"""

import json
import os
import sys

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the optimizer must never take an accelerator
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
  import numpy as np
  import tensorflow as tf
  import trieste
  from trieste.acquisition.function import ExpectedHypervolumeImprovement
  from trieste.acquisition.rule import EfficientGlobalOptimization
  from trieste.ask_tell_optimization import AskTellOptimizer
  from trieste.data import Dataset
  from trieste.models.gpflow import GaussianProcessRegression, build_gpr
  from trieste.models.interfaces import TrainableModelStack
  from trieste.space import DiscreteSearchSpace

  if "jax" in sys.modules:
    raise RuntimeError("the optimizer environment imported jax; it must not")
  tf.random.set_seed(0)
  rng = np.random.default_rng(0)
  grid = np.stack(np.meshgrid(*[np.linspace(0, 1, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)  # 27 points
  space = DiscreteSearchSpace(tf.constant(grid))
  x = grid[rng.choice(len(grid), 6, replace=False)]
  # Two conflicting objectives, both minimized.
  y = np.stack([np.sum(x ** 2, 1), np.sum((x - 1) ** 2, 1)], 1)
  data = Dataset(tf.constant(x), tf.constant(y))
  models = []
  for i in range(2):
    d = Dataset(data.query_points, data.observations[:, i:i + 1])
    models.append((GaussianProcessRegression(build_gpr(d, space, likelihood_variance=1e-5)), 1))
  stack = TrainableModelStack(*models)
  rule = EfficientGlobalOptimization(ExpectedHypervolumeImprovement(reference_point_spec=np.array([4.0, 4.0])))
  opt = AskTellOptimizer(space, data, stack, rule, fit_model=True)
  q = opt.ask().numpy()
  print(json.dumps(dict(trieste=trieste.__version__, tensorflow=tf.__version__, numpy=np.__version__,
                        suggestion=q.tolist(), in_space=bool(any(np.allclose(q[0], g) for g in grid)))))
  return 0


if __name__ == "__main__":
  sys.exit(main())
