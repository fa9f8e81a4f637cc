"""Peak compute and memory bandwidth of the device a measurement ran on.

- TPU: `TPU_CHIPS`, per chip from Google's Cloud TPU documentation, divided among the chip's
  logical devices (a megacore device holds both TensorCores of a v4/v5p chip; a compile-only
  per-core device, half of each).
- GPU: a table of dense (no sparsity) peaks from NVIDIA's data sheets: bf16/f16 tensor cores,
  float32 the FP32 (CUDA-core, non-tensor) rate, tfloat32 the TF32 tensor-core rate (what an f32
  matmul can reach when XLA is allowed TF32; float32 programs are measured against the FP32 rate).
- CPU: measured by a calibration micro-benchmark (the best of repeated jitted matmuls of
  several sizes for FLOP/s; a streaming add at several working-set sizes for bytes/s) and
  cached per machine, jax version and thread setting in ~/.cache/autodistill-jax/, unless
  other processes loaded the machine while it ran (then it serves this process only: calibrated
  once per process, never written to the cache);
  a measurement that beats the cached peak re-calibrates (raise_cpu_peak). XLA's `bytes accessed` counts every
  operand read, cache-resident or not, so the CPU bandwidth peak is the best streaming rate
  over working sets from L2-sized to DRAM-sized: the ceiling that count can be held to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

from ad import files


@dataclasses.dataclass(frozen=True)
class Peaks:
  device_kind: str
  flops_per_s: float  # for the dtype asked
  bytes_per_s: float
  source: str  # 'tpu_table', 'gpu_table', 'cpu_calibration'
  dtype: str


# Dense peaks in FLOP/s: bf16/f16 and TF32 tensor cores, FP32 CUDA cores; HBM bytes/s.
# Keys are matched as substrings of jax's device_kind, most specific first. Sources: NVIDIA's data
# sheets (H100/H200 "Tensor Core GPU" datasheets; A100 datasheet; L4 datasheet), the dense figures
# (the sheets' tensor-core numbers "with sparsity" are twice these).
GPU_PEAKS = (
    ("H200", dict(bfloat16=989e12, float16=989e12, tfloat32=494e12, float32=67e12, hbm=4.8e12)),
    ("H100 PCIe", dict(bfloat16=756e12, float16=756e12, tfloat32=378e12, float32=51e12, hbm=2.0e12)),
    ("H100 NVL", dict(bfloat16=835e12, float16=835e12, tfloat32=418e12, float32=60e12, hbm=3.9e12)),
    ("H100", dict(bfloat16=989e12, float16=989e12, tfloat32=494e12, float32=67e12, hbm=3.35e12)),  # SXM5
    ("A100-SXM4-80GB", dict(bfloat16=312e12, float16=312e12, tfloat32=156e12, float32=19.5e12, hbm=2.039e12)),
    ("A100-SXM4-40GB", dict(bfloat16=312e12, float16=312e12, tfloat32=156e12, float32=19.5e12, hbm=1.555e12)),
    ("A100 80GB PCIe", dict(bfloat16=312e12, float16=312e12, tfloat32=156e12, float32=19.5e12, hbm=1.935e12)),
    ("A100", dict(bfloat16=312e12, float16=312e12, tfloat32=156e12, float32=19.5e12, hbm=1.555e12)),
    ("L4", dict(bfloat16=121e12, float16=121e12, tfloat32=60e12, float32=30.3e12, hbm=0.3e12)),
)


@dataclasses.dataclass(frozen=True)
class TpuChip:
  """One TPU chip's facts, per chip (not per TensorCore)."""
  name: str  # v4, v5e, v5p, v6e: the names of `ad compile --topology`
  hbm_bytes: float
  bf16_flops_per_s: float  # dense bf16 matmul peak
  hbm_bytes_per_s: float
  tensorcores: int  # per chip; a megacore device (v4, v5p) runs both as one
  megacore: bool


