import json
import os
import subprocess
import sys
import time

import pytest

from profiling import peaks

# CPU peaks and other-load detection read this machine's load: not beside another test.
pytestmark = pytest.mark.serial


def test_gpu_table_lookup_and_float32_is_the_cuda_core_rate():
  p = peaks.gpu_peaks("NVIDIA H100 80GB HBM3", "bfloat16")
  assert p.flops_per_s == 989e12 and p.bytes_per_s == 3.35e12
  assert peaks.gpu_peaks("NVIDIA H100 PCIe", "bfloat16").bytes_per_s == 2.0e12  # not the SXM row
  assert peaks.gpu_peaks("NVIDIA H200", "float32").bytes_per_s == 4.8e12
  for kind in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB", "NVIDIA L4"):
    f32, tf32 = peaks.gpu_peaks(kind, "float32").flops_per_s, peaks.gpu_peaks(kind, "tfloat32").flops_per_s
    # FP32 on CUDA cores is 2-16x below TF32 on tensor cores on these data sheets (L4: 30.3 vs 60)
    assert 1.9 <= tf32 / f32 <= 16, kind


def test_unknown_gpu_is_an_error_that_says_where_to_add_it():
  with pytest.raises(ValueError, match="not in profiling/peaks.py GPU_PEAKS"):
    peaks.gpu_peaks("NVIDIA GeForce GT 710", "float32")


class FakeLoad:
  """A load probe that reports a fixed share of the CPU used by other processes."""

  def __init__(self, fraction):
    self.fraction = fraction

  def __call__(self):
    return self

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def _quick_calibration(monkeypatch, other_load):
  calls = []
  real = peaks.calibrate_cpu
  monkeypatch.setattr(peaks, "calibrate_cpu",
                      lambda dtype: calls.append(dtype) or real(dtype, quick=True, load_probe=FakeLoad(other_load)))
  return calls


def test_cpu_calibration_is_measured_once_and_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  calls = _quick_calibration(monkeypatch, other_load=0.0)
  first = peaks.cpu_peaks("float32")
  second = peaks.cpu_peaks("float32")
  assert calls == ["float32"]
  assert first == second and first.flops_per_s > 1e9 and first.bytes_per_s > 1e8
  files = list((tmp_path / "autodistill-jax").glob("cpu_peaks_*.json"))
  saved = json.loads(files[0].read_text())
  assert len(files) == 1 and saved["identity"]["dtype"] == "float32"
  # The best of each size's repetitions, the peak the best size.
  sizes = saved["calibration"]["matmul"]
  assert len(sizes) == 2 and all(len(v["flops_per_s_each"]) == 3 for v in sizes.values())
  assert saved["calibration"]["flops_per_s"] == max(v["best_flops_per_s"] for v in sizes.values())
  assert peaks.cpu_peaks("float32", refresh=True) and calls == ["float32", "float32"]  # --recalibrate


def test_a_calibration_under_load_serves_this_process_only_and_is_not_cached(tmp_path, monkeypatch, capsys):
  """Under load: calibrated once in a process (a search's trials share it, not one calibration
  each), never written to the cache, so another process measures again."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(peaks, "_THIS_PROCESS", {})
  calls = _quick_calibration(monkeypatch, other_load=0.6)
  p = peaks.cpu_peaks("float32")
  assert p.source == "cpu_calibration_under_load"
  out, err = capsys.readouterr()
  assert out == "" and "not caching it" in err  # stdout may be a command's JSON
  assert not list(tmp_path.rglob("cpu_peaks_*.json"))
  assert peaks.cpu_peaks("float32", log=lambda *a: None) == p and calls == ["float32"]  # this process: reused
  monkeypatch.setattr(peaks, "_THIS_PROCESS", {})  # what another process starts with
  peaks.cpu_peaks("float32", log=lambda *a: None)
  assert calls == ["float32", "float32"]  # measured again, not read from a cache


def test_other_load_sees_a_busy_process():
  busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
  try:
    time.sleep(0.3)
    with peaks.OtherLoad() as load:
      time.sleep(1.0)
  finally:
    busy.kill()
    busy.wait()
  # One spinning process holds one core: 1 / cpu_count of the machine, less scheduling noise.
  assert load.fraction is not None and load.fraction > 0.5 / os.cpu_count()
  with peaks.OtherLoad() as own:
    sum(i * i for i in range(2_000_000))  # this process's own work does not count
  assert own.fraction < 0.5 / os.cpu_count() + 0.2


def test_a_measurement_faster_than_the_peak_raises_it_to_the_measured_rate(tmp_path, monkeypatch):
  import jax.numpy as jnp
  from profiling import harness
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  _quick_calibration(monkeypatch, other_load=0.0)
  too_low = peaks.Peaks("cpu", 1.0, 1.0, "cpu_calibration", "float32")  # 1 FLOP/s: any run beats it
  a = jnp.ones((128, 128), jnp.float32)
  r = harness.measure_fn(lambda x: x @ x, (a,), name="mm", batch=1, trace_dir=str(tmp_path / "t"), min_reps=5,
                         max_reps=5, chunk=5, peaks=too_low)
  # the new peak is at least the rate this run reached (FLOPs over the median: a rate achieved is a
  # lower bound on the peak), so the utilization, the rate over it, is at most 1 without the cap
  rate = r["flops"] / (r["latency_ms_median"] / 1e3)
  assert r["peak_source"] == "cpu_calibration_raised" and r["peak_flops_per_s"] >= rate * (1 - 1e-9)
  assert r["flops_utilization"] == pytest.approx(rate / r["peak_flops_per_s"], rel=1e-6)
  saved = json.loads(next(tmp_path.rglob("cpu_peaks_*.json")).read_text())["calibration"]
  assert saved["flops_per_s"] == r["peak_flops_per_s"]


def test_a_peak_raised_under_load_is_the_one_this_process_uses_next(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  monkeypatch.setattr(peaks, "_THIS_PROCESS", {})
  calls = _quick_calibration(monkeypatch, other_load=0.6)
  raised = peaks.raise_cpu_peak("float32", observed_flops_per_s=1e15)  # beyond any CPU: the observed rate is kept
  assert raised.flops_per_s == 1e15 and not list(tmp_path.rglob("cpu_peaks_*.json"))
  assert peaks.cpu_peaks("float32", log=lambda *a: None) == raised and calls == ["float32"]
