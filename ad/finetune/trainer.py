"""`ad finetune`: a student, a teacher or a baseline checkpoint fine-tuned on a task, in JAX with
the project's own models (003 Tables 3-4).

Model: the checkpoint's encoder and a new linear head: for classification (and regression) on
its pooled output (MobileBERT's / BERT's pooler where the checkpoint has one, else the first
token) after dropout; for SQuAD (span tasks) on every token's final hidden state after
dropout, two outputs (answer start, answer end). Training: AdamW (decoupled weight decay on
matrices only), linear warm-up over `warmup_fraction` of the steps then linear decay, `epochs` passes in an order drawn
from the seed; the validation split is scored `evals_per_epoch` times per epoch, the best
parameters are kept, and training stops after `patience` scorings without improvement. The
test split is scored once, with the best parameters: the task's metric with a bootstrap
standard error and 95% interval over examples. A run writes `result.json` and TensorBoard
scalars (`tb/`) in its workdir; it is minutes long and restarts from the beginning (no resume).

What can be fine-tuned (`load_backbone`): a distillation workdir (`student.json` + `student/`,
e.g. a search's `final/<arch>`), a prepared teacher (`teacher.json`; its `hf/`), or a Hugging
Face BERT or MobileBERT-family directory with `vocab.txt` (an export, or a downloaded
checkpoint). A search run directory stands for its finished finals (`checkpoints_of`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from ad import export, files, interrupt, rundir, stats
from ad.data import vocab as vocab_lib
from ad.finetune import squad, tasks as tasks_lib
from ad.finetune.settings import FinetuneConfig
from ad.distill import teacher_head
from ad.train import optim
from ad.train.params import Rebuild, nonfinite, without
from ad.train.steps import MetricsWriter, NonFiniteLossError
from ad.models import hf

RESULT_FILE = "result.json"
SOURCE_FILE = "checkpoint.json"  # which checkpoint a result directory belongs to
LOG_EVERY = 5  # steps between logged training losses


# ---------------------------------------------------------------------------------------------
# What is fine-tuned.

@dataclasses.dataclass
class Backbone:
  model: Any  # ad.models.student.Student or ad.models.teacher.Bert
  vocab_file: str
  lower_case: bool
  kind: str  # student | teacher | hf
  source: str
  name: str


def load_backbone(path: str) -> Backbone:
  """The model and tokenizer of a checkpoint (module docstring); a clear error for anything else."""
  path = os.path.abspath(path)
  name = os.path.basename(os.path.normpath(path))
  if os.path.isfile(os.path.join(path, export.STUDENT_INFO)):
    model, info, _ = export.load_student(path)
    return Backbone(model, os.path.join(path, info["vocab_file"]), info["lower_case"], "student", path, name)
  if os.path.isfile(os.path.join(path, teacher_head.META_FILE)):
    hf_dir = os.path.join(path, teacher_head.HF_DIR)
    model = hf.load_teacher(hf_dir)
    return Backbone(model, os.path.join(hf_dir, "vocab.txt"), hf.read_lower_case(hf_dir), "teacher", path, name)
  if os.path.isfile(os.path.join(path, hf.CONFIG_FILE)):
    vocab = os.path.join(path, "vocab.txt")
    if not os.path.isfile(vocab):
      raise FileNotFoundError(f"{path}: a Hugging Face checkpoint without vocab.txt; fine-tuning needs its tokenizer")
    return Backbone(hf.load_teacher(path), vocab, hf.read_lower_case(path), "hf", path, name)
  raise FileNotFoundError(
      f"{path}: not a student or teacher checkpoint; expected a distillation workdir ({export.STUDENT_INFO} and "
      f"student/), a search run directory (final/<arch>), a prepared teacher ({teacher_head.META_FILE}) or a "
      "Hugging Face BERT/MobileBERT directory (config.json, model.safetensors, vocab.txt)")


def result_dir(root: str, checkpoint: str, task: str) -> str:
  """ROOT/<checkpoint folder name>-<hash of its full path>_<task>: two checkpoints with the same
  folder name (the same arch in two searches, any two `.../hf` exports) get two directories."""
  name = os.path.basename(os.path.normpath(checkpoint))
  return os.path.join(root, f"{name}-{files.fingerprint(os.path.realpath(checkpoint), 6)}_{task}")


def claim_result_dir(workdir: str, checkpoint: str, task: str, write: bool = True) -> None:
  """Makes `workdir` the fine-tuning of (checkpoint, task), or refuses one that holds another's or a
  finished result; a run that stopped before its result (interrupted, failed) is started afresh,
  its TensorBoard events removed so that two runs never mix. write=False: only the checks."""
  import shutil
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise FileExistsError(f"--workdir {workdir}: a file is in the way; give a directory path")
  source = os.path.join(workdir, SOURCE_FILE)
  mine = dict(checkpoint=os.path.realpath(checkpoint), task=task)
  if os.path.isfile(source):
    theirs = files.read_json(source, "fine-tuning source record")
    if theirs != mine:
      raise FileExistsError(f"{workdir} holds the fine-tuning of {theirs.get('checkpoint')} on {theirs.get('task')}, "
                            f"not of {mine['checkpoint']} on {task}; choose another --workdir")
    if os.path.isfile(os.path.join(workdir, RESULT_FILE)):
      raise FileExistsError(f"{workdir} already holds a finished result of {checkpoint} on {task} ({RESULT_FILE}); "
                            "delete the directory to fine-tune again, or choose another --workdir")
  elif os.path.isdir(workdir) and os.listdir(workdir):
    raise FileExistsError(f"{workdir} is not empty and holds no fine-tuning of this tool ({SOURCE_FILE}); choose "
                          "another --workdir")
  if not write:
    parent = _existing_parent(workdir)
    if not os.access(parent, os.W_OK):
      raise FileExistsError(f"--workdir {workdir}: {parent} is not writable; choose a writable place")
    return
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise FileExistsError(f"--workdir {workdir}: cannot create it ({e.strerror}); choose a writable place") from None
  shutil.rmtree(os.path.join(workdir, "tb"), ignore_errors=True)
  files.write_json(source, mine)


def _existing_parent(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def checkpoints_of(path: str) -> list[str]:
  """A search run directory -> its finished finals' workdirs; anything else -> [path]."""
  finals = rundir.finals_dir(path)
  if rundir.is_search_run(path):
    done = [os.path.join(finals, a) for a in sorted(os.listdir(finals))
            if os.path.isdir(os.path.join(finals, a, export.STUDENT_DIR))]
    if not done:
      raise FileNotFoundError(f"{finals}: no finished final student to fine-tune")
    return done
  return [path]


