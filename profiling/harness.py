"""Latency harness: a jitted function measured from XLA profiler traces (003 section 3.4).

measure_fn: compile once (FLOPs, bytes, memory from XLA), warm up, then trace rounds of
`chunk` executions under jax.profiler with step annotations until the 95% confidence
interval of the median device time is within `target_rel_ci` of it (or `max_reps`). Each
round's trace stays in `trace_dir/round_NNN/` for TensorBoard/xprof. Wall-clock time around
`block_until_ready` is recorded beside it as a cross-check.

Paired: this machine's speed drifts 15-40% within an hour, ten times a median's CI. With a
reference program, measure_fn calls the two alternately in the same traces and reports the ratio
of their latencies (paired_ratio), which holds where each latency alone drifts; measure_together
does the same for several programs against one reference.

measure_arch: the same for a student architecture's inference forward (embeddings, blocks,
pooler) at a batch, sequence length and dtype; this is what the search loop calls.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.profiler import ProfileData

from profiling import compile_stats, peaks as peaks_lib, trace as trace_lib
from ad.models import stack, student as student_lib
from kernels import fused_ffn

RESULT_FIELDS = (
    "name", "backend", "device_kind", "jax_version", "jaxlib_version", "dtype", "batch", "seq", "repetitions",
    "latency_ms_mean", "latency_ms_median", "latency_ms_p90", "latency_cv", "latency_rel_ci95", "converged",
    "wall_ms_median", "wall_minus_device_ms", "throughput_per_s", "tokens_per_s", "flops", "bytes_accessed",
    "flops_undercounted", "flops_utilization", "bandwidth_utilization", "peak_flops_per_s", "peak_bytes_per_s",
    "peak_source", "peak_memory_bytes", "compile_s", "top_ops", "time_by_scope", "matmul_share", "matmul_ms_median",
    "trace_dir", "trace_source", "threads", "fused_ffn_ran", "compiler_options",
)


def median_ci95(x: np.ndarray) -> tuple[float, float]:
  """Distribution-free 95% CI of the median from order statistics (normal approximation to the binomial)."""
  x = np.sort(np.asarray(x, np.float64))
  n = len(x)
  half = 1.96 * math.sqrt(n) / 2
  lo = max(int(math.floor(n / 2 - half)), 0)
  hi = min(int(math.ceil(n / 2 + half)), n - 1)
  return float(x[lo]), float(x[hi])


def _thread_settings() -> dict:
  keys = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
  out = {k: os.environ[k] for k in keys if k in os.environ}
  out["cpu_count"] = os.cpu_count()
  try:
    out["affinity"] = len(os.sched_getaffinity(0))
  except AttributeError:
    pass
  return out


def _safe_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_]", "_", name)


def paired_ratio(times, reference_times) -> tuple[float, float]:
  """(ratio, relative half-width of its 95% CI) of a program's latency to a reference's, from calls
  made in turn (times[i] and reference_times[i] in the same turn, call_order): the median of the
  per-pair log ratios, with the order-statistic CI of that median. Drift slower than one turn
  cancels in each ratio, so the ratio holds where each latency alone drifts."""
  logs = np.log(np.asarray(times, np.float64) / np.asarray(reference_times, np.float64))
  mid = float(np.median(logs))
  lo, hi = median_ci95(logs)
  return math.exp(mid), (math.exp(hi) - math.exp(lo)) / 2 / math.exp(mid)


def relative_ci(times) -> float:
  """The relative half-width of the 95% CI of the median of `times`."""
  med = float(np.median(times))
  lo, hi = median_ci95(times)
  return (hi - lo) / 2 / med if med > 0 else float("inf")


def interleaved_rounds(run_round: Callable[[int], list[list[float]]], n_programs: int, *, chunk: int, min_reps: int,
                       max_reps: int, target_rel_ci: float, reference: int | None = None) -> tuple[list[list[float]], float]:
  """Calls `run_round(k)` (the programs called in turn, k times; their device times per program)
  until the precision is within `target_rel_ci` after at least `min_reps` calls each, or `max_reps`.
  Precision: without a reference, the widest relative CI of a median; with one, the widest relative
  CI of a program's paired ratio to program `reference`. Returns (times per program, precision)."""
  times: list[list[float]] = [[] for _ in range(n_programs)]
  others = [i for i in range(n_programs) if i != reference]
  while True:
    k = min(chunk, max_reps - len(times[0]))  # never past max_reps
    for acc, new in zip(times, run_round(k)):
      acc += list(new)
    if reference is None:
      precision = max(relative_ci(t) for t in times)
    else:
      precision = max((paired_ratio(times[i], times[reference])[1] for i in others), default=0.0)
    n = len(times[0])
    if (n >= min_reps and precision <= target_rel_ci) or n >= max_reps:
      return times, precision


