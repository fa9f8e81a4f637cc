"""The held-out evaluation set (deterministic, cached, big enough or a clear error) and scores
with standard errors, teacher agreement and the non-finite guard."""

import os

import numpy as np
import pytest

from ad import stats
from ad.data import pretrain, sources
from ad.distill import evaluation, teacher_head
from tests.conftest import tiny_data_config


def test_the_evaluation_set_is_identical_across_runs_and_rebuilt_identically(tmp_path):
  data = tiny_data_config()
  vocab = pretrain.load_vocab(data)
  a = evaluation.build_eval_set(data, vocab, cache_dir=str(tmp_path), log=lambda *_: None)
  b = evaluation.build_eval_set(data, vocab, cache_dir=str(tmp_path), log=lambda *_: None)  # from the cache
  (cached,) = os.listdir(tmp_path)
  os.unlink(tmp_path / cached)
  c = evaluation.build_eval_set(data, vocab, cache_dir=str(tmp_path), log=lambda *_: None)  # built again
  assert a.key == b.key == c.key and a.masked_tokens >= 256
  for k in evaluation.FEATURES:
    np.testing.assert_array_equal(a.arrays[k], b.arrays[k])
    np.testing.assert_array_equal(a.arrays[k], c.arrays[k])
  # Just enough pairs: without the last one the set would hold fewer masked tokens than asked.
  assert a.masked_tokens - a.masked_per_sequence[-1] < 256
  assert evaluation.build_eval_set(tiny_data_config(seed=1), vocab, cache_dir=str(tmp_path),
                                   log=lambda *_: None).key != a.key


def test_a_validation_split_too_small_is_an_error_that_says_what_to_change(tmp_path):
  data = tiny_data_config(eval_masked_tokens=10**7)
  with pytest.raises(sources.DataError, match=r"fewer than data.eval_masked_tokens=10000000.*raise "
                                              r"data.validation_percent"):
    evaluation.build_eval_set(data, pretrain.load_vocab(data), cache_dir=str(tmp_path), log=lambda *_: None)


def test_scores_carry_standard_errors_and_teacher_agreement(tiny_teacher):
  teacher, _ = teacher_head.load(tiny_teacher)
  data = tiny_data_config()
  es = evaluation.build_eval_set(data, pretrain.load_vocab(data), log=lambda *_: None)
  top1, own = evaluation.teacher_reference(tiny_teacher, teacher, es, log=lambda *_: None)
  assert top1.shape == es.arrays["masked_ids"].shape
  r = evaluation.evaluate(teacher, es, top1)
  assert r["teacher_agreement"] == pytest.approx(1.0)  # the teacher agrees with itself
  assert r["mlm_accuracy"] == pytest.approx(own["mlm_accuracy"])
  per = r["per_sequence"]
  assert len(per["mlm_correct"]) == es.pairs and sum(per["masked"]) == es.masked_tokens
  assert r["mlm_accuracy_se"] == pytest.approx(stats.ratio_se(per["mlm_correct"], per["masked"]))
  assert r["mlm_cross_entropy"] > 0 and r["mlm_cross_entropy_se"] > 0 and r["eval_s"] > 0
  assert "nsp_accuracy" not in r  # MiniLM has no NSP head; students' NSP is checked in test_trainer.py
  # The scores come from one max-reduction per position; check them against argmax and optax's
  # cross-entropy computed here from the model's logits.
  a = es.arrays
  np.testing.assert_array_equal(((top1 == a["masked_ids"]) * a["masked_weights"]).sum(1), per["mlm_correct"])
  import jax.numpy as jnp
  import optax
  from ad.distill import losses
  rows = slice(0, 8)
  out = teacher.encode(jnp.asarray(a["input_ids"][rows]), jnp.asarray(a["token_type_ids"][rows]),
                       jnp.asarray(a["attention_mask"][rows]))
  logits = teacher.mlm_logits(losses.gather_positions(out["sequence_output"], jnp.asarray(a["masked_positions"][rows])))
  ce = (optax.softmax_cross_entropy_with_integer_labels(logits, a["masked_ids"][rows]) * a["masked_weights"][rows]).sum(1)
  np.testing.assert_allclose(per["mlm_ce"][rows], np.asarray(ce), rtol=2e-3, atol=2e-3)


def test_non_finite_parameters_fail_the_evaluation_naming_the_model(tiny_teacher):
  teacher, _ = teacher_head.load(tiny_teacher)
  data = tiny_data_config()
  es = evaluation.build_eval_set(data, pretrain.load_vocab(data), log=lambda *_: None)
  teacher.mlm_bias[...] = teacher.mlm_bias[...].at[5].set(np.nan)
  with pytest.raises(evaluation.NonFiniteEvaluationError, match="checkpoint XYZ"):
    evaluation.evaluate(teacher, es, what="checkpoint XYZ")
