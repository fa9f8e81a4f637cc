"""Compile-only statistics from XLA: FLOPs, bytes accessed, memory, without running anything.

`compiled.cost_analysis()` counts each HLO op once: the body of a while loop (lax.scan,
fori_loop) and the grid of a Pallas kernel are undercounted, so `undercounted` says when
the compiled module contains either.
"""

from __future__ import annotations

from typing import Any, Callable

import jax


def _first(cost):
  # jax returns a dict (new) or a one-element list of dicts (older releases).
  if isinstance(cost, (list, tuple)):
    return cost[0] if cost else {}
  return cost or {}


def compile_stats(fn: Callable, *args, static_argnums=(), compiler_options: dict | None = None,
                  **kwargs) -> dict[str, Any]:
  """fn and abstract (jax.ShapeDtypeStruct) or concrete args -> FLOPs, bytes, memory, compiled.
  compiler_options: XLA options for this compilation only (e.g. harness.inference_compiler_options)."""
  lowered = jax.jit(fn, static_argnums=static_argnums).lower(*args, **kwargs)
  compiled = lowered.compile(compiler_options or None)
  cost = _first(compiled.cost_analysis())
  hlo = compiled.as_text() or ""
  mem = compiled.memory_analysis()
  out = dict(
      flops=float(cost.get("flops", 0.0)),
      transcendentals=float(cost.get("transcendentals", 0.0)),
      bytes_accessed=float(cost.get("bytes accessed", 0.0)),
      undercounted=bool(" while(" in hlo or "custom-call" in hlo and "pallas" in hlo.lower()),
      compiled=compiled,
  )
  if mem is not None:
    out.update(
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes), generated_code_bytes=int(mem.generated_code_size_in_bytes),
        alias_bytes=int(getattr(mem, "alias_size_in_bytes", 0)),
    )
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
  return out


# ---------------------------------------------------------------------------------------------
# Counting compilations while code runs (jax.monitoring), for the trainer's wall-time split and
# the tests' "a trial compiles a bounded number of programs" check.

_EVENTS = {"/jax/core/compile/backend_compile_duration": "compile_s",
           "/jax/core/compile/jaxpr_trace_duration": "trace_s",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s"}
_COUNTS = {"/jax/compilation_cache/cache_hits": "cache_hits", "/jax/compilation_cache/cache_misses": "cache_misses"}
_log: list[tuple[str, str, float]] = []  # (kind, function name, seconds), appended by the listeners
_installed = False


def _install() -> None:
  global _installed
  if _installed:
    return
  from jax import monitoring

  def on_duration(event, duration, **kw):
    if event in _EVENTS:
      _log.append((_EVENTS[event], str(kw.get("fun_name", "")), float(duration)))

  def on_event(event, **kw):
    if event in _COUNTS:
      _log.append((_COUNTS[event], "", 0.0))
  monitoring.register_event_duration_secs_listener(on_duration)
  monitoring.register_event_listener(on_event)
  _installed = True


class CompileLog:
  """`with CompileLog() as c:` -> c.summary(): programs compiled (XLA backend compilations, persistent
  cache hits included), seconds spent compiling / tracing / lowering, cache hits and misses, and
  the compiled functions' names, for what ran inside the block (this process, all threads)."""

  def __enter__(self):
    _install()
    self.start, self.end = len(_log), None
    return self

  def __exit__(self, *exc):
    self.end = len(_log)
    return False

  def entries(self):
    return _log[self.start:self.end if self.end is not None else len(_log)]

  def summary(self) -> dict:
    e = self.entries()
    out = {k: sum(s for kind, _, s in e if kind == k) for k in ("compile_s", "trace_s", "lower_s")}
    out["programs"] = sum(1 for kind, _, _ in e if kind == "compile_s")
    out.update({k: sum(1 for kind, _, _ in e if kind == k) for k in ("cache_hits", "cache_misses")})
    out["functions"] = sorted({name for kind, name, _ in e if kind == "compile_s"})
    return out


def compile_concurrently(jobs: dict, mesh=None) -> dict:
  """{name: (jitted function, args)} -> {name: compiled}, lowered and compiled in parallel threads.

  XLA compiles one program on one core; a training run's programs are independent, so compiling
  them side by side takes about the time of the longest instead of the sum (args may be
  ShapeDtypeStructs with shardings). mesh: set as the context mesh while each program is traced
  (`jax.set_mesh` is per thread), so the model's kernels see the devices it is compiled for
  (kernels/devices.py)."""
  import contextlib
  from concurrent.futures import ThreadPoolExecutor
  if not jobs:
    return {}

  def lower_and_compile(f, a):
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
      return f.lower(*a).compile()
  with ThreadPoolExecutor(max_workers=len(jobs)) as ex:
    futures = {name: ex.submit(lower_and_compile, f, a) for name, (f, a) in jobs.items()}
    return {name: fut.result() for name, fut in futures.items()}
