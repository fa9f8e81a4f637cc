"""Kernel tests in two modes, each running everywhere:

- numerics against the jnp reference: compiled on a GPU or TPU, in Pallas' interpreter elsewhere
  (`INTERPRET`), with tolerances per mode (the interpreter's measured here; the compiled ones wider,
  since a compiled run has not been measured: no accelerator so far);
- Mosaic compilation for TPU chips from any machine: the kernel lowered and compiled for a
  compile-only TPU device (profiling/tpu.py; libtpu compiles without a TPU), nothing run, and the
  program checked to hold the kernel as a Mosaic custom call.
"""

import jax

from profiling import tpu

ON_ACCELERATOR = jax.default_backend() in ("gpu", "tpu")
INTERPRET = None if ON_ACCELERATOR else True  # None: the kernels compile for the backend they run on
MODE = "compiled" if ON_ACCELERATOR else "interpret"


def compile_for_tpu(fn, args, chip: str) -> str:
  """fn compiled for one `chip` device on abstract `args` (ShapeDtypeStructs); the compiled HLO text."""
  return tpu.compile_on_device(fn, args, tpu.topology_devices(chip)[0]).as_text()


mosaic_calls = tpu.mosaic_calls
