"""Where a test's time goes: a pytest plugin that records each test's compilations.

Not loaded by `make test`. Use it to find what makes a slow test slow:

  COMPILE_PROBE_OUT=/tmp/probe .venv/bin/python -m pytest -p tests.compile_probe tests/distill/test_trainer.py

Each process (each xdist worker) writes COMPILE_PROBE_OUT.<worker>.json: per test, its wall time and
profiling/compile_stats.CompileLog's summary of what compiled while it ran (seconds of XLA backend
compilation, tracing and lowering, programs, persistent-cache hits and misses), and their totals. XLA
compiles on several threads, so a test's compile seconds can exceed its wall time.
"""

import collections
import json
import os
import time

import pytest

from profiling import compile_stats

_SUMMED = ("compile_s", "trace_s", "lower_s", "programs", "cache_hits", "cache_misses")
_per_test: dict[str, dict] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  started = time.time()
  with compile_stats.CompileLog() as log:
    yield
  summary = log.summary()
  _per_test[item.nodeid] = dict(wall_s=time.time() - started, **{k: summary[k] for k in _SUMMED})


def pytest_sessionfinish(session):
  totals = collections.Counter()
  for summary in _per_test.values():
    totals.update(summary)
  out = os.environ.get("COMPILE_PROBE_OUT", "compile_probe")
  with open(f"{out}.{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json", "w") as f:
    json.dump(dict(totals=totals, per_test=_per_test), f, indent=1)
