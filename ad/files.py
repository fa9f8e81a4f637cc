"""Files: the cache directory, atomic writes, content hashes, JSON that names its file when it is bad.

One place for each of these (STYLE 17): every JSON or text a run writes goes through
`write_json` / `write_text` (temporary file in the same directory, fsync, rename), so a crash
leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from typing import Any


def redact(text: str) -> str:
  """`text` with the password of every database URL in it replaced by *** (postgresql://user:***@host):
  what a command line or a URL becomes before it is written anywhere or shown."""
  return re.sub(r"(\w+://[^:/@\s]+):[^@\s]*@", r"\1:***@", text)


def command_line() -> str:
  """This process's command line as it may be recorded (lock files, model cards): passwords redacted."""
  return redact(" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]))


def portable(obj: Any, root: str) -> Any:
  """`obj` (JSON-like) with every absolute path in it made machine-free, for results committed to
  the repository: under `root` (the repository) relative to it, under the cache root
  `<cache>/...`, under the home directory `~/...`."""
  if isinstance(obj, dict):
    return {k: portable(v, root) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [portable(v, root) for v in obj]
  if not isinstance(obj, str) or not os.path.isabs(obj):
    return obj
  for base, shown in ((os.path.abspath(root), None), (cache_root(), "<cache>"), (os.path.expanduser("~"), "~")):
    if obj == base or obj.startswith(base.rstrip(os.sep) + os.sep):
      rel = os.path.relpath(obj, base)
      return rel if shown is None else os.path.join(shown, rel)
  return obj


def cache_root() -> str:
  """$XDG_CACHE_HOME/autodistill-jax (default ~/.cache/autodistill-jax): prepared teachers,
  evaluation sets, CPU peaks, the persistent compilation cache."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "autodistill-jax")


def umask() -> int:
  """This process's umask (read without changing it where /proc allows: os.umask is process-wide)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def as_created(path: str) -> str:
  """Gives `path` the mode an ordinary new file gets (0666 less the umask): files made through a
  private temporary file (mkstemp, safetensors) are 0600 otherwise, unreadable to a colleague."""
  os.chmod(path, 0o666 & ~umask())
  return path


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` atomically, with the umask's mode; returns the path."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    as_created(tmp)
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
  """Another process holds the lock: names the path and the holder; `directory`: the locked one."""

  def __init__(self, message: str, directory: str | None = None):
    super().__init__(message)
    self.directory = directory


class DirectoryLock:
  """An exclusive lock on a directory (a run directory, a distillation workdir, a teacher being
  prepared): `flock` on DIR/.lock, which also records the holder's pid, host and command.

  The kernel releases a flock when its process dies (kill -9 included), so a stale lock file
  never blocks anyone. blocking=False raises LockedError naming the holder; blocking=True waits.
  """

  def __init__(self, directory: str, what: str = "directory", blocking: bool = False, wait_s: float = 0.0):
    """wait_s: without blocking, keep trying for this long before refusing (a worker that took a
    trial over waits for the trial's previous holder to notice and let go)."""
    self.directory, self.what, self.blocking, self.wait_s = os.path.abspath(directory), what, blocking, wait_s
    self.path = os.path.join(self.directory, ".lock")
    self.fd = None

  def __enter__(self):
    import fcntl
    import socket
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise FileExistsError(f"{self.directory}: a file is in the way of this {self.what}; give a directory path")
    try:
      os.makedirs(self.directory, exist_ok=True)
    except OSError as e:
      raise PermissionError(f"{self.directory}: cannot create this {self.what} ({e.strerror}); choose a writable "
                            "place") from None
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise PermissionError(f"{self.directory}: cannot lock this {self.what} ({e.strerror}): it is read-only here; "
                            "use a writable copy") from None
    import time
    deadline = time.monotonic() + self.wait_s
    while True:
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        break
      except BlockingIOError:
        if time.monotonic() < deadline:
          time.sleep(0.5)
          continue
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LockedError(f"{self.directory}: this {self.what} is in use by another process ({holder}); wait for it "
                          "to finish or stop it, or use another directory", self.directory) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {command_line()[:200]}\n".encode(), 0)
    self.fd = fd
    return self

  def __exit__(self, *exc):
    import fcntl
    if self.fd is not None:
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None
    return False
