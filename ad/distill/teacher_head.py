"""Preparing the teacher: fit an MLM head on a frozen encoder when the checkpoint has none.

MiniLM-L6-H384 (the default teacher) ships without an MLM head, but pre-training
distillation (003 eq. 3) needs teacher MLM logits. The head is BERT's: a dense transform,
GELU, LayerNorm, and a decoder tied to the (frozen) word embeddings plus an output bias.
Only the transform, LayerNorm and bias train.

The encoder is frozen, so its outputs at the masked positions are computed once for a pool
of training examples and the head trains on those features; this costs one encoder forward
per example instead of one per step.

The prepared teacher is saved with orbax beside a `teacher.json` (config, source, vocab,
metrics), and later runs load it in seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from ad.distill import losses
from ad.models import hf, teacher as teacher_lib

META_FILE = "teacher.json"
PARAMS_DIR = "params"


def default_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
  return os.path.join(base, "autodistill-jax", "teachers")


def mlm_accuracy_counts(logits, labels, weights):
  """logits [..., V], labels [...], weights [...] -> (correct, total) as f32 scalars."""
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * weights
  return correct.sum(), weights.sum()


def evaluate(model, batches, max_batches: int | None = None) -> dict:
  """Held-out MLM (and NSP, if the model has the head) accuracy over `batches`."""
  graphdef, state = nnx.split(model)
  has_nsp = getattr(model.cfg, "has_nsp_head", True)

  @jax.jit
  def step(state, b):
    m = nnx.merge(graphdef, state)
    out = m.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    logits = m.mlm_logits(losses.gather_positions(out["sequence_output"], b["masked_positions"]))
    c, n = mlm_accuracy_counts(logits, b["masked_ids"], b["masked_weights"])
    if has_nsp:
      nsp_c = (jnp.argmax(m.nsp_logits(out["pooled"]), -1) == b["nsp_label"]).sum()
    else:
      nsp_c = jnp.zeros((), jnp.int32)
    return c, n, nsp_c, b["nsp_label"].shape[0]

  tot = np.zeros(4)
  for i, b in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    tot += np.array([float(v) for v in step(state, b)])
  if tot[1] == 0:
    raise ValueError("evaluation saw no masked tokens (empty validation split?)")
  out = dict(mlm_accuracy=tot[0] / tot[1], masked_tokens=int(tot[1]), examples=int(tot[3]))
  if has_nsp:
    out["nsp_accuracy"] = tot[2] / tot[3]
  return out


def fit_mlm_head(teacher: teacher_lib.Bert, train_batches, *, pool_batches: int, steps: int, positions_per_step: int,
                 lr: float = 2e-3, seed: int = 0, log=print) -> teacher_lib.Bert:
  """Returns a copy of `teacher` with a trained MLM head (encoder untouched)."""
  cfg = dataclasses.replace(teacher.cfg, has_mlm_head=True)
  with_head = teacher_lib.Bert(cfg, nnx.Rngs(seed))
  # Copy the encoder; the new head starts from BERT's initialization.
  enc_state = nnx.state(teacher, nnx.Param)
  nnx.update(with_head, enc_state)
  graphdef, params, rest = nnx.split(with_head, nnx.Param, ...)

  @jax.jit
  def features(params, b):
    m = nnx.merge(graphdef, params, rest)
    h = m.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"])["sequence_output"]
    return losses.gather_positions(h, b["masked_positions"]), b["masked_ids"], b["masked_weights"]

  t0 = time.time()
  feats, labels = [], []
  for i, b in enumerate(train_batches):
    if i >= pool_batches:
      break
    f, l, w = features(params, b)
    keep = np.asarray(w) > 0
    feats.append(np.asarray(f)[keep])
    labels.append(np.asarray(l)[keep])
  feats, labels = np.concatenate(feats), np.concatenate(labels)
  log(f"teacher head: encoded {len(labels)} masked tokens from {pool_batches} batches in {time.time() - t0:.1f}s")

  # The output bias starts at the log unigram prior of the masked tokens: with a 30k-way softmax
  # and a few 10k training tokens, the prior is most of what a bias can learn, and learning it
  # from zero costs most of the step budget.
  counts = np.bincount(labels, minlength=cfg.vocab_size).astype(np.float64)
  with_head.mlm_bias[...] = jnp.asarray(np.log((counts + 0.1) / (counts.sum() + 0.1 * cfg.vocab_size)), jnp.float32)
  head_keys = ("mlm_transform", "mlm_norm", "mlm_bias")
  is_head = lambda path, _: path[0] in head_keys
  head, frozen = nnx.state(with_head, nnx.Param).split(is_head, ...)
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps), weight_decay=0.01)
  opt_state = tx.init(head)

  @jax.jit
  def train_step(head, frozen, opt_state, x, y):
    def loss_fn(head):
      m = nnx.merge(graphdef, nnx.merge_state(head, frozen), rest)
      logits = m.mlm_logits(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (jnp.argmax(logits, -1) == y).mean()
    (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(head)
    updates, opt_state = tx.update(g, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss, acc

  rng = np.random.default_rng(seed)
  t0 = time.time()
  for s in range(steps):
    idx = rng.integers(0, len(labels), positions_per_step)
    head, opt_state, loss, acc = train_step(head, frozen, opt_state, jnp.asarray(feats[idx]), jnp.asarray(labels[idx]))
    if s % max(1, steps // 10) == 0 or s == steps - 1:
      log(f"teacher head: step {s + 1}/{steps} loss {float(loss):.3f} acc {float(acc):.3f} ({time.time() - t0:.0f}s)")
  nnx.update(with_head, head)
  return with_head


def save(model: teacher_lib.Bert, out_dir: str, meta: dict) -> dict:
  """Writes params (orbax) then teacher.json, atomically: a crash leaves no half-prepared teacher."""
  tmp = out_dir.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(os.path.abspath(tmp), PARAMS_DIR), nnx.state(model, nnx.Param))
  meta = dict(meta, config=dataclasses.asdict(model.cfg))
  with open(os.path.join(tmp, META_FILE), "w") as f:
    json.dump(meta, f, indent=2)
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(tmp, out_dir)
  return meta


def load(prepared_dir: str) -> tuple[teacher_lib.Bert, dict]:
  meta_path = os.path.join(prepared_dir, META_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{meta_path}: not a prepared teacher (run `ad teacher prepare --out {prepared_dir}`)")
  with open(meta_path) as f:
    meta = json.load(f)
  cfg = teacher_lib.BertConfig(**meta["config"])
  abstract = nnx.eval_shape(lambda: teacher_lib.Bert(cfg, nnx.Rngs(0)))
  # Restore onto this process's first device: the checkpoint's own device ids need not exist
  # here (another host, or another device count); callers reshard onto their mesh.
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local),
                        nnx.state(abstract, nnx.Param))
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(os.path.abspath(prepared_dir), PARAMS_DIR), target)
  nnx.update(abstract, params)
  return abstract, meta


def prepare_from_config(teacher_cfg, data_cfg, *, source: str | None = None, out_dir: str | None = None,
                        force: bool = False, log=print) -> tuple[str, dict]:
  """`prepare` with the settings of a config's `teacher` section (CLI flags may override the dirs)."""
  t = teacher_cfg
  return prepare(source or t.source or None, out_dir or t.prepared_dir or None, data_cfg,
                 pool_batches=t.head_pool_batches, steps=t.head_steps, positions_per_step=t.head_positions_per_step,
                 lr=t.head_lr, batch_size=t.batch_size, eval_batches=t.eval_batches, force=force, log=log)


