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
from ad.data import pretrain
from ad.distill import losses, settings as distill_settings, teacher_head, trainer
from ad.train import steps as steps_lib
from tests.conftest import SEARCH_BASELINE, distill_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARCH = "128_64_2_384_2"


def _run(workdir, teacher, resume=False, export_dir=None, arch=ARCH, **extra):
  cfg = configs.load_config("quickstart", distill_overrides(teacher, **extra))
  return trainer.distill(arch, cfg, "flash", str(workdir), resume=resume, log=lambda *_: None, progress=False,
                         save_student=export_dir is not None, export_dir=export_dir)


def _losses(workdir):
  with open(os.path.join(workdir, "losses.jsonl")) as f:
    return [json.loads(l) for l in f]


def _params(workdir, step):
  """{'student/blocks/ffn/w_in': array, ...} of the checkpoint at `step`."""
  from ad.train.optim import path_str
  mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  tree = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))["params"]
  return {path_str(p): np.asarray(x) for p, x in __import__("jax").tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_teacher):
  """One uninterrupted single-device run, every step checkpointed and kept."""
  wd = tmp_path_factory.mktemp("ref")
  m = _run(wd, tiny_teacher, export_dir=str(wd / "hf"),
           **{"distill.mesh_data": 1, "distill.checkpoint_every": 1, "distill.keep_checkpoints": 20})
  return wd, m


def test_a_run_reports_its_scores_with_their_noise_and_logs_every_stage(reference):
  """(That each step program compiles once, whatever the block count, is counted by
  test_compiled_programs_do_not_grow_with_the_block_count_...)"""
  wd, m = reference
  assert m["steps"] == 2 * 2 + 3 and m["steps_per_block"] == 2
  assert 0 <= m["mlm_accuracy"] <= 1 and 0 <= m["nsp_accuracy"] <= 1 and m["masked_tokens"] >= 256
  assert m["mlm_accuracy_se"] > 0 and m["nsp_accuracy_se"] > 0 and 0 <= m["teacher_agreement"] <= 1
  assert m["train_steps_s"] > 0 and m["compile_wall_s"] > 0 and m["programs_compiled"] > 0
  assert json.load(open(wd / "metrics.json"))["mlm_accuracy"] == m["mlm_accuracy"]
  stages = [r["stage"] for r in _losses(wd)]
  assert stages == ["progressive_block_0"] * 2 + ["progressive_block_1"] * 2 + ["pretrain_distill"] * 3
  assert list((wd / "tb").iterdir()), "TensorBoard events are written"


def test_stage_masks_freeze_exactly_what_they_should_bit_for_bit(reference):
  """Blocks are stacked [K, ...]: slice 0 and the embeddings stop moving after stage 0, slice 1
  only moves in stage 1, the heads never move before pre-training distillation."""
  wd, _ = reference
  init, after0, after1, end = _params(wd, 1), _params(wd, 2), _params(wd, 4), _params(wd, 7)
  blocks = [k for k in init if k.startswith("student/blocks/")]
  adapters = [k for k in init if k.startswith("adapters/")]
  emb = [k for k in init if k.startswith("student/embeddings/")]
  heads = [k for k in init if k.startswith(("student/mlm_", "student/nsp", "student/pooler"))]
  assert blocks and adapters and emb and heads
  for k in blocks + adapters:
    np.testing.assert_array_equal(after0[k][0], after1[k][0], err_msg=f"{k}[0] moved in stage 1")
    np.testing.assert_array_equal(init[k][1], after0[k][1], err_msg=f"{k}[1] moved in stage 0")
  for k in emb:
    np.testing.assert_array_equal(after0[k], after1[k], err_msg=k)
  for k in heads:
    np.testing.assert_array_equal(init[k], after1[k], err_msg=f"{k} moved during the progressive stages")
  assert any(not np.array_equal(init[k][0], after0[k][0]) for k in blocks), "block 0 trains in stage 0"
  assert any(not np.array_equal(after0[k][1], after1[k][1]) for k in blocks), "block 1 trains in stage 1"
  assert any(not np.array_equal(init[k], after0[k]) for k in emb), "stage 0 trains the embeddings"
  assert any(not np.array_equal(after1[k], end[k]) for k in heads), "pre-training distillation trains the heads"


