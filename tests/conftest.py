"""Test-wide settings: CPU only, 8 fake devices available for sharding tests."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory):
  """MiniLM with an MLM head fitted for a few steps: enough to exercise distillation in tests."""
  from ad.data import pretrain
  from ad.distill import teacher_head
  out = str(tmp_path_factory.mktemp("teacher") / "minilm_tiny")
  teacher_head.prepare(None, out, pretrain.DataConfig(seq_len=32), pool_batches=2, steps=4, positions_per_step=64,
                       lr=1e-3, batch_size=8, eval_batches=2, log=lambda *_: None)
  return out


def distill_overrides(teacher_dir: str, **extra) -> list[str]:
  """Config overrides for a seconds-long distillation run on the CPU."""
  base = {"teacher.prepared_dir": teacher_dir, "model.num_blocks": 2, "data.seq_len": 32, "distill.batch_size": 8,
          "distill.flash.steps_per_block": 2, "distill.flash.pretrain_steps": 3, "distill.flash.warmup_steps": 1,
          "distill.eval_batches": 2, "distill.checkpoint_every": 2, "distill.log_every": 1}
  base.update(extra)
  return [f"{k}={v}" for k, v in base.items()]
