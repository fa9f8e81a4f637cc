"""The held-out evaluation: one fixed set per data config, and scores with their standard errors.

The evaluation set is the first pairs of the validation split (documents chosen by a stable
hash, ad/data/sources.py; one fixed pass of pairs and masks, ad/data/pretrain.py) that together
hold at least `data.eval_masked_tokens` masked tokens, plus their NSP labels. It is built once
per (data config, vocabulary), cached as .npz under the cache root, and every trial, final and
teacher is scored on exactly these arrays.

`evaluate` returns, each with its sequence-level standard error (ad/stats.py): MLM accuracy,
MLM cross-entropy (nats per masked token), top-1 agreement with the teacher on the same
positions (when the teacher's predictions are given), NSP accuracy; and the per-sequence counts
that let two students be compared pairwise, and the wall time. A non-finite logit is an error
naming what was evaluated: a damaged checkpoint must fail its trial, not score 0.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ad import files, stats
from ad.data import pretrain, sources
from ad.distill import losses

EVAL_BATCH = 64  # one compiled shape; the last batch is padded with weight-0 rows
FEATURES = ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_ids", "masked_weights",
            "nsp_label")


class NonFiniteEvaluationError(FloatingPointError):
  """NaN or inf logits: names the model or checkpoint."""


@dataclasses.dataclass(frozen=True)
class EvalSet:
  arrays: dict  # feature -> [N, ...] numpy
  key: str  # fingerprint of (data config, vocabulary, size)
  documents: int  # validation documents of the split
  pairs: int  # N

  @property
  def masked_tokens(self) -> int:
    return int(self.arrays["masked_weights"].sum())

  @property
  def masked_per_sequence(self) -> np.ndarray:
    return self.arrays["masked_weights"].sum(1)

  def batches(self, extra: dict | None = None):
    """Batches of EVAL_BATCH rows (+ 'valid' [B]); `extra` arrays [N, ...] ride along."""
    arrays = dict(self.arrays, **(extra or {}))
    n = self.pairs
    for start in range(0, n, EVAL_BATCH):
      b = {k: v[start:start + EVAL_BATCH] for k, v in arrays.items()}
      pad = EVAL_BATCH - len(b["input_ids"])
      valid = np.ones(EVAL_BATCH, np.float32)
      if pad:
        b = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in b.items()}
        valid[EVAL_BATCH - pad:] = 0
      b["valid"] = valid
      yield b


def eval_set_key(data_cfg, vocab) -> str:
  return files.fingerprint(dict(data=repr(data_cfg), vocab=files.sha256_file(vocab.vocab_file),
                                lower_case=vocab.lower_case, format=1))


def build_eval_set(data_cfg, vocab, cache_dir: str | None = None, log=print) -> EvalSet:
  """The evaluation set of `data_cfg` (built from the validation split once, then read from cache)."""
  key = eval_set_key(data_cfg, vocab)
  cache_dir = cache_dir or os.path.join(files.cache_root(), "evalsets")
  path = os.path.join(cache_dir, f"eval_{key}.npz")
  if os.path.isfile(path):
    try:
      with np.load(path) as z:
        arrays = {k: z[k] for k in FEATURES}
        documents, pairs = int(z["documents"]), int(z["pairs"])
      return EvalSet(arrays, key, documents, pairs)
    except (OSError, KeyError, ValueError) as e:
      log(f"evaluation set: {path} is unreadable ({e}); building it again")
  t0 = time.time()
  task = pretrain.make_task(data_cfg, vocab)
  rows: dict[str, list] = {k: [] for k in FEATURES}
  masked = 0
  for b in pretrain.batches(task, data_cfg, "validation", EVAL_BATCH, drop_remainder=False):
    for i in range(len(b["input_ids"])):
      for k in FEATURES:
        rows[k].append(b[k][i])
      masked += int(b["masked_weights"][i].sum())
      if masked >= data_cfg.eval_masked_tokens:
        break
    if masked >= data_cfg.eval_masked_tokens:
      break
  documents = len(pretrain._documents(data_cfg.sources, "validation", data_cfg.validation_percent))
  if masked < data_cfg.eval_masked_tokens:
    need = data_cfg.validation_percent * data_cfg.eval_masked_tokens / max(masked, 1)
    raise sources.DataError(
        f"the validation split of data.sources={list(data_cfg.sources)} ({documents} documents at "
        f"data.validation_percent={data_cfg.validation_percent}) holds {masked} masked tokens in "
        f"{len(rows['input_ids'])} pairs at seq {data_cfg.seq_len}, fewer than data.eval_masked_tokens="
        f"{data_cfg.eval_masked_tokens}: raise data.validation_percent to about {need:.1f} or lower "
        "data.eval_masked_tokens")
  arrays = {k: np.stack(v) for k, v in rows.items()}
  es = EvalSet(arrays, key, documents, len(arrays["input_ids"]))
  os.makedirs(cache_dir, exist_ok=True)
  tmp = path + f".{os.getpid()}.tmp.npz"
  np.savez(tmp, documents=documents, pairs=es.pairs, **arrays)
  os.replace(tmp, path)
  log(f"evaluation set: {es.pairs} pairs, {es.masked_tokens} masked tokens from the validation split "
      f"({documents} documents), built in {time.time() - t0:.1f}s and cached at {path}")
  return es


def _scores(model, es: EvalSet, teacher_top1: np.ndarray | None, what: str, want_top1: bool = False):
  """Per-sequence counts: dict of [N] arrays (and, with want_top1, the model's top-1 [N, P])."""
  graphdef, state = nnx.split(model)
  has_nsp = getattr(model.cfg, "has_nsp_head", True)

  @jax.jit
  def step(state, b):
    m = nnx.merge(graphdef, state)
    out = m.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    logits = m.mlm_logits(losses.gather_positions(out["sequence_output"], b["masked_positions"]))  # [B, P, V] f32
    w = b["masked_weights"]
    # A prediction is right when the label's logit is the row's maximum: one max-reduction shared
    # with the log-sum-exp instead of an argmax (a variadic reduction, about a fifth of the whole
    # evaluation's time on XLA:CPU). Only an exact tie of f32 logits would score differently.
    row_max = logits.max(-1)  # [B, P]
    logit_of = lambda ids: jnp.take_along_axis(logits, ids[..., None], -1)[..., 0]
    label_logit = logit_of(b["masked_ids"])
    ce = row_max + jnp.log(jnp.exp(logits - row_max[..., None]).sum(-1)) - label_logit  # [B, P]
    r = dict(correct=((label_logit >= row_max) * w).sum(1), ce=(ce * w).sum(1),
             finite=jnp.all(jnp.isfinite(row_max)) & jnp.all(jnp.isfinite(ce)))
    if want_top1:
      r["top1"] = jnp.argmax(logits, -1)  # [B, P]
    if "teacher_top1" in b:
      r["agree"] = ((logit_of(b["teacher_top1"]) >= row_max) * w).sum(1)
    if has_nsp:
      r["nsp_correct"] = (jnp.argmax(m.nsp_logits(out["pooled"]), -1) == b["nsp_label"]).astype(jnp.float32)
    return r

  extra = None if teacher_top1 is None else dict(teacher_top1=teacher_top1)
  # Every batch is dispatched before any result is read, so the host prepares the next batch while
  # the last one computes.
  pending = []
  for b in es.batches(extra):
    valid = b.pop("valid") > 0
    pending.append((valid, step(state, b)))
  parts: dict[str, list] = {}
  for valid, r in pending:
    r = jax.device_get(r)
    if not bool(r.pop("finite")):
      raise NonFiniteEvaluationError(f"{what}: non-finite MLM logits on the evaluation set; the parameters are "
                                     "damaged (a corrupt checkpoint?) or training diverged")
    for k, v in r.items():
      parts.setdefault(k, []).append(np.asarray(v)[valid])
  return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate(model, es: EvalSet, teacher_top1: np.ndarray | None = None, what: str = "model") -> dict:
  """Scores `model` (student or teacher) on `es`; see the module docstring for the fields."""
  t0 = time.time()
  out = summarize(_scores(model, es, teacher_top1, what), es)
  out.update(eval_s=time.time() - t0, eval_dtype=str(model.cfg.compute_dtype))
  return out


def summarize(s: dict, es: EvalSet) -> dict:
  """Per-sequence counts (from `_scores`) -> the scores with their standard errors."""
  n = es.masked_per_sequence
  out = dict(
      eval_set=es.key, sequences=es.pairs, masked_tokens=es.masked_tokens,
      mlm_accuracy=stats.ratio(s["correct"], n), mlm_accuracy_se=stats.ratio_se(s["correct"], n),
      mlm_accuracy_binomial_se=stats.binomial_se(stats.ratio(s["correct"], n), es.masked_tokens),
      mlm_cross_entropy=stats.ratio(s["ce"], n), mlm_cross_entropy_se=stats.ratio_se(s["ce"], n),
      # Per-sequence counts, so two scores on this set can be compared pairwise (ad/stats.py).
      per_sequence=dict(masked=n.astype(int).tolist(), mlm_correct=s["correct"].astype(int).tolist(),
                        mlm_ce=np.round(s["ce"], 4).tolist()),
  )
  if "agree" in s:
    out.update(teacher_agreement=stats.ratio(s["agree"], n), teacher_agreement_se=stats.ratio_se(s["agree"], n))
    out["per_sequence"]["teacher_agree"] = s["agree"].astype(int).tolist()
  if "nsp_correct" in s:
    ones = np.ones_like(s["nsp_correct"])
    out.update(nsp_accuracy=stats.ratio(s["nsp_correct"], ones), nsp_accuracy_se=stats.ratio_se(s["nsp_correct"], ones))
  return out


def teacher_reference(teacher_dir: str, teacher, es: EvalSet, log=print) -> tuple[np.ndarray, dict]:
  """(top-1 [N, P], the teacher's own scores) on `es` in the teacher's compute dtype, cached inside
  the prepared teacher directory."""
  path = os.path.join(teacher_dir, f"eval_{es.key}_{jnp.dtype(teacher.cfg.compute_dtype).name}.npz")
  if os.path.isfile(path):
    with np.load(path) as z:
      return z["top1"], files.read_json(path[:-4] + ".json", "teacher evaluation")
  t0 = time.time()
  s = _scores(teacher, es, None, f"teacher {teacher_dir}", want_top1=True)
  top1 = s.pop("top1")
  scores = summarize(s, es)
  scores.pop("per_sequence")
  scores.update(eval_s=time.time() - t0, eval_dtype=str(teacher.cfg.compute_dtype))
  files.write_json(path[:-4] + ".json", scores)
  tmp = path + f".{os.getpid()}.tmp.npz"
  np.savez(tmp, top1=top1)
  os.replace(tmp, path)
  log(f"teacher: held-out MLM accuracy {scores['mlm_accuracy']:.4f} +- {scores['mlm_accuracy_se']:.4f} "
      f"over {scores['masked_tokens']} masked tokens")
  return top1, scores
