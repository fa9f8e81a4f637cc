"""Capture XLA profiler traces and read per-execution device time and per-op time from them.

Where the time is in an xplane (`jax.profiler.ProfileData`):
- CPU: the XLA op events sit on the host plane's thread lines, each with stats `hlo_module`
  and `run_id`; one execution of a module is one run_id, and its device time is the span
  from its first op's start to its last op's end (ops of one run can run on several threads).
- GPU/TPU: the device planes (`/device:GPU:0`, `/device:TPU:0`) carry an "XLA Modules" line
  (one event per module execution) and an "XLA Ops" line; an execution's device time is its
  module event's duration, the max over devices when the module ran on several.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import glob
import os
import re
from typing import Iterable

from jax.profiler import ProfileData


@dataclasses.dataclass
class TraceStats:
  run_times_ns: list[float]  # per execution of the module, in start order
  op_time_ns: dict[str, float]  # op name -> total time over all executions
  op_count: dict[str, int]
  source: str  # 'cpu_host_ops' or 'device_plane'

  def top_ops(self, k: int = 10, scopes: dict[str, str] | None = None) -> list[dict]:
    total = sum(self.op_time_ns.values()) or 1.0
    ops = sorted(self.op_time_ns.items(), key=lambda kv: -kv[1])[:k]
    scopes = scopes or {}
    return [dict(name=n, scope=scopes.get(n, ""), count=self.op_count[n], time_us=t / 1e3, share=t / total)
            for n, t in ops]


def newest_xplane(trace_dir: str, after: float = 0.0) -> str:
  files = [f for f in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
           if os.path.getmtime(f) >= after]
  if not files:
    raise FileNotFoundError(f"no *.xplane.pb under {trace_dir} (written after {after}); did the trace run?")
  return max(files, key=os.path.getmtime)


def _stats(event) -> dict:
  try:
    return dict(event.stats)
  except Exception:  # a stat with an undecodable value: keep the event, skip its stats
    return {}


def parse(xplane: str | ProfileData, module_substr: str) -> TraceStats:
  """Per-execution device times of the XLA module whose name contains `module_substr`, from an
  xplane file or one already read (a trace of several programs is read once, parsed per program)."""
  data = ProfileData.from_file(xplane) if isinstance(xplane, str) else xplane
  device_planes = [p for p in data.planes if p.name.startswith("/device:") and not p.name.startswith("/device:CUSTOM")]
  if device_planes:
    stats = _parse_device_planes(device_planes, module_substr)
    if stats.run_times_ns:
      return stats
  return _parse_cpu_host(data, module_substr)


def _parse_cpu_host(data: ProfileData, module_substr: str) -> TraceStats:
  runs: dict[str, list[float]] = collections.defaultdict(lambda: [float("inf"), float("-inf")])
  op_time, op_count = collections.Counter(), collections.Counter()
  for plane in data.planes:
    if not plane.name.startswith("/host:"):
      continue
    for line in plane.lines:
      for ev in line.events:
        st = _stats(ev)
        if "hlo_op" not in st or module_substr not in str(st.get("hlo_module", "")):
          continue
        start, end = ev.start_ns, ev.start_ns + ev.duration_ns
        span = runs[str(st.get("run_id"))]
        span[0], span[1] = min(span[0], start), max(span[1], end)
        op_time[ev.name] += ev.duration_ns
        op_count[ev.name] += 1
  ordered = sorted(runs.values(), key=lambda s: s[0])
  return TraceStats([e - s for s, e in ordered], dict(op_time), dict(op_count), "cpu_host_ops")


def _parse_device_planes(planes: Iterable, module_substr: str) -> TraceStats:
  """Executions of the module from each device plane's "XLA Modules" line; its ops from the "XLA
  Ops" line, those that start inside one of its executions (a trace of several programs, e.g. a
  student timed in turn with a reference, holds the others' ops too)."""
  per_device: list[list[tuple[float, float]]] = []
  op_time, op_count = collections.Counter(), collections.Counter()
  for plane in planes:
    lines = list(plane.lines)
    execs = sorted((ev.start_ns, ev.duration_ns) for line in lines if line.name == "XLA Modules"
                   for ev in line.events if module_substr in ev.name)
    starts = [s for s, _ in execs]
    for line in lines:
      if line.name != "XLA Ops":
        continue
      for ev in line.events:
        k = bisect.bisect_right(starts, ev.start_ns) - 1
        if k >= 0 and ev.start_ns <= execs[k][0] + execs[k][1]:
          op_time[ev.name] += ev.duration_ns
          op_count[ev.name] += 1
    if execs:
      per_device.append(execs)
  if not per_device:
    return TraceStats([], {}, {}, "device_plane")
  n = min(len(d) for d in per_device)
  times = [max(d[i][1] for d in per_device) for i in range(n)]
  return TraceStats(times, dict(op_time), dict(op_count), "device_plane")


