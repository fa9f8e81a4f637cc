"""Pieces shared by the experiment configs (not an experiment itself)."""

import ml_collections

from ad import space as space_lib


def table1_space():
  """003 Table 1 (hidden 246 read as 256, see ad/space.py)."""
  return ml_collections.ConfigDict({k: list(v) for k, v in space_lib.TABLE1.items()})


def student_model(num_blocks: int):
  return ml_collections.ConfigDict(dict(
      num_blocks=num_blocks, vocab_size=30522, embedding_size=128, max_positions=512, type_vocab_size=2,
      norm="no_norm", dtype="float32", attention_impl="xla", ffn_impl="xla"))