# All 8 devices as 4-way data x 2-way model parallelism against 1 device: both mesh axes at once
# (pure 8-way data parallelism was a second case; the two-process test also runs data parallel).
@pytest.mark.parametrize("data,model", [(4, 2)])
def test_sharded_losses_match_one_device(reference, tmp_path, tiny_teacher, data, model):
  wd, _ = reference
  m = _run(tmp_path, tiny_teacher, **{"distill.mesh_data": data, "distill.mesh_model": model})
  assert m["mesh"] == {"data": data, "model": model}
  ref, got = _losses(wd), _losses(tmp_path)
  assert len(ref) == len(got) == 7
  for a, b in zip(ref, got):
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-5, rel=1e-5), (a, b)


def test_kill_and_resume_gives_the_same_run(reference, tmp_path, tiny_teacher, monkeypatch):
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
  # The resumed run streams (as a paper-scale run does) from its step; the reference read the
  # in-memory copy of the same stream: the batches must be the same.
  monkeypatch.setattr(pretrain, "CACHE_MAX_TOKENS", 0)
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


def test_an_ib_bert_checkpoint_is_prepared_as_it_is_and_teaches(tmp_path):
  """An IB-BERT-style MobileBERT checkpoint (separate query/key bottlenecks, bottleneck attention,
  GELU, LayerNorm; written by transformers) is prepared without adaptation, keeps its own heads
  (its held-out score is transformers' own), and distils a student through the trainer."""
  from ad.distill import evaluation
  from ad.models import hf
  from tests.conftest import tiny_data_config, write_tiny_mobilebert
  src = write_tiny_mobilebert(tmp_path / "ib_bert", use_bottleneck_attention=True, key_query_shared_bottleneck=False,
                              hidden_act="gelu", normalization_type="layer_norm", classifier_activation=False)
  prepared = tmp_path / "prepared"
  m = _run(tmp_path / "wd", str(prepared), **{"teacher.source": src, "distill.mesh_data": 1})
  model, meta = teacher_head.load(str(prepared))
  assert meta["family"] == "mobilebert" and meta["adaptation"] is None and not meta["head_fitted"]
  assert losses.teacher_dims(model) == (3, 64, 2)
  es = evaluation.build_eval_set(tiny_data_config(), pretrain.load_vocab(tiny_data_config()), log=lambda *_: None)
  direct = evaluation.evaluate(hf.load_mobilebert(src), es)  # random weights: compare cross-entropies
  assert meta["validation"]["mlm_cross_entropy"] == pytest.approx(direct["mlm_cross_entropy"], rel=1e-5)
  assert m["teacher_mlm_accuracy"] == meta["validation"]["mlm_accuracy"]
  assert m["teacher_dir"] == str(prepared) and np.isfinite(m["mlm_accuracy"])
  steps = _losses(tmp_path / "wd")
  assert len(steps) == m["steps"] and all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)
  with pytest.raises(ValueError, match="adapt_headed"):
    teacher_head.prepare(src, str(tmp_path / "adapted"), tiny_data_config(),
                         dict(distill_settings.teacher_settings(configs.load_config(
                             "quickstart", distill_overrides(str(prepared))).teacher).key_settings(),
                              adapt_headed=True),
                         log=lambda *_: None, progress=False)


def test_nan_loss_stops_with_step_and_stage(tmp_path, tiny_teacher):
  with pytest.raises(steps_lib.NonFiniteLossError, match=r"non-finite loss .* at step \d+ \(stage progressive_block_0"):
    _run(tmp_path, tiny_teacher, **{"distill.mesh_data": 1, "distill.lr": 1e30, "distill.flash.steps_per_block": 5})


def test_cli_errors(tmp_path, tiny_teacher, capsys):
  base = ["distill", "--workdir", str(tmp_path / "w")] + [f"--set={o}" for o in distill_overrides(tiny_teacher)]
  assert cli.main(base + ["--arch", ARCH, "--set", "model.num_blocks=0"]) == 2
  assert "num_blocks must be positive" in capsys.readouterr().err
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


