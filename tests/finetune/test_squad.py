"""SQuAD v1.1 (squad_v1): the official scores, windows and offsets that map answers back to the
context exactly, the JSON reader's errors, and a span head that learns through `ad finetune`."""

import json
import os
import pathlib

import numpy as np
import pytest

from ad import cli
from ad.data import vocab as vocab_lib
from ad.finetune import squad, trainer
from ad.models import hf
from tests.conftest import write_tiny_mobilebert

COLORS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
THINGS = ["car", "house", "boat", "kite", "door", "lamp", "chair", "bicycle", "scarf", "umbrella"]


@pytest.fixture(scope="module")
def vocab():
  return vocab_lib.WordPieceVocabulary(os.path.join(hf.minilm_dir(), "vocab.txt"))


def _article(rng, n_paragraphs: int, prefix: str) -> dict:
  """Paragraphs that state each thing's colour, and one question per statement (a pattern a
  small model can pick up in a few steps; not a benchmark)."""
  paras = []
  for p in range(n_paragraphs):
    things = rng.choice(THINGS, 4, replace=False)
    qas = []
    context = ""
    for k, thing in enumerate(things):
      color = str(rng.choice(COLORS))
      sentence = f"The {thing} near the café is {color}. "
      start = len(context) + sentence.index(color)
      context += sentence
      qas.append(dict(id=f"{prefix}{p}_{k}", question=f"What colour is the {thing}?",
                      answers=[dict(text=color, answer_start=start)]))
    paras.append(dict(context=context.strip(), qas=qas))
  return dict(title=prefix, paragraphs=paras)


def write_squad(directory, train_paragraphs: int = 40, dev_paragraphs: int = 8) -> str:
  rng = np.random.default_rng(0)
  os.makedirs(directory, exist_ok=True)
  for name, n in ((squad.TRAIN_FILE, train_paragraphs), (squad.DEV_FILE, dev_paragraphs)):
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      json.dump(dict(version="1.1", data=[_article(rng, n, name[:3])]), f)
  return str(directory)


