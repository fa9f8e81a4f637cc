"""The trieste optimizer service (optimizer environment, own process) through its client."""

import numpy as np
import pytest

from ad import space as space_lib
from ad.search import designers, pareto

DIRECTIONS = ["max", "min"]
REFERENCE = [0.0, 12.0]


def _objectives(arch):
  size = arch.hidden * arch.num_ffn / 512 + arch.intermediate / 512
  return [float(np.log1p(size) + 0.05 * arch.heads), float(size + 1.0 / arch.heads)]


@pytest.fixture(scope="module")
def cands():
  space = space_lib.DesignSpace()
  return designers.Candidates(space.archs()[::5], space)  # 116 architectures spread over the space


@pytest.fixture(scope="module")
def history(cands):
  archs = designers.initial_design(cands, 6, seed=0)
  trials = [dict(arch=a, status="ok", values=_objectives(a)) for a in archs[:5]]
  trials.append(dict(arch=archs[5], status="failed"))
  return trials


@pytest.fixture(scope="module")
def bo(cands, history, tmp_path_factory):
  d = designers.TriesteDesigner(cands, DIRECTIONS, REFERENCE, seed=0,
                                log_path=str(tmp_path_factory.mktemp("svc") / "service.log"))
  d.update(history)
  yield d
  d.close()


def test_round_trip_runs_trieste_in_the_optimizer_environment(bo, history):
  state = bo.state()
  assert state["trieste"] == "4.6.1" and state["numpy"].startswith("1.")
  assert state["observations"] == 5 and state["failed"] == 1
  ok = [t for t in history if t["status"] == "ok"]
  expected = pareto.hypervolume(pareto.to_min([t["values"] for t in ok], DIRECTIONS),
                                pareto.to_min([REFERENCE], DIRECTIONS)[0])
  assert state["hypervolume"] == pytest.approx(expected)


def test_suggestions_are_new_and_avoid_pending_and_failed(bo, cands, history):
  seen = {t["arch"].name for t in history}
  (one,) = bo.suggest(1)
  assert one.name in cands.index and one.name not in seen
  batch = bo.suggest(3, pending=[one])  # HIPPO batch
  names = [a.name for a in batch]
  assert len(set(names)) == 3 and one.name not in names and not seen & set(names)


def test_same_seed_and_observations_give_the_same_suggestion_even_after_a_restart(bo, cands, history):
  (first,) = bo.suggest(1)
  bo.proc.kill()  # the service dies; the client restarts it and re-feeds the history
  bo.proc.wait()
  (again,) = bo.suggest(1)
  assert again == first  # a fresh process, the same seed and observations: the same suggestion


def test_identical_observations_do_not_break_the_gp_and_bad_input_is_refused(cands):
  """Two trials with the same accuracy (common after a short flash distillation): zero spread in one
  objective must still give a suggestion (build_gpr alone would start a kernel variance at 0)."""
  archs = designers.initial_design(cands, 2, seed=1)
  d = designers.TriesteDesigner(cands, DIRECTIONS, REFERENCE, seed=0)
  try:
    d.update([dict(arch=a, status="ok", values=[0.078125, 3.0 + i]) for i, a in enumerate(archs)])
    (s,) = d.suggest(1)
    assert s.name in cands.index and s not in archs
    d.update(d.trials + [dict(arch=cands.archs[1], status="ok", values=[0.1])])  # one value for two objectives
    with pytest.raises(designers.OptimizerServiceError, match="expected 2 finite numbers"):
      d.suggest(1)
  finally:
    d.close()


def test_a_single_objective_search_uses_expected_improvement_one_point_at_a_time(cands):
  """003 4.6's accuracy-only / latency-only searches: one GP, EI; a batch is refused with the reason."""
  archs = designers.initial_design(cands, 4, seed=2)
  d = designers.TriesteDesigner(cands, ["min"], [12.0], seed=0)
  try:
    d.update([dict(arch=a, status="ok", values=[_objectives(a)[1]]) for a in archs])
    (s,) = d.suggest(1)
    assert s.name in cands.index and s not in archs
    with pytest.raises(designers.OptimizerServiceError, match="one point at a time"):
      d.suggest(2)
  finally:
    d.close()


