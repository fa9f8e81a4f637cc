"""The typed config sections (ad/search/settings.py, ad/data/settings.py, ad/distill/settings.py):
defaults in one place, unknown keys named, and a run record written before a setting existed read
as the run it was."""

import json

import ml_collections
import pytest

from ad import configs
from ad.data import settings as data_settings
from ad.distill import settings as distill_settings
from ad.search import loop, settings


def test_a_hand_written_section_gets_the_defaults_and_an_unknown_key_is_named():
  cfg = ml_collections.ConfigDict(dict(search=dict(num_initial=2, num_trials=3, bo=dict(pending="hippo")),
                                       final=dict(count=2)))
  s = settings.search_settings(cfg)
  assert (s.num_initial, s.num_trials, s.bo.pending) == (2, 3, "hippo")  # given
  assert s.bo.training_free is True and s.measure.reference == "baseline" and s.proxy == "flash"  # defaults
  assert [o["name"] for o in s.objectives] == ["mlm_accuracy", "latency_ms"]
  f = settings.final_settings(cfg)
  assert (f.count, f.choose, f.finetune_tasks) == (2, "knee", [])
  for section, match in ((dict(num_trials=3, mesure=dict(seq=64)), r"config.search has unknown keys \['mesure'\]"),
                         (dict(measure=dict(sequence=64)), r"config.search.measure has unknown keys \['sequence'\]")):
    with pytest.raises(ValueError, match=match):
      settings.search_settings(ml_collections.ConfigDict(dict(search=section)))
  teacher = distill_settings.teacher_settings(dict(adapt_steps=10))
  assert (teacher.adapt_steps, teacher.head_steps, teacher.adapt_dtype) == (10, 50, "bfloat16")
  assert data_settings.config_from_dict(dict(seq_len=64)).validation_percent == 10.0
  with pytest.raises(ValueError, match=r"config.teacher has unknown keys \['adapt_step'\]"):
    distill_settings.teacher_settings(dict(adapt_step=10))
  with pytest.raises(ValueError, match=r"teacher.head_lr"):
    distill_settings.teacher_settings(dict(head_lr=0.0))


def test_the_shipped_configs_hold_the_settings_defaults_where_they_do_not_change_them():
  cfg = configs.load_config("quickstart")
  s = settings.search_settings(cfg)
  assert s.bo == settings.BOSettings() and s.workers == settings.WorkerSettings()
  assert s.measure == settings.MeasureSettings(seq=128, max_reps=40, chunk=20)  # what quickstart.py sets
  assert s.calibrate == 2 and settings.final_settings(cfg) == settings.FinalSettings(count=1, choose="knee")


def test_an_older_run_record_is_read_as_it_was_run():
  """A record from before search.measure.reference, .scale, search.proxy and the BO options
  existed means what the search did then: students timed alone, the run's own scale, flash, no
  conditioning on trials in flight. A worker reads it so (parallel.py), and --resume compares a
  config with it so: the same search only with those old settings. A key added to the data section
  with its default changes nothing."""
  new = configs.load_config("quickstart").to_dict()
  old = json.loads(json.dumps(new))
  for key in ("proxy", "calibrate", "latency_model"):
    del old["search"][key]
  for key in ("reference", "scale"):
    del old["search"]["measure"][key]
  del old["search"]["bo"]["pending"], old["search"]["bo"]["training_free"]
  del old["data"]["shuffle_window"]  # a key of the data section added with its default
  read = settings.record_config(old)["search"]
  assert (read["measure"]["reference"], read["measure"]["scale"], read["proxy"]) == ("", "run", "flash")
  assert (read["bo"]["pending"], read["bo"]["training_free"]) == ("exclude", False)
  assert settings.record_config(new)["search"] == new["search"]  # a record that has them keeps its own
  assert loop.comparable(old) != loop.comparable(new)  # today's default pairs with the baseline: another search
  as_then = json.loads(json.dumps(new))
  as_then["search"]["measure"]["reference"] = ""
  assert loop.comparable(old) == loop.comparable(as_then)
