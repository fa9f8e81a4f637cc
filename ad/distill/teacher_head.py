"""Preparing the teacher: an MLM head, MLM adaptation of the whole encoder, evaluation, cache.

MiniLM-L6-H384 (the default teacher) is a sentence encoder without an MLM head; a head fitted
on its frozen features predicts 8-13% of masked tokens. Pre-training distillation (003 eq. 3)
needs a teacher that predicts masked tokens, so `ad teacher prepare` runs:

1. head fit (warm start): BERT's MLM head (dense, GELU, LayerNorm, decoder tied to the word
   embeddings, output bias) trained on frozen encoder features at the masked positions of a
   pool of training batches (one encoder forward per example, not per step);
2. adaptation: continued MLM training of the whole model (encoder, embeddings, head) on the
   corpus's train split, masked-position logits only, AdamW with warm-up and linear decay,
   separate learning rates for the encoder and the head, in `adapt_dtype` (bf16 matmuls with
   f32 accumulation, ad/models/layers.py); orbax checkpoints every `adapt_checkpoint_every`
   steps, so a killed run resumes where it stopped;
3. evaluation on the data config's held-out evaluation set (ad/distill/evaluation.py);
4. save: orbax parameters + teacher.json + `hf/`, a Hugging Face BertForMaskedLM directory with
   the tokenizer (`transformers.pipeline("fill-mask", model=DIR/hf)` works on it).

A checkpoint that already has an MLM head skips 1 and, unless `adapt_headed`, 2. MobileBERT and
IB-BERT checkpoints (HF model_type "mobilebert", e.g. the paper's IB-BERT teacher or MobileBERT
itself) carry their own MLM and NSP heads: they are evaluated and saved as they are (adaptation
is implemented for BERT teachers), and the trainer distils from them through the same
interface (ad/distill/losses.py teacher_layers/teacher_dims).

Cache: the result is keyed by a content hash of the source checkpoint (weights and config),
the settings, the data config and the vocabulary; the key and its parts are stored in
teacher.json, and a prepared directory whose key differs is an error that says what differs.
Work happens in a sibling `<out>.partial/` under a lock and is renamed into place at the end,
so a crash leaves either no teacher or a whole one, and `--out` never deletes a user's files.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm import tqdm

from ad import files, interrupt
from ad.data import pretrain
from ad.distill import evaluation, losses
from ad.distill.settings import teacher_settings
from ad.train import optim, sharding
from ad.train.params import Rebuild, nonfinite
from ad.train.steps import NonFiniteLossError
from ad.models import hf, student as student_lib, teacher as teacher_lib

Teacher = teacher_lib.Bert | student_lib.Student  # BERT, or MobileBERT/IB-BERT (a Student of the teacher's shape)

META_FILE = "teacher.json"
PARAMS_DIR = "params"
HF_DIR = "hf"

HEAD_RULES = [(r"(mlm_transform|mlm_norm|mlm_bias)(/.*)?", "head"), (r".*", "encoder")]


def default_cache_dir() -> str:
  return os.path.join(files.cache_root(), "teachers")


def fit_mlm_head(teacher: teacher_lib.Bert, train_batches, *, pool_batches: int, steps: int, positions_per_step: int,
                 lr: float = 2e-3, seed: int = 0, log=print) -> teacher_lib.Bert:
  """Returns a copy of `teacher` with a trained MLM head (encoder untouched)."""
  cfg = dataclasses.replace(teacher.cfg, has_mlm_head=True)
  with_head = teacher_lib.Bert(cfg, nnx.Rngs(seed))
  # Copy the encoder; the new head starts from BERT's initialization.
  nnx.update(with_head, nnx.state(teacher, nnx.Param))
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
    feats.append(np.asarray(f, np.float32)[keep])
    labels.append(np.asarray(l)[keep])
  feats, labels = np.concatenate(feats), np.concatenate(labels)
  log(f"teacher head: encoded {len(labels)} masked tokens from {pool_batches} batches in {time.time() - t0:.1f}s")

  # The output bias starts at the log unigram prior of the masked tokens: with a 30k-way softmax
  # and a few 10k training tokens, the prior is most of what a bias can learn, and learning it
  # from zero costs most of the step budget.
  counts = np.bincount(labels, minlength=cfg.vocab_size).astype(np.float64)
  with_head.mlm_bias[...] = jnp.asarray(np.log((counts + 0.1) / (counts.sum() + 0.1 * cfg.vocab_size)), jnp.float32)
  is_head = lambda path, _: path[0] in ("mlm_transform", "mlm_norm", "mlm_bias")
  head, frozen = nnx.state(with_head, nnx.Param).split(is_head, ...)
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps), weight_decay=0.01)
  opt_state = tx.init(head)

  @jax.jit
  def train_step(head, frozen, opt_state, x, y):
    def loss_fn(head):
      m = nnx.merge(graphdef, nnx.merge_state(head, frozen), rest)
      logits = m.mlm_logits(x.astype(m.cfg.compute_dtype))
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (jnp.argmax(logits, -1) == y).mean()
    (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(head)
    updates, opt_state = tx.update(g, opt_state, head)
    return optax.apply_updates(head, updates), opt_state, loss, acc

  rng = np.random.default_rng(seed)
  t0 = time.time()
  for s in range(steps):
    idx = rng.integers(0, len(labels), positions_per_step)
    head, opt_state, loss, acc = train_step(head, frozen, opt_state, jnp.asarray(feats[idx]), jnp.asarray(labels[idx]))
    if s % max(1, steps // 5) == 0 or s == steps - 1:
      log(f"teacher head: step {s + 1}/{steps} loss {float(loss):.3f} acc {float(acc):.3f} ({time.time() - t0:.0f}s)")
  nnx.update(with_head, head)
  return with_head


@dataclasses.dataclass
class AdaptPrograms:
  """The teacher adaptation's jitted programs on a mesh and the abstract arguments each compiles for."""
  model_of: Rebuild
  jitted: dict
  abstract_args: dict


