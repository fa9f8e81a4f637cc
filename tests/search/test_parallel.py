"""`ad search --workers 2` end to end on the CPU: two worker processes, one killed with -9 in the
middle of its trial; the trial is taken over after its lease and completed; no trial runs twice
(beyond the takeover) and none is lost. The store's claim/lease semantics on both backends are
in test_store.py."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ad import startup
from ad.search import store as store_lib
from ad.search.store import Trial
from tests.conftest import search_overrides
from tests.search.test_search_loop import ROOT, _rows


@pytest.mark.serial  # two worker processes of its own: on the 2-core machine, not beside another test
def test_two_workers_finish_a_search_and_a_killed_workers_trial_is_taken_over(tmp_path, tiny_teacher):
  run_dir = str(tmp_path / "search")
  args = [sys.executable, "-m", "ad.cli", "search", "--config", "quickstart", "--run-dir", run_dir, "--no-progress",
          "--workers", "2"]
  args += [f"--set={o}" for o in search_overrides(tiny_teacher, **{
      "search.num_initial": 2, "search.num_trials": 2, "search.designer": "random", "search.baseline_arch": "",
      "search.workers.lease_s": 15.0, "search.workers.poll_s": 0.2})]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  victim, deadline = None, time.time() + 400
  while time.time() < deadline and proc.poll() is None and victim is None:
    running = [r for r in _rows(run_dir) if r["status"] == "running" and r["worker"]]
    if running:
      victim = running[0]
      pids = subprocess.run(["pgrep", "-f", "--", f"--worker-id {victim['worker']}"], capture_output=True,
                            text=True).stdout.split()
      assert pids, victim
      for pid in pids:
        os.kill(int(pid), signal.SIGKILL)  # the worker dies mid-trial, its lease stops being renewed
    time.sleep(0.2)
  assert victim is not None, "no trial ever ran"
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  rows = _rows(run_dir)
  assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}, [(r["arch"], r["status"], r["error"]) for r in rows]
  assert len({r["arch"] for r in rows}) == 2  # no architecture twice
  (taken,) = [r for r in rows if r["id"] == victim["id"]]
  assert taken["attempts"] == 2, "the killed worker's trial was claimed once more, by the next worker"
  assert all(r["attempts"] == 1 for r in rows if r["id"] != victim["id"]), "no other trial ran twice"
  assert f"worker {victim['worker']} exited with code -9; restarting it" in err
  store = store_lib.TrialStore(run_dir, create=False)
  assert store.get_meta("search_state") == "done"
  summary = json.loads(out[out.index("{"):])
  assert summary["status_counts"]["ok"] == 2
  logs = sorted(os.listdir(os.path.join(run_dir, "workers")))
  assert logs == ["w0.log", "w1.log"]
  workers = {w["worker"]: w for w in summary["workers"]}
  assert sum(w["trials"] for w in workers.values()) == 2 and all(0 < w["utilization"] <= 1 for w in workers.values()
                                                                 if w["trials"])
  with open(os.path.join(run_dir, "report.md")) as f:
    report = f.read()
  assert "## Workers" in report and f"Takeovers: `{victim['arch']}`" in report


def test_failed_and_in_flight_trials_are_never_observations_of_the_designer():
  from ad.search import objectives
  names = ["mlm_accuracy", "latency_ms"]
  ok = Trial(arch="128_64_1_384_1", role="initial", status="ok", objectives=dict(mlm_accuracy=0.1, latency_ms=2.0),
             objective_se=dict(mlm_accuracy=0.01, latency_ms=0.1))
  rows = [ok] + [Trial(arch=f"128_64_1_384_{i}", role="designer", status=st)
                 for i, st in ((2, "failed"), (4, "queued"), (6, "running"))]
  rows.append(Trial(arch="128_64_2_384_2", role="designer", status="trained"))
  seen = objectives.designer_trials(rows, names)
  assert [(t["arch"].name, t["status"]) for t in seen] == [("128_64_1_384_1", "ok"), ("128_64_1_384_2", "failed")]
  assert "values" not in seen[1] and seen[0]["values"] == [0.1, 2.0]  # the GP gets values from ok trials only


def test_the_failure_budget_stops_the_search_with_the_last_error():
  from ad.search import trial
  rows = [Trial(arch=f"a{i}", role="designer", status="failed", error=f"NonFiniteLossError: nan at step {i}\ntrace")
          for i in range(3)]
  trial.failure_budget_check(rows, 3)  # at the budget: goes on
  trial.failure_budget_check(rows, 0)  # 0: no limit
  with pytest.raises(trial.SearchStopped, match=r"3 trials failed, more than search.max_failed_trials=2 \(the last, a2: "
                                         r"NonFiniteLossError: nan at step 2\)"):
    trial.failure_budget_check(rows, 2)


def test_local_workers_get_disjoint_shares_of_the_cores(monkeypatch):
  from ad.search import parallel
  before = os.sched_getaffinity(0)
  monkeypatch.setenv("AD_WORKER_CORES", str(min(before)))
  try:  # what `ad worker` does first when its coordinator gave it cores
    assert startup.pin_to_worker_cores() == [min(before)] and os.sched_getaffinity(0) == {min(before)}
  finally:
    os.sched_setaffinity(0, before)
  monkeypatch.delenv("AD_WORKER_CORES")
  assert startup.pin_to_worker_cores() is None  # a worker started by hand keeps its cores
  assert parallel.core_shares(2, [0, 1]) == [[0], [1]]
  assert parallel.core_shares(2, [0, 1, 2, 3, 4]) == [[0, 1], [2, 3, 4]]
  assert parallel.core_shares(3, [0, 1]) == [[0], [1], [0]]  # more workers than cores: shared, round robin
  assert parallel.accelerator_env(2) == [{}, {}]  # CPU: nothing to hide


def test_measurement_on_another_worker_class_and_a_restarted_coordinator_over_postgresql(tmp_path, tiny_teacher,
                                                                                          postgres):
  """search.measure.target over a PostgreSQL store: the search's own worker only distills, a
  separate `ad worker --role measure` measures, and the store joins the halves. The coordinator
  is killed with -9 while its worker runs the trial and restarted with --resume: it continues
  from the store (the orphaned worker finishes its trial under its lease and then stops), and
  no trial is lost or run twice."""
  import psycopg
  with psycopg.connect(postgres.get_uri(), autocommit=True) as c:
    c.execute("CREATE DATABASE e2e_measure")
  url = postgres.get_uri("e2e_measure")
  run_dir = str(tmp_path / "search")
  search = [sys.executable, "-m", "ad.cli", "search", "--config", "quickstart", "--run-dir", run_dir, "--no-progress",
            "--store", url]
  search += [f"--set={o}" for o in search_overrides(tiny_teacher, **{
      "search.num_initial": 1, "search.num_trials": 1, "search.designer": "random", "search.baseline_arch": "",
      "search.measure.target": "cpu-b", "search.workers.poll_s": 0.2})]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  run = lambda args: subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
  coordinator = run(search)
  def rows():
    store = store_lib.TrialStore(run_dir, url=url)
    try:
      return store.trials()
    finally:
      store.close()
  deadline = time.time() + 300
  while time.time() < deadline and coordinator.poll() is None and not rows():
    time.sleep(0.5)
  measurer = run([sys.executable, "-m", "ad.cli", "worker", "--run-dir", run_dir, "--store", url, "--role", "measure",
                  "--target", "cpu-b", "--worker-id", "measurer"])
  while time.time() < deadline and coordinator.poll() is None and not any(r.worker for r in rows()):
    time.sleep(0.5)
  assert coordinator.poll() is None, coordinator.communicate()[1][-3000:]
  coordinator.kill()  # -9: the coordinator is gone mid-search
  coordinator.wait()
  restarted = run(search + ["--resume"])
  out, err = restarted.communicate(timeout=600)
  assert restarted.returncode == 0, err[-3000:]
  assert measurer.wait(timeout=120) == 0  # it stops once the search is done
  final = rows()
  assert len(final) == 1 and {r.status for r in final} == {"ok"}, [(r.arch, r.status, r.error) for r in final]
  for r in final:
    assert r.measure_worker == "measurer" and r.measure_status == "ok" and r.attempts == 1
    assert r.worker != "measurer" and r.distill["mlm_accuracy"] == r.objectives["mlm_accuracy"]
    assert r.objectives["latency_ms"] == r.measurement["latency_ms_median"] > 0
  assert json.loads(out[out.index("{"):])["status_counts"]["ok"] == 1


def test_a_trial_taken_over_from_a_live_holder_goes_back_to_the_queue_and_never_fails_for_its_lock(tmp_path,
                                                                                                  tiny_teacher):
  """Worker A claimed a trial, stopped heartbeating (its lease ran out) but is alive and still holds
  the trial's workdir; worker B takes the trial over, waits up to a lease for the workdir, and when
  A never lets go, gives the trial back to the queue: the trial is never 'failed'. (That B runs the
  trial once A lets go within the lease is the lock's own wait: test_a_lock_is_waited_for_...)"""
  from ad import configs, files
  from ad.search import trial
  cfg = configs.load_config("quickstart", search_overrides(tiny_teacher, **{
      "search.num_initial": 1, "search.num_trials": 1, "search.baseline_arch": "",
      "search.workers.lease_s": 5.0, "search.workers.poll_s": 0.2}))
  names = [o["name"] for o in cfg.search.objectives]
  run_dir = str(tmp_path / "search")
  store = store_lib.TrialStore(run_dir)
  workdir, screen, _ = trial.trial_target("128_64_1_256_1", cfg, run_dir, names)
  store.enqueue_trial("128_64_1_256_1", "initial", "initial", 0, screen, workdir)
  assert store.claim_trial("A", lease_s=0.01).worker == "A"
  with files.DirectoryLock(workdir, "distillation workdir"):  # A: alive, still in its trial
    time.sleep(0.05)  # A's lease is over
    row = store.claim_trial("B", lease_s=60.0)
    assert row.worker == "B" and row.attempts == 2
    t0 = time.time()
    r = trial.run_trial(cfg, run_dir, store, row, names, log=lambda *_: None, worker="B")
  (after,) = store.trials()
  assert r["status"] == "released" and after.status == "queued" and after.worker is None
  # it waited one lease, then let the trial go (the rest is the trial's measurement before its distillation
  # asks for the workdir: 33 s on a loaded machine)
  assert 5.0 <= time.time() - t0 < 90
  assert not after.error


def test_a_lock_is_waited_for_up_to_wait_s_and_taken_when_its_holder_lets_go(tmp_path):
  import threading
  from ad import files
  held = files.DirectoryLock(str(tmp_path / "w"), "distillation workdir").__enter__()
  t0 = time.monotonic()
  with pytest.raises(files.LockedError, match="distillation workdir.*in use by another process") as e:
    files.DirectoryLock(str(tmp_path / "w"), "distillation workdir", wait_s=1.0).__enter__()
  assert time.monotonic() - t0 >= 1.0 and e.value.directory == str(tmp_path / "w")
  threading.Timer(1.0, lambda: held.__exit__(None, None, None)).start()
  t0 = time.monotonic()
  with files.DirectoryLock(str(tmp_path / "w"), "distillation workdir", wait_s=30.0):
    assert 1.0 <= time.monotonic() - t0 < 5.0
