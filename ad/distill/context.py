"""What every run of one config shares: the prepared teacher in the students' compute dtype, the
vocabulary, the held-out evaluation set and the teacher's predictions and scores on it.

A search builds it once per process (its loop, each training worker) and hands it to every flash
distillation, SuperLM score, checkpoint evaluation and final distillation; a command run alone
(`ad distill`, `ad superlm`) builds its own. Preparing the teacher is cached on disk
(ad/distill/teacher_head.py), and so are the evaluation set and the teacher's predictions
(ad/distill/evaluation.py); what the context saves is loading them again for every trial.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from ad.data import pretrain, settings as data_settings, vocab as vocab_lib
from ad.distill import evaluation, teacher_head
from ad.models import student as student_lib


@dataclasses.dataclass(frozen=True)
class TeacherContext:
  data_cfg: pretrain.DataConfig
  teacher_section: dict  # the config's teacher section it was built for
  teacher_dir: str  # the prepared teacher (teacher_head.prepare_from_config)
  teacher: Any  # teacher_head.Teacher, in `dtype`
  dtype: str  # the students' compute dtype, the teacher's too
  vocab: vocab_lib.WordPieceVocabulary
  eval_set: evaluation.EvalSet
  teacher_top1: np.ndarray  # the teacher's top-1 prediction at each masked position of the evaluation set
  teacher_scores: dict  # the teacher's own held-out scores

  @classmethod
  def build(cls, cfg, log: Callable = print, progress: bool = False) -> "TeacherContext":
    """The context of `cfg` (its data, teacher and model sections): the teacher prepared (or found
    prepared), loaded in model.dtype, the evaluation set and the teacher's reference on it."""
    data_cfg = data_settings.config_from_dict(cfg.data)
    dtype = jnp.dtype(cfg.model.get("dtype", student_lib.StudentConfig.dtype)).name
    teacher_dir, _ = teacher_head.prepare_from_config(cfg.teacher, data_cfg, log=log, progress=progress)
    teacher, meta = teacher_head.load_for_training(teacher_dir, dtype)
    vocab = pretrain.load_vocab(data_cfg, meta["source_dir"])
    eval_set = evaluation.build_eval_set(data_cfg, vocab, log=log)
    top1, scores = evaluation.teacher_reference(teacher_dir, teacher, eval_set, log=log)
    return cls(data_cfg, dict(cfg.teacher), teacher_dir, teacher, dtype, vocab, eval_set, top1, scores)

  def check_serves(self, cfg, dtype: str) -> None:
    """A context serves only the runs of its own data and teacher sections, in its compute dtype."""
    if (data_settings.config_from_dict(cfg.data) != self.data_cfg or dict(cfg.teacher) != self.teacher_section
        or jnp.dtype(dtype).name != self.dtype):
      raise ValueError(f"the shared teacher context was built for other data or teacher sections or another compute "
                       f"dtype ({self.dtype}, not {jnp.dtype(dtype).name}); build one for this config "
                       "(TeacherContext.build)")
