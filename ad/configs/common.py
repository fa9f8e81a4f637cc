"""Pieces shared by the experiment configs (not an experiment itself)."""

import dataclasses

import ml_collections

from ad import space as space_lib
from ad.data import settings as data_settings
from ad.distill import settings as distill_settings
from ad.finetune import settings as finetune_settings
from ad.search import settings


def table1_space():
  """003 Table 1 (hidden 246 read as 256, see ad/space.py)."""
  return ml_collections.ConfigDict({k: list(v) for k, v in space_lib.TABLE1.items()})


def student_model(num_blocks: int):
  """attention_impl / ffn_impl 'auto': the Pallas kernels where a program is compiled for a TPU or GPU,
  XLA's path on a CPU (ad/models/student.py kernel_choice)."""
  return ml_collections.ConfigDict(dict(
      num_blocks=num_blocks, vocab_size=30522, embedding_size=128, max_positions=512, type_vocab_size=2,
      norm="no_norm", dtype="float32", attention_impl="auto", ffn_impl="auto"))


def _section(typed) -> ml_collections.ConfigDict:
  """A config section from a typed one (its dataclass holds every default): tuples become lists, as
  a config file writes them."""
  return ml_collections.ConfigDict({k: list(v) if isinstance(v, tuple) else v
                                    for k, v in dataclasses.asdict(typed).items()})


def pretraining_data(seq_len: int = 128, max_predictions: int = 20):
  """BERT MLM + NSP examples from the default offline corpus (ad/data/settings.py DataConfig)."""
  return _section(data_settings.DataConfig(seq_len=seq_len, max_predictions=max_predictions))


def default_teacher(**kw):
  """The packaged MiniLM-L6-H384, prepared (ad/distill/settings.py TeacherSettings: every setting
  and its default)."""
  return _section(distill_settings.TeacherSettings(**kw))


def distillation(flash: dict, regular: dict, **kw):
  """The distill section (ad/distill/settings.py DistillConfig and SCHEDULE_STEPS: every setting and
  its default); steps_per_block=0 derives it as progressive_ratio * pretrain_steps / num_blocks (003: 0.48)."""
  return ml_collections.ConfigDict(distill_settings.distill_section(flash, regular, **kw))


def search(num_initial: int, num_trials: int, measure_seq: int, latency_reference_ms: float, **kw):
  """The search section: every setting and its default is documented in ad/search/settings.py
  (SearchSettings); a config gives the budget, the measurement's sequence length and the latency
  reference point, and whatever else it changes."""
  return _section(settings.SearchSettings(
      num_initial=num_initial, num_trials=num_trials, objectives=settings.default_objectives(latency_reference_ms),
      measure=settings.MeasureSettings(seq=measure_seq), **kw))


def superlm(steps: int, **kw):
  """One-shot (004) and few-shot (001) SuperLM training (ad/distill/settings.py SuperLMConfig: every
  setting and its default)."""
  return ml_collections.ConfigDict(distill_settings.superlm_section(steps, **kw))


def final(**kw):
  """The final section (ad/search/settings.py FinalSettings): which Pareto students are fully
  distilled, exported and fine-tuned."""
  return _section(settings.FinalSettings(**kw))


def finetune(**kw):
  """`ad finetune` and final.finetune_tasks settings (ad/finetune/settings.py FinetuneConfig)."""
  return _section(finetune_settings.FinetuneConfig(**kw))