def test_each_observation_enters_the_gp_with_its_own_noise(cands, history):
  """The same observations, one of them given a standard error 100x larger: the accuracy GP's
  posterior at that point is looser than at the others (with equal standard errors it is not),
  and its mean follows that observation less; the latency GP, whose noise did not change, does
  not single the point out."""
  ok = [dict(t, noise=[0.002, 0.01]) for t in history if t["status"] == "ok"]
  noisy = [dict(t) for t in ok]
  noisy[2] = dict(noisy[2], noise=[0.2, 0.01])
  from concurrent.futures import ThreadPoolExecutor

  def posterior(trials):  # one service each, started side by side
    d = designers.TriesteDesigner(cands, DIRECTIONS, REFERENCE, seed=0)
    try:
      d.update(trials)
      return d.predict([t["arch"] for t in ok])
    finally:
      d.close()
  with ThreadPoolExecutor(2) as pool:
    posts = list(pool.map(posterior, (ok, noisy)))
  (m0, v0), (m1, v1) = [(np.asarray(p["mean"]), np.asarray(p["variance"])) for p in posts]
  y = np.asarray([t["values"] for t in ok])
  others = [0, 1, 3, 4]
  assert v0[2, 0] < 1.5 * np.median(v0[others, 0]), v0[:, 0]  # equal noise: no point singled out
  assert v1[2, 0] > 3 * np.median(v1[others, 0]), v1[:, 0]  # the noisy observation counts for less
  assert abs(m1[2, 0] - y[2, 0]) > abs(m0[2, 0] - y[2, 0])
  assert v1[2, 1] < 1.5 * np.median(v1[others, 1]), v1[:, 1]


def test_hippo_moves_the_next_suggestion_away_from_a_pending_point_and_unknown_methods_are_named(bo, cands, history):
  """With a trial in flight, 'exclude' only avoids it, 'hippo' also penalizes candidates whose
  predicted objectives are close to the pending point's, 'believer' conditions the GPs on it; each
  suggests a new point, and HIPPO's lies farther from the pending one in objective space."""
  seen = {t["arch"].name for t in history}
  (pending,) = bo.suggest(1)
  picked = {}
  try:
    for method in ("exclude", "believer", "hippo"):
      bo.pending_method = method
      (picked[method],) = bo.suggest(1, pending=[pending])
      assert picked[method] != pending and picked[method].name not in seen
    bo.pending_method = "nearest"
    with pytest.raises(designers.OptimizerServiceError, match=r"pending_method='nearest'; expected one of "
                                                              r"\('exclude', 'believer', 'hippo'\)"):
      bo.suggest(1, pending=[pending])
  finally:
    bo.pending_method = "exclude"
  mean = np.asarray(bo.predict([pending, picked["exclude"], picked["hippo"]])["mean"])
  scale = np.abs(mean).max(0)
  distance = lambda i: float(np.linalg.norm((mean[i] - mean[0]) / scale))
  assert picked["hippo"] != picked["exclude"] and distance(2) > distance(1), (picked, mean)


