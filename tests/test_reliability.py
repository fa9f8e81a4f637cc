"""Nothing lost, nothing silently wrong: damaged inputs get errors that name them, interrupts stop
cleanly, a locked directory refuses a second user, a bad config writes nothing."""

import json
import os
import re
import signal
import socket
import sqlite3
import time

import ml_collections
import pytest

from ad import cli, configs, files, interrupt
from ad.search import loop, objectives, store as store_lib, trial
from tests.conftest import distill_overrides


# ---- the trial store ------------------------------------------------------------------------------

def _store_with_one_trial(run_dir, status="ok", objectives=None):
  store = store_lib.TrialStore(str(run_dir))
  tid = store.start_trial("128_64_1_384_1", "initial", "initial", 0, dict(params=1, flops=1.0), str(run_dir / "t"))
  store.finish_trial(tid, "ok", objectives=objectives or dict(mlm_accuracy=0.3, latency_ms=2.0))
  store.close()
  db = sqlite3.connect(run_dir / store_lib.STORE_FILE)
  with db:
    db.execute("UPDATE trials SET status = ?", (status,))
  db.close()


def test_an_unknown_trial_status_is_an_error_naming_the_row(tmp_path):
  _store_with_one_trial(tmp_path, status="done")
  with pytest.raises(store_lib.StoreError, match=r"trial 1 \(128_64_1_384_1\) has status 'done'"):
    store_lib.TrialStore(str(tmp_path)).trials()


def test_a_damaged_row_is_an_error_naming_the_row_and_column(tmp_path):
  _store_with_one_trial(tmp_path)
  db = sqlite3.connect(tmp_path / store_lib.STORE_FILE)
  with db:
    db.execute("UPDATE trials SET objectives = '{\"mlm_accuracy\": 0.3,'")
  db.close()
  with pytest.raises(store_lib.StoreError, match=r"trials.sqlite: trial 1 \(128_64_1_384_1\), column 'objectives', is not valid JSON"):
    store_lib.TrialStore(str(tmp_path)).trials()


