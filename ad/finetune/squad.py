"""SQuAD v1.1 (003 Table 4): extractive question answering with a span head.

Data. `squad_v1` reads either the official JSON files (`finetune.squad_dir` holding
`train-v1.1.json` and `dev-v1.1.json`, as rajpurkar.github.io distributes them) or the TFDS
dataset `squad/v1.1` from a prepared TFDS data dir; both go through one seqio task with the
same features (id, context, question, answers). Splits as for GLUE: `train` = the first 95% of
the train file, `validation` = its last 5% (early stopping), `test` = the dev file (the set the
papers report). Nothing is downloaded.

Features (BERT's run_squad layout): [CLS] question [SEP] context-window [SEP], the question cut
to `MAX_QUESTION_TOKENS` (a quarter of the sequence at short lengths), the context cut into
windows that overlap by half, so every token sits in some window away from its edge. A
training window is labelled with the answer's first and last token when the whole answer lies
inside it, else with [CLS] (position 0), as BERT does.

Token -> character offsets. tensorflow-text's BertTokenizer reports offsets into the text after
its normalization (lower-casing, NFD, accent stripping), which moves bytes in non-ASCII words.
So the context is split on whitespace here, each word is tokenized on its own, and the pieces
of an ASCII word keep their exact offsets while the pieces of a non-ASCII word all span the
whole word. A predicted answer is therefore exact in ASCII text and at worst a whole word wide
elsewhere (SQuAD's scoring drops punctuation, articles and case, not letters).

Prediction: per window, the best span with start <= end, both in the context, at most
`MAX_ANSWER_TOKENS` long, by start + end logit; per question, the best window's span. Scores are
the official v1.1 exact match and token F1 (max over the reference answers), averaged over
questions, with bootstrap standard errors.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import string

import numpy as np

MAX_QUESTION_TOKENS = 64
MAX_ANSWER_TOKENS = 30
TOP_K = 20  # start and end candidates per window
TRAIN_FILE, DEV_FILE = "train-v1.1.json", "dev-v1.1.json"
TRAIN_FRACTION = 0.95  # of the train file; the rest is the validation split


@dataclasses.dataclass(frozen=True)
class Question:
  id: str
  context: str
  question: str
  answers: tuple[str, ...]
  answer_starts: tuple[int, ...]  # character offsets into context


# ---------------------------------------------------------------------------------------------
# Reading: the official JSON files, and seqio/TFDS rows.

def read_json(path: str) -> list[Question]:
  """The questions of a SQuAD v1.1 JSON file; a clear error naming the file and key otherwise."""
  try:
    with open(path, encoding="utf-8") as f:
      doc = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: SQuAD file not found") from None
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a readable SQuAD JSON file ({e})") from None
  out = []
  try:
    for a, article in enumerate(doc["data"]):
      for p, para in enumerate(article["paragraphs"]):
        for qa in para["qas"]:
          answers = qa["answers"]
          out.append(Question(str(qa["id"]), para["context"], qa["question"],
                              tuple(x["text"] for x in answers), tuple(int(x["answer_start"]) for x in answers)))
  except (KeyError, TypeError) as e:
    raise ValueError(f"{path}: not SQuAD v1.1 layout (data[].paragraphs[].qas[] with id, question, answers"
                     f"[].text/answer_start; failed at {e!r})") from None
  if not out:
    raise ValueError(f"{path}: no questions")
  unanswered = [q.id for q in out if not q.answers]
  if unanswered:
    raise ValueError(f"{path}: {len(unanswered)} questions without answers (e.g. {unanswered[0]}); SQuAD v1.1 "
                     "has none (v2.0's unanswerable questions are not supported)")
  for q in out:
    for text, start in zip(q.answers, q.answer_starts):
      if q.context[start:start + len(text)] != text:
        raise ValueError(f"{path}: question {q.id}: answer {text!r} is not at character {start} of its context")
  return out


def json_split(squad_dir: str, split: str) -> list[Question]:
  """train / validation (95/5 of the train file, in file order) / test (the dev file)."""
  if split == "test":
    return read_json(os.path.join(squad_dir, DEV_FILE))
  rows = read_json(os.path.join(squad_dir, TRAIN_FILE))
  cut = int(round(TRAIN_FRACTION * len(rows)))
  return rows[:cut] if split == "train" else rows[cut:]


def from_row(row: dict) -> Question:
  """A seqio/TFDS row (numpy values, bytes strings) -> Question."""
  text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
  ans = row["answers"]
  return Question(text(row["id"]), text(row["context"]), text(row["question"]),
                  tuple(text(t) for t in ans["text"]), tuple(int(s) for s in ans["answer_start"]))


# ---------------------------------------------------------------------------------------------
# Tokenization with character offsets.

def tokenize_with_offsets(vocab, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """[(ids [N], char_start [N], char_end [N])] per text (module docstring: offsets)."""
  import tensorflow as tf
  words, spans, owner = [], [], []
  for i, t in enumerate(texts):
    for m in re.finditer(r"\S+", t):
      words.append(m.group())
      spans.append((m.start(), m.end()))
      owner.append(i)
  per_text = [([], [], []) for _ in texts]
  for lo in range(0, len(words), 8192):
    chunk = words[lo:lo + 8192]
    tok, st, en = vocab._tokenizer.tokenize_with_offsets(tf.constant(chunk))
    ids = tok.merge_dims(1, 2).to_list()
    starts, ends = st.merge_dims(1, 2).to_list(), en.merge_dims(1, 2).to_list()
    for j, w in enumerate(chunk):
      ws, we = spans[lo + j]
      out = per_text[owner[lo + j]]
      exact = w.isascii()  # byte offsets are character offsets, normalization kept them
      for t_id, s, e in zip(ids[j], starts[j], ends[j]):
        out[0].append(int(t_id))
        out[1].append(ws + s if exact else ws)
        out[2].append(ws + e if exact else we)
  return [(np.asarray(a, np.int32), np.asarray(b, np.int32), np.asarray(c, np.int32)) for a, b, c in per_text]


# ---------------------------------------------------------------------------------------------
# Features.

@dataclasses.dataclass
class Features:
  """Model inputs per window ([W, T] int32; start/end labels [W]) and what maps windows back to
  questions: question index [W] and each position's context character span [W, T, 2] (-1 off
  the context)."""
  arrays: dict[str, np.ndarray]
  question_index: np.ndarray
  char_spans: np.ndarray
  questions: list[Question]


def featurize(questions: list[Question], vocab, seq_len: int) -> Features:
  contexts = list(dict.fromkeys(q.context for q in questions))
  ctx_tok = dict(zip(contexts, tokenize_with_offsets(vocab, contexts)))
  q_ids = [vocab.encode(q.question) for q in questions]
  max_q = min(MAX_QUESTION_TOKENS, seq_len // 4)
  cols = collections.defaultdict(list)
  for qi, (q, qid) in enumerate(zip(questions, q_ids)):
    qid = list(qid)[:max_q]
    ids, cs, ce = ctx_tok[q.context]
    budget = seq_len - len(qid) - 3
    if budget < 1:
      raise ValueError(f"finetune.seq_len={seq_len} leaves no room for the context after a {len(qid)}-token question")
    stride = max(1, budget // 2)
    a_first = a_last = -1
    if q.answers:  # the first reference answer is the training label (SQuAD v1.1 train has one)
      s0, s1 = q.answer_starts[0], q.answer_starts[0] + len(q.answers[0])
      inside = np.nonzero((ce > s0) & (cs < s1))[0]
      if len(inside):
        a_first, a_last = int(inside[0]), int(inside[-1])
    offset = len(qid) + 2  # [CLS] question [SEP]
    w0 = 0
    while True:
      w1 = min(w0 + budget, len(ids))
      tokens = [vocab.cls_id, *qid, vocab.sep_id, *ids[w0:w1].tolist(), vocab.sep_id]
      n = len(tokens)
      span = np.full((seq_len, 2), -1, np.int32)
      span[offset:offset + w1 - w0, 0], span[offset:offset + w1 - w0, 1] = cs[w0:w1], ce[w0:w1]
      start = end = 0
      if a_first >= w0 and 0 <= a_last < w1:
        start, end = a_first - w0 + offset, a_last - w0 + offset
      cols["input_ids"].append(tokens + [vocab.pad_id] * (seq_len - n))
      cols["token_type_ids"].append([0] * offset + [1] * (n - offset) + [0] * (seq_len - n))
      cols["attention_mask"].append([1] * n + [0] * (seq_len - n))
      cols["start"].append(start)
      cols["end"].append(end)
      cols["question"].append(qi)
      cols["span"].append(span)
      if w1 >= len(ids):
        break
      w0 += stride
  arrays = {k: np.asarray(cols[k], np.int32) for k in ("input_ids", "token_type_ids", "attention_mask", "start", "end")}
  return Features(arrays, np.asarray(cols["question"], np.int32), np.stack(cols["span"]), questions)


# ---------------------------------------------------------------------------------------------
# Prediction and the official v1.1 scores.

def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, char_spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per window [W, T] logits -> (score [W], (char_start, char_end) [W, 2]); -inf where the
  window has no valid span."""
  W, T = start_logits.shape
  scores = np.full(W, -np.inf)
  chars = np.zeros((W, 2), np.int64)
  in_ctx = char_spans[..., 0] >= 0
  for w in range(W):
    s_log = np.where(in_ctx[w], start_logits[w], -np.inf)
    e_log = np.where(in_ctx[w], end_logits[w], -np.inf)
    k = min(TOP_K, T)
    s_top, e_top = np.argsort(-s_log)[:k], np.argsort(-e_log)[:k]
    pair = s_log[s_top][:, None] + e_log[e_top][None, :]
    length = e_top[None, :] - s_top[:, None]
    pair = np.where((length >= 0) & (length < MAX_ANSWER_TOKENS), pair, -np.inf)
    i, j = np.unravel_index(np.argmax(pair), pair.shape)
    if np.isfinite(pair[i, j]):
      scores[w] = pair[i, j]
      chars[w] = char_spans[w, s_top[i], 0], char_spans[w, e_top[j], 1]
  return scores, chars