def adapt_programs(model: teacher_lib.Bert, *, steps: int, lr: float, head_lr: float, warmup_steps: int, dtype: str,
                   mesh, batch_size: int = 1, seq_len: int = 128, max_predictions: int = 20,
                   unroll: bool = False) -> AdaptPrograms:
  """The adaptation step (masked-position MLM loss of `model` in compute dtype `dtype`, AdamW with
  warm-up and linear decay, the encoder and the head at their own rates) and its optimizer
  initialization, sharded over `mesh` by the declared parameter axes with the batch over 'data'.
  `model` may be abstract; batch_size, seq_len and max_predictions shape the abstract batch
  (`ad compile`); unroll: the layer loop unrolled, for XLA's cost analysis (ad/aot.py)."""
  work = with_compute_dtype(model, dtype)
  model_of = Rebuild(work)
  params = model_of.params
  groups = optim.labels(params, HEAD_RULES)
  adamw = lambda peak: optax.adamw(optim.warmup_linear_decay(peak, warmup_steps, steps), weight_decay=0.01,
                                   mask=optim.decay_mask_for(optim.stacked_leaves(work)))
  tx = optax.multi_transform({"encoder": adamw(lr), "head": adamw(head_lr)}, groups)
  param_sh = sharding.param_shardings(work, mesh)
  opt_sh = sharding.opt_shardings(tx, params, param_sh, mesh)

  def step(params, opt_state, b):
    def loss_fn(p):
      m = model_of(p)
      h = m.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"], unroll=unroll)["sequence_output"]
      logits = m.mlm_logits(losses.gather_positions(h, b["masked_positions"]))  # [B, P, V] f32
      w = b["masked_weights"]
      acc = ((jnp.argmax(logits, -1) == b["masked_ids"]) * w).sum() / jnp.maximum(w.sum(), 1.0)
      return losses.mlm_loss(logits, b["masked_ids"], w), acc
    (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  abstract = lambda tree, sh: jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
  params_abs = abstract(params, param_sh)
  opt_abs = abstract(jax.eval_shape(tx.init, params_abs), opt_sh)
  batch_abs = sharding.abstract_batch(batch_size, seq_len, max_predictions, mesh)
  jitted = dict(step=jax.jit(step, in_shardings=(param_sh, opt_sh, sharding.batch_sharding(mesh)),
                             out_shardings=(param_sh, opt_sh, None, None)),
                opt_init=jax.jit(tx.init, out_shardings=opt_sh))
  return AdaptPrograms(model_of, jitted, dict(step=(params_abs, opt_abs, batch_abs), opt_init=(params_abs,)))


def adapt(model: teacher_lib.Bert, train_batches: Callable[[int], Iterator[dict]], *, steps: int, lr: float,
          head_lr: float, warmup_steps: int, dtype: str, ckpt_dir: str, checkpoint_every: int = 50, log=print,
          progress: bool = True) -> dict:
  """Continued MLM training of every parameter of `model` (in place); resumes from `ckpt_dir`.

  `train_batches(n)` gives the deterministic training stream from batch n on: a resumed run
  continues it without reading the batches already used. Returns dict(steps, resumed_from,
  train_s, last_loss).
  """
  progs = adapt_programs(model, steps=steps, lr=lr, head_lr=head_lr, warmup_steps=warmup_steps, dtype=dtype,
                         mesh=sharding.make_mesh(1, 1))
  model_of, params = progs.model_of, progs.model_of.params
  opt_state = progs.jitted["opt_init"](params)
  step = progs.jitted["step"]

  mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
  start = 0
  if mngr.latest_step() is not None:
    start = int(mngr.latest_step())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), dict(params=params, opt=opt_state))
    restored = mngr.restore(start, args=ocp.args.StandardRestore(abstract))
    params, opt_state = restored["params"], restored["opt"]
    _check_finite(params, f"{ckpt_dir} step {start}")
    log(f"teacher adaptation: resuming at step {start}/{steps} from {ckpt_dir}")
  it = iter(train_batches(start))
  bar = tqdm(total=steps, initial=start, desc="teacher MLM adaptation", disable=not progress, dynamic_ncols=True)
  t0, loss_v, acc_ema = time.time(), float("nan"), None
  try:
    for s in range(start, steps):
      params, opt_state, loss, acc = step(params, opt_state, next(it))
      loss_v = float(loss)
      if not math.isfinite(loss_v):
        raise NonFiniteLossError(f"teacher adaptation: non-finite loss {loss_v} at step {s}; lower teacher.adapt_lr")
      acc_ema = float(acc) if acc_ema is None else 0.9 * acc_ema + 0.1 * float(acc)
      bar.update(1)
      bar.set_postfix(loss=f"{loss_v:.3f}", acc=f"{acc_ema:.3f}")
      if (s + 1) % checkpoint_every == 0 or s + 1 == steps or interrupt.requested():
        mngr.save(s + 1, args=ocp.args.StandardSave(dict(params=params, opt=opt_state)), force=True)
        mngr.wait_until_finished()
      interrupt.check(f"teacher adaptation step {s + 1} (checkpoint saved; running the command again resumes)")
  finally:
    bar.close()
    mngr.close()
  nnx.update(model, nnx.state(model_of(params), nnx.Param))
  log(f"teacher adaptation: {steps - start} steps in {time.time() - t0:.0f}s, last loss {loss_v:.3f}")
  return dict(steps=steps, resumed_from=start, train_s=time.time() - t0, last_loss=loss_v)


