"""The trial store on both backends (SQLite in the run directory; PostgreSQL, a real local server
started by the fixture from the pgserver wheel, Unix socket only): claims that go to exactly one
of many concurrent claimers, leases that expire and are taken over, results written only by the
trial's holder, schema versions and migrations."""

import dataclasses
import os
import sqlite3
import threading
import time
import uuid

import pytest

from ad.search import store as store_lib
from ad.search.store import StoreError, TrialStore


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request, tmp_path):
  """A function run_dir -> TrialStore of this backend (a fresh database per test)."""
  if request.param == "sqlite":
    yield lambda run_dir=str(tmp_path / "run"), **kw: TrialStore(run_dir, **kw)
    return
  import psycopg
  server = request.getfixturevalue("postgres")
  name = "t_" + uuid.uuid4().hex[:12]
  with psycopg.connect(server.get_uri(), autocommit=True) as c:
    c.execute(f"CREATE DATABASE {name}")
  url = server.get_uri(name)
  yield lambda run_dir=str(tmp_path / "run"), **kw: TrialStore(run_dir, url=url, **kw)


# What the search writes for every trial: the closed-form size and cost (the store checks it on read).
SCREENING = {"params": 1_500_000, "flops": 400_000_000}


def _queue(store, n: int) -> list[int]:
  return [store.enqueue_trial(f"128_64_1_384_{i}", "designer", "bo", 0, SCREENING, os.path.join(store.run_dir, f"t{i}"))
          for i in range(n)]


