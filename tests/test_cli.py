import json

import pytest

from ad import cli


def test_space_prints_table1_size(capsys):
  assert cli.main(["space"]) == 0
  out = capsys.readouterr().out
  assert "576 architectures per block" in out and "[128, 256, 384, 512]" in out


def test_space_respects_config_overrides(capsys):
  assert cli.main(["space", "--config.space.num_ffn=[2]", "--set", "space.heads=1,2"]) == 0
  assert "96 architectures per block" in capsys.readouterr().out  # 4 x 4 x 2 x 3 x 1


def test_arch_json_reports_parts_and_flops(capsys):
  assert cli.main(["arch", "512_128_4_512_4", "--blocks", "2", "--seq", "32", "--json"]) == 0
  r = json.loads(capsys.readouterr().out)
  assert r["arch"] == "512_128_4_512_4" and r["num_blocks"] == 2 and r["seq"] == 32
  assert r["params"]["encoder"] == 2 * 842_240
  assert r["params"]["paper_total"] + r["params"]["mlm_extra"] == r["params"]["total"]
  # Two blocks of MobileBERT at T=32: the dense layers alone are 2*T*835,584 FLOPs per block.
  assert r["flops_encoder"] > 2 * 2 * 32 * 835_584
  assert r["flops_pretraining_heads"] > r["flops_encoder"]


@pytest.mark.parametrize("argv,match", [
    (["arch", "512_128_4_512"], "malformed architecture name"),
    (["arch", "512_128_4_512_8"], "num_ffn=8 is outside the design space"),
    (["arch", "512_128_4_512_4", "--seq", "600"], r"--seq 600 is outside \(0, 512\]"),
    (["arch", "512_128_4_512_4", "--batch", "0"], r"--batch: 0: expected an integer >= 1"),
    (["space", "--config", "no_such_config"], "config .no_such_config.: not a config name"),
    (["space", "--config.model.num_blockz=3"], "has no key 'model.num_blockz'"),
    (["space", "--config.model.num_blocks=three"], "expected an integer"),
])
def test_bad_input_exits_2_with_a_named_error(capsys, argv, match):
  assert cli.main(argv) == 2
  import re
  assert re.search(match, capsys.readouterr().err)
