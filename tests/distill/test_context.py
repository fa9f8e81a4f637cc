"""The teacher context a search shares: it serves only runs of its own data and teacher sections, in its dtype."""

import dataclasses

import pytest

from ad import configs
from ad.data import settings as data_settings
from ad.distill.context import TeacherContext
from tests.conftest import distill_overrides


def test_a_context_serves_only_runs_of_its_own_data_teacher_and_dtype():
  cfg = configs.load_config("quickstart", distill_overrides("/nonexistent/teacher"))
  # What build() would hold for this config, without preparing a teacher (only the sections matter here).
  context = TeacherContext(data_cfg=data_settings.config_from_dict(cfg.data), teacher_section=dict(cfg.teacher),
                           teacher_dir="", teacher=None, dtype="float32", vocab=None, eval_set=None,
                           teacher_top1=None, teacher_scores={})
  context.check_serves(cfg, "float32")
  context.check_serves(cfg, "f4")  # the same dtype, spelled another way
  with pytest.raises(ValueError, match=r"another compute dtype \(float32, not bfloat16\)"):
    context.check_serves(cfg, "bfloat16")
  other_data = configs.load_config("quickstart", distill_overrides("/nonexistent/teacher", **{"data.seq_len": 64}))
  with pytest.raises(ValueError, match="other data or teacher sections"):
    context.check_serves(other_data, "float32")
  other_teacher = configs.load_config("quickstart", distill_overrides("/elsewhere/teacher"))
  with pytest.raises(ValueError, match="other data or teacher sections"):
    context.check_serves(other_teacher, "float32")
  assert dataclasses.replace(context, teacher_section=dict(other_teacher.teacher)).check_serves(
      other_teacher, "float32") is None
