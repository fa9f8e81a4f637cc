"""Kernel tests in two modes, as jax's Pallas tests do: compiled on a GPU or TPU (skipped on other
backends) and, through an `...Interpret` subclass, in Pallas' interpreter on every backend."""

import jax
import pytest


class CompiledOrInterpreted:
  """Base of a kernel test class: `self.INTERPRET` is what the tests pass as `interpret=`."""

  INTERPRET = False

  @pytest.fixture(autouse=True)
  def _needs_accelerator(self):
    if not self.INTERPRET and jax.default_backend() not in ("gpu", "tpu"):
      pytest.skip("compiled Pallas kernels need a GPU or TPU; the interpret-mode subclass runs here")
