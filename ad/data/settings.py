"""The config's `data` section, typed (ad/data/pretrain.py builds the examples from it): BERT MLM +
NSP examples from the default offline corpus (ad/data/sources.py) unless `sources` names others."""

from __future__ import annotations

import dataclasses

from ad import configs


@dataclasses.dataclass(frozen=True)
class DataConfig:
  sources: tuple[str, ...] = ("default",)
  vocab_file: str = ""  # '' = the teacher's vocab.txt
  lower_case: bool = True
  seq_len: int = 128
  max_predictions: int = 20
  mask_rate: float = 0.15
  # 10% of the default corpus's documents (1,021) are held out: the evaluation set needs 16,384
  # masked tokens of them (1,894 pairs at seq 64, about 1,150 at seq 128; 2% gave only about 5,000).
  validation_percent: float = 10.0
  short_seq_prob: float = 0.1  # BERT: sometimes use a shorter target length
  shuffle_window: int = 1024  # training pairs are shuffled within windows of this many
  seed: int = 0
  # The held-out evaluation set (ad/distill/evaluation.py): the first validation pairs that hold
  # at least this many masked tokens, the same for every trial, final and teacher.
  eval_masked_tokens: int = 16384

  def __post_init__(self):
    if self.seq_len < 8:
      raise ValueError(f"data.seq_len={self.seq_len}: need at least 8 ([CLS] A [SEP] B [SEP] and some text)")
    if not 0 < self.mask_rate < 1:
      raise ValueError(f"data.mask_rate={self.mask_rate}: expected a fraction in (0, 1)")
    if not 0 < self.max_predictions <= self.seq_len:
      raise ValueError(f"data.max_predictions={self.max_predictions}: expected 1..seq_len ({self.seq_len})")
    if not 0 < self.validation_percent < 100:
      raise ValueError(f"data.validation_percent={self.validation_percent}: expected (0, 100)")
    if self.shuffle_window <= 0:
      raise ValueError(f"data.shuffle_window={self.shuffle_window}: expected a positive count of pairs")
    if self.eval_masked_tokens <= 0:
      raise ValueError(f"data.eval_masked_tokens={self.eval_masked_tokens}: expected a positive count")


def config_from_dict(d) -> DataConfig:
  return configs.section(DataConfig, d, "data")