def test_compiled_programs_do_not_grow_with_the_block_count_and_every_stage_ends_in_a_checkpoint(tmp_path,
                                                                                                tiny_teacher):
  """Every XLA compilation during a run is counted (jax.monitoring): 1 and 8 blocks compile the
  same programs (one progressive step for all stages, one pre-training step, ...). 8 blocks from
  the 6-layer teacher: a student deeper than its teacher trains (losses.block_mapping groups).
  With checkpoint_every longer than the run, every stage's end is still checkpointed, so an
  interrupted run resumes at its last finished stage."""
  import jax
  got = {}
  for k in (8, 1):
    jax.clear_caches()  # both runs compile or load every program (each loads its own teacher: ad/distill/context.py)
    # The search tests' baseline: at one block, the search tests' programs (tests/conftest.py search_overrides)
    m = _run(tmp_path / f"k{k}", tiny_teacher, arch=SEARCH_BASELINE,
             **{"model.num_blocks": k, "distill.mesh_data": 1, "distill.flash.steps_per_block": 1,
                "distill.checkpoint_every": 1000, "distill.keep_checkpoints": 20})
    got[k] = (m["programs_compiled"], m["compiled_steps"])
  assert got[1] == got[8], got
  saved = sorted(int(p.name) for p in (tmp_path / "k8" / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [1, 2, 3, 4, 5, 6, 7, 8, 11], saved  # 8 one-step stages, then 3 pre-training steps
  stages = [r["stage"] for r in _losses(tmp_path / "k8")]
  deep = json.loads((tmp_path / "k8" / "metrics.json").read_text())
  assert stages[:8] == [f"progressive_block_{b}" for b in range(8)] and deep["num_blocks"] == 8
  assert np.isfinite(deep["mlm_accuracy"])


def test_exports_are_complete_hf_models(reference, tmp_path, capsys):
  """`ad distill --export` and `ad export WORKDIR` write the same complete HF directory: a
  fill-mask pipeline and AutoTokenizer work on it, a sequence classifier loads from it and
  trains a step with transformers' Trainer, and its model card states the held-out scores."""
  import torch
  import transformers
  wd, m = reference
  out = tmp_path / "exported"
  assert cli.main(["export", str(wd), "--out", str(out)]) == 0
  for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
               "README.md"):
    assert (out / name).read_bytes() == (wd / "hf" / name).read_bytes(), name
  card = (out / "README.md").read_text()
  assert f"{m['mlm_accuracy']:.4f} +- {m['mlm_accuracy_se']:.4f}" in card and ARCH in card
  fill = transformers.pipeline("fill-mask", model=str(out))
  guesses = fill("the capital of france is [MASK] .")
  assert len(guesses) == 5 and all("token_str" in g for g in guesses)
  tok = transformers.AutoTokenizer.from_pretrained(str(out))
  assert tok("Hello world")["input_ids"][0] == tok.cls_token_id
  clf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out), num_labels=2)
  texts, labels = ["a fine film", "a dull film", "great acting", "boring plot"], [1, 0, 1, 0]
  enc = tok(texts, padding=True)
  data = [dict(input_ids=enc["input_ids"][i], attention_mask=enc["attention_mask"][i], labels=labels[i])
          for i in range(4)]
  args = transformers.TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=1, per_device_train_batch_size=4,
                                        report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)
  before = [p.detach().clone() for p in clf.classifier.parameters()]
  result = transformers.Trainer(model=clf, args=args, train_dataset=data).train()
  assert result.global_step == 1 and np.isfinite(result.training_loss)
  assert any(not torch.equal(a, b) for a, b in zip(before, clf.classifier.parameters()))
  # Bad input names the path and says what was expected.
  assert cli.main(["export", str(tmp_path / "trainer"), "--out", str(tmp_path / "x")]) == 2
  assert "neither a distillation workdir" in capsys.readouterr().err
  assert cli.main(["export", str(wd), "--out", str(out)]) == 2
  assert "--force" in capsys.readouterr().err


@pytest.mark.parametrize("schedule", ["flash", "regular"])
def test_paper_table1_stages_warm_up_then_decay(schedule, capsys):
  """Each stage's learning rate peaks early and decays to 0 by its end (a 500-step stage with 500
  warm-up steps once only ramped up); printed for the record."""
  cfg = configs.load_config("paper_table1")
  dcfg = distill_settings.distill_config_from(cfg.distill, schedule)
  K = cfg.model.num_blocks
  prog, pre = trainer.stage_schedules(dcfg, K)
  for name, sched, steps in (("progressive stage", prog, dcfg.block_steps(K)), ("pre-training", pre,
                                                                                 dcfg.pretrain_steps)):
    warm = dcfg.stage_warmup(steps)
    lrs = np.asarray([float(sched(i)) for i in range(0, steps + 1, max(1, steps // 1000))])
    print(f"paper_table1 {schedule} {name}: {steps} steps, warm-up {warm}, peak {lrs.max():.2e} at step "
          f"{int(np.argmax(lrs)) * max(1, steps // 1000)}, lr at the end {float(sched(steps)):.1e}")
    assert 1 <= warm <= 0.1 * steps
    assert float(sched(warm)) == pytest.approx(dcfg.lr) and float(sched(steps)) == pytest.approx(0.0, abs=1e-12)
    assert float(sched(steps // 2)) < dcfg.lr  # decaying in the second half, not still ramping
  out = capsys.readouterr().out
  assert "progressive stage" in out and "pre-training" in out
