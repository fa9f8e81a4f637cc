"""Weight-sharing SuperLMs (ad/distill/superlm.py): extraction computes what the SuperLM computes,
training resumes exactly, proxy scores are the extracted student's own, few-shot parts own their
architectures, and a search runs end to end with each SuperLM proxy."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ad import configs, interrupt
from ad import space as space_lib
from ad.distill import evaluation, settings as distill_settings, superlm
from ad.train.params import Rebuild
from ad.models import student as student_lib
from tests.conftest import SEARCH_BASELINE, distill_overrides

SMALL_SPACE = space_lib.DesignSpace(hidden=(64, 96), bottleneck=(32, 48), heads=(1, 2, 4), intermediate=(48, 64),
                                    num_ffn=(1, 2, 3))


@pytest.mark.parametrize("norm", ["no_norm", "layer_norm"])
def test_extracted_subnetworks_compute_exactly_what_the_superlm_computes(norm):
  """Every 11th architecture of a small space (all head counts, widths, FFN counts; 3 for LayerNorm), f32: the
  extracted standalone Student's MLM logits, hidden states and NSP logits equal the SuperLM's
  elastic forward for that sub-network to float32 rounding, and nothing leaks beyond its width."""
  archs = SMALL_SPACE.archs()
  base = dict(num_blocks=2, vocab_size=97, embedding_size=32, max_positions=16, norm=norm, dtype="float32")
  s = student_lib.Student(student_lib.StudentConfig(arch=superlm.super_arch(archs), **base), nnx.Rngs(0))
  state = nnx.state(s)  # non-trivial norms and biases: zero biases would hide a missing mask
  leaves, tree = jax.tree.flatten(state)
  rng = np.random.default_rng(0)  # numpy: no program to compile per parameter shape
  nnx.update(s, jax.tree.unflatten(tree, [x + 0.1 * rng.standard_normal(x.shape, np.float32) for x in leaves]))
  pure = Rebuild(s).params
  ids = jnp.asarray(rng.integers(0, 97, (2, 12)))
  types = jnp.asarray(np.tile(np.arange(12) >= 6, (2, 1)).astype(np.int32))
  mask = jnp.ones((2, 12), jnp.int32).at[1, 9:].set(0)
  forward = jax.jit(lambda sub: (lambda enc: (enc, superlm.elastic_mlm_logits(s, enc, enc["sequence_output"]),
                                              s.nsp_logits(enc["pooled"])))(
      superlm.elastic_encode(s, sub, ids, types, mask, max_heads=4)))
  for arch in (archs[::11] + [archs[-1]] if norm == "no_norm" else archs[5::23]):  # LayerNorm: its own paths only
    alone = superlm.extract(pure, student_lib.StudentConfig(arch=arch, **base))(ids, types, mask)
    enc, mlm, nsp = forward(jnp.asarray(superlm.encode(arch)))
    scale = float(jnp.abs(alone["mlm_logits"]).max())
    assert float(jnp.abs(mlm - alone["mlm_logits"]).max()) <= 1e-6 * max(scale, 1.0), arch.name
    assert float(jnp.abs(nsp - alone["nsp_logits"]).max()) <= 1e-5, arch.name
    h = enc["sequence_output"]
    assert float(jnp.abs(h[..., :arch.hidden] - alone["sequence_output"]).max()) <= 1e-5, arch.name
    assert float(jnp.abs(h[..., arch.hidden:]).max(initial=0.0)) == 0.0, arch.name
  with pytest.raises(ValueError, match="outside the SuperLM's space"):
    superlm.extract(pure, student_lib.StudentConfig(arch=space_lib.Arch(128, 32, 1, 48, 1), **base))


def test_draws_are_reproducible_and_sandwich_keeps_the_extremes():
  archs = SMALL_SPACE.archs()
  cfg = distill_settings.SuperLMConfig(samples_per_step=3, sampling="sandwich")
  assert superlm.draw(archs, cfg, 7) == superlm.draw(archs, cfg, 7)
  picks = superlm.draw(archs, cfg, 7)
  assert picks[0].name == "96_48_4_64_3" and picks[-1].name == "64_32_1_48_1"
  parts = superlm.partition(archs, "hidden", 2)
  assert [sorted({a.hidden for a in p}) for p in parts] == [[64], [96]] and sum(map(len, parts)) == len(archs)
  with pytest.raises(ValueError, match="only 2 values of hidden"):
    superlm.partition(archs, "hidden", 3)
  with pytest.raises(ValueError, match="samples_per_step must be at least 3"):
    distill_settings.SuperLMConfig(samples_per_step=2, sampling="sandwich")


def _cfg(teacher, **extra):
  base = {"model.num_blocks": 1, "space.hidden": "[128, 256]", "space.bottleneck": "[64]", "space.heads": "[1, 2]",
          "space.intermediate": "[256, 384]", "space.num_ffn": "[1, 2]", "distill.mesh_data": 1,
          "superlm.steps": 4, "superlm.checkpoint_every": 2, "superlm.warmup_steps": 1, "superlm.fewshot.count": 2,
          "superlm.samples_per_step": 3}  # sandwich: the largest, the smallest and one random
  base.update(extra)
  return configs.load_config("quickstart", distill_overrides(teacher, **base))


def _params(workdir, cfg):
  superlm._LOADED.clear()
  return superlm.load(workdir, cfg)[0]


def test_superlm_resumes_exactly_scores_extracted_students_and_serves_a_search(tmp_path, tiny_teacher, monkeypatch):
  """An interrupt after step 2 leaves a checkpoint; --resume then ends with the same parameters
  bit for bit as an uninterrupted run (the same batches and sub-networks). 8 devices give one
  device's losses. The proxy score is the extracted student's own evaluation, with its standard
  error; the extracted student seeds a distillation (--init-student); a one-shot search reuses the
  trained SuperLM."""
  cfg = _cfg(tiny_teacher)
  whole = superlm.train(cfg, str(tmp_path / "whole"), log=lambda m: None, progress=False)
  assert whole["steps"] == 4 and whole["candidates"] == 16 and whole["super_arch"] == "256_64_1_384_2"
  with open(tmp_path / "whole" / "losses.jsonl") as f:
    recs = [json.loads(line) for line in f]
  assert [r["step"] for r in recs] == [0, 1, 2, 3] and all(len(r["subnets"]) == 3 for r in recs)

  calls = {"n": 0}

  def stop_after_two():  # as a SIGTERM during step 2 would
    calls["n"] += 1
    if calls["n"] == 2:
      interrupt.request()
    return interrupt._requested.is_set()
  monkeypatch.setattr(interrupt, "requested", stop_after_two)
  try:
    with pytest.raises(interrupt.Interrupted):
      superlm.train(cfg, str(tmp_path / "split"), log=lambda m: None, progress=False)
  finally:
    interrupt.reset()
  resumed = superlm.train(cfg, str(tmp_path / "split"), resume=True, log=lambda m: None, progress=False)
  assert resumed["resumed_from"] == 2
  a, b = _params(str(tmp_path / "whole"), cfg), _params(str(tmp_path / "split"), cfg)
  assert jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b))
  with pytest.raises(FileExistsError, match="--resume"):
    superlm.train(cfg, str(tmp_path / "whole"), log=lambda m: None, progress=False)

  # Sharded over 8 devices (data parallel, as the trainer is): the same losses as on one. Three
  # steps: the updates before them use the 4-step run's learning rates (0, then the peak), so the
  # third loss follows one real sharded update.
  sharded = _cfg(tiny_teacher, **{"distill.mesh_data": 8, "superlm.steps": 3})
  superlm.train(sharded, str(tmp_path / "sharded"), log=lambda m: None, progress=False)
  with open(tmp_path / "sharded" / "losses.jsonl") as f:
    on_eight = [json.loads(line) for line in f]
  assert [r["subnets"] for r in on_eight] == [r["subnets"] for r in recs[:3]]
  assert [r["lr"] for r in on_eight[:2]] == [r["lr"] for r in recs[:2]]
  np.testing.assert_allclose([r["sub_losses"] for r in on_eight], [r["sub_losses"] for r in recs[:3]], rtol=2e-5)

  arch = "128_64_2_256_2"  # the search tests' first initial trial: its programs come from the cache
  r = superlm.proxy_scores(arch, cfg, str(tmp_path / "whole"), log=lambda m: None)
  assert 0 <= r["mlm_accuracy"] <= 1 and r["mlm_accuracy_se"] > 0 and r["arch"] == arch
  from ad.data import pretrain, settings as data_settings
  from ad.distill import teacher_head
  student = superlm.extract(a, student_lib.config_from_dict(arch, cfg.model))
  data_cfg = data_settings.config_from_dict(cfg.data)
  teacher, meta = teacher_head.load_for_training(tiny_teacher, "float32")
  es = evaluation.build_eval_set(data_cfg, pretrain.load_vocab(data_cfg, meta["source_dir"]), log=lambda m: None)
  top1, _ = evaluation.teacher_reference(tiny_teacher, teacher, es, log=lambda m: None)
  direct = evaluation.evaluate(student, es, top1)
  assert (r["mlm_accuracy"], r["mlm_cross_entropy"], r["teacher_agreement"]) == (
      direct["mlm_accuracy"], direct["mlm_cross_entropy"], direct["teacher_agreement"])
  with pytest.raises(ValueError, match="not in the space the SuperLM in .* was trained on"):
    superlm.proxy_scores("512_64_2_256_1", cfg, str(tmp_path / "whole"))
  superlm._LOADED.clear()  # scored with another model section: the config is named, not the checkpoint
  with pytest.raises(ValueError, match=r"trained with another model section \(model.num_blocks: trained with 1, the "
                                       r"config has 2\).*the checkpoint itself is fine"):
    superlm.proxy_scores(arch, _cfg(tiny_teacher, **{"model.num_blocks": 2}), str(tmp_path / "whole"))

  # Extracted, saved alone, and distilled from there: the run starts from the SuperLM's weights.
  ckpt = superlm.save_extracted(arch, cfg, str(tmp_path / "whole"), str(tmp_path / "extracted"))
  from ad.distill import trainer
  m = trainer.distill(arch, cfg, "flash", str(tmp_path / "from_superlm"), log=lambda m: None, progress=False,
                      init_student=ckpt)
  fresh = trainer.distill(arch, cfg, "flash", str(tmp_path / "fresh"), log=lambda m: None, progress=False)
  first_loss = lambda d: json.loads(open(os.path.join(d, "losses.jsonl")).readline())["loss"]
  assert np.isfinite(m["mlm_accuracy"]) and m["steps"] == fresh["steps"]
  assert first_loss(tmp_path / "from_superlm") != first_loss(tmp_path / "fresh")  # it did start elsewhere
  with pytest.raises(ValueError, match="do not fit this student"):
    trainer.distill("256_64_2_256_1", cfg, "flash", str(tmp_path / "wrong"), log=lambda m: None, progress=False,
                    init_student=ckpt)

  # A search with the one-shot proxy, its SuperLM the one trained above (the search checks that
  # it is the SuperLM its config asks for, and reuses it).
  shutil.copytree(tmp_path / "whole", tmp_path / "search_superlm" / "superlm")
  _search_with("superlm", tmp_path, tiny_teacher)


def _search_with(proxy, tmp_path, tiny_teacher):
  """A search with `proxy` end to end (baseline + 1 trial), then resumed; checks and returns its run dir."""
  from ad.search import loop, store as store_lib
  cfg = _cfg(tiny_teacher, **{"search.proxy": proxy, "search.num_initial": 1, "search.num_trials": 1,
                              "search.designer": "random", "search.baseline_arch": SEARCH_BASELINE,
                              "search.measure.seq": 32, "search.measure.max_reps": 20, "final.count": 0})
  run_dir = str(tmp_path / f"search_{proxy}")
  summary = loop.run_search(cfg, run_dir, log=lambda m: None, progress=False)
  assert summary["trials"] == 2, summary
  rows = store_lib.TrialStore(run_dir, create=False).trials()
  assert all(r.status == "ok" for r in rows), [(r.arch, r.error) for r in rows]
  for r in rows:
    assert r.distill["proxy_workdir"].startswith(os.path.join(run_dir, proxy))
    assert r.objectives["mlm_accuracy"] == r.distill["mlm_accuracy"] and r.objective_se["mlm_accuracy"] > 0
    assert not os.path.exists(os.path.join(run_dir, "trials", r.arch, "checkpoints"))  # nothing was distilled
  with open(os.path.join(run_dir, "report.md")) as f:
    assert "Accuracy proxy: **sub-networks of " + ("a one-shot" if proxy == "superlm" else "few-shot") in f.read()
  # A resumed search does not train its SuperLM(s) again ...
  done = os.path.join(run_dir, proxy, superlm.DONE_FEWSHOT if proxy == "fewshot" else superlm.DONE_ONESHOT)
  stamp = os.stat(done).st_mtime_ns
  again = loop.run_search(cfg, run_dir, resume=True, log=lambda m: None, progress=False)
  assert again["trials"] == 2 and os.stat(done).st_mtime_ns == stamp
  # ... and never reuses SuperLMs trained with other settings.
  other = _cfg(tiny_teacher, **{"superlm.seed": 1})
  with pytest.raises(ValueError, match="cannot resume, the config differs in .*superlm"):
    superlm.ensure_trained(other, os.path.join(run_dir, proxy), proxy, log=lambda m: None)
  return run_dir, rows


def test_fewshot_parts_own_their_architectures_in_a_search(tmp_path, tiny_teacher):
  run_dir, rows = _search_with("fewshot", tmp_path, tiny_teacher)
  record = json.load(open(os.path.join(run_dir, "fewshot", superlm.DONE_FEWSHOT)))
  assert [p["values"] for p in record["parts"]] == [[128], [256]] and record["steps_per_part"] == 2
  for r in rows:
    part = 0 if r.arch.startswith("128_") else 1
    assert r.distill["proxy_workdir"] == os.path.join(run_dir, "fewshot", f"part_{part}")
