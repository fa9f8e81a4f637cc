"""Where a test's time goes: a pytest plugin that sums JAX's compile events per test.

Not loaded by `make test`. Use it to find what makes a slow test slow:

  COMPILE_PROBE_OUT=/tmp/probe .venv/bin/python -m pytest -p tests.compile_probe tests/distill/test_trainer.py

Each process (each xdist worker) writes COMPILE_PROBE_OUT.<worker>.json: the totals and, per test, its wall
time and the seconds of JAX's monitoring events: tracing (`/jax/core/compile/jaxpr_trace_duration`),
lowering (`.../jaxpr_to_mlir_module_duration`), XLA's backend compilation
(`.../backend_compile_duration`) and persistent-cache hits (`/jax/compilation_cache/...`). XLA
compiles on several threads, so a test's compile seconds can exceed its wall time.
"""

import collections
import json
import os
import time

import pytest

_totals: collections.Counter = collections.Counter()
_per_test: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
_current: dict[str, str | None] = {"test": None}


def _listener(event: str, duration: float, **_) -> None:
  if event.startswith(("/jax/core/compile", "/jax/compilation_cache")):
    _totals[event] += duration
    if _current["test"]:
      _per_test[_current["test"]][event] += duration


def pytest_configure(config):
  from jax import monitoring
  monitoring.register_event_duration_secs_listener(_listener)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  _current["test"] = item.nodeid
  started = time.time()
  yield
  _per_test[item.nodeid]["wall"] += time.time() - started
  _current["test"] = None


def pytest_sessionfinish(session):
  out = os.environ.get("COMPILE_PROBE_OUT", "compile_probe")
  with open(f"{out}.{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json", "w") as f:
    json.dump(dict(totals=_totals, per_test=_per_test), f, indent=1)