def pooled_size(model) -> int:
  c = model.cfg
  return c.arch.hidden if hasattr(c, "arch") else c.hidden_size


# ---------------------------------------------------------------------------------------------
# Task kinds: what the head reads, its loss, what is kept of its outputs and how that is scored.

INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def _dropout(x, key, rate: float):
  if key is None or rate <= 0:
    return x
  return jnp.where(jax.random.bernoulli(key, 1 - rate, x.shape), x / (1 - rate), 0.0)


class Classification:
  """Sentence(-pair) classification or regression on the pooled output."""

  def __init__(self, spec, vocab, fcfg: FinetuneConfig):
    self.spec = spec
    task = tasks_lib.make_task(spec, vocab, fcfg.seq_len, fcfg.tfds_data_dir or None)
    self.data = {s: tasks_lib.examples(task, s) for s in tasks_lib.SPLITS}
    for split, cap in (("train", fcfg.max_train_examples), ("validation", fcfg.max_eval_examples),
                       ("test", fcfg.max_eval_examples)):
      if cap:
        self.data[split] = {k: v[:cap] for k, v in self.data[split].items()}
    self.examples = {s: int(len(d["label"])) for s, d in self.data.items()}
    self.outputs = spec.num_labels

  def head_outputs(self, encoded, head, dropout_key, rate: float):
    pooled = _dropout(encoded["pooled"].astype(jnp.float32), dropout_key, rate)
    return pooled @ head["kernel"] + head["bias"]

  def loss(self, logits, b):
    if self.spec.regression:
      return jnp.mean(jnp.square(logits[:, 0] - b["label"]))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, b["label"]))

  def kept(self, logits):  # what a prediction keeps (on device): a class or a score per example
    return logits[:, 0] if self.spec.regression else jnp.argmax(logits, -1)

  def score(self, split: str, predictions: np.ndarray) -> float:
    return stats.task_metric(self.spec.metric, self.data[split]["label"], predictions)

  def score_with_noise(self, split: str, predictions: np.ndarray, seed: int) -> dict:
    return dict(test=stats.task_metric_with_noise(self.spec.metric, self.data[split]["label"], predictions, seed=seed))