def _check_finite(params, where: str) -> None:
  bad = nonfinite(params)
  if bad:
    raise ValueError(f"{where}: non-finite values in {bad[:5]}; the checkpoint is damaged")


def save_params(model, path: str) -> None:
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(path), nnx.state(model, nnx.Param))


def load(prepared_dir: str) -> tuple[Teacher, dict]:
  """A prepared teacher (orbax parameters + teacher.json); its parameters are checked finite."""
  meta_path = os.path.join(prepared_dir, META_FILE)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f"{meta_path}: not a prepared teacher; `ad teacher prepare` writes one (to the cache by "
                            "default, or to a new or empty --out directory)")
  meta = files.read_json(meta_path, "teacher.json")
  family = meta.get("family", "bert")
  try:
    if family == "mobilebert":
      cfg = hf.student_config_from_hf(meta["config"], f"{meta_path} 'config'")
      abstract = nnx.eval_shape(lambda: student_lib.Student(cfg, nnx.Rngs(0)))
    elif family == "bert":
      cfg = teacher_lib.BertConfig(**meta["config"])
      abstract = nnx.eval_shape(lambda: teacher_lib.Bert(cfg, nnx.Rngs(0)))
    else:
      raise files.BadFileError(f"{meta_path}: family={family!r}, expected 'bert' or 'mobilebert'")
  except (KeyError, TypeError) as e:
    raise files.BadFileError(f"{meta_path}: 'config' is missing or has unexpected fields ({e})") from None
  # Restore onto this process's first device: the checkpoint's own device ids need not exist
  # here (another host, or another device count); callers reshard onto their mesh.
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=local),
                        nnx.state(abstract, nnx.Param))
  params_dir = os.path.join(os.path.abspath(prepared_dir), PARAMS_DIR)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      params = ckptr.restore(params_dir, target)
  except Exception as e:  # orbax/tensorstore raise many types for a damaged or foreign checkpoint
    raise files.BadFileError(f"{params_dir}: cannot restore the teacher's parameters ({type(e).__name__}: "
                             f"{str(e)[:300]}); prepare the teacher again with --force") from None
  _check_finite(params, params_dir)
  nnx.update(abstract, params)
  return abstract, meta


