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


def compile_stats(fn: Callable, *args, static_argnums=(), **kwargs) -> dict[str, Any]:
  """fn and abstract (jax.ShapeDtypeStruct) or concrete args -> FLOPs, bytes, memory, compiled."""
  lowered = jax.jit(fn, static_argnums=static_argnums).lower(*args, **kwargs)
  compiled = lowered.compile()
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
