"""`ad search` end to end on the CPU with the tiny teacher: resume after SIGKILL, failed and
infeasible trials, constraint pruning, the report rebuilt from the store alone."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from ad import cli, configs
from ad.search import designers, loop, measurement, objectives, report, store as store_lib, trial
from ad.search.store import Trial
from tests.conftest import SEARCH_BASELINE, search_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rows(run_dir):
  path = os.path.join(run_dir, store_lib.STORE_FILE)
  if not os.path.exists(path):
    return []
  db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
  db.row_factory = sqlite3.Row
  try:
    return [dict(r) for r in db.execute("SELECT * FROM trials ORDER BY id")]
  except sqlite3.OperationalError:  # not created yet
    return []
  finally:
    db.close()


@pytest.mark.timeout(1200)  # two `ad search` processes and three trieste services: past 600 s on a loaded machine
def test_a_killed_bo_search_resumes_losing_and_repeating_nothing_and_the_report_is_rebuilt_from_the_store(
    tmp_path, tiny_teacher):
  """`ad search` with the BO designer, killed for real (SIGKILL) after the baseline and the initial
  trial (the two observations a GP needs), then resumed with --resume: one suggestion of the
  trieste service follows, nothing is lost or run twice, and a fresh service fed the history the
  search had suggests the same architecture (the finals, their export and model cards are
  test_reliability_round2.py::test_a_postgresql_password_is_written_nowhere_in_a_finished_run's)."""
  run_dir = str(tmp_path / "search")
  overrides = search_overrides(tiny_teacher, **{"search.num_initial": 1, "search.num_trials": 2,
                                                 "search.designer": "bo",
                                                 "search.measure.scale": "run"})  # checked against its first reading
  args = [sys.executable, "-m", "ad.cli", "search", "--config", "quickstart", "--run-dir", run_dir, "--no-progress"]
  args += [f"--set={o}" for o in overrides]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 400
  while time.time() < deadline and proc.poll() is None:
    if sum(r["status"] == "ok" for r in _rows(run_dir)) >= 2:
      break
    time.sleep(0.5)
  assert proc.poll() is None, f"the search ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  before = {r["arch"]: r for r in _rows(run_dir) if r["status"] != "running"}
  assert len(before) >= 2 and before[SEARCH_BASELINE]["role"] == "baseline"

  done = subprocess.run(args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-4000:]
  rows = _rows(run_dir)
  assert len(rows) == 3 and len({r["arch"] for r in rows}) == 3, "2 search trials + the baseline, none twice"
  assert [r["role"] for r in rows] == ["baseline", "initial", "designer"]
  assert all(r["status"] == "ok" for r in rows), [(r["arch"], r["error"]) for r in rows]
  for arch, r in before.items():  # completed trials were neither lost nor run again
    after = next(x for x in rows if x["arch"] == arch)
    assert (after["id"], after["finished"], after["objectives"]) == (r["id"], r["finished"], r["objectives"])
  # The designed trial came from trieste: a fresh service, fed what the search knew, suggests it too.
  cfg = configs.load_config("quickstart", overrides)
  _, (names, directions, reference), _, cands, _ = loop._validated(cfg, str(tmp_path / "replay"), "bo")
  db = store_lib.TrialStore(run_dir, readonly=True)
  known = db.trials()[:2]
  db.close()
  des = designers.make_designer("bo", cands, directions,
                                report.hypervolume_reference(cfg.search.objectives, reference, known),
                                cfg.search.seed, cfg.search, features=loop.designer_features(cfg, cands, "bo"))
  try:
    initial = designers.initial_design(cands, cfg.search.num_initial, cfg.search.seed)
    assert trial.next_trial(cfg, known, initial, des, names, "bo")[:2] == (rows[2]["arch"], "designer")
  finally:
    des.close()
  # Latencies are paired with the baseline and on one scale across the kill: its first reading.
  db = store_lib.TrialStore(run_dir, readonly=True)
  scale, remeasured = db.get_meta(measurement.LATENCY_SCALE_KEY), db.get_meta(report.REMEASURED_KEY)
  db.close()
  assert scale["arch"] == SEARCH_BASELINE and scale["ms"] == json.loads(rows[0]["measurement"])["reference_ms_median"]
  for r in rows:
    m = json.loads(r["measurement"])
    assert m["reference"] == SEARCH_BASELINE and m["reference_scale_ms"] == scale["ms"]
    assert json.loads(r["objectives"])["latency_ms"] == pytest.approx(m["latency_ratio"] * scale["ms"])
  for r in rows:
    m = json.loads(r["measurement"])
    assert not os.path.isabs(m["trace_dir"]) and not os.path.isabs(r["workdir"])  # a moved run dir stays readable
    assert m["latency_ms_median"] > 0 and os.path.isdir(os.path.join(run_dir, m["trace_dir"]))
    assert json.loads(r["distill"])["steps"] == 3
    assert r["seed"] == 0 and r["code_version"]

  summary = json.loads(done.stdout)
  assert summary["trials"] == 3 and summary["pareto"] and summary["hypervolume"] > 0
  assert remeasured["reference"] == SEARCH_BASELINE  # the front and the reference, timed together
  assert set(remeasured["rows"]) == {SEARCH_BASELINE} | {p["arch"] for p in summary["pareto"]}
  assert summary["time_split"]["trials"] == 3 and 0 < summary["time_split"]["train_steps_share"] < 1

  # The report is rebuilt from the trial store alone (`ad report`), in a directory holding nothing else.
  with open(os.path.join(run_dir, "report.md")) as f:
    first = f.read()
  alone = tmp_path / "store_only"
  alone.mkdir()
  shutil.copy(os.path.join(run_dir, store_lib.STORE_FILE), alone)
  assert cli.main(["report", str(alone)]) == 0
  with open(alone / "report.md") as f:
    assert f.read().splitlines()[1:] == first.splitlines()[1:]  # all but the title (the directory's name)
  assert os.path.getsize(alone / "pareto.png") > 10_000
  assert "Pareto set" in first and all(f"`{p['arch']}`" in first for p in summary["pareto"])
  assert "## Latency, paired with the reference" in first and "| re-measured together |" in first


def test_failed_trial_is_recorded_and_the_search_goes_on(tmp_path, tiny_teacher, monkeypatch):
  """The first trial fails (injected), the second still runs, the report lists the error."""
  from ad.distill import trainer
  from ad.train import steps
  cfg = configs.load_config("quickstart", search_overrides(tiny_teacher, **{
      "search.designer": "random", "search.num_initial": 1, "search.num_trials": 2,
      "constraints.max_params": 4_180_000, "search.baseline_arch": ""}))
  # Fault injection: the trainer raises for one architecture, as a NaN or OOM would.
  real = trainer.distill
  victim = {}

  def distill(arch, *a, **k):
    if not victim:
      victim["arch"] = arch.name
      raise steps.NonFiniteLossError(f"non-finite loss nan at step 1 for {arch.name}")
    return real(arch, *a, **k)
  monkeypatch.setattr(trainer, "distill", distill)
  summary = loop.run_search(cfg, str(tmp_path), log=lambda *_: None, progress=False)
  rows = store_lib.TrialStore(str(tmp_path), create=False).trials()
  failed = [r for r in rows if r.status == "failed"]
  assert [r.arch for r in failed] == [victim["arch"]] and "NonFiniteLossError" in failed[0].error
  assert [r.status for r in rows] == ["failed", "ok"] and summary["status_counts"]["failed"] == 1
  for r in rows:  # max_params pruned the two-FFN architectures before the search
    assert r.screening["params"] <= 4_180_000 and r.arch.endswith("_1")  # no baseline in this run
  with open(tmp_path / "report.md") as f:
    assert "NonFiniteLossError" in f.read()
  with pytest.raises(FileExistsError, match="--resume"):
    loop.run_search(cfg, str(tmp_path), log=lambda *_: None, progress=False)


def test_latency_constraint_marks_trials_infeasible_without_training(tmp_path, tiny_teacher):
  cfg = configs.load_config("quickstart", search_overrides(tiny_teacher, **{
      "search.designer": "random", "search.num_initial": 1, "search.num_trials": 1, "search.baseline_arch": "",
      "constraints.max_latency_ms": 1e-6}))
  loop.run_search(cfg, str(tmp_path), log=lambda *_: None, progress=False)
  (row,) = store_lib.TrialStore(str(tmp_path), create=False).trials()
  assert row.status == "infeasible" and "constraints.max_latency_ms" in row.error
  assert row.distill is None and not os.path.exists(tmp_path / "trials" / row.arch)


def test_a_baseline_checkpoint_is_measured_and_scored_as_it_is_and_marked(tmp_path, tiny_teacher):
  """search.baseline_checkpoint: a MobileBERT-family HF directory (written by transformers) is
  measured at its own depth, scored on the held-out set without training, kept out of the
  designer's observations and the front, and named in the report; a bad one is refused up front."""
  from ad.distill import evaluation
  from ad.data import pretrain
  from ad.models import hf
  from tests.conftest import tiny_data_config, write_tiny_mobilebert
  ckpt = write_tiny_mobilebert(tmp_path / "mobilebert_tiny")
  cfg = configs.load_config("quickstart", search_overrides(tiny_teacher, **{
      "search.designer": "random", "search.num_initial": 1, "search.num_trials": 1, "search.baseline_arch": "",
      "search.baseline_checkpoint": ckpt, "constraints.max_latency_ms": 1e-6}))
  summary = loop.run_search(cfg, str(tmp_path / "run"), log=lambda *_: None, progress=False)
  rows = store_lib.TrialStore(str(tmp_path / "run"), create=False).trials()
  (row,) = [r for r in rows if r.role == "checkpoint"]
  assert row.arch == "checkpoint:mobilebert_tiny" and row.status == "ok"
  assert row.measurement["num_blocks"] == 3 and row.objectives["latency_ms"] > 0
  es = evaluation.build_eval_set(tiny_data_config(), pretrain.load_vocab(tiny_data_config()), log=lambda *_: None)
  direct = evaluation.evaluate(hf.load_mobilebert(ckpt), es)
  assert row.objectives["mlm_accuracy"] == pytest.approx(direct["mlm_accuracy"])
  assert row.objective_se["mlm_accuracy"] == pytest.approx(direct["mlm_accuracy_se"])
  assert [t["arch"] for t in objectives.designer_trials(rows, ["mlm_accuracy", "latency_ms"])] == [
      r.architecture for r in rows if r.role != "checkpoint"]
  assert summary["checkpoint"]["arch"] == row.arch and "checkpoint:mobilebert_tiny" not in str(summary["pareto"])
  assert "Baseline checkpoint `checkpoint:mobilebert_tiny`" in (tmp_path / "run" / "report.md").read_text()
  for bad, match in ((str(tmp_path / "none"), "no such directory"), (tiny_teacher + "/hf", "model_type='bert'")):
    with cfg.unlocked():
      cfg.search.baseline_checkpoint = bad
    with pytest.raises(Exception, match=match):
      loop.run_search(cfg, str(tmp_path / "bad"), log=lambda *_: None, progress=False)
  assert not (tmp_path / "bad").exists()


def test_objective_and_choice_errors_name_the_key(tiny_teacher):
  cfg = configs.load_config("quickstart", search_overrides(tiny_teacher))
  with cfg.unlocked():
    cfg.search.objectives = [dict(name="bleu", direction="max", reference=0.0)]
  with pytest.raises(ValueError, match=r"search.objectives\[0\].name='bleu'"):
    objectives.objective_spec(cfg.search)
  with pytest.raises(ValueError, match="final.choose='best'"):
    report.choose_finals([], ["mlm_accuracy"], ["max"], configs.ml_collections.ConfigDict(dict(count=1, choose="best")))


def test_a_search_with_a_tpu_target_uses_and_labels_xla_estimates(tmp_path, tiny_teacher):
  """search.measure.target = 'tpu:v5e': each trial's latency is XLA's estimate for one v5e chip
  (compiled here, never run), stored and reported as an estimate; objectives that need no training
  (latency and parameters) keep the test to compilation."""
  cfg = configs.load_config("quickstart", search_overrides(tiny_teacher, **{
      "search.num_initial": 2, "search.num_trials": 2, "search.designer": "random",
      "search.measure.target": "tpu:v5e", "search.measure.seq": 128}))
  cfg.search.objectives = [dict(name="latency_ms", direction="min", reference=10.0),
                           dict(name="params", direction="min", reference=1e9)]
  run_dir = str(tmp_path / "tpu_search")
  summary = loop.run_search(cfg, run_dir, log=lambda *_: None, progress=False)
  rows = _rows(run_dir)
  assert len(rows) == 3 and all(r["status"] == "ok" for r in rows), [(r["arch"], r["error"]) for r in rows]
  from ad import aot
  for r in rows:
    m = json.loads(r["measurement"])
    assert m["estimate"] and m["target"] == "tpu:v5e" and m["device_kind"] == "TPU v5 lite"
    assert m["kernels"]["impl"] == aot.ESTIMATE_KERNELS
    again = aot.estimate_latency(r["arch"], cfg.model, "v5e", batch=1, seq=128, log=lambda *_: None)
    assert json.loads(r["objectives"])["latency_ms"] == again["latency_ms_median"] > 0
  text = open(os.path.join(run_dir, "report.md")).read()
  assert "latency estimated by XLA's TPU cost model for one v5e chip" in text and "(estimate, tpu:v5e)" in text
  assert summary["trials"] == 3
  assert "estimated by XLA's TPU cost model (tpu:v5e), not measured" in [a for a in summary["pareto_axes"]
                                                                          if a.startswith("latency_ms")][0]


def test_searches_on_one_machine_share_its_quiet_latency_scale_and_a_loaded_reading_is_not_kept(tmp_path, monkeypatch):
  """search.measure.scale = 'machine': the first quiet reading of the reference on this machine is
  cached and every later search here uses it (two runs hours apart then agree in ms where their
  ratios agree); a reading under load serves its own run only; another machine or another
  reference program has its own scale."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  cfg = configs.load_config("quickstart")
  cpu = dict(cpu="model A", node="host-1")
  reading = lambda ms: dict(arch=SEARCH_BASELINE, ms=ms, target="")
  loaded = measurement.machine_scale(reading(49.3), cfg, other_load=0.6, cpu=cpu)
  assert (loaded["ms"], loaded["source"]) == (49.3, "run")  # this run's only
  first = measurement.machine_scale(reading(15.0), cfg, other_load=0.02, cpu=cpu)
  later = measurement.machine_scale(reading(21.7), cfg, other_load=0.01, cpu=cpu)
  assert (first["ms"], first["source"]) == (15.0, "machine") and (later["ms"], later["source"]) == (15.0, "machine")
  assert measurement.machine_scale(reading(9.0), cfg, other_load=0.0, cpu=dict(cpu, node="host-2"))["ms"] == 9.0
  other_program = configs.load_config("quickstart", ["model.num_blocks=2"])
  assert measurement.machine_scale(reading(7.0), other_program, other_load=0.0, cpu=cpu)["ms"] == 7.0
  assert measurement.machine_scale(reading(5.0), cfg, other_load=None, cpu=cpu)["ms"] == 15.0  # cached, load unknown


def test_bo_models_the_latency_limit_only_when_asked_and_sees_every_measured_latency(tiny_teacher):
  """search.bo.constraints = 'model' hands BO constraints.max_latency_ms, and the designer's view
  of the store gives every measured trial, infeasible ones too, its latency and standard error."""
  cfg = configs.load_config("quickstart", search_overrides(tiny_teacher, **{"constraints.max_latency_ms": 3.0}))
  assert objectives.modelled_constraints(cfg) == []  # the default: filtered only
  with cfg.unlocked():
    cfg.search.bo.constraints = "model"
  assert objectives.modelled_constraints(cfg) == [3.0]
  m = lambda ms: dict(latency_ms_median=ms, latency_rel_ci95=0.0392)
  rows = [Trial(arch="128_64_1_256_1", role="initial", status="ok", objectives=dict(mlm_accuracy=0.1, latency_ms=2.0),
                objective_se=dict(mlm_accuracy=0.01, latency_ms=0.04), measurement=m(2.0)),
          Trial(arch="256_64_1_256_1", role="initial", status="infeasible", measurement=m(5.0)),
          Trial(arch="256_64_2_256_1", role="designer", status="failed")]
  view = objectives.designer_trials(rows, ["mlm_accuracy", "latency_ms"], [3.0])
  assert [t.get("constraints") for t in view] == [[2.0], [5.0], None]
  assert view[1]["status"] == "infeasible" and view[1]["constraint_noise"] == [pytest.approx(0.1)]
  assert "constraints" not in objectives.designer_trials(rows, ["mlm_accuracy", "latency_ms"])[1]