def call_order(calls_so_far: int, n_programs: int) -> list[int]:
  """The order the programs are called in, in turn number `calls_so_far`: forwards, then
  backwards (A B, B A, A B, ...), so a drift that is linear over a few calls adds to a program's
  ratio in one turn what it takes away in the next."""
  order = list(range(n_programs))
  return order if calls_so_far % 2 == 0 else order[::-1]


def _traced_round_fn(compiled: list, args: list[tuple], tags: list[str], trace_dir: str, op_stats: list,
                     wall_ns: list):
  """run_round for interleaved_rounds: one profiler trace per round (kept in trace_dir/round_NNN/),
  the programs called in turn inside it; device times read from the trace, each program's by its
  module name. The trace parse of program 0 goes to `op_stats` (its per-op times), the wall time
  around each of its calls to `wall_ns` (under the profiler too, so the two compare)."""
  state = dict(rounds=0, calls=0)

  def run_round(k: int) -> list[list[float]]:
    round_dir = os.path.join(trace_dir, f"round_{state['rounds']:03d}")
    started = time.time()
    with jax.profiler.trace(round_dir):
      for _ in range(k):
        for i in call_order(state["calls"], len(compiled)):
          with jax.profiler.StepTraceAnnotation(tags[i], step_num=state["calls"]):
            s = time.perf_counter_ns()
            jax.block_until_ready(compiled[i](*args[i]))
            if i == 0:
              wall_ns.append(time.perf_counter_ns() - s)
        state["calls"] += 1
    data = ProfileData.from_file(trace_lib.newest_xplane(round_dir, after=started - 1))
    out = []
    for i, tag in enumerate(tags):
      ts = trace_lib.parse(data, tag)
      if len(ts.run_times_ns) != k:
        raise RuntimeError(f"trace {round_dir}: found {len(ts.run_times_ns)} executions of module *{tag}*, "
                           f"expected {k}; the trace parser does not understand this backend's planes")
      if i == 0:
        op_stats.append(ts)
      out.append(ts.run_times_ns)
    state["rounds"] += 1
    return out

  return run_round


def _warm_and_time(compiled: list, args: list[tuple], tags: list[str], trace_dir: str, *, warmup: int, chunk: int,
                   min_reps: int, max_reps: int, target_rel_ci: float, reference: int | None):
  """Warms the compiled programs up, then times them in turn (interleaved_rounds over traced
  rounds): (times per program, precision, program 0's per-round trace stats, its wall times)."""
  for _ in range(warmup):
    for c, a in zip(compiled, args):
      jax.block_until_ready(c(*a))
  op_stats: list[trace_lib.TraceStats] = []
  wall_ns: list[float] = []
  times, precision = interleaved_rounds(_traced_round_fn(compiled, args, tags, trace_dir, op_stats, wall_ns),
                                        len(compiled), chunk=chunk, min_reps=min_reps, max_reps=max_reps,
                                        target_rel_ci=target_rel_ci, reference=reference)
  return times, precision, op_stats, wall_ns


def _tagged(fn: Callable, tag: str) -> Callable:
  """`fn` under a unique module name, so the trace parser finds its executions and nothing else."""
  def target(*a):
    return fn(*a)
  target.__name__ = tag
  return target