def abstract_teacher(teacher_cfg, dtype: str) -> Teacher:
  """The teacher a config's `teacher` section names, as shapes only (nnx.eval_shape: nothing is read
  but config files and the weight file's header), computing in `dtype`: what `ad compile` compiles a
  distillation step with. A prepared teacher (teacher.prepared_dir) gives its own config; otherwise
  the source checkpoint's, with the MLM head that preparation fits (ad teacher prepare)."""
  typed = teacher_settings(teacher_cfg)
  prepared = os.path.join(typed.prepared_dir, META_FILE) if typed.prepared_dir else ""
  if prepared and os.path.isfile(prepared):
    meta = files.read_json(prepared, "teacher.json")
    if meta.get("family", "bert") == "mobilebert":
      cfg = dataclasses.replace(hf.student_config_from_hf(meta["config"], f"{prepared} 'config'"), dtype=dtype)
      return nnx.eval_shape(lambda: student_lib.Student(cfg, nnx.Rngs(0)))
    cfg = teacher_lib.BertConfig(**dict(meta["config"], dtype=dtype))
    return nnx.eval_shape(lambda: teacher_lib.Bert(cfg, nnx.Rngs(0)))
  source = typed.source or hf.minilm_dir()
  if hf.read_config(source).get("model_type", "bert") == "mobilebert":
    cfg = hf.student_config_from_hf(hf.read_config(source), os.path.join(source, hf.CONFIG_FILE), dtype=dtype)
    return nnx.eval_shape(lambda: student_lib.Student(cfg, nnx.Rngs(0)))
  cfg = dataclasses.replace(hf.bert_config(source, hf.tensor_names(source), dtype), has_mlm_head=True)
  return nnx.eval_shape(lambda: teacher_lib.Bert(cfg, nnx.Rngs(0)))


def load_for_training(prepared_dir: str, dtype: str) -> tuple[Teacher, dict]:
  """`load` in compute dtype `dtype` (a search loads it once, into its TeacherContext: ad/distill/context.py)."""
  model, meta = load(prepared_dir)
  return with_compute_dtype(model, dtype), meta


