"""The report's noise: error bars drawn from the store's standard errors, and "dominates the
baseline" only beyond 2 standard errors of the difference (paired on the shared evaluation set)."""

import dataclasses
import json

import ml_collections
import numpy as np
import pytest

from ad import configs
from ad.search import objectives as objectives_lib, report
from ad.search.store import Trial, TrialStore

NAMES, DIRECTIONS = ["mlm_accuracy", "latency_ms"], ["max", "min"]


def _row(arch, role, acc, acc_se, lat, lat_se, per_sequence=None, eval_set="E"):
  return Trial(arch=arch, role=role, status="ok", objectives=dict(mlm_accuracy=acc, latency_ms=lat),
               objective_se=dict(mlm_accuracy=acc_se, latency_ms=lat_se),
               distill=dict(eval_set=eval_set, per_sequence=per_sequence or {}))


def test_dominance_beyond_noise_and_noise_blind_side_by_side():
  base = _row("B", "baseline", 0.300, 0.002, 5.0, 0.05)
  clear = _row("clear", "designer", 0.310, 0.002, 3.0, 0.05)  # +0.010 > 2 * sqrt(2) * 0.002
  close = _row("close", "designer", 0.303, 0.002, 3.0, 0.05)  # +0.003: within the noise
  slow = _row("slow", "designer", 0.320, 0.002, 4.95, 0.05)  # faster by less than the latency's noise
  beyond, raw = report.dominating_baseline([clear, close, slow], base, NAMES, DIRECTIONS)
  assert beyond == ["clear"] and raw == ["clear", "close", "slow"]


def test_accuracy_margins_are_paired_on_the_shared_evaluation_set():
  rng = np.random.default_rng(0)
  masked = rng.integers(4, 10, 400)
  a = rng.binomial(masked, rng.beta(2, 5, 400))
  b = np.minimum(masked, a + rng.binomial(1, 0.2, 400))
  per = lambda c: dict(masked=masked.tolist(), mlm_correct=c.tolist())
  ra = _row("a", "designer", a.sum() / masked.sum(), 0.01, 3.0, 0.0, per(a))
  rb = _row("b", "baseline", b.sum() / masked.sum(), 0.01, 3.0, 0.0, per(b))
  paired = report.noise_margins(ra, rb, NAMES)[0]
  assert paired < 2 * np.hypot(0.01, 0.01) * 0.5  # the shared difficulty cancels
  other_set = dataclasses.replace(rb, distill=dict(rb.distill, eval_set="F"))  # not comparable pairwise
  assert report.noise_margins(ra, other_set, NAMES)[0] == pytest.approx(2 * np.hypot(0.01, 0.01))


def test_pareto_plot_draws_two_standard_error_bars(tmp_path):
  rows = [dataclasses.replace(_row("x", "designer", 0.31, 0.004, 3.0, 0.1), id=1),
          dataclasses.replace(_row("y", "designer", 0.29, 0.003, 2.0, 0.2), id=2),
          dataclasses.replace(_row("B", "baseline", 0.30, 0.005, 5.0, 0.3), id=3)]
  drawn = report.plot(str(tmp_path / "p.png"), rows, NAMES, DIRECTIONS)
  assert drawn["x_name"] == "latency_ms" and drawn["y_name"] == "mlm_accuracy"
  got = {t["arch"]: (t["xerr"], t["yerr"]) for t in drawn["trials"]}
  assert got == {"x": pytest.approx((0.2, 0.008)), "y": pytest.approx((0.4, 0.006))}
  assert (drawn["baseline"]["xerr"], drawn["baseline"]["yerr"]) == pytest.approx((0.6, 0.01))
  assert (tmp_path / "p.png").stat().st_size > 10_000