def measure_fn(fn: Callable, args: tuple, *, name: str, batch: int, seq: int | None = None, dtype: str = "float32",
               trace_dir: str | None = None, warmup: int = 3, chunk: int = 10, min_reps: int = 20,
               max_reps: int = 300, target_rel_ci: float = 0.02, top_k: int = 10,
               peaks: peaks_lib.Peaks | None = None, compiler_options: dict | None = None,
               recalibrate: bool = False, reference: tuple[Callable, tuple, str] | None = None) -> dict[str, Any]:
  """Measures `fn(*args)`. reference=(fn, args, name): measured paired with that program, the two
  called alternately in the same traces until the ratio of their latencies is within
  `target_rel_ci`; the result adds `latency_ratio` (to the reference), its relative 95% CI and
  the reference's own median in these rounds (paired_ratio); compile_s and fused_ffn_ran then
  cover both programs."""
  if batch <= 0:
    raise ValueError(f"batch must be positive, got {batch}")
  if not 0 < target_rel_ci < 1:
    raise ValueError(f"target_rel_ci must be in (0, 1), got {target_rel_ci}")
  if min_reps > max_reps or chunk <= 0:
    raise ValueError(f"need 0 < chunk and min_reps <= max_reps, got chunk={chunk} min_reps={min_reps} max_reps={max_reps}")
  trace_dir = trace_dir or tempfile.mkdtemp(prefix="ad_trace_")
  os.makedirs(trace_dir, exist_ok=True)

  tags = [f"ad_measure_{_safe_name(name)}"] + ([f"ad_reference_{_safe_name(reference[2])}"] if reference else [])
  programs = [(fn, args)] + ([reference[:2]] if reference else [])
  t0 = time.perf_counter()
  with fused_ffn.ImplementationLog() as ffn_log:  # what the fused FFN really ran as (it can fall back)
    stats = [compile_stats.compile_stats(_tagged(f, tag), *a, compiler_options=compiler_options)
             for (f, a), tag in zip(programs, tags)]
  compiled = [s["compiled"] for s in stats]
  compile_s = time.perf_counter() - t0
  times, precision, op_stats, wall_ns = _warm_and_time(
      compiled, [a for _, a in programs], tags, trace_dir, warmup=warmup, chunk=chunk, min_reps=min_reps,
      max_reps=max_reps, target_rel_ci=target_rel_ci, reference=1 if reference else None)
  device_ns = times[0]
  n = len(device_ns)
  op_time, op_count = {}, {}
  for ts in op_stats:
    for k, v in ts.op_time_ns.items():
      op_time[k] = op_time.get(k, 0.0) + v
      op_count[k] = op_count.get(k, 0) + ts.op_count[k]
  source = op_stats[-1].source
  stats0 = stats[0]

  dev_ms = np.asarray(device_ns) / 1e6
  med = float(np.median(device_ns))
  rel_ci = relative_ci(device_ns)
  median_s = med / 1e9
  device = jax.devices()[0]
  peaks = peaks or peaks_lib.device_peaks(device, dtype, refresh=recalibrate)
  if peaks.source.startswith("cpu_calibration") and stats0["flops"] / median_s > peaks.flops_per_s:
    peaks = peaks_lib.raise_cpu_peak(dtype, stats0["flops"] / median_s)  # the calibration was too low
  all_ops = trace_lib.TraceStats(device_ns, op_time, op_count, source)
  hlo_text = compiled[0].as_text() or ""
  scopes = trace_lib.hlo_scopes(hlo_text)
  top = all_ops.top_ops(top_k, scopes)
  # What the matmuls alone take: with every other op free, the latency could fall no lower.
  matmul_share = trace_lib.matmul_share(all_ops, trace_lib.matmul_ops(hlo_text))
  result = dict(
      name=name, backend=jax.default_backend(), device_kind=device.device_kind, jax_version=jax.__version__,
      jaxlib_version=jaxlib.__version__,
      dtype=dtype, batch=batch, seq=seq, repetitions=n,
      latency_ms_mean=float(dev_ms.mean()), latency_ms_median=float(np.median(dev_ms)),
      latency_ms_p90=float(np.percentile(dev_ms, 90)), latency_cv=float(dev_ms.std() / dev_ms.mean()),
      latency_rel_ci95=float(rel_ci), converged=bool(precision <= target_rel_ci),
      wall_ms_median=float(np.median(wall_ns) / 1e6),
      wall_minus_device_ms=float(np.median(wall_ns) / 1e6 - np.median(dev_ms)),
      throughput_per_s=batch / median_s, tokens_per_s=(batch * seq / median_s) if seq else None,
      flops=stats0["flops"], bytes_accessed=stats0["bytes_accessed"], flops_undercounted=stats0["undercounted"],
      # Never above 1: the FLOP peak was raised above if beaten; XLA's `bytes accessed` counts
      # cache-resident reads too, so its rate can pass the streaming peak and is capped.
      flops_utilization=min(stats0["flops"] / (median_s * peaks.flops_per_s), 1.0),
      bandwidth_utilization=min(stats0["bytes_accessed"] / (median_s * peaks.bytes_per_s), 1.0),
      peak_flops_per_s=peaks.flops_per_s, peak_bytes_per_s=peaks.bytes_per_s, peak_source=peaks.source,
      peak_memory_bytes=stats0.get("peak_bytes"), compile_s=compile_s, top_ops=top,
      time_by_scope=trace_lib.time_by_scope(all_ops, scopes),
      matmul_share=matmul_share, matmul_ms_median=matmul_share * float(np.median(dev_ms)),
      trace_dir=os.path.abspath(trace_dir), trace_source=source, threads=_thread_settings(),
      fused_ffn_ran=ffn_log.chosen, compiler_options=compiler_options or {},
  )
  if reference:
    ratio, ratio_ci = paired_ratio(device_ns, times[1])
    result.update(reference=reference[2], reference_ms_median=float(np.median(times[1]) / 1e6),
                  latency_ratio=ratio, latency_ratio_rel_ci95=ratio_ci)
  return result