def prepare_from_config(teacher_cfg, data_cfg, *, source: str | None = None, out_dir: str | None = None,
                        force: bool = False, adapt_headed: bool | None = None, log=print,
                        progress: bool = True) -> tuple[str, dict]:
  """`prepare` with the settings of a config's `teacher` section (CLI flags may override)."""
  typed = teacher_settings(teacher_cfg)
  settings = typed.key_settings()
  if adapt_headed is not None:
    settings["adapt_headed"] = adapt_headed
  return prepare(source or typed.source or None, out_dir or typed.prepared_dir or None, data_cfg,
                 settings, force=force, log=log, progress=progress)


def _cache_key_parts(source_dir: str, data_cfg, settings: dict, vocab_file: str) -> dict:
  return dict(source=dict(weights_sha256=files.sha256_file(os.path.join(source_dir, hf.WEIGHTS_FILE)),
                          config_sha256=files.sha256_file(os.path.join(source_dir, hf.CONFIG_FILE))),
              settings=settings, data=repr(data_cfg), vocab_sha256=files.sha256_file(vocab_file), format=2)


def _same_place(a: str, b: str) -> bool:
  a, b = os.path.realpath(a), os.path.realpath(b)
  return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def _where_prepared(source_dir, out_dir, data_cfg, settings: dict, force: bool):
  """(source_dir, vocab, key parts, key, out_dir, teacher.json of a teacher already prepared there with
  this key or None) of a preparation, checked without writing anything: the source is an HF checkpoint,
  and out_dir holds this teacher, nothing, or (with force) a teacher to replace."""
  source_dir = source_dir or hf.minilm_dir()
  hf.read_config(source_dir)  # a clear error for a directory that is not an HF checkpoint
  vocab = pretrain.load_vocab(data_cfg, source_dir)
  parts = _cache_key_parts(source_dir, data_cfg, settings, vocab.vocab_file)
  key = files.fingerprint(parts)
  name = os.path.basename(os.path.normpath(source_dir))
  out_dir = os.path.abspath(out_dir or os.path.join(default_cache_dir(), f"{name}-{key}"))
  if _same_place(out_dir, source_dir):
    raise ValueError(f"--out {out_dir} is (or contains, or is inside) the source checkpoint {source_dir}; "
                     "choose another directory: preparing writes a new teacher there")
  meta_path = os.path.join(out_dir, META_FILE)
  if os.path.isfile(meta_path):
    meta = files.read_json(meta_path, "teacher.json")
    if meta.get("key") == key:
      return source_dir, vocab, parts, key, out_dir, meta
    if not force:
      old = meta.get("key_parts", {})
      differs = sorted(k for k in parts if old.get(k) != parts[k]) or ["(a teacher.json without a key)"]
      raise ValueError(f"{out_dir} holds a teacher prepared differently (it differs in {differs}); pass --force "
                       "to prepare it again there, or choose another --out (teacher.prepared_dir)")
  elif os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise FileExistsError(f"{out_dir}: a file is in the way of the prepared teacher; choose another --out")
  elif os.path.isdir(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir} is not empty and holds no prepared teacher ({META_FILE}); refusing to write "
                          "into it: choose a new or empty --out (teacher.prepared_dir)")
  return source_dir, vocab, parts, key, out_dir, None


def check_config(teacher_cfg, data_cfg) -> None:
  """The config's teacher section, checked as `prepare_from_config` would check it but writing
  nothing: its settings' ranges, the source checkpoint, and a given prepared_dir that holds another
  teacher. `ad search` calls it before it writes a run directory."""
  typed = teacher_settings(teacher_cfg)
  _where_prepared(typed.source or None, typed.prepared_dir or None, data_cfg, typed.key_settings(), force=False)


