"""The search-efficiency experiment's problems and bookkeeping (experiments/search_efficiency.py).

Cheap: lookups only, no training, no optimizer service (BO is tested in tests/search/).
"""

import csv

import numpy as np
import pytest

from ad import space as space_lib
from ad.search import pareto
from experiments import search_efficiency as se


@pytest.fixture(scope="module")
def analytic():
  return se.analytic_problem()


def test_the_analytic_front_is_exactly_the_zero_distance_points(analytic):
  """DTLZ2's front is g = 0 (2 heads, 4 FFNs): those points lie on the unit circle, and every other
  point is dominated by the g = 0 point at the same position."""
  archs = analytic.cands.archs
  front = pareto.pareto_mask(analytic.values)
  on_circle = np.asarray([a.heads == 2 and a.num_ffn == 4 for a in archs])
  assert np.array_equal(front, on_circle) and front.sum() == 48
  np.testing.assert_allclose(np.linalg.norm(analytic.values[front], axis=1), 1.0, rtol=1e-12)
  dom = analytic.dominates_baseline()
  assert dom.sum() == 9 and not dom[analytic.cands.index[space_lib.MOBILEBERT.name]]


def test_searches_share_the_initial_design_and_never_repeat(analytic):
  runs = {d: se.run_one(analytic, d, seed=3, budget=20, num_initial=6) for d in ("random", "evolutionary", "firefly")}
  for r in runs.values():
    assert len(r["order"]) == 20 == len(set(r["order"])) and space_lib.MOBILEBERT.name not in r["order"]
  assert len({tuple(r["order"][:6]) for r in runs.values()}) == 1  # the same initial design for the seed
  m = se.metrics(analytic, runs["random"])
  hv = np.asarray(m["hv"])
  assert np.all(np.diff(hv) >= 0) and 0 < hv[-1] <= 1
  hits = [i + 1 for i, n in enumerate(runs["random"]["order"])
          if analytic.dominates_baseline()[analytic.cands.index[n]]]
  assert m["first"] == (hits[0] if hits else None) and m["three"] == (hits[2] if len(hits) >= 3 else None)


def test_an_exhaustive_search_reaches_the_whole_front(analytic):
  small = se.Problem("small", se.designers_lib.Candidates(analytic.cands.archs[:40], analytic.cands.space),
                     analytic.values[:40], analytic.objectives, analytic.directions, analytic.reference,
                     analytic.cands.archs[0])
  r = se.run_one(small, "random", seed=0, budget=39, num_initial=4)
  assert se.metrics(small, r)["hv"][-1] == pytest.approx(1.0)


def test_a_malformed_table_is_refused_with_file_and_row(tmp_path):
  path = tmp_path / "t.csv"
  row = dict(latency_rel_ci95="0.02", masked_tokens="2047", params="4000000", flops="1e8")
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["arch", "mlm_accuracy", "latency_ms_median"] + list(row))
    w.writeheader()
    w.writerow(dict(arch="512_128_4_512_4", mlm_accuracy="0.1", latency_ms_median="4.0", **row))
    w.writerow(dict(arch="256_128_4_512_4", mlm_accuracy="", latency_ms_median="2.0", **row))
  with pytest.raises(ValueError, match=r"t.csv: row 3 has no 'mlm_accuracy'"):
    se.table_problem(str(path))
  with pytest.raises(FileNotFoundError, match="experiments.tabular"):
    se.table_problem(str(tmp_path / "missing.csv"))


def test_simulated_workers_run_in_rounds_with_the_round_in_flight_never_suggested_twice(analytic):
  r = se.run_workers(analytic, seed=1, budget=18, num_initial=6, workers=4, pending="exclude", designer="random")
  assert len(r["order"]) == 18 == len(set(r["order"])) and space_lib.MOBILEBERT.name not in r["order"]
  # the initial design in rounds of 4 (0, 0, 0, 0, 1, 1), then 4 suggestions per round, the last one cut short
  assert r["rounds"] == [0, 0, 0, 0, 1, 1] + [2] * 4 + [3] * 4 + [4] * 4
  assert r["order"][:6] == se.run_one(analytic, "random", seed=1, budget=6, num_initial=6)["order"]


def test_the_fidelity_problem_sees_flash_and_latency_with_their_noise_and_knows_the_regular_truth(tmp_path):
  import os
  import tarfile
  with tarfile.open(os.path.join(se.RESULTS, "fidelity_12", "runs_fidelity_12.tar.gz")) as tar:
    tar.extractall(tmp_path, filter="data")
  p = se.fidelity_problem(str(tmp_path / "fidelity_12"))
  assert len(p.cands) == 13 and p.baseline.name in p.cands.index
  i = p.cands.index["128_64_1_384_2"]
  read = lambda f: se.files.read_json(str(tmp_path / "fidelity_12" / "128_64_1_384_2" / f))
  flash, regular, measured = read("flash_0.05.json"), read("regular.json"), read("measure.json")
  assert list(p.values[i]) == [flash["mlm_accuracy"], measured["latency_ms_median"]]
  assert p.noise[i][0] == flash["mlm_accuracy_se"] and p.truth[i] == regular["mlm_accuracy"] != flash["mlm_accuracy"]
  assert p.features.shape == (13, 2)
  assert p.features.min() == 0.0 and p.features.max() == 1.0
  t = p.trial(p.cands.archs[i])
  assert t["values"] == list(p.values[i]) and t["noise"] == list(p.noise[i])
  with pytest.raises(FileNotFoundError, match="runs_fidelity_12.tar.gz"):
    se.fidelity_problem(str(tmp_path))
