"""Distillation runs on the CPU: freezing, sharding equivalence, kill-and-resume, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from ad import cli, configs
from ad.distill import trainer
from tests.conftest import distill_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARCH = "128_64_2_384_2"


def _run(workdir, teacher, resume=False, **extra):
  cfg = configs.load_config("quickstart", distill_overrides(teacher, **extra))
  return trainer.distill(ARCH, cfg, "flash", str(workdir), resume=resume, log=lambda *_: None, progress=False)


def _losses(workdir):
  with open(os.path.join(workdir, "losses.jsonl")) as f:
    return [json.loads(l) for l in f]


def _params(workdir, step):
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  return mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_teacher):
  """One uninterrupted single-device run, every step checkpointed and kept."""
  wd = tmp_path_factory.mktemp("ref")
  m = _run(wd, tiny_teacher, **{"distill.mesh_data": 1, "distill.checkpoint_every": 1, "distill.keep_checkpoints": 20})
  return wd, m


def test_run_reports_metrics_and_compiles_each_step_once(reference):
  wd, m = reference
  assert m["steps"] == 2 * 2 + 3 and m["steps_per_block"] == 2
  assert 0 <= m["mlm_accuracy"] <= 1 and 0 <= m["nsp_accuracy"] <= 1 and m["masked_tokens"] > 0
  assert m["compiles"] == {"progressive_block_0": 1, "progressive_block_1": 1, "pretrain_distill": 1}
  assert json.load(open(wd / "metrics.json"))["mlm_accuracy"] == m["mlm_accuracy"]
  stages = [r["stage"] for r in _losses(wd)]
  assert stages == ["progressive_block_0"] * 2 + ["progressive_block_1"] * 2 + ["pretrain_distill"] * 3
  assert list((wd / "tb").iterdir()), "TensorBoard events are written"


def test_earlier_blocks_are_frozen_bit_for_bit(reference):
  wd, _ = reference
  start, end = _params(wd, 2), _params(wd, 4)  # stage 1 (block 1) runs steps 2..3
  block0 = [k for k in start if k.startswith("student/blocks/0/") or k.startswith("student/embeddings/")]
  block1 = [k for k in start if k.startswith("student/blocks/1/")]
  assert block0 and block1
  for k in block0:
    np.testing.assert_array_equal(start[k], end[k], err_msg=k)
  assert any(not np.array_equal(start[k], end[k]) for k in block1), "block 1 must train in stage 1"
  # ...and in stage 0, block 1 has not moved from its initialization.
  init, after0 = _params(wd, 1), _params(wd, 2)
  assert all(np.array_equal(init[k], after0[k]) for k in block1)


@pytest.mark.parametrize("data,model", [(8, 1), (4, 2)])
def test_sharded_losses_match_one_device(reference, tmp_path, tiny_teacher, data, model):
  wd, _ = reference
  m = _run(tmp_path, tiny_teacher, **{"distill.mesh_data": data, "distill.mesh_model": model})
  assert m["mesh"] == {"data": data, "model": model}
  ref, got = _losses(wd), _losses(tmp_path)
  assert len(ref) == len(got) == 7
  for a, b in zip(ref, got):
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-5, rel=1e-5), (a, b)


def test_kill_and_resume_gives_the_same_run(reference, tmp_path, tiny_teacher):
  ref_wd, ref_m = reference
  args = [sys.executable, "-m", "ad.cli", "distill", "--arch", ARCH, "--workdir", str(tmp_path), "--no-progress",
          "--config", "quickstart"] + [f"--set={o}" for o in distill_overrides(
              tiny_teacher, **{"distill.mesh_data": 1, "distill.checkpoint_every": 1})]
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.time() + 300
  ckpt = tmp_path / "checkpoints"
  while time.time() < deadline:  # kill once stage 1 is under way (step 3 checkpointed)
    if ckpt.exists() and any(p.name == "3" for p in ckpt.iterdir()):
      break
    if proc.poll() is not None:
      pytest.fail("the run ended before it could be killed: " + proc.stdout.read().decode()[-2000:])
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "metrics.json").exists()
  m = _run(tmp_path, tiny_teacher, resume=True, **{"distill.mesh_data": 1, "distill.checkpoint_every": 1})
  assert m["resumed_from"] >= 3
  ref, got = _losses(ref_wd), _losses(tmp_path)
  assert [r["step"] for r in got] == list(range(7))
  for a, b in zip(ref, got):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-6), (a, b)
  final_ref, final = _params(ref_wd, 7), _params(tmp_path, 7)
  for k in final_ref:
    np.testing.assert_allclose(final[k], final_ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
  assert m["mlm_accuracy"] == pytest.approx(ref_m["mlm_accuracy"])


def test_nan_loss_stops_with_step_and_stage(tmp_path, tiny_teacher):
  with pytest.raises(trainer.NonFiniteLossError, match=r"non-finite loss .* at step \d+ \(stage progressive_block_0"):
    _run(tmp_path, tiny_teacher, **{"distill.mesh_data": 1, "distill.lr": 1e30, "distill.flash.steps_per_block": 5})


def test_cli_errors(tmp_path, tiny_teacher, capsys):
  base = ["distill", "--workdir", str(tmp_path / "w")] + [f"--set={o}" for o in distill_overrides(tiny_teacher)]
  assert cli.main(base + ["--arch", ARCH, "--set", "model.num_blocks=7"]) == 2
  assert "student has 7 blocks but the teacher only 6 layers" in capsys.readouterr().err
  assert cli.main(base + ["--arch", ARCH, "--set", "distill.recipe=tinybert"]) == 2
  assert "distill.recipe='tinybert'" in capsys.readouterr().err


def test_workdir_is_not_silently_reused(reference, tiny_teacher, capsys):
  wd, _ = reference
  args = ["distill", "--arch", ARCH, "--workdir", str(wd)] + [f"--set={o}" for o in distill_overrides(tiny_teacher)]
  assert cli.main(args) == 2
  assert "already holds a distillation run" in capsys.readouterr().err


def test_pallas_kernels_train_with_the_same_losses_as_xla(reference, tmp_path, tiny_teacher):
  """attention_impl = ffn_impl = 'pallas' (interpret mode on CPU) through every stage: the losses of the
  progressive stages (attention KL, feature MSE) and of pre-training distillation match the XLA run."""
  wd, _ = reference
  _run(tmp_path, tiny_teacher, **{"distill.mesh_data": 1, "model.attention_impl": "pallas", "model.ffn_impl": "pallas"})
  ours, ref = _losses(tmp_path), _losses(wd)
  assert [r["stage"] for r in ours] == [r["stage"] for r in ref]
  np.testing.assert_allclose([r["loss"] for r in ours], [r["loss"] for r in ref], rtol=2e-4, atol=1e-5)
