"""The trial store: one database per search run, SQLite by default (`RUN_DIR/trials.sqlite`, WAL)
or PostgreSQL (`--store postgresql://...`) for workers on several machines.

Every trial is written when it is queued or starts and again when it ends ('ok', 'failed' or
'infeasible'), each in its own transaction, so a crash at any moment loses no completed trial.
Sequential search (one process): a 'running' trial found at restart was interrupted and is run
again (its distillation resumes from its own checkpoints). Parallel search (`ad search --workers
N`, `ad worker`): the coordinator queues trials; a worker claims one atomically (exactly one
claimer wins), holds a lease it renews, and writes the result only while it still holds the
claim; a trial whose lease ran out goes to the next claimer and resumes from its checkpoints.
The final (regular) distillations and the downstream fine-tuning runs live in their own tables.
`ad report RUN_DIR` needs nothing but the store. Readers get each trial as a `Trial` (its JSON
columns parsed and checked, its paths absolute), never the raw row.

Both backends share one schema (dialect differences: the id column and float type) and one list
of migrations; the schema version is kept in `meta`, and a store written by a newer version is
refused with a clear error. Lease times are the claimers' clocks: machines sharing a PostgreSQL
store need synchronized clocks (NTP), to well under a lease.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import sqlite3
import subprocess
import time
import urllib.parse
from typing import Any

from ad import files, space

from ad.rundir import STORE_FILE  # noqa: F401  (the run directory layout; kept here for the store's readers)
SEARCH_FILE = "search.json"  # in a run directory: the id of the search (in its store) it belongs to
# 'trained': distilled, waiting for its measurement on the target (search.measure.target).
STATUSES = ("queued", "running", "trained", "ok", "failed", "infeasible")
IN_FLIGHT = ("queued", "running", "trained")
DONE = ("ok", "failed", "infeasible")
SCHEMA_VERSION = 4

# The PostgreSQL advisory lock a search's coordinator holds (bind_coordinator): one store, one search.
_COORDINATOR_LOCK = 0x6164_5f73_6561_7263  # "ad_searc"

# {ID}, {FLOAT}: the dialect's auto-increment key and 8-byte float (SQLite: INTEGER PRIMARY KEY,
# REAL; PostgreSQL: BIGSERIAL PRIMARY KEY, DOUBLE PRECISION).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
  id {ID},
  arch TEXT NOT NULL UNIQUE,
  role TEXT NOT NULL,            -- baseline | checkpoint | initial | designer
  designer TEXT NOT NULL,
  status TEXT NOT NULL,          -- queued | running | ok | failed | infeasible
  objectives TEXT,               -- JSON {name: value}
  objective_se TEXT,             -- JSON {name: standard error} (0 for exact values)
  measurement TEXT,              -- JSON: every field of profiling.harness.measure_arch
  distill TEXT,                  -- JSON: the metrics of ad.distill.trainer.distill
  screening TEXT,                -- JSON: closed-form params and FLOPs
  error TEXT,
  seed INTEGER NOT NULL,
  code_version TEXT NOT NULL,
  started {FLOAT} NOT NULL,      -- queued, then (re)started
  finished {FLOAT},
  measure_s {FLOAT},
  distill_s {FLOAT},
  workdir TEXT                   -- relative to the run directory
);
CREATE INDEX IF NOT EXISTS trials_by_status ON trials (status, id);  -- claims: the oldest queued trial
CREATE TABLE IF NOT EXISTS finals (
  arch TEXT PRIMARY KEY,
  status TEXT NOT NULL,
  metrics TEXT,
  checkpoint TEXT,
  hf_dir TEXT,
  error TEXT,
  started {FLOAT} NOT NULL,
  finished {FLOAT}
);
CREATE TABLE IF NOT EXISTS finetunes (
  model TEXT NOT NULL,           -- a final's arch, or 'teacher'
  task TEXT NOT NULL,
  status TEXT NOT NULL,
  result TEXT,                   -- JSON: ad.finetune.trainer.finetune's result
  error TEXT,
  started {FLOAT} NOT NULL,
  finished {FLOAT},
  PRIMARY KEY (model, task)
);
"""
# Columns added after the first schema, by schema version: (table, column, type). A store of an
# older version gets them on open; stores before version 2 kept no version (read as 1).
_MIGRATIONS = {
    2: (("trials", "objective_se", "TEXT"), ("trials", "timings", "TEXT")),  # timings: the wall-time split
    3: (("trials", "worker", "TEXT"),  # parallel trials: who holds the trial,
        ("trials", "lease_until", "{FLOAT}"),  # until when (None: a sequential search's trial),
        ("trials", "attempts", "INTEGER")),  # and how many claims it has had
    4: (("trials", "measure_target", "TEXT"),  # measured by `ad worker --role measure --target NAME`
        ("trials", "measure_status", "TEXT"),  # queued | running | ok (None: measured with the training)
        ("trials", "measure_worker", "TEXT"),
        ("trials", "measure_lease_until", "{FLOAT}")),
}
_JSON_COLUMNS = ("objectives", "objective_se", "measurement", "distill", "screening", "metrics", "timings", "result")
# What each objective may be, checked when a trial is recorded and again when it is read back (a
# value edited into a store, or written by a broken version, never reaches a report or a designer):
# (low, high), None for no bound; every value must be finite; standard errors finite and >= 0.
OBJECTIVE_RANGES = {"mlm_accuracy": (0, 1), "teacher_agreement": (0, 1), "nsp_accuracy": (0, 1),
                    "mlm_cross_entropy": (0, None), "latency_ms": (0, None), "predicted_latency_ms": (0, None),
                    "throughput_per_s": (0, None), "flops_utilization": (0, None), "peak_memory_bytes": (0, None),
                    "params": (0, None), "flops": (0, None)}