def measure_together(programs: list[tuple[str, Callable, tuple]], *, reference: int, trace_dir: str | None = None,
                     warmup: int = 3, chunk: int = 10, min_reps: int = 20, max_reps: int = 300,
                     target_rel_ci: float = 0.02, compiler_options: dict | None = None) -> list[dict[str, Any]]:
  """Several programs (name, fn, args) measured together: called in turn in the same traces until
  each one's ratio to programs[reference] is within `target_rel_ci`. Per program: its median
  (unpaired), its ratio to the reference with the ratio's relative 95% CI, and the calls each."""
  if not 0 <= reference < len(programs):
    raise ValueError(f"reference {reference}: expected an index into the {len(programs)} programs")
  trace_dir = trace_dir or tempfile.mkdtemp(prefix="ad_trace_")
  os.makedirs(trace_dir, exist_ok=True)
  tags = [f"ad_together_{i}_{_safe_name(name)}" for i, (name, _, _) in enumerate(programs)]
  compiled = [compile_stats.compile_stats(_tagged(fn, tag), *args, compiler_options=compiler_options)["compiled"]
              for (_, fn, args), tag in zip(programs, tags)]
  times, precision, _, _ = _warm_and_time(compiled, [a for _, _, a in programs], tags, trace_dir, warmup=warmup,
                                          chunk=chunk, min_reps=min_reps, max_reps=max_reps,
                                          target_rel_ci=target_rel_ci, reference=reference)
  out = []
  for (name, _, _), t in zip(programs, times):
    ratio, ratio_ci = paired_ratio(t, times[reference])
    out.append(dict(name=name, latency_ms_median=float(np.median(t) / 1e6), latency_rel_ci95=relative_ci(t),
                    latency_ratio=ratio, latency_ratio_rel_ci95=ratio_ci, repetitions=len(t),
                    converged=bool(precision <= target_rel_ci), trace_dir=os.path.abspath(trace_dir)))
  return out


def student_forward(arch, model_cfg=None, *, num_blocks=None, batch=1, seq=128, dtype=None, seed=0, heads=False,
                    abstract=False):
  """(fn, args, StudentConfig) for a student's inference forward: ids [B, T] -> (seq_out, pooled), or
  with heads=True -> (MLM logits [B, T, V], NSP logits [B, 2]). The one inference forward of the
  project: `ad profile`, the search's measurement, `ad arch` and profiling/bench_inference.py use it.
  args[0] holds the parameters with stacked ones cut per layer (ad/models/stack.py: no weight
  copies per call); the parameters are those of `Student(cfg, nnx.Rngs(seed))`. abstract=True:
  the arguments are ShapeDtypeStructs (compile-only analysis, nothing allocated)."""
  from flax import nnx
  cfg = student_lib.config_from_dict(arch, model_cfg, num_blocks=num_blocks, dtype=dtype)
  if batch <= 0:
    raise ValueError(f"batch must be positive, got {batch}")
  if not 0 < seq <= cfg.max_positions:
    raise ValueError(f"seq {seq} is outside (0, {cfg.max_positions}] (the model's position embeddings)")
  if abstract:
    graphdef, state = nnx.split(student_lib.abstract_student(cfg))
    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  else:
    graphdef, state = nnx.split(student_lib.Student(cfg, nnx.Rngs(seed)))
    ids = jax.random.randint(jax.random.key(seed), (batch, seq), 0, cfg.vocab_size, jnp.int32)

  def forward(params, ids):
    # Unrolled blocks: what a served model runs, and what XLA's cost analysis counts in full.
    model = nnx.merge(graphdef, stack.restack(params))
    if heads:
      out = model(ids, unroll=True)
      return out["mlm_logits"], out["nsp_logits"]
    out = model.encode(ids, unroll=True)
    return out["sequence_output"], out["pooled"]

  return forward, (stack.unstack_params(state), ids), cfg


