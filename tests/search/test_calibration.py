"""Per-search calibration (search.calibrate, ad/search/calibration.py): which students it picks,
how it grades the accuracy proxy against regular distillation and the parameter count, the
bad settings it refuses, and a search that runs it, is resumed and does not run it twice."""

import os

import numpy as np
import pytest

from ad import configs
from ad.search import calibration, loop, store as store_lib
from ad.search.store import Trial
from tests.conftest import search_overrides

SEQUENCES = 400  # per-sequence counts of a shared evaluation set, 5 masked tokens each


def _per_sequence(accuracy: float, seed: int) -> dict:
  """Per-sequence correct counts of a student scoring about `accuracy` (independent students)."""
  rng = np.random.default_rng(seed)
  return dict(masked=[5] * SEQUENCES, mlm_correct=rng.binomial(5, accuracy, SEQUENCES).tolist())


def _student(arch, proxy, regular_p, params, seed):
  ps = _per_sequence(regular_p, seed)
  regular = sum(ps["mlm_correct"]) / (5 * SEQUENCES)
  return dict(arch=arch, role="calibration", proxy=proxy, proxy_se=0.003, regular=regular, regular_se=0.01,
              per_sequence=ps, params=params, flops=2 * params)


def test_the_grade_counts_the_pairs_regular_resolves_and_warns_when_the_parameter_count_does_better():
  # regular: a < b < c < d, far apart (resolved) except c and d (0.01 apart over 2,000 tokens: not resolved)
  regular = dict(a=0.10, b=0.25, c=0.40, d=0.41)
  params = dict(a=1, b=2, c=3, d=4)  # orders every pair like regular
  proxy_good = dict(a=0.1, b=0.2, c=0.3, d=0.25)  # wrong only on the unresolved pair (c, d)
  proxy_bad = dict(a=0.2, b=0.1, c=0.3, d=0.35)  # wrong on the resolved pair (a, b)
  for proxy in (proxy_good, proxy_bad):
    studs = [_student(k, proxy[k], regular[k], params[k], seed=i) for i, k in enumerate(regular)]
    g = calibration.agreement(studs)
    assert g["regular_resolved_pairs"] == 5, g  # all pairs but (c, d)
    assert g["rankings"]["params"]["agrees"] == 5
    assert g["rankings"]["proxy"]["agrees"] == (5 if proxy is proxy_good else 4)
    # the proxy ties (good) or loses (bad) to the parameter count: the report says so in words
    assert g["verdict"].startswith("WARNING: the accuracy proxy does not beat the parameter count"), g["verdict"]
  # a proxy that orders every resolved pair, against a parameter count that gets one wrong: no warning
  params_bad = dict(a=2, b=1, c=3, d=4)
  studs = [_student(k, proxy_good[k], regular[k], params_bad[k], seed=i) for i, k in enumerate(regular)]
  g = calibration.agreement(studs)
  assert g["rankings"]["params"]["agrees"] == 4 and not g["verdict"].startswith("WARNING")
  lines = "\n".join(calibration.report_lines(g, "flash distillation"))
  assert "| parameters (closed form) | 4/5 |" in lines and "| the search's proxy (mlm_accuracy) | 5/5 |" in lines
  # one student: nothing to compare, said so
  assert "nothing to compare" in calibration.agreement(studs[:1])["verdict"]


def test_calibration_students_span_the_front_then_the_rest_and_skip_the_finals():
  ok = [Trial(arch=f"s{i}", role="designer", status="ok", objectives=dict(mlm_accuracy=0.1 + 0.01 * i))
        for i in range(8)]
  on_front = [i % 2 == 0 for i in range(8)]  # s0 s2 s4 s6 on the front
  assert calibration.choose(ok, on_front, exclude=["s6"], k=3) == ["s0", "s2", "s4"]
  assert calibration.choose(ok, on_front, exclude=[], k=2) == ["s0", "s6"]  # the front's two ends
  picks = calibration.choose(ok, on_front, exclude=["s6"], k=5)  # the front has 3 left: 2 more from the rest
  assert picks[:3] == ["s0", "s2", "s4"] and picks[3:] == ["s1", "s7"]  # the rest's two ends


def test_bad_calibration_and_constraint_settings_are_refused_naming_the_value(tmp_path, tiny_teacher):
  cases = [(lambda c: setattr(c.search, "calibrate", -1), r"search.calibrate=-1: expected a whole number >= 0"),
           (lambda c: setattr(c.search.bo, "constraints", "maybe"),
            r"search.bo.constraints='maybe': expected one of \('filter', 'model'\)"),
           (lambda c: setattr(c.constraints, "max_lat", 3.0),  # a typo in a config file
            r"constraints.max_lat: unknown constraint; expected one of")]
  for edit, match in cases:
    cfg = configs.load_config("quickstart", search_overrides(tiny_teacher, **{"search.num_initial": 1,
                                                                               "search.num_trials": 2}))
    with cfg.unlocked():
      edit(cfg)
    with pytest.raises(ValueError, match=match):
      loop.run_search(cfg, str(tmp_path / "run"), log=lambda *_: None, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_calibrated_search_grades_its_proxy_and_a_resume_distills_nothing_again(tmp_path, tiny_teacher):
  """Two search students (no baseline), one final (the knee), search.calibrate = 5: the other
  student, the only one left, is regular-distilled, recorded, graded in report.md and summary.json
  beside the final; a resumed search finds it done."""
  cfg = configs.load_config("quickstart", search_overrides(tiny_teacher, **{
      "search.designer": "random", "search.num_initial": 2, "search.num_trials": 2, "search.baseline_arch": "",
      "final.count": 1, "final.include_baseline": False, "final.export_hf": False, "search.calibrate": 5,
      "search.measure.reference": ""}))
  run_dir = str(tmp_path / "run")
  logs: list[str] = []
  summary = loop.run_search(cfg, run_dir, log=logs.append, progress=False)
  store = store_lib.TrialStore(run_dir, create=False)
  (picked,) = store.get_meta(calibration.CALIBRATION_KEY).items()
  finals = [f["arch"] for f in store.finals()]
  store.close()
  name, entry = picked
  assert entry["status"] == "ok" and name not in finals and len(entry["per_sequence"]["mlm_correct"]) > 0
  assert any("search.calibrate=5, but only 1 search student(s) besides the finals" in m for m in logs)
  assert os.path.isdir(os.path.join(run_dir, "calibration", name))
  assert summary["calibration"]["count"] == len(finals) + 1
  assert {s["arch"] for s in summary["calibration"]["students"]} == set(finals) | {name}
  assert "## Calibration: the accuracy proxy against regular distillation" in open(os.path.join(run_dir, "report.md")).read()
  logs.clear()
  loop.run_search(cfg, run_dir, resume=True, log=logs.append, progress=False)
  assert not [m for m in logs if "calibration: regular distillation" in m], logs