def predict_answers(feats: Features, start_logits: np.ndarray, end_logits: np.ndarray) -> list[str]:
  """One answer per question: the best span over its windows ('' when none is valid)."""
  scores, chars = best_spans(start_logits, end_logits, feats.char_spans)
  best = {}
  for w, qi in enumerate(feats.question_index):
    if np.isfinite(scores[w]) and (qi not in best or scores[w] > scores[best[qi]]):
      best[qi] = w
  return [feats.questions[qi].context[chars[best[qi], 0]:chars[best[qi], 1]] if qi in best else ""
          for qi in range(len(feats.questions))]


def normalize_answer(s: str) -> str:
  """SQuAD v1.1's normalization: lower case, no punctuation, no articles, single spaces."""
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def exact_match(prediction: str, references) -> float:
  return float(max(normalize_answer(prediction) == normalize_answer(r) for r in references))


def token_f1(prediction: str, references) -> float:
  def f1(pred, ref):
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    common = sum((collections.Counter(p) & collections.Counter(r)).values())
    if common == 0:
      return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)
  return max(f1(prediction, r) for r in references)


def scores(questions: list[Question], predictions: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Per-question (exact match [N], F1 [N]) against each question's reference answers."""
  if len(questions) != len(predictions):
    raise ValueError(f"{len(predictions)} predictions for {len(questions)} questions")
  em = np.asarray([exact_match(p, q.answers) for q, p in zip(questions, predictions)])
  f1 = np.asarray([token_f1(p, q.answers) for q, p in zip(questions, predictions)])
  return em, f1