def prepare(source_dir: str | None, out_dir: str | None, data_cfg, settings: dict, *, force: bool = False,
            log=print, progress: bool = True) -> tuple[str, dict]:
  """Prepares the teacher (module docstring) into `out_dir`; returns (out_dir, teacher.json contents).

  A prepared teacher with the same key is reused unless `force`; one with another key is an error.
  """
  source_dir, vocab, parts, key, out_dir, meta = _where_prepared(source_dir, out_dir, data_cfg, settings, force)
  if meta is not None and not force:
    log(f"teacher: using prepared {out_dir}")
    return out_dir, meta
  meta_path = os.path.join(out_dir, META_FILE)

  partial = out_dir.rstrip("/") + ".partial"
  with files.DirectoryLock(partial, "teacher preparation", blocking=True):
    if os.path.isfile(meta_path) and not force:  # another process finished it while we waited
      return prepare(source_dir, out_dir, data_cfg, settings, log=log, progress=progress)
    marker = os.path.join(partial, "key.json")
    if os.path.isfile(marker) and files.read_json(marker).get("key") != key:
      for entry in os.listdir(partial):  # a stale partial preparation of other settings (ours: it has our marker)
        if entry != ".lock":
          p = os.path.join(partial, entry)
          shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
    files.write_json(marker, dict(key=key, key_parts=parts))
    meta = _prepare_into(partial, source_dir, data_cfg, settings, vocab, log=log, progress=progress)
    meta.update(key=key, key_parts=parts)
    files.write_json(os.path.join(partial, META_FILE), meta)
    os.unlink(marker)
    aside = None
    if os.path.exists(out_dir):  # --force over a prepared teacher: replace it only now, whole
      aside = f"{out_dir}.replaced-{os.getpid()}"
      os.replace(out_dir, aside)
    os.replace(partial, out_dir)
    os.unlink(os.path.join(out_dir, ".lock"))
    if aside:
      shutil.rmtree(aside)
  log(f"teacher: saved to {out_dir}; held-out MLM accuracy {meta['validation']['mlm_accuracy']:.4f} "
      f"+- {meta['validation']['mlm_accuracy_se']:.4f} over {meta['validation']['masked_tokens']} masked tokens")
  return out_dir, meta


def _prepare_into(work: str, source_dir: str, data_cfg, s: dict, vocab, *, log, progress: bool) -> dict:
  """Head fit, adaptation, evaluation and saving, all inside `work`; returns the metadata."""
  t0 = time.time()
  teacher = hf.load_teacher(source_dir, dtype=s["adapt_dtype"])  # head fit and adaptation in adapt_dtype
  if isinstance(teacher, student_lib.Student):
    return _prepare_mobilebert_into(work, source_dir, data_cfg, s, vocab, teacher, t0, log=log)
  task = pretrain.make_task(data_cfg, vocab, teacher.cfg.max_positions, teacher.cfg.vocab_size)
  train = lambda batch_size, start=0: pretrain.batches(task, data_cfg, "train", batch_size,
                                                       seed=data_cfg.seed + s["seed"], start_batch=start)
  had_head = teacher.cfg.has_mlm_head
  adapt_dir = os.path.join(work, "adapt")
  timings = {}
  if not had_head:
    cfg = dataclasses.replace(teacher.cfg, has_mlm_head=True)
    if os.path.isdir(adapt_dir):  # resuming: the adaptation checkpoint holds the fitted head already
      with_head = teacher_lib.Bert(cfg, nnx.Rngs(0))  # the head's values come from the checkpoint
      nnx.update(with_head, nnx.state(teacher, nnx.Param))
      teacher = with_head
    else:
      t = time.time()
      teacher = fit_mlm_head(teacher, train(s["batch_size"]), pool_batches=s["head_pool_batches"],
                             steps=s["head_steps"], positions_per_step=s["head_positions_per_step"], lr=s["head_lr"],
                             seed=s["seed"], log=log)
      timings["head_fit_s"] = time.time() - t
  adapted = None
  if s["adapt_steps"] > 0 and (not had_head or s["adapt_headed"]):
    adapted = adapt(teacher, lambda start: train(s["adapt_batch_size"], start), steps=s["adapt_steps"], lr=s["adapt_lr"],
                    head_lr=s["adapt_head_lr"], warmup_steps=s["adapt_warmup_steps"], dtype=s["adapt_dtype"],
                    ckpt_dir=adapt_dir, log=log, progress=progress)
    timings["adapt_s"] = adapted["train_s"]
  elif had_head:
    log("teacher: the checkpoint has an MLM head; no head fit, no adaptation (teacher.adapt_headed=False)")
  es = evaluation.build_eval_set(data_cfg, vocab, log=log)
  t = time.time()
  # Scored in the compute dtype the teacher was adapted in (and distils in on this machine's configs).
  _, scores = evaluation.teacher_reference(work, teacher, es, log=lambda *_: None)
  timings["eval_s"] = time.time() - t
  params_dir = os.path.join(work, PARAMS_DIR)
  if os.path.exists(params_dir):
    shutil.rmtree(params_dir)
  save_params(teacher, params_dir)
  hf_dir = os.path.join(work, HF_DIR)
  hf.export_bert_mlm(teacher, hf_dir)
  hf.write_tokenizer(hf_dir, vocab.vocab_file, vocab.lower_case, teacher.cfg.max_positions)
  shutil.rmtree(adapt_dir, ignore_errors=True)  # optimizer state: not needed once the teacher is whole
  cfg = dataclasses.replace(teacher.cfg, dtype="float32")  # parameters are f32; users pick the compute dtype
  return dict(source_dir=os.path.abspath(source_dir), vocab_file=vocab.vocab_file, family="bert",
              head_fitted=not had_head,
              adaptation=adapted, settings=s, data=repr(data_cfg), validation=scores, timings=timings,
              prepare_s=time.time() - t0, config=dataclasses.asdict(cfg))


