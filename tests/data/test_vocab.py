import os

import pytest
import seqio
import tensorflow as tf

from ad.data import vocab as vocab_lib
from ad.models import hf

VOCAB = os.path.join(hf.minilm_dir(), "vocab.txt")


@pytest.fixture(scope="module")
def vocab():
  return vocab_lib.WordPieceVocabulary(VOCAB)


def test_seqio_builtin_wordpiece_pads_split_words():
  # The upstream behaviour this module works around: a word that splits leaves zero padding.
  builtin = seqio.BertWordPieceVocabulary(VOCAB, lower_case=True)
  ids = builtin.encode_tf(tf.constant("the unaffable tokenization")).numpy()
  assert ids.ndim == 2 and (ids == 0).any()


def test_words_that_split_are_flat_pieces_without_padding(vocab):
  ids = vocab.encode("the unaffable tokenization")
  assert [vocab.tokens[i] for i in ids] == ["the", "una", "##ffa", "##ble", "token", "##ization"]
  tf_ids = vocab.encode_tf(tf.constant("the unaffable tokenization")).numpy()
  assert tf_ids.ndim == 1 and tf_ids.tolist() == ids and tf_ids.dtype == "int32"
  assert vocab.decode(ids) == "the unaffable tokenization"


def test_matches_the_huggingface_tokenizer(vocab):
  transformers = pytest.importorskip("transformers")
  ref = transformers.AutoTokenizer.from_pretrained(hf.minilm_dir())  # its tokenizer.json, offline
  for text in ["Anarchism is a political philosophy.", "Xenon's atomic number is 54; it's a noble gas!",
               "Ébullition and naïve café-au-lait"]:
    assert vocab.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text


def test_bad_vocab_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="vocab file not found"):
    vocab_lib.WordPieceVocabulary(str(tmp_path / "nope.txt"))
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="empty vocab file"):
    vocab_lib.WordPieceVocabulary(str(tmp_path / "empty.txt"))
  (tmp_path / "v.txt").write_text("a\nb\n[PAD]\n")
  with pytest.raises(ValueError, match=r"special tokens \['\[UNK\]', '\[CLS\]', '\[SEP\]', '\[MASK\]'\]"):
    vocab_lib.WordPieceVocabulary(str(tmp_path / "v.txt"))
