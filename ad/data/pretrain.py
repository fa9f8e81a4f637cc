"""BERT pre-training examples (MLM + NSP) as a seqio Task.

Pipeline, per split:
  source (Python, seqio.FunctionDataSource): documents -> sentences -> sentence pairs
      {text_a, text_b, nsp_label, example_id}; nsp_label 0 = B follows A, 1 = B is a random
      span of another document (Hugging Face's convention), drawn 50/50. Training pairs are
      re-drawn each epoch (a new pairing per pass, like BERT's dupe_factor) and shuffled within
      consecutive windows of `shuffle_window` pairs; validation is one fixed pass, unshuffled.
      The training stream is index-addressable: split "train[N:]" (TFDS's slicing syntax)
      starts at global example N without tokenizing anything before it, so a resumed run
      starts where it stopped instead of replaying its batches.
  preprocessors (TF, inside seqio):
      tokenize_pair   WordPiece both segments (ad/data/vocab.py)
      pack_and_mask   truncate longest-first to seq_len - 3, [CLS] A [SEP] B [SEP], token types,
                      attention mask, padding; mask 15% of the non-special tokens (at most
                      max_predictions): 80% [MASK], 10% a random ordinary token, 10% unchanged.
  seqio shards the examples per host (ShardInfo: host h of n reads examples h, h + n, ...);
  shuffling is the source's (seqio's buffer shuffle would make position N depend on everything
  before it), so runs are deterministic for the seed and hosts read disjoint data.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import itertools
import os
import random
import re
from typing import Iterator, Sequence

import numpy as np
import seqio
import tensorflow as tf

from ad.data import sources, tf_setup, vocab as vocab_lib
from ad.data.settings import DataConfig  # the data section, typed (a module a config loads without TensorFlow)
from ad.models import hf

FEATURES = ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_ids", "masked_weights",
            "nsp_label")


# ---------------------------------------------------------------------------------------------
# Python stage: sentence pairs.

def _stable_seed(*parts) -> int:
  return int.from_bytes(hashlib.sha1(repr(parts).encode()).digest()[:8], "big")


def sentence_pairs(docs: Sequence[list[str]], rng: random.Random, target_words: int,
                   short_seq_prob: float) -> Iterator[tuple[str, str, int]]:
  """docs: sentences per document -> (text_a, text_b, nsp_label) pairs (BERT's recipe)."""
  multi = [i for i, d in enumerate(docs) if len(d) >= 2]
  order = list(multi)
  rng.shuffle(order)
  for di in order:
    sents = docs[di]
    target = target_words if rng.random() >= short_seq_prob else rng.randint(4, max(4, target_words))
    i = 0
    while i < len(sents) - 1:
      chunk, words = [], 0
      while i < len(sents) and (words < target or len(chunk) < 2):
        chunk.append(sents[i])
        words += len(sents[i].split())
        i += 1
      if len(chunk) < 2:
        break
      a_end = rng.randint(1, len(chunk) - 1)
      a = chunk[:a_end]
      if rng.random() < 0.5 and len(docs) > 1:
        other = di
        while other == di:
          other = rng.randrange(len(docs))
        o = docs[other]
        start = rng.randrange(len(o))
        b, bw, budget = [], 0, max(1, target - sum(len(s.split()) for s in a))
        for s in o[start:]:
          b.append(s)
          bw += len(s.split())
          if bw >= budget:
            break
        i -= len(chunk) - a_end  # the unused sentences start the next chunk
        yield " ".join(a), " ".join(b), 1
      else:
        yield " ".join(a), " ".join(chunk[a_end:]), 0


@functools.lru_cache(maxsize=4)
def _documents(source_specs: tuple[str, ...], split: str, validation_percent: float) -> tuple[tuple[str, ...], ...]:
  docs = sources.split_documents(sources.load_documents(source_specs), split, validation_percent)
  return tuple(tuple(sources.sentences(text)) for _, text in docs)


def _target_words(cfg: DataConfig) -> int:
  return max(4, int((cfg.seq_len - 3) / 1.3))  # ~1.3 WordPieces per English word


def _epoch_pairs(cfg: DataConfig, docs, base: int, split: str, epoch: int) -> Iterator[tuple[str, str, int]]:
  """One epoch's pairs in stream order: training shuffles them within windows of
  cfg.shuffle_window (each window's permutation seeded by its own index)."""
  pairs = sentence_pairs(docs, random.Random(_stable_seed(base, split, epoch)), _target_words(cfg), cfg.short_seq_prob)
  if split != "train":
    yield from pairs
    return
  window = 0
  while chunk := list(itertools.islice(pairs, cfg.shuffle_window)):
    random.Random(_stable_seed(base, split, epoch, "window", window)).shuffle(chunk)
    yield from chunk
    window += 1


_EPOCH_LENGTHS: dict[tuple, int] = {}


def _length_key(cfg: DataConfig, base: int, split: str, epoch: int) -> tuple:
  return (cfg.sources, cfg.validation_percent, cfg.seq_len, cfg.short_seq_prob, base, split, epoch)


def epoch_lengths(cfg: DataConfig, seed: int | None = None) -> list[int]:
  """The training epochs' lengths known to this process (from epoch 0, consecutive): what a
  checkpoint keeps so that a resumed run skips to its position without counting epochs again."""
  base = cfg.seed if seed is None else seed
  out = []
  while (n := _EPOCH_LENGTHS.get(_length_key(cfg, base, "train", len(out)))) is not None:
    out.append(n)
  return out


def remember_epoch_lengths(cfg: DataConfig, lengths, seed: int | None = None) -> None:
  """Epoch lengths from a checkpoint (epoch_lengths of the run that wrote it)."""
  base = cfg.seed if seed is None else seed
  for epoch, n in enumerate(lengths):
    _EPOCH_LENGTHS[_length_key(cfg, base, "train", epoch)] = int(n)


def _epoch_length(cfg: DataConfig, docs, base: int, split: str, epoch: int) -> int:
  """Pairs in one training epoch (a pass in Python, no tokenizing), memoized per process."""
  key = _length_key(cfg, base, split, epoch)
  if key not in _EPOCH_LENGTHS:
    _EPOCH_LENGTHS[key] = sum(1 for _ in sentence_pairs(docs, random.Random(_stable_seed(base, split, epoch)),
                                                          _target_words(cfg), cfg.short_seq_prob))
  return _EPOCH_LENGTHS[key]


def parse_split(split: str) -> tuple[str, int]:
  """"train" -> ("train", 0); "train[N:]" -> ("train", N): the stream from global example N."""
  m = re.fullmatch(r"(\w+)(?:\[(\d+):\])?", split)
  if not m:
    raise ValueError(f"split {split!r}: expected 'train', 'validation' or 'train[N:]' (start at example N)")
  name, start = m.group(1), int(m.group(2) or 0)
  if name not in ("train", "validation") or (start and name != "train"):
    raise ValueError(f"split {split!r}: expected 'train', 'validation' or 'train[N:]' (start at example N)")
  return name, start


def pair_examples(cfg: DataConfig, split: str, seed: int | None = None) -> Iterator[dict]:
  """The source stream of `split` (parse_split): {text_a, text_b, nsp_label, example_id}, where
  example_id is the example's global position. Training repeats forever with a new pairing
  each epoch; skipping to example N needs the lengths of the epochs before N: known ones (read
  to their end in this process, or given by remember_epoch_lengths from a checkpoint) are free,
  others cost one Python pairing pass each; nothing is ever tokenized to skip."""
  name, start = parse_split(split)
  docs = _documents(cfg.sources, name, cfg.validation_percent)
  base = cfg.seed if seed is None else seed
  epoch, example_id = 0, 0
  if start and not any(len(d) >= 2 for d in docs):
    raise ValueError(f"data.sources={list(cfg.sources)}: the {name} split has no document of two sentences")
  while start and example_id + _epoch_length(cfg, docs, base, name, epoch) <= start:
    example_id += _epoch_length(cfg, docs, base, name, epoch)
    epoch += 1
  while True:
    epoch_start = example_id
    pairs = _epoch_pairs(cfg, docs, base, name, epoch)
    if example_id < start:
      pairs = itertools.islice(pairs, start - example_id, None)
      example_id = start
    for a, b, label in pairs:
      yield dict(text_a=a, text_b=b, nsp_label=np.int32(label), example_id=np.int64(example_id))
      example_id += 1
    _EPOCH_LENGTHS.setdefault(_length_key(cfg, base, name, epoch), example_id - epoch_start)  # read to its end
    epoch += 1
    if name != "train":
      return


def _pair_dataset_fn(cfg: DataConfig):
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files  # the source shuffles the training split itself (module docstring)
    parse_split(split)  # a bad split is an error here, not inside a tf.data generator
    sig = dict(text_a=tf.TensorSpec([], tf.string), text_b=tf.TensorSpec([], tf.string),
               nsp_label=tf.TensorSpec([], tf.int32), example_id=tf.TensorSpec([], tf.int64))
    return tf.data.Dataset.from_generator(lambda: pair_examples(cfg, split, seed), output_signature=sig)

  return dataset_fn


# ---------------------------------------------------------------------------------------------
# TF stage: tokenize, pack, mask (seqio preprocessors).

def tokenize_pair(ds: tf.data.Dataset, output_features) -> tf.data.Dataset:
  vocab = output_features["input_ids"].vocabulary

  def fn(ex):
    return dict(tokens_a=vocab.encode_tf(ex["text_a"]), tokens_b=vocab.encode_tf(ex["text_b"]),
                nsp_label=ex["nsp_label"], example_id=ex["example_id"])

  return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def pack_segments(a, b, seq_len: int, vocab: vocab_lib.WordPieceVocabulary):
  """BERT's input layout in TF: [CLS] a [SEP] b [SEP] (b=None: [CLS] a [SEP]), truncated
  longest-first to seq_len, padded -> (input_ids, token_type_ids, attention_mask), each [seq_len]."""
  L = seq_len
  if b is None:
    a = a[:L - 2]
    ids = tf.concat([[vocab.cls_id], a, [vocab.sep_id]], 0)
    types = tf.zeros_like(ids)
  else:
    budget = L - 3
    la, lb = tf.size(a), tf.size(b)
    # Longest-first truncation (BERT's), in closed form; cut from the end.
    over = la + lb > budget
    la2 = tf.where(over, tf.minimum(la, tf.maximum(budget - lb, budget - budget // 2)), la)
    lb2 = tf.where(over, tf.minimum(lb, budget - la2), lb)
    ids = tf.concat([[vocab.cls_id], a[:la2], [vocab.sep_id], b[:lb2], [vocab.sep_id]], 0)
    types = tf.concat([tf.zeros([la2 + 2], tf.int32), tf.ones([lb2 + 1], tf.int32)], 0)
  n = tf.size(ids)
  pad = L - n
  return (tf.pad(ids, [[0, pad]], constant_values=vocab.pad_id), tf.pad(types, [[0, pad]]),
          tf.pad(tf.ones([n], tf.int32), [[0, pad]]))


def make_pack_and_mask(vocab: vocab_lib.WordPieceVocabulary, cfg: DataConfig):
  L, P = cfg.seq_len, cfg.max_predictions
  mask_id = vocab.mask_id
  specials = tf.constant(sorted(vocab.special_ids), tf.int32)
  ordinary = tf.constant([i for i, t in enumerate(vocab.tokens) if not (t.startswith("[") and t.endswith("]"))],
                         tf.int32)  # random replacements never produce [CLS]/[unused..] etc.

  def pack_and_mask(ds: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
    def fn(ex):
      ids, types, attn = pack_segments(ex["tokens_a"], ex["tokens_b"], L, vocab)

      # Masking, with per-example stateless randomness (seed from seqio + example_id).
      seed = tf.stack([tf.cast(ex["example_id"], tf.int32), tf.cast(ex["example_id"] // (2 ** 31), tf.int32) + cfg.seed])
      s1, s2, s3 = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
      is_special = tf.reduce_any(ids[:, None] == specials[None, :], axis=1)
      cand = tf.logical_not(is_special)
      n_cand = tf.reduce_sum(tf.cast(cand, tf.int32))
      n_pred = tf.minimum(P, tf.maximum(1, tf.cast(tf.round(tf.cast(n_cand, tf.float32) * cfg.mask_rate), tf.int32)))
      n_pred = tf.minimum(n_pred, n_cand)
      score = tf.where(cand, tf.random.stateless_uniform([L], s1), 2.0)
      pos = tf.sort(tf.math.top_k(-score, k=P).indices[:n_pred])
      orig = tf.gather(ids, pos)
      r = tf.random.stateless_uniform([n_pred], s2)
      rand_tok = tf.gather(ordinary, tf.random.stateless_uniform([n_pred], s3, 0, tf.size(ordinary), tf.int32))
      new = tf.where(r < 0.8, mask_id, tf.where(r < 0.9, rand_tok, orig))
      masked = tf.tensor_scatter_nd_update(ids, pos[:, None], new)
      padp = P - n_pred
      return dict(input_ids=masked, token_type_ids=types, attention_mask=attn,
                  masked_positions=tf.pad(pos, [[0, padp]]), masked_ids=tf.pad(orig, [[0, padp]]),
                  masked_weights=tf.pad(tf.ones([n_pred], tf.float32), [[0, padp]]),
                  nsp_label=ex["nsp_label"])

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)

  return pack_and_mask


def make_task(cfg: DataConfig, vocab: vocab_lib.WordPieceVocabulary, max_positions: int | None = None,
              model_vocab_size: int | None = None) -> seqio.Task:
  """The seqio Task for `cfg`; checks seq_len against the model's positions and the vocab
  against the model's embedding rows."""
  tf_setup.hide_accelerators_from_tf()
  if max_positions is not None and cfg.seq_len > max_positions:
    raise ValueError(f"data.seq_len={cfg.seq_len} exceeds the model's {max_positions} position embeddings")
  if model_vocab_size is not None and vocab.vocab_size != model_vocab_size:
    raise ValueError(f"vocab {vocab.vocab_file} has {vocab.vocab_size} tokens but the model's embedding has "
                     f"{model_vocab_size} rows; use the teacher's vocab.txt")
  key = hashlib.sha1(repr((cfg, vocab.vocab_file, vocab.vocab_size)).encode()).hexdigest()[:12]
  name = f"ad_bert_pretrain_{key}"
  if name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)
  int_feature = lambda rank=1: seqio.Feature(vocab, add_eos=False, dtype=tf.int32, rank=rank, required=False)
  feats = {k: int_feature() for k in ("input_ids", "token_type_ids", "attention_mask", "masked_positions", "masked_ids")}
  feats["masked_weights"] = seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, dtype=tf.float32, required=False)
  feats["nsp_label"] = seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.int32, rank=0,
                                     required=False)
  return seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(_pair_dataset_fn(cfg), splits=("train", "validation")),
      preprocessors=[tokenize_pair, make_pack_and_mask(vocab, cfg)], output_features=feats)


def load_vocab(cfg: DataConfig, teacher_dir: str | None = None) -> vocab_lib.WordPieceVocabulary:
  path = cfg.vocab_file
  if not path:
    if teacher_dir is None:
      teacher_dir = hf.minilm_dir()
    path = os.path.join(teacher_dir, "vocab.txt")
  return vocab_lib.WordPieceVocabulary(path, lower_case=cfg.lower_case)


def batches(task: seqio.Task, cfg: DataConfig, split: str, batch_size: int, shard_index: int = 0,
            num_shards: int = 1, num_epochs: int | None = None, seed: int | None = None,
            drop_remainder: bool = True, start_batch: int = 0) -> Iterator[dict]:
  """Per-host batches of numpy arrays: {feature: [batch_size, ...]}. Training repeats forever
  (num_epochs=None) with new pairs and masks each pass; validation is one fixed pass (its last,
  partial batch is kept with drop_remainder=False). start_batch=n gives the stream from this
  host's batch n on (a resumed run), the same arrays as batch n of the full stream, without
  reading batches 0..n-1."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index={shard_index} outside [0, {num_shards})")
  if start_batch < 0 or (start_batch and split != "train"):
    raise ValueError(f"start_batch={start_batch}: expected 0, or a positive batch index of the train split")
  train = split == "train"
  if start_batch:  # host h of n reads global examples h, h + n, ...: batch n starts at n * batch * shards
    split = f"train[{start_batch * batch_size * num_shards}:]"
  ds = task.get_dataset(
      sequence_length={k: cfg.seq_len for k in FEATURES}, split=split, shuffle=False,
      seed=cfg.seed if seed is None else seed, shard_info=seqio.ShardInfo(shard_index, num_shards),
      num_epochs=1 if not train else num_epochs, use_cached=False, trim_output_features=False)
  ds = ds.map(lambda ex: {k: ex[k] for k in FEATURES})
  ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(2)
  return ds.as_numpy_iterator()


# Small runs (a search's flash distillations) read the same deterministic stream again and again;
# keeping it in memory saves rebuilding the tf.data pipeline per trial (about 7 s on 2 cores).
_STREAMS: dict[tuple, tuple[list, Iterator[dict]]] = {}
atexit.register(_STREAMS.clear)  # close the tf.data generators before the interpreter tears down
CACHE_MAX_TOKENS = 2**24  # beyond this, stream (paper-scale runs never hold their data in memory)


def cached_batches(task: seqio.Task, cfg: DataConfig, split: str, batch_size: int, count: int, shard_index: int = 0,
                   num_shards: int = 1) -> list[dict]:
  """The first `count` batches of `batches(...)` (fewer if a validation pass is shorter), memoized
  per process: the same arguments give the same arrays as a fresh pipeline would."""
  if count * batch_size * cfg.seq_len > CACHE_MAX_TOKENS:
    raise ValueError(f"cached_batches: {count} batches of {batch_size} x {cfg.seq_len} exceed {CACHE_MAX_TOKENS} "
                     "tokens; stream them with batches()")
  key = (task.name, repr(cfg), split, batch_size, shard_index, num_shards)
  if key not in _STREAMS:
    _STREAMS[key] = ([], batches(task, cfg, split, batch_size, shard_index, num_shards))
  kept, source = _STREAMS[key]
  while len(kept) < count:
    try:
      kept.append(next(source))
    except StopIteration:
      break
  return kept[:count]
