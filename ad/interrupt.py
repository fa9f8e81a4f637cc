"""Ctrl-C and SIGTERM: stop at the next step or trial boundary, never in the middle of a write.

`install()` (the `ad` command calls it first) replaces Python's default SIGINT handler, which
raises KeyboardInterrupt wherever the main thread happens to be (once inside JAX's garbage-
collection callback, where it was swallowed and the search ran on). The handlers only set a
flag; the loops call `check()` at their boundaries (after a training step is applied and its
checkpoint written if due, between trials), which raises `Interrupted` there. A second Ctrl-C
raises KeyboardInterrupt at once, for a user who will not wait.
"""

from __future__ import annotations

import signal
import sys
import threading

_requested = threading.Event()
_installed = False


class Interrupted(Exception):
  """The user asked to stop (SIGINT/SIGTERM); state was left consistent at a boundary."""


def _handler(signum, frame):
  if _requested.is_set() and signum == signal.SIGINT:
    raise KeyboardInterrupt
  _requested.set()
  name = signal.Signals(signum).name
  print(f"\n{name} received: stopping at the next step or trial boundary (Ctrl-C again to stop at once)",
        file=sys.stderr, flush=True)


def install() -> None:
  """Route SIGINT and SIGTERM to the flag (main thread only; a no-op elsewhere)."""
  global _installed
  if threading.current_thread() is not threading.main_thread():
    return
  signal.signal(signal.SIGINT, _handler)
  signal.signal(signal.SIGTERM, _handler)
  _installed = True


def requested() -> bool:
  return _requested.is_set()


def check(where: str) -> None:
  """Raises Interrupted if a stop was requested; `where` names the boundary for the message."""
  if _requested.is_set():
    raise Interrupted(f"interrupted at {where}")


def request() -> None:
  """Stop at the next boundary, asked by this process itself (a worker whose trial was taken over)."""
  _requested.set()


def reset() -> None:
  """Forget a request (tests; a long-lived process that handled one)."""
  _requested.clear()