def test_concurrent_claimers_each_get_distinct_trials_and_none_is_lost(store_at):
  """8 claimers, each on its own connection, race for 40 queued trials: every trial is claimed
  exactly once and finished by its claimer."""
  ids = _queue(store_at(), 40)
  claimed: dict[str, list[int]] = {}
  errors = []

  def claimer(k: int):
    st = store_at()
    me = f"w{k}"
    got = claimed.setdefault(me, [])
    try:
      while (row := st.claim_trial(me, lease_s=60)) is not None:
        got.append(row.id)
        assert row.status == "running" and row.worker == me and row.attempts == 1
        assert st.finish_trial(row.id, "ok", objectives={}, worker=me)
    except Exception as e:  # surfaced below: an assertion in a thread does not fail the test by itself
      errors.append(e)
    finally:
      st.close()

  threads = [threading.Thread(target=claimer, args=(k,)) for k in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
  everything = sorted(i for got in claimed.values() for i in got)
  assert everything == sorted(ids)  # none twice, none lost
  rows = store_at().trials()
  assert {r.status for r in rows} == {"ok"} and {r.worker for r in rows} <= set(claimed)


def test_an_expired_lease_is_taken_over_and_the_old_holder_cannot_write(store_at):
  st = store_at()
  (tid,) = _queue(st, 1)
  a = st.claim_trial("A", lease_s=0.3)
  assert a.id == tid and st.claim_trial("B", lease_s=60) is None  # held: nothing to claim
  assert st.renew_lease(tid, "A", 0.3)
  time.sleep(0.5)  # A stops renewing: killed with -9, or its machine is gone
  b = st.claim_trial("B", lease_s=60)
  assert b.id == tid and b.worker == "B" and b.attempts == 2
  assert not st.renew_lease(tid, "A", 60)  # A learns it lost the trial
  assert not st.finish_trial(tid, "ok", objectives=dict(x=1.0), worker="A")  # and cannot record it
  assert st.trials()[0].status == "running"
  assert st.finish_trial(tid, "failed", error="boom", worker="B")
  (row,) = st.trials()
  assert row.status == "failed" and row.error == "boom" and row.lease_until is None


def test_released_and_unleased_trials_go_back_to_the_queue(store_at):
  st = store_at()
  t1, t2 = _queue(st, 2)
  st.claim_trial("A", 60)
  st.release_trial(t1, "A")  # a worker stopped by SIGTERM gives its trial back
  assert st.claim_trial("B", 60).id == t1
  t3 = st.start_trial("128_64_1_512_1", "designer", "bo", 0, SCREENING, "x")  # a sequential run's trial, interrupted
  assert st.requeue_unleased() == 1
  assert {r.id: r.status for r in st.trials()} == {t1: "running", t2: "queued", t3: "queued"}


def test_schema_versions(store_at, tmp_path):
  st = store_at()
  assert st.get_meta("schema_version") == store_lib.SCHEMA_VERSION
  st.set_meta("schema_version", store_lib.SCHEMA_VERSION + 1)
  st.close()
  with pytest.raises(StoreError, match=f"schema version {store_lib.SCHEMA_VERSION + 1}, written by a newer version"):
    store_at()


def test_a_store_of_the_first_schema_is_migrated(tmp_path):
  """A store written before schema versions (no objective_se, timings, worker, lease columns)
  opens, gains the columns, and keeps its trials."""
  path = tmp_path / store_lib.STORE_FILE
  db = sqlite3.connect(path)
  db.executescript("""
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE trials (id INTEGER PRIMARY KEY, arch TEXT NOT NULL UNIQUE, role TEXT NOT NULL, designer TEXT NOT NULL,
      status TEXT NOT NULL, objectives TEXT, measurement TEXT, distill TEXT, screening TEXT, error TEXT,
      seed INTEGER NOT NULL, code_version TEXT NOT NULL, started REAL NOT NULL, finished REAL, measure_s REAL,
      distill_s REAL, workdir TEXT);
    INSERT INTO trials (arch, role, designer, status, objectives, screening, seed, code_version, started)
      VALUES ('128_64_1_384_1', 'initial', 'initial', 'ok', '{"mlm_accuracy": 0.1}',
              '{"params": 1500000, "flops": 400000000}', 0, 'old', 1.0);""")
  db.commit()
  db.close()
  st = TrialStore(str(tmp_path))
  (row,) = st.trials()
  assert row.objectives == {"mlm_accuracy": 0.1} and row.worker is None and row.timings is None
  assert st.get_meta("schema_version") == store_lib.SCHEMA_VERSION


def test_a_bad_postgresql_url_is_named(tmp_path):
  pytest.importorskip("psycopg")
  url = f"postgresql://ad:secret@/nodb?host={tmp_path}"
  with pytest.raises(StoreError, match=r"postgresql://ad:\*\*\*@/nodb.*cannot connect") as e:
    TrialStore(str(tmp_path), url=url)
  assert "secret" not in str(e.value)


def test_a_trial_measured_elsewhere_is_joined_by_whichever_half_finishes_second(store_at):
  """search.measure.target: a training worker and a measure worker each hold one half of a
  trial; the half recorded second gets the complete row (to compute the objectives), the first
  gets None; a measure lease expires and is taken over like a training lease."""
  st = store_at()
  a, b = [st.enqueue_trial(f"128_64_1_384_{i}", "designer", "bo", 0, SCREENING, "w", measure_target="tpu-v4i")
          for i in range(2)]
  assert st.claim_measurement("m", "other-target", 60) is None  # only its own target's measurements
  # Trial a: the measurement first, then the training.
  assert st.claim_measurement("m", "tpu-v4i", 60).id == a
  assert st.claim_trial("t", 60).id == a
  assert st.record_measurement(a, "m", dict(latency_ms_median=1.0), 2.0) == (True, None)
  recorded, row = st.record_distillation(a, "t", dict(mlm_accuracy=0.1), 3.0, dict(total_s=3.0))
  assert recorded and row.measurement == dict(latency_ms_median=1.0) and row.distill == dict(mlm_accuracy=0.1)
  # Trial b: the training first; the first measure worker dies, its lease runs out, another takes over.
  assert st.claim_trial("t", 60).id == b
  assert st.record_distillation(b, "t", dict(mlm_accuracy=0.2), 3.0, {}) == (True, None)
  assert st.trial(b).status == "trained" and st.claim_trial("t2", 60) is None  # trained: not claimable again
  assert st.claim_measurement("m1", "tpu-v4i", 0.2).id == b
  time.sleep(0.4)
  assert st.claim_measurement("m2", "tpu-v4i", 60).id == b
  assert not st.renew_lease(b, "m1", 60, part="measure")
  assert st.record_measurement(b, "m1", dict(latency_ms_median=9.0), 1.0) == (False, None)  # no longer its own
  recorded, row = st.record_measurement(b, "m2", dict(latency_ms_median=2.0), 1.0)
  assert recorded and row.status == "trained" and row.measurement == dict(latency_ms_median=2.0)
  # A trial that is finished is not written into by anyone not holding it.
  assert st.finish_trial(b, "ok", objectives=dict(mlm_accuracy=0.2))
  assert not st.finish_trial(b, "failed", error="late measurement failure")
  assert st.trial(b).status == "ok"


def test_a_trial_is_read_back_typed_with_its_json_parsed_and_its_paths_absolute(store_at):
  st = store_at()
  tid = st.start_trial("128_64_2_384_1", "initial", "initial", 0, SCREENING, os.path.join(st.run_dir, "trials", "a"))
  st.finish_trial(tid, "ok", objectives=dict(mlm_accuracy=0.2), objective_se=dict(mlm_accuracy=0.01),
                  measurement=dict(latency_ms_median=1.5, trace_dir=os.path.join(st.run_dir, "traces", "a")))
  (row,) = st.trials()
  assert isinstance(row, store_lib.Trial) and row.id == tid and row.status == "ok"
  assert row.objectives == dict(mlm_accuracy=0.2) and row.screening == SCREENING  # JSON columns parsed
  assert row.workdir == os.path.join(st.run_dir, "trials", "a")  # stored relative, read back absolute
  assert row.measurement["trace_dir"] == os.path.join(st.run_dir, "traces", "a")
  assert (row.architecture.bottleneck, row.architecture.heads, row.architecture.num_ffn) == (64, 2, 1)
  with pytest.raises(dataclasses.FrozenInstanceError):
    row.status = "failed"  # a reader cannot change what the store holds by editing its copy
