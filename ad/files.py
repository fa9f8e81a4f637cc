"""Files: the cache directory, atomic writes, content hashes, JSON that names its file when it is bad.

One place for each of these (STYLE 17): every JSON or text a run writes goes through
`write_json` / `write_text` (temporary file in the same directory, fsync, rename), so a crash
leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any


def cache_root() -> str:
  """$XDG_CACHE_HOME/autodistill-jax (default ~/.cache/autodistill-jax): prepared teachers,
  evaluation sets, CPU peaks, the persistent compilation cache."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "autodistill-jax")


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` atomically; returns the path."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def write_json(path: str, obj: Any) -> str:
  return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


class BadFileError(ValueError):
  """A file exists but cannot be read as what it should be: names the file and what was expected."""


def read_json(path: str, what: str = "JSON") -> Any:
  """json.load with an error that names the file (and the line/column) instead of a raw traceback."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise BadFileError(f"{path}: not valid {what} (line {e.lineno}, column {e.colno}: {e.msg}); "
                       "the file is damaged or was not written by this tool") from None
  except UnicodeDecodeError as e:
    raise BadFileError(f"{path}: not valid {what} (not UTF-8 text: {e.reason})") from None


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while True:
      block = f.read(chunk)
      if not block:
        return h.hexdigest()
      h.update(block)


def fingerprint(obj: Any, length: int = 12) -> str:
  """A short stable hash of a JSON-able value (cache keys)."""
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


class LockedError(RuntimeError):
  """Another process holds the lock: names the path and the holder."""


class DirectoryLock:
  """An exclusive lock on a directory (a run directory, a distillation workdir, a teacher being
  prepared): `flock` on DIR/.lock, which also records the holder's pid, host and command.

  The kernel releases a flock when its process dies (kill -9 included), so a stale lock file
  never blocks anyone. blocking=False raises LockedError naming the holder; blocking=True waits.
  """

  def __init__(self, directory: str, what: str = "directory", blocking: bool = False):
    self.directory, self.what, self.blocking = os.path.abspath(directory), what, blocking
    self.path = os.path.join(self.directory, ".lock")
    self.fd = None

  def __enter__(self):
    import fcntl
    import socket
    import sys
    os.makedirs(self.directory, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
      os.close(fd)
      raise LockedError(f"{self.directory}: this {self.what} is in use by another process ({holder}); wait for it "
                        "to finish or stop it, or use another directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:200]}\n".encode(), 0)
    self.fd = fd
    return self

  def __exit__(self, *exc):
    import fcntl
    if self.fd is not None:
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None
    return False
