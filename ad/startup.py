"""Process start-up with libtpu installed everywhere (requirements: jax[tpu]), TPU or not.

The one environment serves a TPU VM and this CPU-only machine: libtpu must be installed to compile
TPU programs ahead of time (`ad compile`), but on a machine without a TPU chip JAX would still try
to start its TPU backend at the first jax call, which costs time and prints libtpu's warnings. So,
before JAX starts its backends:
- on a machine with a TPU chip attached (found on the PCI bus as jax itself finds it), nothing is
  changed;
- elsewhere JAX's platforms default to the CPU (and CUDA where an NVIDIA GPU and JAX's CUDA plugin
  are present), `TPU_SKIP_MDS_QUERY=1` keeps libtpu from asking a cloud metadata server, libtpu's
  own environment (accelerator type, worker hostnames) gets placeholders so that creating
  compile-only topologies (profiling/tpu.py) prints nothing, and several processes may load
  libtpu at once (there is no TPU for them to share). A user's own settings always win.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
import sys

from ad import files

# Google's PCI vendor id and its TPU chips' device ids: v3, v4, v5p, v5e, v6e, TPU7x (the table jax
# uses to decide whether to start its TPU backend: jax/_src/hardware_utils.py). Google's gVNIC
# network card shares the vendor id, so the device id matters.
_GOOGLE_VENDOR = "0x1ae0"
_TPU_DEVICE_IDS = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}
_NVIDIA_DEVICES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg")


PCI_DEVICES = "/sys/bus/pci/devices"


def tpu_attached(pci_devices: str = PCI_DEVICES) -> bool:
  """Whether a TPU chip is on this machine's PCI bus."""
  for vendor_path in glob.glob(os.path.join(pci_devices, "*", "vendor")):
    try:
      with open(vendor_path) as f:
        if f.read().strip() != _GOOGLE_VENDOR:
          continue
      with open(os.path.join(os.path.dirname(vendor_path), "device")) as f:
        if f.read().strip() in _TPU_DEVICE_IDS:
          return True
    except OSError:
      continue
  return False


def _cuda_plugin_installed() -> bool:
  return any(importlib.util.find_spec(name) is not None for name in ("jax_cuda12_plugin", "jax_cuda13_plugin"))


def default_platforms(pci_devices: str = PCI_DEVICES) -> str | None:
  """The JAX_PLATFORMS this machine gets when the user set none: None (leave JAX's own choice) with a
  TPU attached, else 'cuda,cpu' or 'cpu'."""
  if tpu_attached(pci_devices):
    return None
  if any(os.path.exists(d) for d in _NVIDIA_DEVICES) and _cuda_plugin_installed():
    return "cuda,cpu"
  return "cpu"


def require_own_kernels_package() -> None:
  """Fails at once, naming the cause, where another distribution installs a top-level `kernels`.

  This project's Pallas kernels are the top-level package `kernels`; Hugging Face's hub-kernels
  distribution, which transformers 5.25 and newer require, has the same import name. In one
  environment whichever comes first on sys.path hides the other: from the repository root
  transformers imports these kernels and fails, from anywhere else `ad` imports Hugging Face's.
  Neither error names the cause, so this check does (setup pins transformers 5.24.0,
  requirements/main.txt)."""
  try:
    other = importlib.metadata.distribution("kernels")
  except importlib.metadata.PackageNotFoundError:
    return
  ours = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
  raise ImportError(
      f"the installed distribution 'kernels' {other.version} (Hugging Face's hub kernels, which transformers >= 5.25 "
      f"requires) has the import name of this project's Pallas package {ours}; the two cannot share an environment. "
      "Use the environment `make setup` builds (requirements/main.txt pins transformers 5.24.0, "
      "requirements/main.lock.txt every other package), or `pip uninstall kernels` and `pip install "
      "'transformers<5.25'`.")


def configure(pci_devices: str = PCI_DEVICES) -> None:
  """Applies the module docstring's defaults; safe to call more than once, and after `import jax` as
  long as JAX has not started its backends."""
  if tpu_attached(pci_devices):
    return
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow (the data pipeline) is not to look for GPUs aloud
  # Placeholders for what libtpu would otherwise look up (and warn about) when a compile-only TPU
  # topology is created here; they describe no real machine and are read by nothing else.
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # libtpu takes /tmp/libtpu_lockfile so that two processes never drive one TPU; with no TPU here,
  # several processes compiling for topologies at once (two `ad compile`s, test workers) is fine.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if "JAX_PLATFORMS" in os.environ:
    return
  platforms = default_platforms(pci_devices)
  os.environ["JAX_PLATFORMS"] = platforms  # this process (if jax is not imported yet) and its children
  if "jax" in sys.modules:  # imported already: its config read the environment at import
    import jax
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
      jax.config.update("jax_platforms", platforms)


def enable_compile_cache() -> str:
  """JAX's persistent compilation cache in the user cache directory: a re-run, a resume and the
  regular distillation of an already flash-distilled architecture load their programs instead of
  compiling them again."""
  import jax  # after configure(): JAX reads its platform settings when it is first imported
  path = os.path.join(files.cache_root(), "xla")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)  # not the many trivial programs
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def pin_to_worker_cores() -> list[int] | None:
  """A local search worker's first act: keep to the cores its coordinator gave it (AD_WORKER_CORES,
  ad/search/parallel.py), before JAX and its thread pools load. None for a worker started by hand."""
  cores = os.environ.get("AD_WORKER_CORES")
  if not cores:
    return None
  share = [int(c) for c in cores.split(",")]
  os.sched_setaffinity(0, share)
  return share