def _prepare_mobilebert_into(work: str, source_dir: str, data_cfg, s: dict, vocab, teacher: student_lib.Student,
                             t0: float, *, log) -> dict:
  """A MobileBERT/IB-BERT teacher as it is: evaluated and saved (no head fit, no adaptation)."""
  if s["adapt_headed"]:
    raise ValueError(f"{source_dir} is a MobileBERT-family checkpoint; teacher.adapt_headed=True (or --adapt) "
                     "adapts BERT teachers only: set it False to use the checkpoint as it is")
  log(f"teacher: {source_dir} is a MobileBERT-family checkpoint with its own MLM/NSP heads; used as it is")
  es = evaluation.build_eval_set(data_cfg, vocab, log=log)
  t = time.time()
  _, scores = evaluation.teacher_reference(work, teacher, es, log=lambda *_: None)
  timings = dict(eval_s=time.time() - t)
  save_params(teacher, os.path.join(work, PARAMS_DIR))
  hf_dir = os.path.join(work, HF_DIR)
  hf.export_mobilebert(teacher, hf_dir)
  hf.write_tokenizer(hf_dir, vocab.vocab_file, vocab.lower_case, teacher.cfg.max_positions)
  cfg = dataclasses.replace(teacher.cfg, dtype="float32")
  return dict(source_dir=os.path.abspath(source_dir), vocab_file=vocab.vocab_file, family="mobilebert",
              head_fitted=False, adaptation=None, settings=s, data=repr(data_cfg), validation=scores,
              timings=timings, prepare_s=time.time() - t0, config=hf.student_config_to_hf(cfg))


def with_compute_dtype(model: Teacher, dtype: str) -> Teacher:
  """The same parameters, computed in `dtype` (parameters stay f32)."""
  if jnp.dtype(model.cfg.dtype) == jnp.dtype(dtype):
    return model
  return _with_config(model, dataclasses.replace(model.cfg, dtype=dtype))


def _with_config(model: Teacher, cfg) -> Teacher:
  """`model`'s parameters in a model of config `cfg`, which must have the same parameters (built
  abstractly: nothing is initialized only to be overwritten)."""
  out = nnx.eval_shape(lambda: type(model)(cfg, nnx.Rngs(0)))
  nnx.update(out, nnx.state(model, nnx.Param))
  return out