def test_report_and_summary_carry_the_standard_errors(tmp_path):
  store = TrialStore(str(tmp_path))
  store.set_meta("record", dict(designer="random", config=dict(
      search=dict(objectives=[dict(name=n, direction=d, reference=r) for n, d, r in zip(NAMES, DIRECTIONS, [0, 20])],
                  seed=0, measure=dict(batch=1, seq=64)), model=dict(num_blocks=3), teacher=dict(source=""))))
  for arch, role, acc, lat in [("512_128_4_512_4", "baseline", 0.30, 5.0), ("256_64_2_384_2", "initial", 0.32, 2.0)]:
    tid = store.start_trial(arch, role, role, 0, dict(params=1_000_000, flops=1e9), "wd")
    store.finish_trial(tid, "ok", objectives=dict(mlm_accuracy=acc, latency_ms=lat),
                       objective_se=dict(mlm_accuracy=0.003, latency_ms=0.05), distill=dict(eval_set="E"))
  summary = report.write_report(str(tmp_path), store)
  text = (tmp_path / "report.md").read_text()
  assert "0.32 ± 0.003" in text and "beyond the noise" in text
  assert summary["dominating_baseline"] == ["256_64_2_384_2"]
  assert summary["pareto"][0]["mlm_accuracy_se"] == 0.003
  json.dumps(summary)


def test_a_latency_reference_given_as_a_ratio_follows_the_runs_scale_and_a_bad_ratio_is_named():
  objectives = [dict(name="mlm_accuracy", direction="max", reference=0.0),
                dict(name="latency_ms", direction="min", reference=20.0, reference_ratio=2.0)]
  paired = lambda arch, scale: dataclasses.replace(_row(arch, "designer", 0.3, 0.0, 40.0, 0.0),
                                                   measurement=dict(latency_ratio=1.0, reference_scale_ms=scale))
  # two runs of the same students, one on a machine reading three times slower: the point moves with it
  assert report.hypervolume_reference(objectives, [0.0, 20.0], [paired("a", 15.0)]) == [0.0, 30.0]
  assert report.hypervolume_reference(objectives, [0.0, 20.0], [paired("a", 49.0)]) == [0.0, 98.0]
  # nothing paired yet (or a TPU estimate): the reference in ms
  assert report.hypervolume_reference(objectives, [0.0, 20.0], [_row("a", "designer", 0.3, 0, 4.0, 0)]) == [0.0, 20.0]
  search = configs.load_config("quickstart").search.to_dict()
  for bad in (0.0, -1.0, "2x"):
    broken = [objectives[0], dict(objectives[1], reference_ratio=bad)]
    with pytest.raises(ValueError, match=r"search.objectives\[1\].reference_ratio=.*expected a positive number"):
      objectives_lib.objective_spec(ml_collections.ConfigDict(dict(search, objectives=broken)))
  on_accuracy = [dict(objectives[0], reference_ratio=2.0), objectives[1]]
  with pytest.raises(ValueError, match=r"search.objectives\[0\].reference_ratio=2.0.*latency_ms objective"):
    objectives_lib.objective_spec(ml_collections.ConfigDict(dict(search, objectives=on_accuracy)))


def test_a_final_model_card_latency_comes_from_its_trial_in_the_run_directorys_store(tmp_path):
  store = TrialStore(str(tmp_path))
  for arch, lat in (("128_64_1_384_1", 2.5), ("256_64_1_384_1", None)):
    tid = store.start_trial(arch, "initial", "initial", 0, dict(params=1, flops=1.0), str(tmp_path / arch))
    objectives = dict(mlm_accuracy=0.3, **({} if lat is None else dict(latency_ms=lat)))
    store.finish_trial(tid, "ok", objectives=objectives, objective_se={k: 0.01 for k in objectives},
                       measurement=dict(batch=1, seq=128, num_blocks=3, device_kind="cpu"))
  store.close()
  assert report.card_latencies(str(tmp_path)) == {
      "128_64_1_384_1": dict(latency_ms=2.5, batch=1, seq=128, blocks=3, device="cpu")}
  assert report.card_latencies(str(tmp_path / "a_workdir")) == {}  # no store: nothing to state