def inference_program(arch, model_cfg=None, *, mesh, num_blocks=None, batch=1, seq=128, dtype=None, heads=False):
  """(jitted forward, abstract arguments, StudentConfig) of `student_forward` compiled for `mesh`'s
  devices (e.g. a TPU topology's, ad/aot.py): the batch over 'data' where it divides, the
  parameters whole on every device (a student's weights are tens of MB)."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  fn, args, cfg = student_forward(arch, model_cfg, num_blocks=num_blocks, batch=batch, seq=seq, dtype=dtype,
                                  heads=heads, abstract=True)
  data = mesh.shape.get("data", 1)
  ids_sh = NamedSharding(mesh, P("data") if batch % data == 0 else P())
  whole = NamedSharding(mesh, P())
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=whole), args[0])
  ids = jax.ShapeDtypeStruct(args[1].shape, args[1].dtype, sharding=ids_sh)
  return jax.jit(fn), (params, ids), cfg


def inference_compiler_options(dtype: str, backend: str | None = None) -> dict:
  """XLA options for compiling a student's inference forward, per backend and compute dtype.

  On XLA:CPU, f32 dots run faster through XLA's own (Eigen) emitter than through the YNNPACK
  library fusions jax enables by default, while bf16 dots are faster with YNNPACK: measured on
  this project's 2-core AVX512-BF16 machine for the 24-block MobileBERT shape at batch 1, seq 128
  (the same lowered program compiled both ways and timed side by side, median of 40 calls: f32 55
  vs 71 ms, bf16 48 vs 83 ms). Other backends: none."""
  backend = backend or jax.default_backend()
  if backend == "cpu" and jnp.dtype(dtype) == jnp.float32:
    return {"xla_cpu_experimental_ynn_fusion_type": ""}
  return {}


def inference_callable(fn, params, ids, dtype: str):
  """ids -> outputs: `fn` from student_forward compiled once (for the shape of `ids`, with
  inference_compiler_options), its parameters bound."""
  lowered = jax.jit(fn).lower(params, ids)
  compiled = lowered.compile(inference_compiler_options(dtype) or None)
  return lambda ids: compiled(params, ids)


def measure_arch(arch, model_cfg=None, *, num_blocks=None, batch=1, seq=128, dtype=None, trace_dir=None,
                 reference=None, reference_model_cfg=None, **kwargs) -> dict[str, Any]:
  """Measures a student architecture's inference latency; the search loop's measurement call.
  reference: an architecture (built with reference_model_cfg, default model_cfg) measured paired
  with it (measure_fn's reference), the same batch, sequence length and dtype."""
  fn, args, cfg = student_forward(arch, model_cfg, num_blocks=num_blocks, batch=batch, seq=seq, dtype=dtype)
  ref = None
  if reference is not None:
    ref_fn, ref_args, ref_cfg = student_forward(reference, model_cfg if reference_model_cfg is None else
                                                reference_model_cfg, num_blocks=num_blocks, batch=batch, seq=seq,
                                                dtype=cfg.dtype)
    ref = (ref_fn, ref_args, ref_cfg.arch.name)
  r = measure_fn(fn, args, name=f"{cfg.arch.name}_b{batch}_s{seq}", batch=batch, seq=seq, dtype=cfg.dtype,
                 trace_dir=trace_dir, compiler_options=inference_compiler_options(cfg.dtype), reference=ref, **kwargs)
  r.update(arch=cfg.arch.name, num_blocks=cfg.num_blocks)
  return r


def compile_only_arch(arch, model_cfg=None, *, num_blocks=None, batch=1, seq=128, dtype=None,
                      heads=False) -> dict[str, Any]:
  """FLOPs, bytes and memory of a student's inference forward (with the MLM and NSP heads if
  `heads`) without running it or allocating its parameters (screening, `ad arch`)."""
  fn, args, cfg = student_forward(arch, model_cfg, num_blocks=num_blocks, batch=batch, seq=seq, dtype=dtype,
                                  heads=heads, abstract=True)
  s = compile_stats.compile_stats(fn, *args, compiler_options=inference_compiler_options(cfg.dtype))
  s.pop("compiled")
  s.update(arch=cfg.arch.name, num_blocks=cfg.num_blocks, batch=batch, seq=seq, dtype=cfg.dtype,
           backend=jax.default_backend())
  return s