class Span:
  """Extractive QA (SQuAD): start and end logits per token; scored per question (squad.py)."""

  def __init__(self, spec, vocab, fcfg: FinetuneConfig):
    self.spec, self.squad = spec, squad
    task = tasks_lib.make_span_task(spec, fcfg.tfds_data_dir or None, fcfg.squad_dir or None)
    caps = dict(train=fcfg.max_train_examples, validation=fcfg.max_eval_examples, test=fcfg.max_eval_examples)
    self.features = {s: squad.featurize(tasks_lib.questions(task, s, caps[s]), vocab, fcfg.seq_len)
                     for s in tasks_lib.SPLITS}
    self.data = {s: f.arrays for s, f in self.features.items()}
    self.examples = {s: len(f.questions) for s, f in self.features.items()}
    self.outputs = 2

  def head_outputs(self, encoded, head, dropout_key, rate: float):
    h = _dropout(encoded["sequence_output"].astype(jnp.float32), dropout_key, rate)
    return h @ head["kernel"] + head["bias"]  # [B, T, 2]

  def loss(self, logits, b):
    ce = lambda lg, y: optax.softmax_cross_entropy_with_integer_labels(lg, y)
    return jnp.mean(ce(logits[..., 0], b["start"]) + ce(logits[..., 1], b["end"])) / 2

  def kept(self, logits):
    return logits

  def _per_question(self, split: str, logits: np.ndarray):
    f = self.features[split]
    answers = self.squad.predict_answers(f, logits[..., 0], logits[..., 1])
    return self.squad.scores(f.questions, answers)

  def score(self, split: str, logits: np.ndarray) -> float:
    return float(np.mean(self._per_question(split, logits)[1]))

  def score_with_noise(self, split: str, logits: np.ndarray, seed: int) -> dict:
    em, f1 = self._per_question(split, logits)
    return dict(test=stats.mean_with_noise("squad_f1", f1, seed=seed),
                test_exact_match=stats.mean_with_noise("exact_match", em, seed=seed))


TASK_KINDS = dict(classify=Classification, span=Span)


# ---------------------------------------------------------------------------------------------
# Fine-tuning.

