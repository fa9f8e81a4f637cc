"""The config's `finetune` section, typed (ad/finetune/trainer.py fine-tunes with it; `ad finetune` and
final.finetune_tasks read it): each setting's default lives here once, in a module a config loads
without JAX."""

from __future__ import annotations

import dataclasses

from ad import configs


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  epochs: int = 3
  batch_size: int = 32
  lr: float = 1e-4
  warmup_fraction: float = 0.1
  weight_decay: float = 0.01
  dropout: float = 0.1
  seq_len: int = 128
  evals_per_epoch: int = 2
  patience: int = 3  # validation scorings without improvement before stopping
  dtype: str = "float32"  # compute dtype; parameters stay f32
  seed: int = 0
  max_train_examples: int = 0  # 0 = the whole train split (quick checks use fewer)
  max_eval_examples: int = 0  # 0 = the whole validation and test splits
  tfds_data_dir: str = ""  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets (GLUE, SQuAD)
  squad_dir: str = ""  # the official SQuAD v1.1 JSON files; '' = TFDS squad/v1.1

  def __post_init__(self):
    for k in ("epochs", "batch_size", "evals_per_epoch", "patience"):
      configs.check_range(f"finetune.{k}", getattr(self, k), low=1)
    configs.check_range("finetune.seq_len", self.seq_len, low=8)  # [CLS] text [SEP] and a few tokens
    configs.check_range("finetune.lr", self.lr, low=0, low_open=True)
    configs.check_range("finetune.weight_decay", self.weight_decay, low=0)
    for k in ("warmup_fraction", "dropout"):
      configs.check_range(f"finetune.{k}", getattr(self, k), low=0, high=1, high_open=True)
    for k in ("seed", "max_train_examples", "max_eval_examples"):
      configs.check_range(f"finetune.{k}", getattr(self, k), low=0)


def config_from_dict(d) -> FinetuneConfig:
  return configs.section(FinetuneConfig, d, "finetune")
