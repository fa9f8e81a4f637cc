"""Latency harness: a jitted function measured from XLA profiler traces (003 section 3.4).

measure_fn: compile once (FLOPs, bytes, memory from XLA), warm up, then trace rounds of
`chunk` executions under jax.profiler with step annotations until the 95% confidence
interval of the median device time is within `target_rel_ci` of it (or `max_reps`). Each
round's trace stays in `trace_dir/round_NNN/` for TensorBoard/xprof. Wall-clock time around
`block_until_ready` is recorded beside it as a cross-check.

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

from profiling import compile_stats, peaks as peaks_lib, trace as trace_lib

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


def measure_fn(fn: Callable, args: tuple, *, name: str, batch: int, seq: int | None = None, dtype: str = "float32",
               trace_dir: str | None = None, warmup: int = 3, chunk: int = 10, min_reps: int = 20,
               max_reps: int = 300, target_rel_ci: float = 0.02, top_k: int = 10,
               peaks: peaks_lib.Peaks | None = None, compiler_options: dict | None = None,
               recalibrate: bool = False) -> dict[str, Any]:
  if batch <= 0:
    raise ValueError(f"batch must be positive, got {batch}")
  if not 0 < target_rel_ci < 1:
    raise ValueError(f"target_rel_ci must be in (0, 1), got {target_rel_ci}")
  if min_reps > max_reps or chunk <= 0:
    raise ValueError(f"need 0 < chunk and min_reps <= max_reps, got chunk={chunk} min_reps={min_reps} max_reps={max_reps}")
  trace_dir = trace_dir or tempfile.mkdtemp(prefix="ad_trace_")
  os.makedirs(trace_dir, exist_ok=True)

  # A unique module name so the parser finds this function's executions and nothing else.
  tag = f"ad_measure_{_safe_name(name)}"
  def target(*a):
    return fn(*a)
  target.__name__ = tag

  t0 = time.perf_counter()
  from kernels import fused_ffn
  with fused_ffn.ImplementationLog() as ffn_log:  # what the fused FFN really ran as (it can fall back)
    stats = compile_stats.compile_stats(target, *args, compiler_options=compiler_options)
  compiled = stats["compiled"]
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))

  device_ns, wall_ns = [], []
  op_time, op_count, source = {}, {}, ""
  rounds = 0
  while True:
    round_dir = os.path.join(trace_dir, f"round_{rounds:03d}")
    this_chunk = min(chunk, max_reps - len(device_ns))  # never past max_reps
    started = time.time()
    with jax.profiler.trace(round_dir):
      for i in range(this_chunk):
        with jax.profiler.StepTraceAnnotation(tag, step_num=len(wall_ns)):
          s = time.perf_counter_ns()
          jax.block_until_ready(compiled(*args))
          wall_ns.append(time.perf_counter_ns() - s)
    ts = trace_lib.parse(trace_lib.newest_xplane(round_dir, after=started - 1), tag)
    if len(ts.run_times_ns) != this_chunk:
      raise RuntimeError(f"trace {round_dir}: found {len(ts.run_times_ns)} executions of module *{tag}*, "
                         f"expected {this_chunk}; the trace parser does not understand this backend's planes")
    device_ns += ts.run_times_ns
    source = ts.source
    for k, v in ts.op_time_ns.items():
      op_time[k] = op_time.get(k, 0.0) + v
      op_count[k] = op_count.get(k, 0) + ts.op_count[k]
    rounds += 1
    med = float(np.median(device_ns))
    lo, hi = median_ci95(device_ns)
    rel_ci = (hi - lo) / 2 / med if med > 0 else float("inf")
    n = len(device_ns)
    if (n >= min_reps and rel_ci <= target_rel_ci) or n >= max_reps:
      break

  dev_ms = np.asarray(device_ns) / 1e6
  median_s = med / 1e9
  device = jax.devices()[0]
  peaks = peaks or peaks_lib.device_peaks(device, dtype, refresh=recalibrate)
  if peaks.source.startswith("cpu_calibration") and stats["flops"] / median_s > peaks.flops_per_s:
    peaks = peaks_lib.raise_cpu_peak(dtype, stats["flops"] / median_s)  # the calibration was too low
  all_ops = trace_lib.TraceStats(device_ns, op_time, op_count, source)
  hlo_text = compiled.as_text() or ""
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
      latency_rel_ci95=float(rel_ci), converged=bool(rel_ci <= target_rel_ci),
      wall_ms_median=float(np.median(wall_ns) / 1e6),
      wall_minus_device_ms=float(np.median(wall_ns) / 1e6 - np.median(dev_ms)),
      throughput_per_s=batch / median_s, tokens_per_s=(batch * seq / median_s) if seq else None,
      flops=stats["flops"], bytes_accessed=stats["bytes_accessed"], flops_undercounted=stats["undercounted"],
      # Never above 1: the FLOP peak was raised above if beaten; XLA's `bytes accessed` counts
      # cache-resident reads too, so its rate can pass the streaming peak and is capped.
      flops_utilization=min(stats["flops"] / (median_s * peaks.flops_per_s), 1.0),
      bandwidth_utilization=min(stats["bytes_accessed"] / (median_s * peaks.bytes_per_s), 1.0),
      peak_flops_per_s=peaks.flops_per_s, peak_bytes_per_s=peaks.bytes_per_s, peak_source=peaks.source,
      peak_memory_bytes=stats.get("peak_bytes"), compile_s=compile_s, top_ops=top,
      time_by_scope=trace_lib.time_by_scope(all_ops, scopes),
      matmul_share=matmul_share, matmul_ms_median=matmul_share * float(np.median(dev_ms)),
      trace_dir=os.path.abspath(trace_dir), trace_source=source, threads=_thread_settings(),
      fused_ffn_ran=ffn_log.chosen, compiler_options=compiler_options or {},
  )
  return result


def student_forward(arch, model_cfg=None, *, num_blocks=None, batch=1, seq=128, dtype=None, seed=0, heads=False,
                    abstract=False):
  """(fn, args, StudentConfig) for a student's inference forward: ids [B, T] -> (seq_out, pooled), or
  with heads=True -> (MLM logits [B, T, V], NSP logits [B, 2]). The one inference forward of the
  project: `ad profile`, the search's measurement, `ad arch` and profiling/bench_inference.py use it.
  args[0] holds the parameters with stacked ones cut per layer (ad/models/stack.py: no weight
  copies per call); the parameters are those of `Student(cfg, nnx.Rngs(seed))`. abstract=True:
  the arguments are ShapeDtypeStructs (compile-only analysis, nothing allocated)."""
  from flax import nnx
  from ad.models import stack
  from ad.models import student as student_lib
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
                 **kwargs) -> dict[str, Any]:
  """Measures a student architecture's inference latency; the search loop's measurement call."""
  fn, args, cfg = student_forward(arch, model_cfg, num_blocks=num_blocks, batch=batch, seq=seq, dtype=dtype)
  r = measure_fn(fn, args, name=f"{cfg.arch.name}_b{batch}_s{seq}", batch=batch, seq=seq, dtype=cfg.dtype,
                 trace_dir=trace_dir, compiler_options=inference_compiler_options(cfg.dtype), **kwargs)
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