def finetune(checkpoint: str, task_name: str, fcfg: FinetuneConfig, workdir: str, log: Callable = print,
             progress: bool = True) -> dict:
  """Fine-tunes `checkpoint` on `task_name`; returns (and writes to workdir/result.json) the result."""

  t_start = time.time()
  claim_result_dir(workdir, checkpoint, task_name, write=False)  # refuse a wrong --workdir before any work
  spec = tasks_lib.get(task_name)
  tasks_lib.check_data(spec, fcfg.tfds_data_dir or None, fcfg.squad_dir or None)
  bb = load_backbone(checkpoint)
  max_positions = bb.model.cfg.max_positions
  if fcfg.seq_len > max_positions:
    raise ValueError(f"finetune.seq_len={fcfg.seq_len} exceeds {checkpoint}'s {max_positions} positions")
  vocab = vocab_lib.WordPieceVocabulary(bb.vocab_file, lower_case=bb.lower_case)
  if vocab.vocab_size != bb.model.cfg.vocab_size:
    raise ValueError(f"{bb.vocab_file} has {vocab.vocab_size} tokens but {checkpoint}'s embedding has "
                     f"{bb.model.cfg.vocab_size} rows")
  kind = TASK_KINDS[spec.kind](spec, vocab, fcfg)
  data = kind.data
  n_train = len(data["train"]["input_ids"])  # sequences: sentences, or SQuAD's question windows
  if n_train < fcfg.batch_size:
    raise ValueError(f"task {spec.name}: {n_train} training sequences, fewer than finetune.batch_size="
                     f"{fcfg.batch_size}")
  steps_per_epoch = n_train // fcfg.batch_size
  total_steps = steps_per_epoch * fcfg.epochs
  eval_every = max(1, steps_per_epoch // fcfg.evals_per_epoch)

  backbone = teacher_head.with_compute_dtype(bb.model, fcfg.dtype)
  rebuild = Rebuild(backbone)
  H, C = pooled_size(backbone), kind.outputs
  key = jax.random.key(fcfg.seed)
  head = dict(kernel=0.02 * jax.random.normal(jax.random.fold_in(key, 0), (H, C), jnp.float32),
              bias=jnp.zeros((C,), jnp.float32))
  params = dict(backbone=rebuild.params, head=head)
  stacked = without(optim.stacked_leaves(backbone), rebuild.empty)  # zero-size parameters are not trained
  decay = dict(backbone=optim.decay_mask_for(stacked)(rebuild.params),
               head=dict(kernel=True, bias=False))
  schedule = optim.warmup_linear_decay(fcfg.lr, int(fcfg.warmup_fraction * total_steps), total_steps)
  tx = optax.adamw(schedule, weight_decay=fcfg.weight_decay, mask=decay)

  def logits_fn(p, b, dropout_key):
    encoded = rebuild(p["backbone"]).encode(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    return kind.head_outputs(encoded, p["head"], dropout_key, fcfg.dropout)

  def loss_fn(p, b, dropout_key):
    return kind.loss(logits_fn(p, b, dropout_key), b)

  @jax.jit
  def train_step(p, opt_state, b, step):
    loss, g = jax.value_and_grad(loss_fn)(p, b, jax.random.fold_in(jax.random.fold_in(key, 1), step))
    updates, opt_state = tx.update(g, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  @jax.jit
  def predict_step(p, b):
    return kind.kept(logits_fn(p, b, None))

  eval_batch = 2 * fcfg.batch_size

  def predict(p, split: str) -> np.ndarray:
    d = data[split]
    n = len(d["input_ids"])
    out = []
    for i in range(0, n, eval_batch):  # the last batch padded to the same shape: one compiled program
      b = {k: d[k][i:i + eval_batch] for k in INPUTS}
      pad = eval_batch - len(b["input_ids"])
      b = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in b.items()}
      out.append(np.asarray(predict_step(p, b))[:eval_batch - pad])
    return np.concatenate(out)

  def score(p, split: str) -> float:
    return kind.score(split, predict(p, split))

  claim_result_dir(workdir, checkpoint, task_name)
  writer = MetricsWriter(os.path.join(workdir, "tb"))
  opt_state = tx.init(params)
  best = dict(value=-math.inf, step=0, params=jax.device_get(params))
  history, train_losses, stale, step, stopped_early = [], [], 0, 0, False
  ex = kind.examples
  log(f"finetune: {bb.name} ({bb.kind}) on {spec.name}: {ex['train']} train / {ex['validation']} validation / "
      f"{ex['test']} test examples ({n_train} training sequences), {total_steps} steps of batch {fcfg.batch_size}")
  bar = tqdm(total=total_steps, disable=not progress, dynamic_ncols=True, desc=f"{bb.name} {spec.name}")
  t_train = time.time()
  try:
    for epoch in range(fcfg.epochs):
      for b in tasks_lib.epoch_batches(data["train"], fcfg.batch_size, fcfg.seed, epoch):
        params, opt_state, loss = train_step(params, opt_state, b, np.int32(step))
        step += 1
        bar.update(1)
        # Ctrl-C / SIGTERM: stop here (a fine-tuning keeps no checkpoint: running it again starts afresh)
        interrupt.check(f"step {step} of fine-tuning {bb.name} on {spec.name}")
        if step % LOG_EVERY == 0 or step == 1:
          loss_v = float(loss)
          if not math.isfinite(loss_v):
            raise NonFiniteLossError(f"finetune: non-finite loss {loss_v} at step {step} on {spec.name}; lower "
                                     "finetune.lr")
          bar.set_postfix(loss=f"{loss_v:.4f}")
          train_losses.append(dict(step=step, loss=loss_v))
          writer.scalars(step, {"train/loss": loss_v, "train/lr": float(schedule(step))})
        if step % eval_every == 0 or step == total_steps:
          value = score(params, "validation")
          history.append(dict(step=step, epoch=epoch, validation=value))
          writer.scalars(step, {f"validation/{spec.metric}": value})
          if value > best["value"]:
            best, stale = dict(value=value, step=step, params=jax.device_get(params)), 0
          else:
            stale += 1
          if stale >= fcfg.patience:
            stopped_early = True
            break
      if stopped_early:
        break
  finally:
    bar.close()
  train_s = time.time() - t_train
  bad = nonfinite(best["params"])
  if bad:
    raise FloatingPointError(f"finetune: non-finite parameters {bad[:3]} after training on {spec.name}")
  scored = kind.score_with_noise("test", predict(best["params"], "test"), fcfg.seed)
  test = scored["test"]
  writer.scalars(step, {f"test/{r['metric']}": r["value"] for r in scored.values()})
  writer.flush()
  n_params = int(sum(np.size(x) for x in jax.tree.leaves(rebuild.params)))
  result = dict(
      task=spec.name, metric=spec.metric, checkpoint=bb.source, name=bb.name, kind=bb.kind,
      arch=getattr(getattr(backbone.cfg, "arch", None), "name", None), encoder_params=n_params,
      **scored, validation_best=best["value"], best_step=best["step"], steps=step, total_steps=total_steps,
      stopped_early=stopped_early, history=history, train_losses=train_losses, examples=dict(kind.examples),
      train_sequences=n_train,
      config=dataclasses.asdict(fcfg), train_s=train_s, wall_s=time.time() - t_start,
      backend=jax.default_backend())
  files.write_json(os.path.join(workdir, RESULT_FILE), result)
  em = scored.get("test_exact_match")
  log(f"finetune: {bb.name} on {spec.name}: test {spec.metric} {test['value']:.4f} +- {test['se']:.4f} "
      f"(95% [{test['ci95'][0]:.4f}, {test['ci95'][1]:.4f}], {test['examples']} examples)"
      + (f", exact match {em['value']:.4f} +- {em['se']:.4f}" if em else "") + f" in {result['wall_s']:.0f}s")
  return result
