"""Start-up with libtpu installed (jax[tpu]): quiet and on the CPU without a TPU, untouched on a TPU
VM (ad/startup.py)."""

import os
import subprocess
import sys

import pytest

from ad import startup

OURS = ("JAX_PLATFORMS", "TPU_SKIP_MDS_QUERY", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES",
        "ALLOW_MULTIPLE_LIBTPU_LOAD", "TF_CPP_MIN_LOG_LEVEL")


def _fresh_env(**extra):
  """This process's environment without what start-up sets (the tests' conftest sets some of it)."""
  env = {k: v for k, v in os.environ.items() if k not in OURS}
  env.update(extra)
  return env


def test_libtpu_is_installed_and_this_machine_has_no_tpu():
  import libtpu  # noqa: F401  (jax[tpu] in requirements/main.txt)
  assert not startup.tpu_attached()


def test_without_a_tpu_jax_starts_on_the_cpu_and_prints_nothing():
  code = ("import ad, jax; from profiling import tpu; print(jax.config.jax_platforms, jax.devices()[0].platform); "
          "print(len(tpu.topology_devices('v5e:2x2')))")
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_fresh_env(), timeout=300)
  assert p.returncode == 0, p.stderr
  assert p.stdout.split() == ["cpu", "cpu", "4"]
  assert p.stderr.strip() == "", p.stderr  # no libtpu warnings, neither at start-up nor for a topology


def test_a_users_own_platform_choice_is_kept():
  p = subprocess.run([sys.executable, "-c", "import ad, jax; print(jax.config.jax_platforms)"], capture_output=True,
                     text=True, env=_fresh_env(JAX_PLATFORMS="cpu,tpu"), timeout=300)
  assert p.stdout.strip() == "cpu,tpu"


def _fake_pci(root, vendor, device):
  d = root / "0000:00:04.0"
  d.mkdir(parents=True)
  (d / "vendor").write_text(vendor + "\n")
  (d / "device").write_text(device + "\n")
  return str(root)


@pytest.mark.parametrize("vendor,device,tpu", [("0x1ae0", "0x0063", True),  # a v5e chip
                                                ("0x1ae0", "0x0042", False),  # Google's gVNIC network card
                                                ("0x10de", "0x2330", False)])  # an NVIDIA H100
def test_on_a_tpu_vm_nothing_is_overridden(tmp_path, monkeypatch, vendor, device, tpu):
  pci = _fake_pci(tmp_path, vendor, device)
  assert startup.tpu_attached(pci) is tpu
  for k in OURS:
    monkeypatch.delenv(k, raising=False)
  startup.configure(pci)
  touched = {k for k in OURS if k in os.environ}
  assert touched == (set() if tpu else set(OURS))
  if not tpu:
    assert os.environ["JAX_PLATFORMS"] == "cpu" and os.environ["TPU_SKIP_MDS_QUERY"] == "1"


def test_a_second_kernels_distribution_is_named_at_import(tmp_path):
  # What pip leaves for Hugging Face's hub-kernels wheel (transformers >= 5.25 requires it): its
  # metadata on the path, its top-level `kernels` package next to it.
  info = tmp_path / "kernels-0.19.1.dist-info"
  info.mkdir()
  (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kernels\nVersion: 0.19.1\n")
  (tmp_path / "kernels").mkdir()
  (tmp_path / "kernels" / "__init__.py").write_text("")
  p = subprocess.run([sys.executable, "-c", "import ad"], capture_output=True, text=True, timeout=300,
                     env=_fresh_env(PYTHONPATH=str(tmp_path)), cwd=tmp_path)
  assert p.returncode != 0
  assert "the installed distribution 'kernels' 0.19.1" in p.stderr, p.stderr
  assert "pins transformers 5.24.0" in p.stderr, p.stderr