def test_the_official_scores():
  assert squad.normalize_answer("The  Denver Broncos!") == "denver broncos"
  assert squad.exact_match("the Denver Broncos", ["Denver Broncos", "Broncos"]) == 1.0
  assert squad.exact_match("Denver", ["Denver Broncos"]) == 0.0
  # F1 is over normalized tokens, the best reference counts.
  assert squad.token_f1("Denver", ["Denver Broncos"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
  assert squad.token_f1("Denver Broncos", ["Carolina", "Denver Broncos"]) == 1.0
  assert squad.token_f1("", ["Broncos"]) == 0.0


def test_windows_and_offsets_map_every_answer_back_exactly(vocab):
  """Oracle logits (one-hot at each window's labelled start and end) give back every reference
  answer verbatim, through overlapping windows of a long context and accented words; windows
  that do not hold the whole answer are labelled [CLS]."""
  filler = "Meanwhile the naïve crowd, étonnée, waited (patiently) for the late bus. " * 6
  context = (filler + "The museum opened in 1897 in Zürich. " + filler + "Its director was Anna Müller-Lüdenscheid. "
             "A branch opened near 東京 today.")
  qs = [squad.Question("q1", context, "When did the museum open?", ("1897",), (context.index("1897"),)),
        squad.Question("q2", context, "Where?", ("Zürich",), (context.index("Zürich"),)),
        squad.Question("q3", context, "Who directed it?", ("Anna Müller-Lüdenscheid",),
                       (context.index("Anna"),)),
        # Multi-byte characters: tensorflow-text's byte offsets are not character offsets here.
        squad.Question("q4", context, "Where is the branch?", ("東京",), (context.index("東京"),))]
  feats = squad.featurize(qs, vocab, seq_len=48)
  assert feats.arrays["input_ids"].shape[1] == 48
  windows = np.bincount(feats.question_index)
  assert (windows > 3).all()  # the context spans several windows
  starts, ends = feats.arrays["start"], feats.arrays["end"]
  labelled = starts > 0
  assert (np.bincount(feats.question_index[labelled], minlength=4) >= 1).all()  # every answer is in a window
  T = 48
  s_log = np.where(np.arange(T)[None] == starts[:, None], 10.0, 0.0)
  e_log = np.where(np.arange(T)[None] == ends[:, None], 10.0, 0.0)
  # Windows without the answer point at [CLS], outside the context: they yield no span there.
  answers = squad.predict_answers(feats, s_log, e_log)
  assert answers[0] == "1897"
  assert answers[1] in ("Zürich", "Zürich.")  # a non-ASCII word is mapped as a whole word
  assert squad.normalize_answer(answers[2]) == squad.normalize_answer("Anna Müller-Lüdenscheid")
  assert answers[3] == "東京"
  em, f1 = squad.scores(qs, answers)
  assert em.tolist() == [1.0] * 4 and f1.tolist() == [1.0] * 4
  # ASCII pieces keep exact character offsets: each in-context position's span is the text it came from.
  ids, cs, ce = squad.tokenize_with_offsets(vocab, ["Unaffable (1897), don't."])[0]
  pieces = [vocab.tokens[i] for i in ids]
  assert pieces[:3] == ["una", "##ffa", "##ble"]
  assert ["Unaffable (1897), don't."[a:b] for a, b in zip(cs, ce)] == ["Una", "ffa", "ble", "(", "1897", ")", ",",
                                                                       "don", "'", "t", "."]


def test_the_best_span_respects_order_and_length():
  T = 64
  spans = np.stack([np.arange(T), np.arange(T) + 1], -1)[None].astype(np.int32)
  spans[0, :2] = -1  # [CLS] and a question token: not context
  s, e = np.zeros((1, T)), np.zeros((1, T))
  s[0, 0], e[0, 0] = 50, 50  # the best logits sit outside the context
  s[0, 10], e[0, 5] = 9, 9  # an end before its start is not a span
  e[0, 12] = 5
  score, chars = squad.best_spans(s, e, spans)
  assert chars[0].tolist() == [10, 13] and score[0] == 14
  e[0, 12], e[0, 10 + squad.MAX_ANSWER_TOKENS] = 0, 8  # too long: the next best end is taken
  e[0, 11] = 1
  assert squad.best_spans(s, e, spans)[1][0].tolist() == [10, 12]
  e[0, 10 + squad.MAX_ANSWER_TOKENS - 1] = 7  # the longest allowed
  assert squad.best_spans(s, e, spans)[1][0].tolist() == [10, 10 + squad.MAX_ANSWER_TOKENS]


def test_the_json_reader_names_what_is_wrong(tmp_path):
  d = write_squad(tmp_path / "squad", 2, 1)
  train, test = squad.json_split(d, "train"), squad.json_split(d, "test")
  assert len(train) == 8 and squad.json_split(d, "validation") == [] and len(test) == 4  # 95% of 8 rounds to 8
  assert [q.id for q in test] == [f"dev0_{k}" for k in range(4)]
  assert all(q.context[q.answer_starts[0]:].startswith(q.answers[0]) for q in train)
  with pytest.raises(FileNotFoundError, match="nope.json"):
    squad.read_json(str(tmp_path / "nope.json"))
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(dict(data=[dict(title="t", paragraphs=[dict(context="abc", qas=[dict(id="x")])])])))
  with pytest.raises(ValueError, match="bad.json.*SQuAD v1.1 layout"):
    squad.read_json(str(bad))
  bad.write_text(json.dumps(dict(data=[dict(title="t", paragraphs=[dict(
      context="abc", qas=[dict(id="x", question="q", answers=[dict(text="bc", answer_start=0)])])])])))
  with pytest.raises(ValueError, match="bad.json: question x: answer 'bc' is not at character 0"):
    squad.read_json(str(bad))


def test_a_span_head_learns_squad_through_the_command(tmp_path, capsys):
  """`ad finetune --task squad_v1 --squad-dir DIR`: the loss falls, F1 and exact match come with
  their standard errors, and a directory without the files is a clear error."""
  data = write_squad(tmp_path / "squad")
  ckpt = write_tiny_mobilebert(tmp_path / "mobilebert_tiny")
  sets = [f"--set=finetune.{k}={v}" for k, v in dict(epochs=3, batch_size=16, lr=2e-3, seq_len=32,
                                                     evals_per_epoch=1, patience=5).items()]
  assert cli.main(["finetune", "--checkpoint", ckpt, "--task", "squad_v1", "--squad-dir", data, "--workdir",
                   str(tmp_path / "runs"), "--no-progress", *sets]) == 0
  (r,) = json.loads(capsys.readouterr().out)
  assert r["metric"] == "squad_f1" and r["examples"] == dict(train=152, validation=8, test=32)
  assert r["train_sequences"] >= 152  # a question's context may span several windows
  losses = [h["loss"] for h in r["train_losses"]]
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  for key in ("test", "test_exact_match"):
    t = r[key]
    assert 0 <= t["ci95"][0] <= t["value"] <= t["ci95"][1] <= 1 and t["se"] >= 0 and t["examples"] == 32
  saved = json.loads((pathlib.Path(trainer.result_dir(str(tmp_path / "runs"), ckpt, "squad_v1")) / trainer.RESULT_FILE).read_text())
  assert saved["test_exact_match"] == r["test_exact_match"]

  assert cli.main(["finetune", "--checkpoint", ckpt, "--task", "squad_v1", "--squad-dir", str(tmp_path), *sets]) == 2
  err = capsys.readouterr().err
  assert str(tmp_path) in err and "train-v1.1.json" in err and "dev-v1.1.json" in err
  assert cli.main(["finetune", "--checkpoint", ckpt, "--task", "squad_v1", "--tfds-data-dir",
                   str(tmp_path / "no_tfds"), *sets]) == 2
  err = capsys.readouterr().err
  assert "squad/v1.1" in err and "finetune.squad_dir" in err