@dataclasses.dataclass(frozen=True)
class Trial:
  """One trial as the store's readers see it: a row of the trials table (see _SCHEMA) with its
  JSON columns parsed and checked and its paths absolute. The JSON columns stay the storage format;
  readers get this type, never the raw row."""
  arch: str  # the architecture's name, the store's key (`architecture`: parsed)
  role: str  # BASELINE_ROLES, 'initial' or 'designer'
  status: str  # STATUSES
  id: int = 0
  designer: str = ""
  seed: int = 0
  code_version: str = ""
  started: float = 0.0
  screening: dict = dataclasses.field(default_factory=dict)  # closed-form params and FLOPs
  objectives: dict | None = None  # {name: value}, set when 'ok'
  objective_se: dict | None = None  # {name: standard error}
  measurement: dict | None = None  # profiling.harness.measure_arch's fields
  distill: dict | None = None  # ad.distill.trainer.distill's metrics (or the SuperLM proxy's)
  timings: dict | None = None  # the wall-time split
  error: str | None = None
  finished: float | None = None
  measure_s: float | None = None
  distill_s: float | None = None
  workdir: str | None = None
  worker: str | None = None  # parallel search: who holds it, until when, after how many claims
  lease_until: float | None = None
  attempts: int | None = None
  measure_target: str | None = None  # measured by `ad worker --role measure --target NAME`
  measure_status: str | None = None  # queued | running | ok (None: measured with the training)
  measure_worker: str | None = None
  measure_lease_until: float | None = None

  @functools.cached_property
  def architecture(self) -> space.Arch:
    return space.Arch.parse(self.arch)


def objective_errors(objectives, objective_se) -> list[str]:
  """What is wrong with a trial's objectives and their standard errors (empty when nothing is)."""
  bad = []
  for name, v in (objectives or {}).items():
    low, high = OBJECTIVE_RANGES.get(name, (None, None))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
        low is not None and v < low) or (high is not None and v > high):
      bad.append(f"{name}={v!r} (expected a finite number" + (f" in [{low}, {high if high is not None else 'inf'}])"
                                                               if low is not None else ")"))
  for name, v in (objective_se or {}).items():
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
      bad.append(f"the standard error of {name}={v!r} (expected a finite number >= 0)")
  return bad
_DIALECT_TYPES = dict(sqlite=dict(ID="INTEGER PRIMARY KEY", FLOAT="REAL"),
                      postgresql=dict(ID="BIGSERIAL PRIMARY KEY", FLOAT="DOUBLE PRECISION"))


