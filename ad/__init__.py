"""autodistill-jax: search for and distill hardware-efficient BERT-style students (AutoDistill, 003)."""

from ad import startup

startup.configure()  # before JAX starts its backends: quiet and fast without a TPU, unchanged on a TPU VM