_HLO_OP = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?metadata=\{[^}]*op_name="([^"]*)"')


def hlo_scopes(hlo_text: str) -> dict[str, str]:
  """Compiled HLO text -> {instruction name: named scope} (e.g. 'block_0/attention/dot_general').

  Trace events carry the instruction name (`ynn_fusion.36`, `fusion.12`); the scope from
  jax.named_scope says which part of the model it belongs to.
  """
  out = {}
  for line in hlo_text.splitlines():
    m = _HLO_OP.match(line)
    if m:
      scope = m.group(2)
      out[m.group(1)] = scope.split("/", 1)[1] if scope.startswith("jit(") and "/" in scope else scope
  return out


_HLO_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(?:\([^=]*?\)|\S+)\s+([\w\-]+)\(")
_HLO_CALLS = re.compile(r"(?:calls|to_apply)=%?([\w.\-]+)")
_HLO_TARGET = re.compile(r'custom_call_target="([^"]*)"')
MATMUL_OPCODES = ("dot", "convolution")
MATMUL_CALL_TARGETS = re.compile(r"gemm|matmul|conv", re.I)  # __cublas$gemm, __cublas$lt$matmul, __onednn$matmul


def matmul_ops(hlo_text: str) -> set[str]:
  """Compiled HLO text -> names of the instructions that are, or call computations that contain,
  a dot or a convolution (XLA:CPU's `dot.N`, a YNNPACK library fusion, a GPU GEMM fusion, a TPU
  convolution fusion), and library custom calls whose target is a GEMM (cuBLAS, oneDNN)."""
  computations: dict[str, list[tuple[str, str, list[str]]]] = {}
  library_matmuls = set()
  current = None
  for line in hlo_text.splitlines():
    m = _HLO_INSTRUCTION.match(line)
    if m and current is not None:
      computations[current].append((m.group(1), m.group(2), _HLO_CALLS.findall(line)))
      target = _HLO_TARGET.search(line)
      if m.group(2) == "custom-call" and target and MATMUL_CALL_TARGETS.search(target.group(1)):
        library_matmuls.add(m.group(1))
      continue
    m = _HLO_COMPUTATION.match(line)
    if m and "=" not in line.split("{")[0]:
      current = m.group(1)
      computations[current] = []

  has_matmul: dict[str, bool] = {}

  def contains(comp: str, seen=()) -> bool:
    if comp not in has_matmul:
      has_matmul[comp] = any(op in MATMUL_OPCODES or any(contains(c, seen + (comp,)) for c in calls if c not in seen)
                             for _, op, calls in computations.get(comp, []))
    return has_matmul[comp]

  holders = {name for comp in computations for name, op, calls in computations[comp]
             if op in MATMUL_OPCODES or (op in ("fusion", "custom-call") and any(contains(c) for c in calls))}
  return library_matmuls | holders


def matmul_share(stats: TraceStats, matmuls: set[str]) -> float:
  """Share of op time spent in the matmul instructions `matmuls` (matmul_ops of the module)."""
  total = sum(stats.op_time_ns.values())
  return sum(t for op, t in stats.op_time_ns.items() if op in matmuls) / total if total else 0.0


def time_by_scope(stats: TraceStats, scopes: dict[str, str], depth: int = 2) -> dict[str, float]:
  """Share of op time per named-scope prefix of `depth` levels ('block_0/attention')."""
  total = sum(stats.op_time_ns.values()) or 1.0
  acc = collections.Counter()
  for op, t in stats.op_time_ns.items():
    scope = scopes.get(op, "(unscoped)")
    parts = [p for p in scope.split("/") if not p.endswith(("dot_general", "add", "mul"))] or [scope]
    acc["/".join(parts[:depth])] += t
  return {k: v / total for k, v in sorted(acc.items(), key=lambda kv: -kv[1])}