def cache_key(source_dir: str, data_cfg, settings: dict) -> str:
  st = os.stat(os.path.join(source_dir, hf.WEIGHTS_FILE))
  blob = json.dumps(dict(source=os.path.abspath(source_dir), size=st.st_size, data=repr(data_cfg), **settings),
                    sort_keys=True)
  return hashlib.sha1(blob.encode()).hexdigest()[:12]


def prepare(source_dir: str | None, out_dir: str | None, data_cfg, *, pool_batches: int, steps: int,
            positions_per_step: int, lr: float, batch_size: int, eval_batches: int, force: bool = False,
            log=print) -> tuple[str, dict]:
  """Loads the HF teacher, fits an MLM head if it has none, evaluates, saves; returns (dir, meta).

  A prepared teacher with the same cache key is reused unless `force`.
  """
  from ad.data import pretrain
  source_dir = source_dir or hf.minilm_dir()
  settings = dict(pool_batches=pool_batches, steps=steps, positions_per_step=positions_per_step, lr=lr,
                  batch_size=batch_size)
  out_dir = out_dir or os.path.join(default_cache_dir(), f"{os.path.basename(os.path.normpath(source_dir))}-"
                                    f"{cache_key(source_dir, data_cfg, settings)}")
  if not force and os.path.isfile(os.path.join(out_dir, META_FILE)):
    with open(os.path.join(out_dir, META_FILE)) as f:
      log(f"teacher: using prepared {out_dir}")
      return out_dir, json.load(f)
  teacher = hf.load_teacher(source_dir)
  if not isinstance(teacher, teacher_lib.Bert):
    raise ValueError(f"{source_dir}: `ad teacher prepare` fits heads for BERT teachers; MobileBERT checkpoints "
                     "carry their own MLM/NSP heads and load directly")
  vocab = pretrain.load_vocab(data_cfg, source_dir)
  task = pretrain.make_task(data_cfg, vocab, teacher.cfg.max_positions, teacher.cfg.vocab_size)
  t0 = time.time()
  if teacher.cfg.has_mlm_head:
    log("teacher: checkpoint has an MLM head; no fitting")
    fitted = False
  else:
    teacher = fit_mlm_head(teacher, pretrain.batches(task, data_cfg, "train", batch_size), pool_batches=pool_batches,
                           steps=steps, positions_per_step=positions_per_step, lr=lr, log=log)
    fitted = True
  metrics = evaluate(teacher, pretrain.batches(task, data_cfg, "validation", batch_size), eval_batches)
  meta = dict(source_dir=os.path.abspath(source_dir), vocab_file=vocab.vocab_file, head_fitted=fitted,
              settings=settings, data=repr(data_cfg), validation=metrics, prepare_s=time.time() - t0)
  meta = save(teacher, out_dir, meta)
  log(f"teacher: saved to {out_dir}; held-out MLM accuracy {metrics['mlm_accuracy']:.4f} "
      f"over {metrics['masked_tokens']} masked tokens")
  return out_dir, meta
