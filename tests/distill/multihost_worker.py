"""One process of the two-process CPU distillation test (see test_multihost.py).

argv: process_id port workdir teacher_dir. Each process has 2 CPU devices; the mesh spans 4.
"""

import json
import os
import sys

pid, port, workdir, teacher = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.update(AD_COORDINATOR=f"127.0.0.1:{port}", AD_NUM_PROCESSES="2", AD_PROCESS_ID=str(pid))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from ad import configs  # noqa: E402
from ad.distill import trainer  # noqa: E402
from ad.train import sharding  # noqa: E402
from tests.conftest import distill_overrides  # noqa: E402

sharding.maybe_initialize_distributed()
assert jax.device_count() == 4 and jax.local_device_count() == 2, (jax.device_count(), jax.local_device_count())
cfg = configs.load_config("quickstart", distill_overrides(teacher, **{"distill.mesh_data": 4}))
m = trainer.distill("128_64_2_384_2", cfg, "flash", workdir, log=lambda *_: None, progress=False)
print("METRICS " + json.dumps(m), flush=True)