@functools.lru_cache(maxsize=1)
def code_version() -> str:
  """The git commit of the code (with -dirty when the tree has changes), else 'unknown'; read
  once per process (two git commands: not once per stored row)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    rev = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                         timeout=10).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, timeout=10).stdout.strip()
    return (rev + ("-dirty" if dirty else "")) if rev else "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


class StoreError(ValueError):
  """The trial store is not readable as one: names the file (and the row)."""


class _Database:
  """One connection to a store's database with '?' placeholders and dict rows, in autocommit
  mode; `transaction()` groups statements (SQLite: BEGIN IMMEDIATE, so two claimers serialize
  on the write lock; PostgreSQL: a transaction, with row locks taken by the claim's SELECT).
  readonly: SQLite opened read-only, so a run directory without write access can be read."""

  def __init__(self, where: str, readonly: bool = False):
    self.where = where
    if where.startswith(("postgresql://", "postgres://")):
      try:
        import psycopg
        from psycopg.rows import dict_row
      except ImportError:
        raise StoreError(f"{_redacted(where)}: a PostgreSQL store needs psycopg (pip install 'psycopg[binary]')") from None
      self.dialect, self.errors = "postgresql", (psycopg.Error,)
      try:
        self.conn = psycopg.connect(where, autocommit=True, row_factory=dict_row, connect_timeout=30)
      except psycopg.Error as e:
        raise StoreError(f"{_redacted(where)}: cannot connect to the PostgreSQL store ({str(e).strip()})") from None
    else:
      self.dialect, self.errors = "sqlite", (sqlite3.DatabaseError,)
      self.conn = _sqlite_readonly(where) if readonly else sqlite3.connect(where, timeout=60, isolation_level=None,
                                                                            check_same_thread=False)
      self.conn.row_factory = lambda cur, row: {c[0]: v for c, v in zip(cur.description, row)}
      if not readonly:
        self.conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
      self.conn.execute("PRAGMA busy_timeout=60000")
    self._depth = 0

  def sql(self, text: str) -> str:
    for token, sql_type in _DIALECT_TYPES[self.dialect].items():
      text = text.replace("{" + token + "}", sql_type)
    return text.replace("?", "%s") if self.dialect == "postgresql" else text

  def execute(self, text: str, args=()):
    return self.conn.execute(self.sql(text), tuple(args))

  def query(self, text: str, args=()) -> list[dict]:
    return list(self.execute(text, args).fetchall())

  @contextlib.contextmanager
  def transaction(self):
    if self._depth:  # nested: part of the outer transaction
      self._depth += 1
      try:
        yield
      finally:
        self._depth -= 1
      return
    self._depth = 1
    try:
      if self.dialect == "postgresql":
        with self.conn.transaction():
          yield
      else:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
          yield
        except BaseException:
          self.conn.execute("ROLLBACK")
          raise
        self.conn.execute("COMMIT")
    finally:
      self._depth = 0

  def columns(self, table: str) -> set[str]:
    if self.dialect == "postgresql":
      rows = self.query("SELECT column_name AS name FROM information_schema.columns WHERE table_name = ? "
                        "AND table_schema = current_schema()", (table,))
    else:
      rows = self.query(f"PRAGMA table_info({table})")
    return {r["name"] for r in rows}

  def close(self) -> None:
    self.conn.close()


def _sqlite_readonly(path: str) -> sqlite3.Connection:
  """A read-only connection. A WAL-mode database needs its -shm file even to be read, which a
  directory without write access cannot give: then the file is opened as immutable (nobody can
  write it there either)."""
  uri = "file:" + urllib.parse.quote(os.path.abspath(path))
  conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=60, isolation_level=None, check_same_thread=False)
  try:
    conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    return conn
  except sqlite3.OperationalError:
    conn.close()
    return sqlite3.connect(uri + "?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False)


def check_url(url: str) -> str:
  """`url` if it is a PostgreSQL store URL (postgresql://user:password@host/dbname, or with
  ?host=/socket/dir), else an error that says what --store takes."""
  if re.fullmatch(r"postgres(ql)?://[^\s]*/[^/\s?]+(\?\S*)?", url or ""):
    return url
  if str(url).startswith("sqlite:"):
    raise StoreError(f"--store {_redacted(str(url))!r}: SQLite stores are not given by URL; a search's SQLite store is "
                     f"always RUN_DIR/{STORE_FILE}: leave --store out")
  raise StoreError(f"--store {_redacted(str(url))!r}: expected a PostgreSQL URL, postgresql://user:password@host/dbname "
                   f"(one database per search); without --store a search uses RUN_DIR/{STORE_FILE}")


def _make_dir(run_dir: str) -> None:
  if os.path.exists(run_dir) and not os.path.isdir(run_dir):
    raise FileExistsError(f"--run-dir {run_dir}: a file is in the way; give a directory path")
  os.makedirs(run_dir, exist_ok=True)


def _redacted(url: str) -> str:
  """A database URL without its password, for messages."""
  return files.redact(url)


class TrialStore:
  """Paths (a trial's workdir, its trace directory, a final's checkpoint and export) are stored
  relative to the run directory and returned absolute, so a moved run directory stays readable.

  `url`: a PostgreSQL URL (postgresql://user:password@host/dbname, one database per search),
  else the SQLite file in the run directory."""

  def __init__(self, run_dir: str, create: bool = True, url: str | None = None, readonly: bool = False):
    """create=False: the store must exist; readonly: only read (reports, exports, the latency model:
    a run directory without write access serves them)."""
    self.run_dir = os.path.abspath(run_dir)
    self.url = check_url(url) if url else None
    self.path = _redacted(url) if url else os.path.join(self.run_dir, STORE_FILE)
    self.readonly = readonly
    if not url:
      if (readonly or not create) and not os.path.isfile(self.path):
        raise FileNotFoundError(f"{self.path}: no trial store there; is {run_dir} the run directory of an `ad search`?")
      if not readonly:
        _make_dir(run_dir)
    try:
      self.db = _Database(url or self.path, readonly=readonly)
      if readonly:
        self._check_version()
      else:
        with self.db.transaction():
          self._create_or_migrate()
    except sqlite3.DatabaseError as e:
      if not readonly and not os.access(os.path.dirname(self.path), os.W_OK) or "readonly" in str(e):
        raise StoreError(f"{self.path}: cannot be written ({e}): the run directory is read-only; reports, exports "
                         "and the latency model read it as it is, a search needs a writable copy") from None
      raise StoreError(f"{self.path}: not a readable SQLite trial store ({e}); the file is damaged or is not a "
                       "store: move it aside to start a new search in this directory") from None

  def _check_version(self) -> None:
    """Read-only: the store must be of this schema version (older ones need one writable open)."""
    version = self._version(self._query("SELECT value FROM meta WHERE key = 'schema_version'"))
    if version != SCHEMA_VERSION:
      raise StoreError(f"{self.path}: schema version {version}, this code's is {SCHEMA_VERSION}; it is upgraded when "
                       "opened with write access (e.g. `ad report` on a writable copy of the run directory)")

  def _version(self, row) -> int:
    try:
      return int(json.loads(row[0]["value"])) if row else 1
    except (ValueError, TypeError):
      raise StoreError(f"{self.path}: meta row 'schema_version' is {row[0]['value']!r}, expected an integer") from None

  def _create_or_migrate(self) -> None:
    db = self.db
    for statement in _SCHEMA.split(";"):
      if statement.strip():
        db.execute(statement)
    row = db.query("SELECT value FROM meta WHERE key = 'schema_version'")
    version = self._version(row)
    if version > SCHEMA_VERSION:
      raise StoreError(f"{self.path}: the store has schema version {version}, written by a newer version of this "
                       f"code (this one reads up to {SCHEMA_VERSION}); update the code (git pull) to open it")
    for v in range(2, SCHEMA_VERSION + 1):
      for table, column, kind in _MIGRATIONS[v]:
        if column not in db.columns(table):  # IF NOT EXISTS: stores of version 1 may have some already
          db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    if version != SCHEMA_VERSION or not row:
      self._upsert_meta("schema_version", SCHEMA_VERSION)

  def close(self) -> None:
    self.db.close()

  # ---- meta ------------------------------------------------------------------------------------
  def get_meta(self, key: str, default=None):
    row = self._query("SELECT value FROM meta WHERE key = ?", (key,))
    if not row:
      return default
    try:
      return json.loads(row[0]["value"])
    except json.JSONDecodeError as e:
      raise StoreError(f"{self.path}: meta row {key!r} is not valid JSON ({e.msg})") from None

  def _query(self, sql: str, args=()) -> list:
    try:
      return self.db.query(sql, args)
    except self.db.errors as e:
      raise StoreError(f"{self.path}: reading the trial store failed ({e}); the store is damaged or truncated") \
          from None

  def rel(self, path: str | None) -> str | None:
    """A path as stored: relative to the run directory when it lies inside it."""
    if path is None:
      return None
    path = os.path.abspath(path)
    return os.path.relpath(path, self.run_dir) if path.startswith(self.run_dir + os.sep) else path

  def abs(self, path: str | None) -> str | None:
    return None if path is None else os.path.normpath(os.path.join(self.run_dir, path))

  def _upsert_meta(self, key: str, value) -> None:
    self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
                    "excluded.value", (key, json.dumps(value)))

  def set_meta(self, key: str, value) -> None:
    with self.db.transaction():
      self._upsert_meta(key, value)

  def first_meta(self, key: str, value):
    """The meta row `key`, set to `value` unless a process already set it: the first writer wins,
    and every process reads the same value back (a run-wide constant such as the latency scale)."""
    with self.db.transaction():
      self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                      (key, json.dumps(value)))
    return self.get_meta(key)

  # ---- which search, which run directory, which coordinator ------------------------------------
  def check_run_dir(self, run_dir: str) -> None:
    """Refuses `run_dir` unless it is the run directory of this store's search (its search.json
    holds the store's search id; a store without an id, from before ids, matches a run directory
    without one): `ad report` and `ad worker` must never mix two searches."""
    mine = self.get_meta("search_id")
    path = os.path.join(run_dir, SEARCH_FILE)
    theirs = files.read_json(path, "search record").get("search_id") if os.path.isfile(path) else None
    if mine != theirs:
      what = f"the search {theirs}" if theirs else "no search of this store (no search.json)"
      raise StoreError(f"{run_dir} holds {what}, but {self.path} holds the search {mine or '(no id)'}; give the "
                       "run directory and the store of one search")

  def bind_coordinator(self, run_dir: str) -> None:
    """Makes this process the coordinator of the store's search, run from `run_dir`: a new store gets
    a search id (written to run_dir/search.json too); a store that already holds a search must be
    this run directory's; and on PostgreSQL only one coordinator at a time holds the store (an
    advisory lock, released when this connection closes: a killed coordinator releases it), so two
    coordinators with two run directories cannot run one search twice. (SQLite's store lives in
    the run directory, whose lock already covers it.)"""
    import socket
    import uuid
    if self.db.dialect == "postgresql":
      got = self.db.query("SELECT pg_try_advisory_lock(?) AS got", (_COORDINATOR_LOCK,))[0]["got"]
      if not got:
        holder = self.get_meta("coordinator") or {}
        raise files.LockedError(f"{self.path}: another `ad search` coordinates this store's search (pid "
                                f"{holder.get('pid', '?')} on {holder.get('host', '?')}, run directory "
                                f"{holder.get('run_dir', '?')}); wait for it, or give another database")
    if self.get_meta("search_id") is None and self.get_meta("record") is None:
      self.set_meta("search_id", uuid.uuid4().hex)
      files.write_json(os.path.join(run_dir, SEARCH_FILE), dict(search_id=self.get_meta("search_id"), store=self.path))
    self.check_run_dir(run_dir)
    self.set_meta("coordinator", dict(pid=os.getpid(), host=socket.gethostname(), run_dir=run_dir,
                                      since=time.time()))

  # ---- trials ----------------------------------------------------------------------------------
  def _insert_trial(self, arch, role, designer, status, seed, screening, workdir, measure_target=None) -> int:
    with self.db.transaction():
      row = self.db.query(
          "INSERT INTO trials (arch, role, designer, status, screening, seed, code_version, started, workdir, "
          "attempts, measure_target, measure_status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?) RETURNING id",
          (arch, role, designer, status, json.dumps(screening), seed, code_version(), time.time(), self.rel(workdir),
           measure_target, "queued" if measure_target else None))
    return int(row[0]["id"])

  def start_trial(self, arch: str, role: str, designer: str, seed: int, screening: dict, workdir: str) -> int:
    """A trial run now by this process (sequential search)."""
    return self._insert_trial(arch, role, designer, "running", seed, screening, workdir)

  def enqueue_trial(self, arch: str, role: str, designer: str, seed: int, screening: dict, workdir: str,
                    measure_target: str | None = None) -> int:
    """A trial for the next worker to claim (parallel search); with `measure_target`, its
    measurement is a separate job for a measure worker of that target."""
    return self._insert_trial(arch, role, designer, "queued", seed, screening, workdir, measure_target or None)

  def restart_trial(self, trial_id: int) -> None:
    """An interrupted (or queued) trial run again by this process (sequential search)."""
    with self.db.transaction():
      self.db.execute("UPDATE trials SET status = 'running', worker = NULL, lease_until = NULL, started = ?, "
                      "code_version = ? WHERE id = ?", (time.time(), code_version(), trial_id))

  def claim_trial(self, worker: str, lease_s: float) -> Trial | None:
    """Atomically takes the oldest queued trial, or a running one whose lease has expired (its
    worker died): exactly one of any number of concurrent claimers gets it. Returns the row, or
    None when there is nothing to claim."""
    now = time.time()
    lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
    with self.db.transaction():
      rows = self.db.query("SELECT id FROM trials WHERE status = 'queued' OR (status = 'running' AND lease_until "
                           "IS NOT NULL AND lease_until < ?) ORDER BY id LIMIT 1" + lock, (now,))
      if not rows:
        return None
      tid = rows[0]["id"]
      self.db.execute("UPDATE trials SET status = 'running', worker = ?, lease_until = ?, started = ?, "
                      "code_version = ?, attempts = COALESCE(attempts, 0) + 1 WHERE id = ?",
                      (worker, now + lease_s, now, code_version(), tid))
    return self.trial(tid)

  def renew_lease(self, trial_id: int, worker: str, lease_s: float, part: str = "train") -> bool:
    """Extends `worker`'s lease on the trial's training (or its measurement, part='measure');
    False when it is no longer its own (it was reclaimed)."""
    with self.db.transaction():
      if part == "measure":
        cur = self.db.execute("UPDATE trials SET measure_lease_until = ? WHERE id = ? AND measure_worker = ? AND "
                              "measure_status = 'running'", (time.time() + lease_s, trial_id, worker))
      else:
        cur = self.db.execute("UPDATE trials SET lease_until = ? WHERE id = ? AND worker = ? AND status = 'running'",
                              (time.time() + lease_s, trial_id, worker))
    return cur.rowcount == 1

  def claim_measurement(self, worker: str, target: str, lease_s: float) -> Trial | None:
    """claim_trial for measure workers: the oldest trial of `target` whose measurement is queued
    or whose measure lease expired, while the trial is still in flight."""
    now = time.time()
    lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
    with self.db.transaction():
      rows = self.db.query("SELECT id FROM trials WHERE measure_target = ? AND status IN ('queued', 'running', "
                           "'trained') AND (measure_status = 'queued' OR (measure_status = 'running' AND "
                           "measure_lease_until < ?)) ORDER BY id LIMIT 1" + lock, (target, now))
      if not rows:
        return None
      tid = rows[0]["id"]
      self.db.execute("UPDATE trials SET measure_status = 'running', measure_worker = ?, measure_lease_until = ? "
                      "WHERE id = ?", (worker, now + lease_s, tid))
    return self.trial(tid)

  def record_distillation(self, trial_id: int, worker: str, distill: dict, distill_s: float,
                          timings: dict) -> tuple[bool, Trial | None]:
    """A training worker's half of a trial measured elsewhere: (recorded, the row when the
    measurement is already in, so the caller joins the two; else None)."""
    with self.db.transaction():
      cur = self.db.execute("UPDATE trials SET status = 'trained', distill = ?, distill_s = ?, timings = ?, "
                            "lease_until = NULL WHERE id = ? AND worker = ? AND status = 'running'",
                            (json.dumps(distill, default=str), distill_s, json.dumps(timings), trial_id, worker))
      row = self.trial(trial_id) if cur.rowcount == 1 else None
    return cur.rowcount == 1, (row if row and row.measure_status == "ok" else None)

  def record_measurement(self, trial_id: int, worker: str, measurement: dict,
                         measure_s: float) -> tuple[bool, Trial | None]:
    """A measure worker's half: (recorded, the row when the distillation is already in)."""
    if measurement.get("trace_dir"):
      measurement = dict(measurement, trace_dir=self.rel(measurement["trace_dir"]))
    with self.db.transaction():
      cur = self.db.execute("UPDATE trials SET measurement = ?, measure_s = ?, measure_status = 'ok', "
                            "measure_lease_until = NULL WHERE id = ? AND measure_worker = ? AND measure_status = "
                            "'running' AND status IN ('queued', 'running', 'trained')",
                            (json.dumps(measurement, default=str), measure_s, trial_id, worker))
      row = self.trial(trial_id) if cur.rowcount == 1 else None
    return cur.rowcount == 1, (row if row and row.status == "trained" else None)

  def release_measurement(self, trial_id: int, worker: str) -> None:
    with self.db.transaction():
      self.db.execute("UPDATE trials SET measure_status = 'queued', measure_worker = NULL, measure_lease_until = NULL "
                      "WHERE id = ? AND measure_worker = ? AND measure_status = 'running'", (trial_id, worker))

  def release_trial(self, trial_id: int, worker: str) -> None:
    """Gives an unfinished trial back to the queue (a worker stopped by Ctrl-C / SIGTERM)."""
    with self.db.transaction():
      self.db.execute("UPDATE trials SET status = 'queued', worker = NULL, lease_until = NULL WHERE id = ? AND "
                      "worker = ? AND status = 'running'", (trial_id, worker))

  def requeue_unleased(self) -> int:
    """'running' trials without a lease (left by a sequential search) -> queued; returns how many."""
    with self.db.transaction():
      cur = self.db.execute("UPDATE trials SET status = 'queued' WHERE status = 'running' AND lease_until IS NULL")
    return cur.rowcount

  def finish_trial(self, trial_id: int, status: str, *, objectives: dict | None = None,
                   objective_se: dict | None = None, measurement: dict | None = None, distill: dict | None = None,
                   error: str | None = None, measure_s: float | None = None, distill_s: float | None = None,
                   timings: dict | None = None, worker: str | None = None) -> bool:
    """Records the trial's result; with `worker`, only while that worker still holds the trial
    (False, and nothing written, when its lease ran out and another worker claimed it)."""
    if status not in DONE:
      raise ValueError(f"trial status {status!r}: expected one of {DONE}")
    bad = objective_errors(objectives, objective_se)
    if bad:
      raise ValueError(f"trial {trial_id}: refusing to record {'; '.join(bad)}")
    if measurement and measurement.get("trace_dir"):
      measurement = dict(measurement, trace_dir=self.rel(measurement["trace_dir"]))
    # A holder writes only while it holds the trial; anyone else only into a trial still in flight.
    owned = " AND worker = ? AND status = 'running'" if worker else " AND status IN ('queued', 'running', 'trained')"
    with self.db.transaction():
      cur = self.db.execute(
          "UPDATE trials SET status = ?, objectives = ?, objective_se = ?, measurement = ?, distill = ?, error = ?, "
          "finished = ?, measure_s = ?, distill_s = ?, timings = ?, lease_until = NULL WHERE id = ?" + owned,
          (status, json.dumps(objectives) if objectives is not None else None,
           json.dumps(objective_se) if objective_se is not None else None,
           json.dumps(measurement, default=str) if measurement is not None else None,
           json.dumps(distill, default=str) if distill is not None else None, error, time.time(), measure_s,
           distill_s, json.dumps(timings) if timings is not None else None, trial_id, *([worker] if worker else [])))
    return cur.rowcount == 1

  def trial(self, trial_id: int) -> Trial:
    (row,) = self._trials("SELECT * FROM trials WHERE id = ?", (trial_id,))
    return row

  def trials(self, status: str | None = None) -> list[Trial]:
    q = "SELECT * FROM trials" + (" WHERE status = ?" if status else "") + " ORDER BY id"
    return self._trials(q, (status,) if status else ())

  def _trials(self, query: str, args) -> list[Trial]:
    rows = [self._row(r, "trials") for r in self._query(query, args)]
    record = self.get_meta("record") or {}
    names = [o.get("name") for o in record.get("config", {}).get("search", {}).get("objectives", [])]
    for r in rows:
      if r["status"] not in STATUSES:
        raise StoreError(f"{self.path}: trial {r['id']} ({r['arch']}) has status {r['status']!r}, expected one of "
                         f"{STATUSES}; was the store edited by hand or written by a newer version?")
      if r["status"] == "ok":
        obj = r["objectives"] or {}
        bad = [n for n in names if not isinstance(obj.get(n), (int, float)) or not math.isfinite(obj[n])]
        if bad:
          raise StoreError(f"{self.path}: trial {r['id']} ({r['arch']}) is 'ok' but its objectives {obj} lack a finite "
                           f"value for {bad}; the row is damaged")
      bad = objective_errors(r["objectives"], r["objective_se"])
      if bad:
        raise StoreError(f"{self.path}: trial {r['id']} ({r['arch']}) holds {'; '.join(bad)}; the row is damaged or "
                         "was edited by hand")
      r["workdir"] = self.abs(r["workdir"])
      if r["measurement"] and r["measurement"].get("trace_dir"):
        r["measurement"]["trace_dir"] = self.abs(r["measurement"]["trace_dir"])
    return [Trial(**r) for r in rows]

  # ---- finals ----------------------------------------------------------------------------------
  def start_final(self, arch: str) -> None:
    with self.db.transaction():
      self.db.execute("INSERT INTO finals (arch, status, started) VALUES (?, 'running', ?) ON CONFLICT (arch) DO "
                      "UPDATE SET status = excluded.status, started = excluded.started, metrics = NULL, "
                      "checkpoint = NULL, hf_dir = NULL, error = NULL, finished = NULL", (arch, time.time()))

  def finish_final(self, arch: str, status: str, *, metrics: dict | None = None, checkpoint: str | None = None,
                   hf_dir: str | None = None, error: str | None = None) -> None:
    with self.db.transaction():
      self.db.execute("UPDATE finals SET status = ?, metrics = ?, checkpoint = ?, hf_dir = ?, error = ?, finished = ? "
                      "WHERE arch = ?", (status, json.dumps(metrics, default=str) if metrics is not None else None,
                                         self.rel(checkpoint), self.rel(hf_dir), error, time.time(), arch))

  def finals(self) -> list[dict[str, Any]]:
    rows = [self._row(r, "finals") for r in self._query("SELECT * FROM finals ORDER BY started")]
    for r in rows:
      r["checkpoint"], r["hf_dir"] = self.abs(r["checkpoint"]), self.abs(r["hf_dir"])
    return rows

  # ---- downstream fine-tuning of the finals and the teacher -------------------------------------------
  def start_finetune(self, model: str, task: str) -> None:
    with self.db.transaction():
      self.db.execute("INSERT INTO finetunes (model, task, status, started) VALUES (?, ?, 'running', ?) ON CONFLICT "
                      "(model, task) DO UPDATE SET status = excluded.status, started = excluded.started, "
                      "result = NULL, error = NULL, finished = NULL", (model, task, time.time()))

  def finish_finetune(self, model: str, task: str, status: str, *, result: dict | None = None,
                      error: str | None = None) -> None:
    with self.db.transaction():
      self.db.execute("UPDATE finetunes SET status = ?, result = ?, error = ?, finished = ? WHERE model = ? AND task = ?",
                      (status, json.dumps(result, default=str) if result is not None else None, error, time.time(),
                       model, task))

  def finetunes(self) -> list[dict[str, Any]]:
    return [self._row(r, "finetunes") for r in self._query("SELECT * FROM finetunes ORDER BY started")]

  def _row(self, r: dict, table: str) -> dict[str, Any]:
    """A row with its JSON columns parsed, each checked to be what the code writes there: a JSON object
    (or null), and for a trial the closed-form screening (params and FLOPs) always."""
    d = dict(r)
    which = {"trials": f"trial {d.get('id')} ({d.get('arch')})", "finals": f"final {d.get('arch')}"}.get(
        table, f"{table} row {d.get('model')}/{d.get('task')}")
    for k in _JSON_COLUMNS:
      if k in d and d[k] is not None:
        try:
          d[k] = json.loads(d[k])
        except json.JSONDecodeError as e:
          raise StoreError(f"{self.path}: {which}, column {k!r}, is not valid JSON ({e.msg}); the row is damaged") \
              from None
        if not isinstance(d[k], dict):
          raise StoreError(f"{self.path}: {which}, column {k!r}, holds a JSON {type(d[k]).__name__} "
                           f"({str(d[k])[:80]}); expected an object: the row is damaged or was edited by hand")
    if table == "trials":
      sc = d.get("screening")
      if not isinstance(sc, dict) or not all(isinstance(sc.get(n), (int, float)) for n in ("params", "flops")):
        raise StoreError(f"{self.path}: {which}, column 'screening', is {sc!r}; expected an object with the numbers "
                         "params and flops: the row is damaged or was edited by hand")
    return d
