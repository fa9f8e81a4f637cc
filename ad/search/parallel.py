"""Parallel trials over the shared trial store: `ad search --workers N` and `ad worker`.

The coordinator (the `ad search` process) owns the designer. It keeps up to N trials queued or
running in the store, asking the designer for one point at a time and passing the trials in
flight as pending points: none is suggested twice, and with search.bo.pending = 'believer' (the
default) the BO designer's GPs are also conditioned on them (Kriging believer: each observed at
its predicted mean), so that EHVI does not place N suggestions side by side; 'hippo' penalizes
candidates predicted close to a pending point, 'exclude' only removes the pending points
(ad/search/trieste_service.py; experiments/README.md compares them). It starts N local worker processes,
each pinned to its share of the CPU cores (and of the GPUs, by CUDA_VISIBLE_DEVICES). Workers
(`ad worker`, local or on other machines against the same store) claim a trial atomically, renew
a lease on it from a heartbeat thread while they run it, and write its result only while they
still hold it. A worker killed with -9 stops renewing; once its lease runs out the next claimer
takes the trial over and its distillation resumes from the trial's own checkpoints. A local
worker that dies is restarted (up to RESTARTS times). A failed trial is recorded with its error
and reaches the designer as failed, never as an observation; more than search.max_failed_trials
failures stop the search with a message.

Decoupled measurement (003 measures on the target machine, not the training one): with
search.measure.target = NAME, training workers only distill, and `ad worker --role measure
--target NAME` processes on the target machine claim the measurements (leases as for training);
whichever half of a trial finishes second joins them into its objectives in the store. A measure
worker times each student paired with search.measure.reference, like a local measurement, on the
scale of the first paired reading the store records. The
baseline checkpoint is measured where it is scored. The latency constraint is then checked at the
join, after training.

Workers read the search's config from the store's run record, so `ad worker` needs only the
run directory (SQLite) or the store URL plus the run directory where trials write their
checkpoints and traces (shared storage when workers are on several machines).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

from ad import interrupt
from ad.search import report as report_lib, settings, trial
from ad.search.measurement import remote_target
from ad.search.store import IN_FLIGHT, TrialStore

RESTARTS = 3  # per local worker slot, before the search gives up on it
WORKER_LOG_DIR = "workers"


def accelerator_env(workers: int) -> list[dict[str, str]]:
  """Per local worker, the environment that gives it its share of this host's accelerators: an
  even split of the GPUs (CUDA_VISIBLE_DEVICES); nothing on CPU. A TPU host's chips belong to one
  process: run one `ad worker` per host there (or `ad search` without --workers)."""
  import jax
  devices = jax.local_devices()
  platform = devices[0].platform
  if platform == "cpu":
    return [{} for _ in range(workers)]
  if platform == "gpu":
    if workers > len(devices):
      raise ValueError(f"--workers {workers}: this host has {len(devices)} GPUs; at most one worker per GPU")
    ids = [str(d.local_hardware_id if d.local_hardware_id is not None else d.id) for d in devices]
    per = len(ids) // workers
    return [dict(CUDA_VISIBLE_DEVICES=",".join(ids[i * per:(i + 1) * per])) for i in range(workers)]
  raise ValueError(f"--workers {workers} on {platform}: a {platform} host's chips are used by one process; run "
                   "`ad search` without --workers, or one `ad worker` per host against a shared --store")


def core_shares(workers: int, cores: list[int] | None = None) -> list[list[int]]:
  """The CPU cores of each local worker: an even split of the cores this process may use."""
  cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
  if workers > len(cores):
    return [[cores[i % len(cores)]] for i in range(workers)]
  per = len(cores) // workers
  return [cores[i * per:(i + 1) * per if i < workers - 1 else len(cores)] for i in range(workers)]  # last: the rest


class _LocalWorker:
  """One `ad worker` process of this coordinator, its log, and its restarts."""

  def __init__(self, index: int, run_dir: str, store_url: str | None, cores: list[int], env: dict[str, str]):
    self.index, self.run_dir, self.store_url, self.cores, self.env = index, run_dir, store_url, cores, env
    self.name = f"{socket.gethostname()}:w{index}"
    self.restarts, self.proc, self.log_path = 0, None, os.path.join(run_dir, WORKER_LOG_DIR, f"w{index}.log")

  def start(self) -> None:
    os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
    cmd = [sys.executable, "-m", "ad.cli", "worker", "--run-dir", self.run_dir, "--worker-id", self.name,
           "--no-progress"] + (["--store", self.store_url] if self.store_url else [])
    # The worker pins itself (ad/startup.py pin_to_worker_cores) before it imports JAX: a preexec_fn would
    # fork this multithreaded process, which JAX warns may deadlock.
    env = dict(os.environ, **self.env, AD_COORDINATOR_PID=str(os.getpid()),
               AD_WORKER_CORES=",".join(map(str, self.cores)))
    with open(self.log_path, "a") as log:
      self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

  def check(self, log: Callable) -> None:
    """Restarts the process if it died; an error when it keeps dying."""
    code = self.proc.poll()
    if code is None or code == 0:
      return
    if self.restarts >= RESTARTS:
      raise trial.SearchStopped(f"worker {self.name} exited with code {code} {self.restarts + 1} times; see {self.log_path}")
    self.restarts += 1
    log(f"search: worker {self.name} exited with code {code}; restarting it ({self.restarts}/{RESTARTS}); its trial "
        "goes to the next claimer once its lease runs out")
    self.start()

  def stop(self, timeout: float = 30) -> None:
    if self.proc and self.proc.poll() is None:
      self.proc.terminate()  # SIGTERM: the worker gives its trial back at the next step boundary
      try:
        self.proc.wait(timeout)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()


def coordinate(cfg, run_dir: str, store: TrialStore, store_url: str | None, workers: int, initial, des, names,
               designer: str, bar, on_result: Callable, hv_now: Callable, log: Callable) -> None:
  """Runs the search's trials in `workers` local worker processes (plus any `ad worker` that
  joins through the store) until the budget is spent and nothing is in flight."""
  s = settings.search_settings(cfg)
  poll = float(s.workers.poll_s)
  target = remote_target(cfg)  # measured by `ad worker --role measure --target NAME`
  waiting_said = False
  requeued = store.requeue_unleased()
  if requeued:
    log(f"search: {requeued} trial(s) interrupted in a sequential run go back to the queue")
  store.set_meta("run_dir", run_dir)
  store.set_meta("search_state", "running")
  local = [_LocalWorker(i, run_dir, store_url, cores, env)
           for i, (cores, env) in enumerate(zip(core_shares(workers), accelerator_env(workers)))]
  seen_done = {t.id for t in store.trials() if t.status not in IN_FLIGHT}
  try:
    for w in local:
      w.start()
    while True:
      interrupt.check("the coordinator's loop (completed trials are in the store; in-flight trials resume)")
      rows = store.trials()
      trial.failure_budget_check(rows, s.max_failed_trials)
      for t in rows:  # results that arrived since the last look
        if t.status not in IN_FLIGHT and t.id not in seen_done:
          seen_done.add(t.id)
          on_result(dict(status=t.status, objectives=t.objectives))
          if t.role not in report_lib.BASELINE_ROLES:
            bar.update(1)
      in_flight = [t for t in rows if t.status in IN_FLIGHT]
      # Trained trials waiting for their measurement hold no training worker.
      while sum(t.status != "trained" for t in in_flight) < workers:
        name, role, who, designer_s = trial.next_trial(
            cfg, rows, initial, des, names, designer,
            pending=tuple(t.architecture for t in in_flight if t.role != report_lib.CHECKPOINT_ROLE))
        if not name:
          break
        workdir, screen, _ = trial.trial_target(name, cfg, run_dir, names)
        store.enqueue_trial(name, role, who, s.seed, screen, workdir, measure_target=target)
        log(f"search: queued {name} ({role}{f', designer {designer_s:.1f}s' if designer_s else ''})")
        rows = store.trials()
        in_flight = [t for t in rows if t.status in IN_FLIGHT]
      if not in_flight:
        break
      if target and all(t.measure_status != "ok" for t in in_flight) and not waiting_said and any(
          t.status == "trained" for t in in_flight):
        log(f"search: trained trials wait for their measurement on {target!r}: start `ad worker --role measure "
            f"--target {target} --run-dir {run_dir}` on that machine")
        waiting_said = True
      bar.set_postfix_str(f"hv={hv_now():.4g} in flight: " + ", ".join(
          f"{t.arch}@{t.worker or 'queue'}" for t in in_flight))
      for w in local:
        w.check(log)
      time.sleep(poll)
    store.set_meta("search_state", "done")
  finally:
    for w in local:
      w.stop()


class _Heartbeat(threading.Thread):
  """Renews a worker's lease on its trial every lease/3 seconds on a connection of its own;
  `lost` is set when the trial was taken over (the lease ran out before a renewal)."""

  def __init__(self, run_dir: str, store_url: str | None, trial_id: int, worker: str, lease_s: float,
               part: str = "train"):
    super().__init__(daemon=True)
    self.args = (run_dir, store_url, trial_id, worker, lease_s, part)
    self.stopped, self.lost = threading.Event(), threading.Event()

  def run(self) -> None:
    run_dir, store_url, trial_id, worker, lease_s, part = self.args
    store = TrialStore(run_dir, create=False, url=store_url)
    try:
      while not self.stopped.wait(lease_s / 3):
        if not store.renew_lease(trial_id, worker, lease_s, part):
          self.lost.set()
          interrupt.request()  # stop this run of the trial at its next step: its new owner resumes it
          return
    finally:
      store.close()


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def default_worker_id() -> str:
  return f"{socket.gethostname()}:{os.getpid()}"


ROLES = ("train", "measure")


def run_worker(run_dir: str, store_url: str | None = None, worker_id: str | None = None, log: Callable = print,
               max_trials: int = 0, role: str = "train", target: str | None = None) -> int:
  """Claims and runs trials of the search in `run_dir` (or `store_url`) until the coordinator
  marks the search done (or `max_trials` were run); returns how many this worker ran.
  role='measure': claims the measurements of trials for `target` (search.measure.target) and
  measures them on this machine."""
  if role not in ROLES:
    raise ValueError(f"--role {role!r}: expected one of {ROLES}")
  if role == "measure" and not target:
    raise ValueError("--role measure needs --target NAME (the search's search.measure.target)")
  import ml_collections
  worker = worker_id or default_worker_id()
  store = TrialStore(run_dir, create=False, url=store_url)
  record = store.get_meta("record")
  if record is None:
    raise ValueError(f"{store.path}: no search recorded in this store yet; start `ad search` first")
  store.check_run_dir(run_dir)
  state = store.get_meta("search_state")
  if state in (None, "sequential"):  # (None: a search recorded before states, or one not yet running)
    raise ValueError(f"{run_dir}: this search runs its trials in its own process (`ad search` without --workers or "
                     "search.measure.target), so a worker has nothing to claim; start the search with --workers N "
                     "to share its trials")
  if state == "done":
    log(f"worker {worker_id or default_worker_id()}: the search in {run_dir} is finished; nothing to claim")
    store.close()
    return 0
  run_dir = os.path.abspath(run_dir)
  cfg = ml_collections.ConfigDict(settings.record_config(record["config"]))  # an older record read as it was run
  search = settings.search_settings(cfg)
  names = [o["name"] for o in search.objectives]
  lease, poll = float(search.workers.lease_s), float(search.workers.poll_s)
  if role == "measure" and target != remote_target(cfg):
    raise ValueError(f"--target {target!r}: the search in {run_dir} measures on "
                     f"{remote_target(cfg) or 'its training workers (no search.measure.target)'}")
  log(f"worker {worker}: joined the search in {run_dir} ({store.path}) as {role}"
      + (f" for {target}" if target else "") + f", lease {lease:.0f}s")
  ran, context = 0, None
  coordinator = int(os.environ.get("AD_COORDINATOR_PID") or 0)  # set for the workers `ad search` starts
  while not max_trials or ran < max_trials:
    interrupt.check("a trial boundary of the worker")
    if coordinator and not _alive(coordinator):  # orphaned: a restarted coordinator starts its own workers
      log(f"worker {worker}: the coordinator (pid {coordinator}) is gone; stopping")
      break
    row = store.claim_trial(worker, lease) if role == "train" else store.claim_measurement(worker, target, lease)
    if row is None:
      if store.get_meta("search_state") == "done":
        break
      time.sleep(poll)
      continue
    log(f"worker {worker}: {'running' if role == 'train' else 'measuring'} {row.arch}"
        + (f" (attempt {row.attempts})" if role == "train" else ""))
    beat = _Heartbeat(run_dir, store_url, row.id, worker, lease, part=role)
    beat.start()
    release = store.release_trial if role == "train" else store.release_measurement
    try:
      if role == "train":
        if context is None:  # built once, at this worker's first training trial
          context = trial.search_context(cfg, names, log)
        r = trial.run_trial(cfg, run_dir, store, row, names, log, worker=worker, context=context)
      else:
        r = trial.run_measurement(cfg, run_dir, store, row, names, log, worker=worker)
    except interrupt.Interrupted:
      beat.stopped.set()
      beat.join()
      if beat.lost.is_set():  # the lease ran out and another worker took the trial over: let it go
        interrupt.reset()
        log(f"worker {worker}: lost {row.arch} to another worker (lease expired); stopped it")
        continue
      release(row.id, worker)  # stopped by the user: back to the queue, resumed by the next claimer
      raise
    except BaseException:
      release(row.id, worker)
      raise
    finally:
      beat.stopped.set()
      beat.join()
    ran += 1
    log(f"worker {worker}: {row.arch} {r['status']}" + ("" if r.get("recorded", True) else " (not recorded)"))
  store.close()
  return ran
