"""Multi-controller helpers (TPU pods, GPU clusters; two CPU processes in the tests), in one place.

Process 0 talks to the designer and writes the trial store and reports; every process runs
the same computations on the global mesh. `main_only(obj)` wraps a writer so that calls are
no-ops off process 0 (flax's just-logging idea) instead of `if is_main` around each call.
"""

from __future__ import annotations

import jax
import numpy as np


def is_main() -> bool:
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across processes (a no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def broadcast_str(value: str, max_bytes: int = 4096) -> str:
  """Process 0's string to every process (a fixed-size int array; a no-op with one process)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  buf = np.zeros(max_bytes, dtype=np.int32)
  if is_main():
    enc = value.encode()
    if len(enc) > max_bytes:
      raise ValueError(f"cannot broadcast {len(enc)} bytes (at most {max_bytes}): {value[:80]}...")
    buf[:len(enc)] = np.frombuffer(enc, dtype=np.uint8)
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return bytes(buf[buf > 0].astype(np.uint8)).decode()


def allgather(tree):
  """Every process's shards of global arrays -> full host arrays on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


class _NoOp:
  """Stands in for a writer off process 0: every method returns `default`."""

  def __init__(self, defaults: dict):
    self._defaults = defaults

  def __getattr__(self, name):
    default = self._defaults.get(name)
    return lambda *a, **k: default() if callable(default) else default


def main_only(make, defaults: dict | None = None):
  """make() on process 0; elsewhere an object whose methods do nothing and return `defaults[name]`
  (a value, or a zero-argument factory for a fresh one)."""
  return make() if is_main() else _NoOp(defaults or {})
