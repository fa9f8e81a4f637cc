"""The learned latency predictor (004): it learns a latency surface over the design space, its
held-out error is computed only on architectures its model never saw, and bad input is refused."""

import csv
import json

import numpy as np
import pytest

from ad import cli
from ad import space as space_lib
from ad.search import latency_model as lm

FAST = dict(seeds=1, steps=1000)


def _space_sample(n: int, seed: int = 0):
  archs = space_lib.DesignSpace().archs()
  pick = np.random.default_rng(seed).choice(len(archs), n, replace=False)
  archs = [archs[i] for i in pick]
  blocks = [int(b) for b in np.random.default_rng(seed + 1).choice([1, 3, 6], n)]
  x = lm.features(archs, blocks)
  # A smooth synthetic latency: fixed cost plus work that grows with width, FFNs and depth.
  lat = 0.5 + 1e-6 * x[:, 5] * (x[:, 0] * x[:, 1] * 2 + x[:, 1] * x[:, 3] * x[:, 4]) + 0.05 * x[:, 2]
  return archs, blocks, x, lat


def _measurement_csv(tmp_path, monkeypatch, seed: int):
  """20 sampled architectures written as a CSV of harness measurements; `lm.fit` made the real fit
  with fewer steps. Returns (path, blocks, features, latencies)."""
  archs, blocks, x, lat = _space_sample(20, seed=seed)
  path = tmp_path / "measured.csv"
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["arch", "num_blocks", "latency_ms_median", "flops"])
    for a, k, row, y in zip(archs, blocks, x, lat):
      w.writerow([a.name, k, y, 1e6 * k * row[0] * row[3]])
  real_fit = lm.fit
  monkeypatch.setattr(lm, "fit", lambda x, y, **kw: real_fit(x, y, **FAST))
  return path, blocks, x, lat


def test_held_out_predictions_come_from_models_that_never_saw_them():
  _, _, x, lat = _space_sample(60)
  r = lm.held_out_error(x, lat, folds=4, **FAST)
  fold = np.asarray(r["fold"])
  assert sorted(np.bincount(fold)) == [15, 15, 15, 15]  # every architecture held out exactly once
  for f in range(4):  # refitting without fold f gives exactly the reported predictions for fold f
    again = lm.fit(x[fold != f], lat[fold != f], **FAST).predict_ms(x[fold == f])
    np.testing.assert_allclose(np.asarray(r["predicted_ms"])[fold == f], again, rtol=1e-5)
  # It learns the surface: far better than predicting the training folds' mean latency.
  constant = np.asarray([lat[fold != f].mean() for f in fold])
  assert r["mlp"]["mape"] < 0.4 * np.mean(np.abs(constant - lat) / lat) and r["mlp"]["kendall_tau"] > 0.8, r["mlp"]
  # A model that has seen an architecture fits it better than the held-out estimate says.
  seen = lm.fit(x, lat, **FAST).predict_ms(x)
  assert np.mean(np.abs(seen - lat) / lat) < r["mlp"]["mape"]


def test_bad_input_is_refused_with_what_was_expected(tmp_path):
  _, _, x, lat = _space_sample(6)
  with pytest.raises(ValueError, match="5-fold cross-validation needs at least 10"):
    lm.held_out_error(x, lat)
  with pytest.raises(ValueError, match="positive and finite"):
    lm.fit(x, np.where(np.arange(6) == 2, -1.0, lat))
  with pytest.raises(ValueError, match="lacks 'flops'"):
    lm.from_measurements([dict(arch="512_128_4_512_4", num_blocks=3, latency_ms_median=2.0)])
  bad = tmp_path / "bad.csv"
  bad.write_text("arch,latency\n512_128_4_512_4,2.0\n")
  with pytest.raises(ValueError, match=r"bad.csv: expected a CSV with the columns"):
    lm.load_measurements(str(bad))
  with pytest.raises(FileNotFoundError, match="run directory or a CSV"):
    lm.load_measurements(str(tmp_path / "missing.csv"))


def test_cli_reports_the_held_out_error_of_a_measurement_table(tmp_path, capsys, monkeypatch):
  path, blocks, _, _ = _measurement_csv(tmp_path, monkeypatch, seed=3)
  assert cli.main(["latency-model", str(path), "--folds", "4", "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["architectures"] == 20 and len(out["predicted_ms"]) == 20 and out["names"][0].endswith(f"x{blocks[0]}")
  assert set(out) >= {"mlp", "flops_baseline"} and out["mlp"]["mape"] >= 0


def test_predicted_latency_is_an_objective_with_the_held_out_error_as_its_noise(tmp_path, monkeypatch):
  from ad import configs
  from ad.search import objectives, trial
  path, blocks, x, _ = _measurement_csv(tmp_path, monkeypatch, seed=5)
  cfg = configs.load_config("quickstart")
  cfg.search.objectives = [dict(name="mlm_accuracy", direction="max", reference=0.0),
                           dict(name="predicted_latency_ms", direction="min", reference=20.0)]
  with pytest.raises(ValueError, match=r"search.latency_model.source='': the objective predicted_latency_ms needs"):
    objectives.objective_spec(cfg.search)
  cfg.search.latency_model.source = str(path)
  names, _, _ = objectives.objective_spec(cfg.search)
  _, screen, _ = trial.trial_target("512_128_4_512_4", cfg, str(tmp_path / "run"), names)  # nothing runs yet
  predictor, err = lm.predictor_for(str(path))
  expected = predictor.predict_ms(lm.features([space_lib.Arch.parse("512_128_4_512_4")], [3]))[0]
  assert screen["predicted_latency_ms"] == pytest.approx(expected)
  assert screen["predicted_latency_extrapolated"] is (not (np.asarray(x)[:, :5].max(0) >= [512, 128, 4, 512, 4]).all()
                                                      or max(blocks) < 3)
  vals, ses = objectives.objective_values(names, dict(mlm_accuracy=0.2, mlm_accuracy_se=0.003), None, screen)
  assert vals["predicted_latency_ms"] == pytest.approx(expected)
  assert ses["predicted_latency_ms"] == pytest.approx(expected * err["mlp"]["rms_log_error"]) and ses["predicted_latency_ms"] > 0