def test_training_free_features_let_the_gps_predict_what_size_predicts(cands, tmp_path):
  """Objectives that follow the size: with log size among its inputs (search.bo.training_free), BO's
  GPs, fitted on 6 observations, predict the other candidates far better than from the encoding
  alone."""
  size = lambda a: a.hidden * (a.intermediate * a.num_ffn + 4 * a.bottleneck) / 1e5
  objectives = lambda a: [float(np.log(size(a))), float(np.sqrt(size(a)))]
  features = designers.training_free_features([(size(a), size(a) * a.heads) for a in cands.archs])
  assert features.shape == (len(cands), 2) and features.min() == 0.0 and features.max() == 1.0
  seen = designers.initial_design(cands, 6, seed=1)
  others = [a for a in cands.archs if a not in seen]
  truth = np.asarray([objectives(a) for a in others])
  errors = []
  for f in (None, features):
    d = designers.TriesteDesigner(cands, DIRECTIONS, REFERENCE, seed=0, features=f, log_path=str(tmp_path / "s.log"))
    try:
      d.update([dict(arch=a, status="ok", values=objectives(a)) for a in seen])
      mean = np.asarray(d.predict(others)["mean"])
    finally:
      d.close()
    errors.append(np.sqrt(((mean - truth) ** 2).mean(0)) / truth.std(0))  # RMSE in units of the spread
  without, with_features = errors
  assert np.all(with_features < 0.5 * without), (without, with_features)
  with pytest.raises(ValueError, match=r"features: expected \[116, K\]"):
    designers.TriesteDesigner(cands, DIRECTIONS, REFERENCE, features=features[:3])


def test_a_modelled_constraint_keeps_suggestions_feasible_where_excluding_infeasible_points_does_not(cands, tmp_path):
  """Accuracy grows with the size and a latency limit (known only once a trial is measured) caps
  the size at its median. Told only that some trials were infeasible, BO keeps proposing big
  students; modelling the measured latencies (search.bo.constraints = 'model', EHVI or EI x the
  probability of feasibility), it stays under the limit."""
  size = lambda a: a.hidden * (a.intermediate * a.num_ffn + 4 * a.bottleneck) / 1e5
  limit = float(np.median([size(a) for a in cands.archs]))

  def observe(a, modelled):
    t = dict(arch=a, status="ok", values=[float(np.log(size(a)))])
    if modelled:
      t.update(constraints=[size(a)], constraint_noise=[0.0])
    return dict(t, status="infeasible", values=None) if size(a) > limit else t

  infeasible = {}
  for modelled in (False, True):
    d = designers.TriesteDesigner(cands, ["max"], [0.0], seed=0, log_path=str(tmp_path / "s.log"),
                                  constraints=[limit] if modelled else ())
    try:
      trials = [observe(a, modelled) for a in designers.initial_design(cands, 16, seed=3)]
      assert any(t["status"] == "infeasible" for t in trials) and sum(t["status"] == "ok" for t in trials) >= 2
      picked = []
      for _ in range(6):
        d.update(trials)
        (a,) = d.suggest(1)
        picked.append(a)
        trials.append(observe(a, modelled))
      infeasible[modelled] = sum(size(a) > limit for a in picked)
      if modelled:
        assert d.state()["infeasible"] == sum(t["status"] == "infeasible" for t in trials)
    finally:
      d.close()
  assert infeasible[True] == 0 and infeasible[False] >= 2, infeasible


def test_a_batch_under_a_modelled_constraint_and_bad_constraint_values_are_refused(cands, history, tmp_path):
  d = designers.TriesteDesigner(cands, DIRECTIONS, REFERENCE, seed=0, log_path=str(tmp_path / "s.log"),
                                constraints=[3.0])
  try:
    d.update([dict(t, constraints=[t["values"][1]]) if t["status"] == "ok" else t for t in history])
    batch = d.suggest(2)  # HIPPO over EHVI x PoF (the fresh path's tagged models)
    assert len({a.name for a in batch}) == 2
    # one feasible observation (no GPs to fit): a seeded draw, among points the constraint GP expects
    # to be feasible, instead of the error that used to stop a search whose initial design was infeasible
    few = [history[0]] + [dict(arch=t["arch"], status="infeasible", constraints=[t["values"][1]])
                          for t in history[1:] if t["status"] == "ok"]
    d.close()
    d.update(few)
    (a,) = d.suggest(1)
    assert a.name not in {t["arch"].name for t in history}
    d.update(history + [dict(arch=cands.archs[0], status="infeasible", constraints=[1.0, 2.0])])
    with pytest.raises(designers.OptimizerServiceError, match=r"constraints \[1.0, 2.0\].*expected 1 finite"):
      d.suggest(1)
  finally:
    d.close()
