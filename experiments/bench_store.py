"""Load test of the trial store (issue 18): N simulated workers x M trials on each backend.

Command:  .venv/bin/python -m experiments.bench_store [--workers 8] [--trials 2000] [--backends sqlite postgresql]
Machine:  the 2-core CPU dev machine; PostgreSQL is a local server from the pgserver wheel (Unix
          socket), SQLite a WAL file in a temporary run directory.
Does:     queues M trials, then N worker processes, each on its own connection, claim a trial,
          renew its lease once, look up its objectives in experiments/results/tabular.csv (a
          real trained-and-measured table: no training here) and record it, until the queue is
          empty. Prints trials/s and checks that every trial was recorded exactly once, by the
          worker that claimed it, with one claim (lost or duplicated trials must be zero).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLE = os.path.join(ROOT, "experiments", "results", "tabular.csv")


def _lookup() -> list[dict]:
  with open(TABLE) as f:
    return [dict(arch=r["arch"], mlm_accuracy=float(r["mlm_accuracy"]), latency_ms=float(r["latency_ms_median"]))
            for r in csv.DictReader(f)]


def _worker(k: int, run_dir: str, url: str | None, out: mp.Queue) -> None:
  from ad.search.store import TrialStore
  table = {r["arch"]: r for r in _lookup()}
  store = TrialStore(run_dir, url=url)
  me, done = f"sim{k}", []
  while (row := store.claim_trial(me, lease_s=60)) is not None:
    store.renew_lease(row.id, me, 60)
    r = table[row.arch.split("/")[1]]
    ok = store.finish_trial(row.id, "ok", objectives=dict(mlm_accuracy=r["mlm_accuracy"], latency_ms=r["latency_ms"]),
                            objective_se=dict(mlm_accuracy=0.0, latency_ms=0.0), worker=me)
    done.append((row.id, ok))
  store.close()
  out.put((me, done))


def run(backend: str, workers: int, trials: int) -> dict:
  from ad.search.store import TrialStore
  tmp = tempfile.mkdtemp(prefix=f"bench_store_{backend}_")
  url, server = None, None
  if backend == "postgresql":
    import pgserver
    server = pgserver.get_server(os.path.join(tmp, "pg"), cleanup_mode="stop")
    url = server.get_uri()
  run_dir = os.path.join(tmp, "run")
  store = TrialStore(run_dir, url=url)
  table = _lookup()
  t0 = time.perf_counter()
  for i in range(trials):  # names are unique per trial; the objective is the table row's
    store.enqueue_trial(f"t{i}/{table[i % len(table)]['arch']}", "designer", "sim", 0,
                        dict(params=0, flops=0), run_dir)  # simulated: no model, so no closed-form size
  enqueue_s = time.perf_counter() - t0
  ctx = mp.get_context("spawn")
  q = ctx.Queue()
  procs = [ctx.Process(target=_worker, args=(k, run_dir, url, q)) for k in range(workers)]
  t0 = time.perf_counter()
  for p in procs:
    p.start()
  results = [q.get() for _ in procs]
  for p in procs:
    p.join()
  wall = time.perf_counter() - t0
  rows = store.trials()
  claimed = [tid for _, done in results for tid, _ in done]
  recorded = sum(ok for _, done in results for _, ok in done)
  out = dict(backend=backend, workers=workers, trials=trials, enqueue_s=enqueue_s, wall_s=wall,
             trials_per_s=trials / wall, claims=len(claimed), recorded=recorded,
             duplicated=len(claimed) - len(set(claimed)), lost=sum(r.status != "ok" for r in rows),
             multi_claimed=sum((r.attempts or 0) != 1 for r in rows),
             per_worker={me: len(done) for me, done in results})
  store.close()
  if server:
    server.cleanup()
  shutil.rmtree(tmp, ignore_errors=True)
  return out


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--workers", type=int, default=8)
  p.add_argument("--trials", type=int, default=2000)
  p.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
  args = p.parse_args(argv)
  for backend in args.backends:
    r = run(backend, args.workers, args.trials)
    print(json.dumps(r))
    assert r["duplicated"] == 0 and r["lost"] == 0 and r["multi_claimed"] == 0, r


if __name__ == "__main__":
  main()
