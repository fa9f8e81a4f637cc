"""WordPiece as a seqio.Vocabulary, on tensorflow-text's BertTokenizer.

seqio 0.0.20's BertWordPieceVocabulary turns the tokenizer's [words, pieces] ragged result
into a padded 2-D tensor and squeezes it: a word that splits into several pieces leaves
zero padding in the ids (checked in tests/data/test_vocab.py). This one flattens the ragged
pieces instead, so `encode("unaffable")` is `[un, ##aff, ##able]` with no padding.
"""

from __future__ import annotations

import os

import seqio
import tensorflow as tf
import tensorflow_text as tf_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class WordPieceVocabulary(seqio.Vocabulary):
  """BERT WordPiece from a vocab.txt; ids are int32; no EOS appended (BERT adds [SEP] itself)."""

  def __init__(self, vocab_file: str, lower_case: bool = True):
    if not os.path.isfile(vocab_file):
      raise FileNotFoundError(f"{vocab_file}: WordPiece vocab file not found")
    with open(vocab_file, encoding="utf-8") as f:
      tokens = [line.rstrip("\n") for line in f]
    if not tokens:
      raise ValueError(f"{vocab_file}: empty vocab file")
    self.tokens = tokens
    self.ids = {t: i for i, t in enumerate(tokens)}
    missing = [t for t in SPECIAL_TOKENS if t not in self.ids]
    if missing:
      raise ValueError(f"{vocab_file}: a BERT vocab needs the special tokens {missing}")
    self.vocab_file = vocab_file
    self.lower_case = lower_case
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(tokens), tf.range(len(tokens), dtype=tf.int64)),
        num_oov_buckets=1)
    self._tokenizer = tf_text.BertTokenizer(table, token_out_type=tf.int64, unknown_token="[UNK]",
                                            lower_case=lower_case)
    super().__init__(extra_ids=0)

  pad_id = property(lambda self: self.ids["[PAD]"])
  unk_id = property(lambda self: self.ids["[UNK]"])
  cls_id = property(lambda self: self.ids["[CLS]"])
  sep_id = property(lambda self: self.ids["[SEP]"])
  mask_id = property(lambda self: self.ids["[MASK]"])
  eos_id = property(lambda self: None)

  @property
  def special_ids(self) -> tuple[int, ...]:
    return tuple(self.ids[t] for t in SPECIAL_TOKENS)

  @property
  def _base_vocab_size(self) -> int:
    return len(self.tokens)

  def _encode(self, s: str) -> list[int]:
    return self._encode_tf(tf.constant(s)).numpy().tolist()

  def _encode_tf(self, s):
    """scalar tf.string -> [N] int32 (ragged [words, pieces] flattened, no padding)."""
    pieces = self._tokenizer.tokenize(tf.reshape(s, [1]))  # [1, words, pieces]
    return tf.cast(pieces.flat_values, tf.int32)

  def _decode(self, ids) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i == self.pad_id:
        continue
      tok = self.tokens[i] if 0 <= i < len(self.tokens) else "[UNK]"
      if tok.startswith("##") and out:
        out[-1] += tok[2:]
      else:
        out.append(tok)
    return " ".join(out)

  def _decode_tf(self, ids):
    return tf.py_function(lambda x: self._decode(x.numpy().tolist()), [ids], tf.string)

  def __eq__(self, other):
    return isinstance(other, WordPieceVocabulary) and other.tokens == self.tokens and other.lower_case == self.lower_case

  def __hash__(self):
    return hash((len(self.tokens), self.vocab_file))