@pytest.mark.parametrize("content", [b"this is not a database" * 100, None])
def test_a_file_that_is_not_a_store_or_is_truncated_is_named(tmp_path, content):
  path = tmp_path / store_lib.STORE_FILE
  if content is None:  # a real store cut in half
    _store_with_one_trial(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
  else:
    path.write_bytes(content)
  with pytest.raises(store_lib.StoreError, match=re.escape(str(path))):
    store_lib.TrialStore(str(tmp_path)).trials()
  assert cli.main(["report", str(tmp_path)]) == 2


def test_a_missing_objective_and_a_nan_objective_never_reach_the_designer(tmp_path, monkeypatch, tiny_teacher):
  """A trial whose evaluation yields NaN, or lacks an objective, is recorded as failed with the
  reason; it is not in the Pareto set and the designer sees it as failed. (The trial's evaluation
  is replaced: what is under test is what the loop makes of its result.)"""
  cfg = configs.load_config("quickstart", distill_overrides(tiny_teacher, **{
      "model.num_blocks": 1, "search.designer": "random", "search.num_initial": 3, "search.num_trials": 3,
      "search.baseline_arch": "", "final.count": 0}))
  results = [dict(mlm_accuracy=float("nan"), mlm_accuracy_se=0.01), dict(mlm_accuracy=0.25, mlm_accuracy_se=0.01),
             dict(mlm_cross_entropy=4.0, mlm_cross_entropy_se=0.01)]  # the last lacks mlm_accuracy

  def fake_trial(arch, cfg, workdir, trace_dir, names, log, **_):
    return dict(status="ok", measure_s=0.0, distill_s=0.0,
                measurement=dict(latency_ms_median=2.0, latency_rel_ci95=0.01, trace_dir=trace_dir),
                distill=results.pop(0))
  monkeypatch.setattr(trial, "evaluate_trial", fake_trial)
  summary = loop.run_search(cfg, str(tmp_path), log=lambda *_: None, progress=False)
  rows = store_lib.TrialStore(str(tmp_path), create=False).trials()
  assert not results and [r.status for r in rows] == ["failed", "ok", "failed"]
  assert "non-finite objective(s) mlm_accuracy=nan" in rows[0].error
  assert "gave no mlm_accuracy" in rows[2].error
  assert [p["arch"] for p in summary["pareto"]] == [rows[1].arch]
  seen = objectives.designer_trials(rows, ["mlm_accuracy", "latency_ms"])
  assert [t["status"] for t in seen] == ["failed", "ok", "failed"]


# ---- validation before writing, locks -------------------------------------------------------------

@pytest.mark.parametrize("override,match", [
    ({"final.choose": "best"}, "final.choose='best'"),
    ({"search.num_trials": 10_000}, "search.num_trials=10000"),
    ({"distill.recipe": "tinybert"}, "distill.recipe='tinybert'"),
    ({"search.measure.reference": "mobilebert"}, "search.measure.reference='mobilebert': expected 'baseline'"),
    ({"search.bo.pending": "nearest"}, "search.bo.pending='nearest': expected one of ('exclude', 'believer', 'hippo')"),
    ({"search.measure.scale": "global"}, "search.measure.scale='global': expected one of ('machine', 'run')"),
])
def test_a_config_that_fails_validation_writes_nothing(tmp_path, tiny_teacher, override, match):
  cfg = configs.load_config("quickstart", distill_overrides(tiny_teacher, **override))
  run_dir = tmp_path / "run"
  with pytest.raises(ValueError, match=re.escape(match)):
    loop.run_search(cfg, str(run_dir), log=lambda *_: None, progress=False)
  assert not run_dir.exists() or not os.listdir(run_dir)


def test_objectives_of_the_wrong_shape_are_named():
  # A config file can give search.objectives any shape; ConfigDict only type-checks overrides.
  search = configs.load_config("quickstart").search.to_dict()
  with pytest.raises(ValueError, match="search.objectives='mlm_accuracy': expected a list of dicts"):
    objectives.objective_spec(ml_collections.ConfigDict(dict(search, objectives="mlm_accuracy")))
  with pytest.raises(ValueError, match=r"search.objectives\[0\]=.*keys name, direction and reference"):
    objectives.objective_spec(ml_collections.ConfigDict(dict(search, objectives=[dict(name="mlm_accuracy", direction="max")])))


def test_a_locked_run_directory_is_refused_naming_the_holder(tmp_path, tiny_teacher):
  cfg = configs.load_config("quickstart", distill_overrides(tiny_teacher))
  with files.DirectoryLock(str(tmp_path), "search run directory"):
    with pytest.raises(files.LockedError, match=rf"in use by another process \(pid {os.getpid()} on "):
      loop.run_search(cfg, str(tmp_path), log=lambda *_: None, progress=False)
  assert not (tmp_path / store_lib.STORE_FILE).exists()


# ---- atomic writes ----------------------------------------------------------------------------------

def test_a_crash_during_a_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
  path = tmp_path / "summary.json"
  files.write_json(str(path), dict(trials=3))

  def crash(*a):
    raise OSError("disk gone")
  monkeypatch.setattr(os, "replace", crash)
  with pytest.raises(OSError, match="disk gone"):
    files.write_json(str(path), dict(trials=4))
  assert json.loads(path.read_text()) == dict(trials=3) and os.listdir(tmp_path) == ["summary.json"]


@pytest.mark.parametrize("name,what", [("run.json", "run record"), ("teacher.json", "teacher.json")])
def test_damaged_json_names_the_file_and_position(tmp_path, name, what):
  (tmp_path / name).write_text('{"arch": "128_64_1_384_1",\n "schedule": ')
  with pytest.raises(files.BadFileError, match=re.escape(f"{tmp_path / name}: not valid {what} (line 2")):
    files.read_json(str(tmp_path / name), what)


def test_a_truncated_safetensors_file_is_named(tmp_path):
  from ad.models import hf
  src = hf.minilm_dir()
  for f in (hf.CONFIG_FILE, hf.WEIGHTS_FILE):
    data = open(os.path.join(src, f), "rb").read()
    (tmp_path / f).write_bytes(data[:len(data) // 3] if f == hf.WEIGHTS_FILE else data)
  with pytest.raises(hf.CheckpointError, match=re.escape(f"{tmp_path / hf.WEIGHTS_FILE}: not a readable safetensors")):
    hf.load_bert(str(tmp_path))


# ---- configs and command-line values -----------------------------------------------------------------

def test_config_errors_name_the_file_line_and_value(tmp_path, monkeypatch, capsys):
  bad = tmp_path / "broken.py"
  bad.write_text("def get_config(:\n  pass\n")
  assert cli.main(["space", "--config", str(bad)]) == 2
  assert f"{bad}, line 1: the config is not valid Python" in capsys.readouterr().err
  assert cli.main(["space", "--config", str(tmp_path / "noext")]) == 2
  assert "must be a Python file ending in .py" in capsys.readouterr().err
  assert cli.main(["space", "--set", "space=[1]"]) == 2
  assert "space is a section" in capsys.readouterr().err
  assert cli.main(["space", "--set", "model.num_blocks.x=1"]) == 2
  assert "model.num_blocks is a value" in capsys.readouterr().err
  assert cli.main(["arch", "512_128_4_512_4", "--dtype", "float128"]) == 2
  assert "dtype='float128'" in capsys.readouterr().err


def test_a_config_name_never_runs_a_file_of_that_name_in_the_working_directory(tmp_path, monkeypatch, capsys):
  (tmp_path / "quickstart.py").write_text("raise SystemExit('this file must not run')\n")
  monkeypatch.chdir(tmp_path)
  assert configs.resolve("quickstart") == os.path.join(configs.CONFIG_DIR, "quickstart.py")
  assert cli.main(["space", "--config", "quickstart"]) == 0
  assert "576 architectures" in capsys.readouterr().out


def test_profile_with_few_repetitions(capsys, tmp_path):
  assert cli.main(["profile", "--arch", "128_64_1_384_2", "--blocks", "1", "--seq", "16", "--max-reps", "5",
                   "--trace-dir", str(tmp_path), "--json", "--set", "search.measure.chunk=5"]) == 0
  assert json.loads(capsys.readouterr().out)["repetitions"] == 5


def test_the_suite_cannot_reach_the_network():
  with pytest.raises(RuntimeError, match="tests must not reach the network"):
    socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never routed


# ---- Ctrl-C, resume, the persistent compilation cache --------------------------------------------------

def test_sigint_stops_at_a_step_with_a_checkpoint_and_resume_reuses_compiled_programs(tmp_path, tiny_teacher,
                                                                                        capsys):
  """A real SIGINT mid-run (sent to this process, through `ad`'s own handler): exit 130 with the
  resume hint, a checkpoint at the step it stopped on, no traceback; --resume finishes the run with
  no step logged twice and loads its programs from the persistent compilation cache instead of
  compiling them again. (A SIGINT to an `ad` subprocess: test_ctrl_c_stops_a_fine_tuning_...)"""
  import threading
  wd = tmp_path / "wd"
  args = ["distill", "--arch", "128_64_2_384_2", "--workdir", str(wd), "--no-progress", "--config", "quickstart"]
  args += [f"--set={o}" for o in distill_overrides(tiny_teacher, **{
      "distill.mesh_data": 1, "distill.checkpoint_every": 100, "distill.flash.pretrain_steps": 20})]
  losses = wd / "losses.jsonl"

  def interrupt_at_step_6():
    deadline = time.time() + 300
    while time.time() < deadline and not (losses.exists() and len(losses.read_text().splitlines()) >= 6):
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)

  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    sender = threading.Thread(target=interrupt_at_step_6, daemon=True)
    sender.start()
    assert cli.main(args) == 130
    sender.join()
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    steps = [json.loads(l)["step"] for l in losses.read_text().splitlines()]
    assert str(len(steps)) in os.listdir(wd / "checkpoints") and len(steps) < 24
    interrupt.reset()  # what a new process starts with
    assert cli.main(args + ["--resume"]) == 0
  finally:
    interrupt.reset()
    for s, h in handlers.items():
      signal.signal(s, h)
  m = json.loads((wd / "metrics.json").read_text())
  assert m["resumed_from"] == len(steps)
  assert [json.loads(l)["step"] for l in losses.read_text().splitlines()] == list(range(24))
  assert m["compile_cache_hits"] >= 2, m  # the progressive and pre-training steps, at least


def test_an_ok_trial_without_its_objective_is_an_error_naming_the_row(tmp_path):
  store = store_lib.TrialStore(str(tmp_path))
  store.set_meta("record", dict(config=dict(search=dict(objectives=[dict(name="mlm_accuracy", direction="max",
                                                                         reference=0.0)]))))
  store.close()
  _store_with_one_trial(tmp_path, objectives=dict(latency_ms=2.0))
  with pytest.raises(store_lib.StoreError, match=r"trial 1 \(128_64_1_384_1\) is 'ok' but .* for \['mlm_accuracy'\]"):
    store_lib.TrialStore(str(tmp_path)).trials()
