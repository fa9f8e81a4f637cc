"""The trial store: one SQLite file per search run (`RUN_DIR/trials.sqlite`).

Every trial is written when it starts ('running') and again when it ends ('ok', 'failed' or
'infeasible'), each in its own transaction, so a crash at any moment loses no completed trial;
a 'running' trial found at restart was interrupted and is run again (its distillation resumes
from its own checkpoints). The final (regular) distillations of the chosen students and their
downstream fine-tuning runs live in their own tables. `ad report RUN_DIR` needs nothing but this file.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import time
from typing import Any

STORE_FILE = "trials.sqlite"
STATUSES = ("running", "ok", "failed", "infeasible")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
  id INTEGER PRIMARY KEY,
  arch TEXT NOT NULL UNIQUE,
  role TEXT NOT NULL,            -- baseline | checkpoint | initial | designer
  designer TEXT NOT NULL,
  status TEXT NOT NULL,
  objectives TEXT,               -- JSON {name: value}
  objective_se TEXT,             -- JSON {name: standard error} (0 for exact values)
  measurement TEXT,              -- JSON: every field of profiling.harness.measure_arch
  distill TEXT,                  -- JSON: the metrics of ad.distill.trainer.distill
  screening TEXT,                -- JSON: closed-form params and FLOPs
  error TEXT,
  seed INTEGER NOT NULL,
  code_version TEXT NOT NULL,
  started REAL NOT NULL,
  finished REAL,
  measure_s REAL,
  distill_s REAL,
  workdir TEXT,                  -- relative to the run directory
  timings TEXT                   -- JSON: the trial's wall-time split (designer, measure, compile, train, eval)
);
CREATE TABLE IF NOT EXISTS finals (
  arch TEXT PRIMARY KEY,
  status TEXT NOT NULL,
  metrics TEXT,
  checkpoint TEXT,
  hf_dir TEXT,
  error TEXT,
  started REAL NOT NULL,
  finished REAL
);
CREATE TABLE IF NOT EXISTS finetunes (
  model TEXT NOT NULL,           -- a final's arch, or 'teacher'
  task TEXT NOT NULL,
  status TEXT NOT NULL,
  result TEXT,                   -- JSON: ad.finetune.trainer.finetune's result
  error TEXT,
  started REAL NOT NULL,
  finished REAL,
  PRIMARY KEY (model, task)
);
"""
_JSON_COLUMNS = ("objectives", "objective_se", "measurement", "distill", "screening", "metrics", "timings", "result")
# Columns added after the first schema: (table, column, type); added on open to an older store.
_ADDED_COLUMNS = (("trials", "objective_se", "TEXT"), ("trials", "timings", "TEXT"))


def code_version() -> str:
  """The git commit of the code (with -dirty when the tree has changes), else 'unknown'."""
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


