"""autodistill-jax: search for and distill hardware-efficient BERT-style students (AutoDistill, 003)."""

from ad import startup

startup.require_own_kernels_package()  # a same-named package would break imports without saying why
startup.configure()  # before JAX starts its backends: quiet and fast without a TPU, unchanged on a TPU VM
