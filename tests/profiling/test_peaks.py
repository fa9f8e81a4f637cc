import json

import pytest

from profiling import peaks


def test_gpu_table_lookup():
  p = peaks.gpu_peaks("NVIDIA H100 80GB HBM3", "bfloat16")
  assert p.flops_per_s == 989e12 and p.bytes_per_s == 3.35e12
  assert peaks.gpu_peaks("NVIDIA H100 PCIe", "bfloat16").bytes_per_s == 2.0e12  # not the SXM row
  assert peaks.gpu_peaks("NVIDIA H200", "float32").bytes_per_s == 4.8e12
  for kind in ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB", "NVIDIA L4"):
    assert peaks.gpu_peaks(kind, "bfloat16").flops_per_s > 0


def test_unknown_gpu_is_an_error_that_says_where_to_add_it():
  with pytest.raises(ValueError, match="not in profiling/peaks.py GPU_PEAKS"):
    peaks.gpu_peaks("NVIDIA GeForce GT 710", "float32")


def test_tpu_peaks_from_pallas_chip_info():
  v5e = peaks.tpu_peaks("TPU v5 lite", "bfloat16")
  assert v5e.flops_per_s == pytest.approx(197e12) and v5e.bytes_per_s == pytest.approx(820e9)
  v4 = peaks.tpu_peaks("TPU v4", "bfloat16", cores_per_device=2)  # megacore: both TensorCores
  assert v4.flops_per_s == pytest.approx(275e12)
  with pytest.raises(ValueError, match="not in profiling/peaks.py"):
    peaks.tpu_peaks("TPU v99", "bfloat16")


def test_cpu_calibration_is_measured_once_and_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  calls = []
  real = peaks.calibrate_cpu
  monkeypatch.setattr(peaks, "calibrate_cpu", lambda dtype: calls.append(dtype) or real(dtype, quick=True))
  first = peaks.cpu_peaks("float32")
  second = peaks.cpu_peaks("float32")
  assert calls == ["float32"]
  assert first == second and first.flops_per_s > 1e9 and first.bytes_per_s > 1e8
  files = list((tmp_path / "autodistill-jax").glob("cpu_peaks_*.json"))
  assert len(files) == 1 and json.loads(files[0].read_text())["identity"]["dtype"] == "float32"