class TrialStore:
  """Paths (a trial's workdir, its trace directory, a final's checkpoint and export) are stored
  relative to the run directory and returned absolute, so a moved run directory stays readable."""

  def __init__(self, run_dir: str, create: bool = True):
    self.run_dir = os.path.abspath(run_dir)
    self.path = os.path.join(self.run_dir, STORE_FILE)
    if not create and not os.path.isfile(self.path):
      raise FileNotFoundError(f"{self.path}: no trial store there; is {run_dir} the run directory of an `ad search`?")
    os.makedirs(run_dir, exist_ok=True)
    try:
      self.db = sqlite3.connect(self.path, timeout=60)
      self.db.row_factory = sqlite3.Row
      with self.db:
        self.db.executescript(_SCHEMA)
        for table, column, kind in _ADDED_COLUMNS:
          have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
          if column not in have:
            self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    except sqlite3.DatabaseError as e:
      raise StoreError(f"{self.path}: not a readable SQLite trial store ({e}); the file is damaged or is not a "
                       "store: move it aside to start a new search in this directory") from None

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
      return self.db.execute(sql, args).fetchall()
    except sqlite3.DatabaseError as e:
      raise StoreError(f"{self.path}: reading the trial store failed ({e}); the file is damaged or truncated") from None

  def rel(self, path: str | None) -> str | None:
    """A path as stored: relative to the run directory when it lies inside it."""
    if path is None:
      return None
    path = os.path.abspath(path)
    return os.path.relpath(path, self.run_dir) if path.startswith(self.run_dir + os.sep) else path

  def abs(self, path: str | None) -> str | None:
    return None if path is None else os.path.normpath(os.path.join(self.run_dir, path))

  def set_meta(self, key: str, value) -> None:
    with self.db:
      self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

  # ---- trials ----------------------------------------------------------------------------------
  def start_trial(self, arch: str, role: str, designer: str, seed: int, screening: dict, workdir: str) -> int:
    with self.db:
      cur = self.db.execute(
          "INSERT INTO trials (arch, role, designer, status, screening, seed, code_version, started, workdir) "
          "VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
          (arch, role, designer, json.dumps(screening), seed, code_version(), time.time(), self.rel(workdir)))
    return int(cur.lastrowid)

  def restart_trial(self, trial_id: int) -> None:
    with self.db:
      self.db.execute("UPDATE trials SET started = ?, code_version = ? WHERE id = ?",
                      (time.time(), code_version(), trial_id))

  def finish_trial(self, trial_id: int, status: str, *, objectives: dict | None = None,
                   objective_se: dict | None = None, measurement: dict | None = None, distill: dict | None = None,
                   error: str | None = None, measure_s: float | None = None, distill_s: float | None = None,
                   timings: dict | None = None) -> None:
    if status not in STATUSES[1:]:
      raise ValueError(f"trial status {status!r}: expected one of {STATUSES[1:]}")
    if measurement and measurement.get("trace_dir"):
      measurement = dict(measurement, trace_dir=self.rel(measurement["trace_dir"]))
    with self.db:
      self.db.execute(
          "UPDATE trials SET status = ?, objectives = ?, objective_se = ?, measurement = ?, distill = ?, error = ?, "
          "finished = ?, measure_s = ?, distill_s = ?, timings = ? WHERE id = ?",
          (status, json.dumps(objectives) if objectives is not None else None,
           json.dumps(objective_se) if objective_se is not None else None,
           json.dumps(measurement, default=str) if measurement is not None else None,
           json.dumps(distill, default=str) if distill is not None else None, error, time.time(), measure_s,
           distill_s, json.dumps(timings) if timings is not None else None, trial_id))

  def trials(self, status: str | None = None) -> list[dict[str, Any]]:
    q = "SELECT * FROM trials" + (" WHERE status = ?" if status else "") + " ORDER BY id"
    rows = [self._row(r, "trials") for r in self._query(q, (status,) if status else ())]
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
      r["workdir"] = self.abs(r["workdir"])
      if r["measurement"] and r["measurement"].get("trace_dir"):
        r["measurement"]["trace_dir"] = self.abs(r["measurement"]["trace_dir"])
    return rows

  # ---- finals ----------------------------------------------------------------------------------
  def start_final(self, arch: str) -> None:
    with self.db:
      self.db.execute("INSERT OR REPLACE INTO finals (arch, status, started) VALUES (?, 'running', ?)",
                      (arch, time.time()))

  def finish_final(self, arch: str, status: str, *, metrics: dict | None = None, checkpoint: str | None = None,
                   hf_dir: str | None = None, error: str | None = None) -> None:
    with self.db:
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
    with self.db:
      self.db.execute("INSERT OR REPLACE INTO finetunes (model, task, status, started) VALUES (?, ?, 'running', ?)",
                      (model, task, time.time()))

  def finish_finetune(self, model: str, task: str, status: str, *, result: dict | None = None,
                      error: str | None = None) -> None:
    with self.db:
      self.db.execute("UPDATE finetunes SET status = ?, result = ?, error = ?, finished = ? WHERE model = ? AND task = ?",
                      (status, json.dumps(result, default=str) if result is not None else None, error, time.time(),
                       model, task))

  def finetunes(self) -> list[dict[str, Any]]:
    return [self._row(r, "finetunes") for r in self._query("SELECT * FROM finetunes ORDER BY started")]

  def _row(self, r: sqlite3.Row, table: str) -> dict[str, Any]:
    d = dict(r)
    for k in _JSON_COLUMNS:
      if k in d and d[k] is not None:
        try:
          d[k] = json.loads(d[k])
        except json.JSONDecodeError as e:
          which = {"trials": f"trial {d.get('id')}", "finals": f"final {d.get('arch')}"}.get(
              table, f"{table} row {d.get('model')}/{d.get('task')}")
          raise StoreError(f"{self.path}: {which}, column {k!r}, is not valid JSON ({e.msg}); the row is damaged") \
              from None
    return d