GiB = 2 ** 30
# Sources: Google Cloud TPU documentation, "TPU v4", "TPU v5e", "TPU v5p" and "TPU v6e" system
# architecture pages (per-chip specifications: peak bf16 compute, HBM capacity, HBM bandwidth).
# They agree within 1% with the per-core figures jax ships in pltpu.get_tpu_info_for_chip (tested),
# except v5p's HBM bandwidth: 2,765 GB/s in the documentation, 2 x 1,230 GB/s in pltpu's table.
TPU_CHIPS = {
    "v4": TpuChip("v4", 32 * GiB, 275e12, 1228e9, tensorcores=2, megacore=True),
    "v5e": TpuChip("v5e", 16 * GiB, 197e12, 819e9, tensorcores=1, megacore=False),
    "v5p": TpuChip("v5p", 95 * GiB, 459e12, 2765e9, tensorcores=2, megacore=True),
    "v6e": TpuChip("v6e", 32 * GiB, 918e12, 1640e9, tensorcores=1, megacore=False),
}
# jax's device_kind -> TPU_CHIPS key
TPU_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
             "TPU v6 lite": "v6e", "TPU v6e": "v6e"}


def tpu_chip(device_kind: str) -> TpuChip:
  if device_kind not in TPU_KINDS:
    raise ValueError(f"TPU {device_kind!r} is not in profiling/peaks.py TPU_KINDS (known: {sorted(TPU_KINDS)}); add "
                     "its chip to TPU_CHIPS with the data-sheet figures")
  return TPU_CHIPS[TPU_KINDS[device_kind]]


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
  """What one logical device of a chip has: its share of the chip (a per-core device of a two-core
  chip has half of everything)."""
  chip: TpuChip
  share: float  # of the chip
  hbm_bytes: float
  bf16_flops_per_s: float
  hbm_bytes_per_s: float


def tpu_device_facts(device_kind: str, cores_per_device: int = 1) -> DeviceFacts:
  chip = tpu_chip(device_kind)
  share = min(cores_per_device, chip.tensorcores) / chip.tensorcores
  return DeviceFacts(chip, share, chip.hbm_bytes * share, chip.bf16_flops_per_s * share, chip.hbm_bytes_per_s * share)



def gpu_peaks(device_kind: str, dtype: str) -> Peaks:
  for key, p in GPU_PEAKS:
    if key in device_kind:
      if dtype not in p:
        raise ValueError(f"no {dtype} peak for GPU {device_kind!r}; known dtypes {sorted(k for k in p if k != 'hbm')}")
      return Peaks(device_kind, p[dtype], p["hbm"], "gpu_table", dtype)
  raise ValueError(f"GPU {device_kind!r} is not in profiling/peaks.py GPU_PEAKS "
                   f"(known: {[k for k, _ in GPU_PEAKS]}); add its data-sheet peaks there")


def tpu_peaks(device_kind: str, dtype: str, cores_per_device: int = 1) -> Peaks:
  # At JAX's default matmul precision the MXU runs float32 matmuls as one bf16 pass, so the
  # bf16 peak is the ceiling for both dtypes (precision='highest' would be ~1/6 of it).
  facts = tpu_device_facts(device_kind, cores_per_device)
  return Peaks(device_kind, facts.bf16_flops_per_s, facts.hbm_bytes_per_s, "tpu_table", dtype)


# ---------------------------------------------------------------------------------------------
# CPU calibration.

def _cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
  return os.path.join(base, "autodistill-jax")


def cpu_identity(dtype: str) -> dict:
  """What a CPU measurement depends on: the CPU model, the host, the cores, JAX and its flags, the dtype."""
  model = platform.processor() or ""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return dict(cpu=model, machine=platform.machine(), node=platform.node(), cores=os.cpu_count(),
              jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""), dtype=dtype)


