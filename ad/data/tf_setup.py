"""Keep TensorFlow on the host CPU: the data pipeline must leave accelerator memory to JAX."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


_done = False


def hide_accelerators_from_tf() -> None:
  """Idempotent; must run before TensorFlow initializes its devices (its first op)."""
  global _done
  if _done:
    return
  _done = True
  import tensorflow as tf
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):
      # RuntimeError: TF already initialized its devices (then they were hidden earlier or
      # TF was imported by someone else first); ValueError: no such device type here.
      pass
