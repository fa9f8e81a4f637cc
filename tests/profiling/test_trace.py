import time

import jax
import jax.numpy as jnp
import numpy as np

from profiling import compile_stats, trace


def test_parser_step_times_agree_with_wall_clock(tmp_path):
  @jax.jit
  def ad_trace_probe(a, b):
    for _ in range(4):
      a = jnp.tanh(a @ b)
    return a

  a = jnp.ones((384, 384)) * 0.01
  ad_trace_probe(a, a).block_until_ready()
  wall = []
  started = time.time()
  with jax.profiler.trace(str(tmp_path)):
    for i in range(8):
      with jax.profiler.StepTraceAnnotation("probe", step_num=i):
        t0 = time.perf_counter_ns()
        ad_trace_probe(a, a).block_until_ready()
        wall.append(time.perf_counter_ns() - t0)
  stats = trace.parse(trace.newest_xplane(str(tmp_path), after=started - 1), "ad_trace_probe")
  assert len(stats.run_times_ns) == 8
  dev, wall = np.asarray(stats.run_times_ns), np.asarray(wall)
  # Device time is a part of the wall time of the same call (host dispatch and sync make up the rest)...
  assert np.all(dev > 0) and np.all(dev <= wall * 1.02)
  # ...and most of it for a compute-bound function: within 40% of wall clock at the median.
  assert np.median(dev) >= 0.6 * np.median(wall)
  assert stats.top_ops(3)[0]["count"] == 8 and abs(sum(o["share"] for o in stats.top_ops(100)) - 1) < 1e-9


def test_parser_ignores_other_modules(tmp_path):
  f = jax.jit(lambda x: x * 2)
  x = jnp.ones((64, 64))
  f(x).block_until_ready()
  started = time.time()
  with jax.profiler.trace(str(tmp_path)):
    f(x).block_until_ready()
  stats = trace.parse(trace.newest_xplane(str(tmp_path), after=started - 1), "no_such_module")
  assert stats.run_times_ns == []


def test_matmul_flops_equal_2mnk():
  m, n, k = 64, 48, 80
  s = compile_stats.compile_stats(lambda a, b: a @ b, jax.ShapeDtypeStruct((m, k), jnp.float32),
                                  jax.ShapeDtypeStruct((k, n), jnp.float32))
  assert s["flops"] == 2 * m * n * k
  assert s["bytes_accessed"] == 4 * (m * k + k * n + m * n)
  assert not s["undercounted"]


def test_loops_are_flagged_as_undercounted():
  def f(a):
    return jax.lax.fori_loop(0, 10, lambda i, x: x @ x, a)
  s = compile_stats.compile_stats(f, jax.ShapeDtypeStruct((32, 32), jnp.float32))
  assert s["undercounted"]


def test_hlo_scopes_name_the_model_part():
  def f(x):
    with jax.named_scope("block_7"):
      with jax.named_scope("ffn"):
        return jnp.tanh(x @ x)
  compiled = jax.jit(f).lower(jnp.ones((16, 16))).compile()
  scopes = trace.hlo_scopes(compiled.as_text())
  assert any(v.startswith("block_7/ffn") for v in scopes.values())


def test_matmul_ops_find_dots_inside_and_outside_fusions():
  """Both XLA:CPU lowerings of a dot (a bare `dot.N` with YNNPACK off, a `ynn_fusion` holding the
  dot by default) count as matmuls; the elementwise fusion around them does not."""
  f = jax.jit(lambda a, b: jnp.tanh(a @ b) * 2.0 + 1.0)
  a = jnp.ones((64, 64))
  for options in ({"xla_cpu_experimental_ynn_fusion_type": ""}, None):
    hlo = f.lower(a, a).compile(options).as_text()
    names = trace.matmul_ops(hlo)
    assert names, hlo
    entry = hlo[hlo.index("ENTRY"):]
    top_level = [line.split("=")[0].strip().removeprefix("ROOT ").lstrip("%") for line in entry.splitlines()[1:]
                 if "=" in line]
    assert sum(n in names for n in top_level) == 1, (options, top_level)  # the one matmul, not the tanh fusion
  # A GPU module's cuBLAS call (no computation of its own) and a fusion holding a dot, as XLA:GPU prints them.
  gpu = """HloModule m
%gemm_fusion_dot (p0: f32[8,8], p1: f32[8,8]) -> f32[8,8] {
  %p0 = f32[8,8]{1,0} parameter(0)
  %p1 = f32[8,8]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,8]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
ENTRY %main (a: f32[8,8]) -> f32[8,8] {
  %a = f32[8,8]{1,0} parameter(0)
  %custom-call.3 = (f32[8,8]{1,0}, s8[0]{0}) custom-call(%a, %a), custom_call_target="__cublas$gemm"
  %gte = f32[8,8]{1,0} get-tuple-element(%custom-call.3), index=0
  %gemm_fusion = f32[8,8]{1,0} fusion(%gte, %a), kind=kCustom, calls=%gemm_fusion_dot
  ROOT %tanh.4 = f32[8,8]{1,0} tanh(%gemm_fusion)
}
"""
  assert {"custom-call.3", "gemm_fusion"} <= trace.matmul_ops(gpu) and "tanh.4" not in trace.matmul_ops(gpu)
  stats = trace.TraceStats([3.0], {"dot.1": 3.0, "fusion.2": 1.0}, {"dot.1": 1, "fusion.2": 1}, "cpu_host_ops")
  assert trace.matmul_share(stats, {"dot.1"}) == 0.75
  assert trace.matmul_share(trace.TraceStats([], {}, {}, "cpu_host_ops"), {"dot.1"}) == 0.0


def test_device_planes_count_only_the_ops_inside_the_modules_executions():
  """A GPU/TPU trace of two programs called in turn (a student paired with a reference): each
  program's executions come from the "XLA Modules" line, and only the ops that ran inside them are
  its ops (the parser's input format: planes of lines of events, as jax.profiler.ProfileData has)."""
  from types import SimpleNamespace as NS
  ev = lambda name, start, dur: NS(name=name, start_ns=start, duration_ns=dur)
  modules = NS(name="XLA Modules", events=[ev("jit_ad_measure_a(1)", 0, 10), ev("jit_ad_reference_b(2)", 20, 30),
                                           ev("jit_ad_measure_a(1)", 60, 12)])
  ops = NS(name="XLA Ops", events=[ev("dot.a", 1, 8), ev("dot.b", 21, 25), ev("add.b", 47, 2), ev("dot.a", 61, 9)])
  plane = NS(name="/device:GPU:0", lines=[modules, ops])
  a = trace._parse_device_planes([plane], "ad_measure_a")
  b = trace._parse_device_planes([plane], "ad_reference_b")
  assert a.run_times_ns == [10, 12] and a.op_time_ns == {"dot.a": 17} and a.op_count == {"dot.a": 2}
  assert b.run_times_ns == [30] and b.op_time_ns == {"dot.b": 25, "add.b": 2}