MATMUL_SIZES = (1024, 2048, 3072)  # square f32/bf16 matmuls; the peak is the best of all of them
MATMUL_REPS = 8
STREAM_SIZES = (1 << 18, 1 << 20, 1 << 22, 1 << 24)  # elements of the streaming add
MAX_OTHER_LOAD = 0.10  # fraction of the machine's CPU time others may use while a calibration is cached
# Calibrations made under load, kept for this process only ({cache path: Peaks}): on a busy machine
# a search calibrates once, not before each trial's measurement (5-6 s each here), and all its
# trials' utilizations share one peak.
_THIS_PROCESS: dict[str, "Peaks"] = {}


def _best_time(fn, *args, reps: int) -> tuple[float, list[float]]:
  fn(*args).block_until_ready()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn(*args).block_until_ready()
    times.append(time.perf_counter() - t0)
  return min(times), times


def _cpu_busy_seconds() -> float | None:
  """CPU seconds all processes have used since boot (/proc/stat), or None where unavailable."""
  try:
    with open("/proc/stat") as f:
      fields = [float(v) for v in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
  return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
  """`with OtherLoad() as load:` -> load.fraction: the share of the machine's CPU time that other
  processes used during the block (everything busy minus this process), in [0, 1]; None where
  /proc/stat is unavailable."""

  def __enter__(self):
    self._busy, self._own, self._wall = _cpu_busy_seconds(), time.process_time(), time.perf_counter()
    return self

  def __exit__(self, *exc):
    busy, wall = _cpu_busy_seconds(), time.perf_counter() - self._wall
    own = time.process_time() - self._own
    if busy is None or self._busy is None or wall <= 0:
      self.fraction = None
    else:
      self.fraction = min(max((busy - self._busy - own) / (wall * (os.cpu_count() or 1)), 0.0), 1.0)
    return False


def calibrate_cpu(dtype: str = "float32", quick: bool = False, load_probe=OtherLoad) -> dict:
  """Measures matmul FLOP/s and streaming bytes/s on the CPU backend; returns a dict.

  FLOP/s: the best of MATMUL_REPS repetitions of each of MATMUL_SIZES, the peak the best of those.
  Bytes/s: the best streaming rate over working sets from L2-sized to DRAM-sized. `other_load`
  is the share of CPU time other processes took meanwhile (load_probe, OtherLoad by default)."""
  dt = jnp.dtype(dtype)
  sizes = (512, 1024) if quick else MATMUL_SIZES
  reps = 3 if quick else MATMUL_REPS
  mm = jax.jit(lambda x, y: x @ y)
  matmul = {}
  with load_probe() as load:
    for n in sizes:
      a = jnp.ones((n, n), dt)
      best, times = _best_time(mm, a, a, reps=reps)
      matmul[n] = dict(best_flops_per_s=2 * n ** 3 / best, flops_per_s_each=[2 * n ** 3 / t for t in times])
    stream = jax.jit(lambda x: x * 1.5 + 1.0)  # reads and writes each element once
    rates = {}
    for s in ((1 << 18, 1 << 21) if quick else STREAM_SIZES):
      x = jnp.ones((s,), jnp.float32)
      rates[s * 4] = 2 * s * 4 / _best_time(stream, x, reps=max(3, min(200, (1 << 26) // s)))[0]
  best_n = max(matmul, key=lambda n: matmul[n]["best_flops_per_s"])
  return dict(flops_per_s=matmul[best_n]["best_flops_per_s"], matmul_n=best_n, matmul=matmul,
              bytes_per_s=max(rates.values()), stream_bytes_per_s_by_working_set=rates, dtype=dtype,
              other_load=load.fraction, load_average=os.getloadavg() if hasattr(os, "getloadavg") else None)


def _cpu_cache_path(ident: dict) -> str:
  key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(_cache_dir(), f"cpu_peaks_{key}.json")


def _cache_unless_loaded(ident: dict, cal: dict) -> bool:
  """Caches `cal` unless other processes used more than MAX_OTHER_LOAD of the machine while it
  was measured; returns whether it was cached."""
  if cal["other_load"] is not None and cal["other_load"] > MAX_OTHER_LOAD:
    return False
  files.write_json(_cpu_cache_path(ident), dict(identity=ident, calibration=cal, measured_at=time.time()))
  return True


def cpu_peaks(dtype: str = "float32", refresh: bool = False, log=None) -> Peaks:
  """The calibrated CPU peaks for `dtype`, from the cache or measured now (refresh: always).

  A calibration made while other processes used more than MAX_OTHER_LOAD of the machine serves
  this process only (source 'cpu_calibration_under_load'; later calls here reuse it) and is never
  written to the cache, so a busy moment cannot inflate every later run's utilization."""
  ident = cpu_identity(dtype)
  path = _cpu_cache_path(ident)
  if not refresh and os.path.isfile(path):
    try:
      with open(path) as f:
        cal = json.load(f)["calibration"]
      return Peaks(ident["cpu"] or "cpu", cal["flops_per_s"], cal["bytes_per_s"], "cpu_calibration", dtype)
    except (OSError, KeyError, json.JSONDecodeError):
      pass  # a damaged cache is re-measured, not trusted
  if not refresh and path in _THIS_PROCESS:
    return _THIS_PROCESS[path]
  cal = calibrate_cpu(dtype)
  if _cache_unless_loaded(ident, cal):
    _THIS_PROCESS.pop(path, None)
    return Peaks(ident["cpu"] or "cpu", cal["flops_per_s"], cal["bytes_per_s"], "cpu_calibration", dtype)
  # To stderr: stdout may carry a command's JSON (ad profile --json, ad search's summary).
  (log or (lambda m: print(m, file=sys.stderr)))(
      f"CPU peak calibration: other processes used {cal['other_load']:.0%} of the CPU meanwhile (over "
      f"{MAX_OTHER_LOAD:.0%}); using it for this run only, not caching it")
  _THIS_PROCESS[path] = Peaks(ident["cpu"] or "cpu", cal["flops_per_s"], cal["bytes_per_s"],
                              "cpu_calibration_under_load", dtype)
  return _THIS_PROCESS[path]


def raise_cpu_peak(dtype: str, observed_flops_per_s: float, observed_bytes_per_s: float = 0.0) -> Peaks:
  """A measurement ran faster than the calibrated peak: the calibration was too low (made under
  load, or by a slower kernel). Re-calibrates, and keeps the observed rate if it is still higher
  (a rate that was achieved is a lower bound on the peak); the result replaces the cache."""
  ident = cpu_identity(dtype)
  cal = calibrate_cpu(dtype)
  cal["flops_per_s"] = max(cal["flops_per_s"], observed_flops_per_s)
  cal["bytes_per_s"] = max(cal["bytes_per_s"], observed_bytes_per_s)
  cal["raised_by_measurement"] = dict(flops_per_s=observed_flops_per_s, bytes_per_s=observed_bytes_per_s)
  raised = Peaks(ident["cpu"] or "cpu", cal["flops_per_s"], cal["bytes_per_s"], "cpu_calibration_raised", dtype)
  if _cache_unless_loaded(ident, cal):
    _THIS_PROCESS.pop(_cpu_cache_path(ident), None)
  else:  # under load: it replaces this process's peak, so the next measurement is not raised again
    _THIS_PROCESS[_cpu_cache_path(ident)] = raised
  return raised


def device_peaks(device=None, dtype: str = "float32", refresh: bool = False) -> Peaks:
  device = device or jax.devices()[0]
  kind = device.device_kind
  if device.platform == "tpu":
    cores = getattr(device, "num_cores", 1) or 1
    return tpu_peaks(kind, dtype, cores)
  if device.platform == "gpu":
    return gpu_peaks(kind, dtype)
  if device.platform == "cpu":
    return cpu_peaks(dtype, refresh=refresh)
  raise ValueError(f"no peak table for platform {device.platform!r}")
