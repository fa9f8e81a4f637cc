"""Nothing lost, nothing leaked, nothing silently wrong, round 2: each test is named after the fault
it guards against (the probes of the second reliability round)."""

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from ad import cli, configs, export, files
from ad.finetune import trainer as finetune_lib
from ad.search import loop, parallel, store as store_lib
from tests.conftest import SEARCH_BASELINE, distill_overrides, search_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = "Pw9-leak-canary"


def _ad(*args, timeout=600, env=None, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "ad.cli", *args], cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, env=env or os.environ)


@contextlib.contextmanager
def read_only(path):
  """`path` made immutable (chattr +i): read-only even to root, as a colleague's run directory is."""
  subprocess.run(["chattr", "+i", str(path)], check=True)
  try:
    yield
  finally:
    subprocess.run(["chattr", "-i", str(path)], check=True)


def _search_overrides(teacher, **extra):
  return search_overrides(teacher, **{"search.designer": "random", "search.num_initial": 1, "search.num_trials": 1,
                                      "distill.regular.pretrain_steps": 2, **extra})


def _pg_url(postgres, database):
  import psycopg
  with psycopg.connect(postgres.get_uri(), autocommit=True) as c:
    c.execute(f"CREATE DATABASE {database}")
  return postgres.get_uri(database).replace("postgres:@", f"postgres:{PASSWORD}@")  # trust auth ignores it


def _store_with_trial(run_dir, **row):
  store = store_lib.TrialStore(str(run_dir))
  store.bind_coordinator(str(run_dir))
  store.set_meta("record", dict(config=json.loads(configs.load_config("quickstart").to_json_best_effort()),
                                designer="random"))
  tid = store.start_trial("128_64_1_384_1", "initial", "initial", 0, dict(params=1, flops=1.0), str(run_dir / "t"))
  store.finish_trial(tid, "ok", objectives=dict(mlm_accuracy=0.3, latency_ms=2.0),
                     objective_se=dict(mlm_accuracy=0.01, latency_ms=0.1))
  store.close()
  if row:
    db = sqlite3.connect(run_dir / store_lib.STORE_FILE)
    with db:
      for column, value in row.items():
        db.execute(f"UPDATE trials SET {column} = ?", (value,))
    db.close()


# ---- lost data ---------------------------------------------------------------------------------------

def test_finetune_results_of_two_checkpoints_with_one_folder_name_never_share_a_directory(tmp_path):
  a, b = tmp_path / "search1" / "512_128_4_512_4", tmp_path / "search2" / "512_128_4_512_4"
  root = str(tmp_path / "ft")
  da, db = finetune_lib.result_dir(root, str(a), "rotten_tomatoes"), finetune_lib.result_dir(root, str(b),
                                                                                              "rotten_tomatoes")
  assert da != db and os.path.basename(da).startswith("512_128_4_512_4-")
  finetune_lib.claim_result_dir(da, str(a), "rotten_tomatoes")
  files.write_json(os.path.join(da, finetune_lib.RESULT_FILE), dict(test=1))
  with pytest.raises(FileExistsError, match="holds the fine-tuning of .*search1.*not of .*search2"):
    finetune_lib.claim_result_dir(da, str(b), "rotten_tomatoes", write=False)
  with pytest.raises(FileExistsError, match="already holds a finished result"):
    finetune_lib.claim_result_dir(da, str(a), "rotten_tomatoes", write=False)
  assert json.load(open(os.path.join(da, finetune_lib.RESULT_FILE))) == dict(test=1)


def test_distill_export_into_a_non_empty_directory_is_refused_before_anything_runs(tmp_path):
  out = tmp_path / "mine"
  out.mkdir()
  (out / "README.md").write_text("my notes")
  rc = cli.main(["distill", "--config", "quickstart", "--arch", "512_128_4_512_4", "--workdir",
                 str(tmp_path / "wd"), "--export", str(out)])
  assert rc == 2 and (out / "README.md").read_text() == "my notes" and not (tmp_path / "wd").exists()


# ---- leaked -------------------------------------------------------------------------------------------

def test_a_postgresql_password_is_written_nowhere_in_a_finished_run(tmp_path, tiny_teacher, postgres, monkeypatch,
                                                                    capsys):
  """A search over PostgreSQL with its finals (the knee and the baseline, distilled and exported
  with model cards): no file of the run holds the password."""
  url = _pg_url(postgres, "leak")
  run_dir = tmp_path / "run"
  # objectives that need no training keep the trials to a measurement; the finals are distilled and exported
  objectives = str([dict(name="latency_ms", direction="min", reference=50.0),
                    dict(name="params", direction="min", reference=1e9)])
  args = ["search", "--config", "quickstart", "--run-dir", str(run_dir), "--no-progress", "--store", url,
          *[f"--set={o}" for o in _search_overrides(tiny_teacher, **{"final.count": 1, "search.objectives": objectives})]]
  monkeypatch.setattr(sys, "argv", ["ad"] + args)  # what lock files and model cards record
  assert cli.main(args) == 0
  summary = json.loads(capsys.readouterr().out)
  final, base_final = summary["finals"]  # the knee, then the baseline (a like-for-like final comparison)
  assert final["status"] == base_final["status"] == "ok" and final["mlm_accuracy_se"] > 0
  assert final["arch"] in {p["arch"] for p in summary["pareto"]} and base_final["arch"] == SEARCH_BASELINE
  assert os.path.isdir(final["checkpoint"]) and os.path.isfile(os.path.join(final["hf_dir"], "model.safetensors"))
  from ad.models import hf
  assert hf.load_mobilebert(final["hf_dir"]).cfg.arch.name == final["arch"]
  lat = next(t for t in store_lib.TrialStore(str(run_dir), url=url, readonly=True).trials()
             if t.arch == final["arch"]).objectives["latency_ms"]
  card = open(os.path.join(final["hf_dir"], "README.md")).read()  # the model card states the measured latency
  assert f"{lat:.3f} ms" in card and final["arch"] in card
  assert list(run_dir.glob("final/*/student.json"))
  assert list(run_dir.rglob(".lock"))
  leaks = [str(p) for p in run_dir.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
  assert not leaks, leaks
  assert "postgres:***@" in (run_dir / store_lib.SEARCH_FILE).read_text()
  assert "postgres:***@" in next(run_dir.glob("final/*/hf/README.md")).read_text()


# ---- wrong results with exit 0 ------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["notaurl", "postgres:/x/db", "sqlite:///tmp/trials.db"])
def test_a_store_that_is_not_a_postgresql_url_is_refused_before_anything_is_written(tmp_path, url, monkeypatch,
                                                                                      capsys):
  monkeypatch.chdir(tmp_path)
  rc = cli.main(["search", "--config", "quickstart", "--run-dir", str(tmp_path / "run"), "--store", url])
  err = capsys.readouterr().err
  assert rc == 2 and "--store" in err and "postgresql://user:password@host/dbname" in err or "leave --store out" in err
  assert os.listdir(tmp_path) == []  # no run directory, no SQLite file named like the URL


def test_two_coordinators_cannot_run_one_postgresql_search(tmp_path, postgres):
  url = _pg_url(postgres, "two_coordinators")
  first = store_lib.TrialStore(str(tmp_path / "a"), url=url)
  first.bind_coordinator(str(tmp_path / "a"))  # coordinating, and holding the store
  cfg = configs.load_config("quickstart")
  with pytest.raises(files.LockedError, match=rf"another `ad search` coordinates this store's search \(pid {os.getpid()}"):
    loop.run_search(cfg, str(tmp_path / "b"), store_url=url, log=lambda *_: None)
  first.set_meta("record", dict(config={}, designer="random"))
  first.close()  # the first coordinator is gone: its search stays its own
  with pytest.raises(store_lib.StoreError, match=r"run directory and the store of one search"):
    loop.run_search(cfg, str(tmp_path / "b"), store_url=url, resume=True, log=lambda *_: None)


def test_report_into_a_run_directory_from_another_searchs_store_is_refused(tmp_path, postgres):
  url = _pg_url(postgres, "other_search")
  store = store_lib.TrialStore(str(tmp_path / "a"), url=url)
  store.bind_coordinator(str(tmp_path / "a"))
  store.close()
  _store_with_trial(tmp_path / "b")  # another search, with its own report
  assert cli.main(["report", str(tmp_path / "b")]) == 0
  before = (tmp_path / "b" / "report.md").read_bytes()
  assert cli.main(["report", str(tmp_path / "b"), "--store", url]) == 2
  assert (tmp_path / "b" / "report.md").read_bytes() == before


@pytest.mark.parametrize("override,names", [
    ("constraints.max_latency_ms=-5", "constraints.max_latency_ms=-5.0"),
    ("search.workers.lease_s=0", "search.workers.lease_s=0.0"),
    ("search.seed=-1", "search.seed=-1"),
    ("distill.lr=-0.5", "distill.lr=-0.5"),
    ("distill.lr=nan", "distill.lr=nan"),
    ("distill.flash.steps_per_block=-3", "distill.steps_per_block=-3"),
])
def test_settings_no_run_can_use_are_refused_before_anything_is_written(tmp_path, override, names, capsys):
  rc = cli.main(["search", "--config", "quickstart", "--run-dir", str(tmp_path / "run"), "--set", override])
  assert rc == 2 and names in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_distill_with_a_bad_setting_or_starting_checkpoint_writes_no_workdir(tmp_path, tiny_teacher, capsys):
  wd = tmp_path / "wd"
  base = ["distill", "--config", "quickstart", "--arch", "128_64_2_384_2", "--workdir", str(wd),
          *[f"--set={o}" for o in distill_overrides(tiny_teacher)]]
  assert cli.main(base + ["--set", "distill.lr=nan"]) == 2 and "distill.lr=nan" in capsys.readouterr().err
  other = tmp_path / "not_a_student"
  other.mkdir()
  assert cli.main(base + ["--init-student", str(other)]) == 2
  assert "--init-student" in capsys.readouterr().err
  assert not (wd / "run.json").exists()  # the corrected command is not refused


def test_every_command_says_help_and_names_a_bad_numeric_option(capsys):
  """Every subcommand prints its help; each numeric option given an impossible value is refused by
  name, with no traceback."""
  parser = cli.build_parser()
  subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
  bad_values = {}
  for name, sub in subs.choices.items():
    leaves = [sub] if not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions) else list(
        next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices.values())
    for leaf in leaves:
      assert cli.main(leaf.prog.split()[1:] + ["--help"]) == 0 and "usage:" in capsys.readouterr().out
      for action in leaf._actions:
        if callable(action.type) and action.type is not str and action.option_strings:
          bad_values[(leaf.prog, action.option_strings[0])] = "-1" if action.type.__name__ != "_share" else "1.5"
  assert len(bad_values) >= 15  # --blocks, --seq, --batch, --max-reps, --folds, --workers, --max-trials, ...
  for (prog, option), value in bad_values.items():
    code = cli.main(prog.split()[1:] + [option, value])
    err = capsys.readouterr().err
    assert code == 2 and f"argument {option}" in err and "Traceback" not in err, (prog, option, err)


def test_values_read_back_from_a_store_are_checked_like_new_ones(tmp_path):
  _store_with_trial(tmp_path / "neg", objectives=json.dumps(dict(mlm_accuracy=0.3, latency_ms=-3.0)))
  with pytest.raises(store_lib.StoreError, match=r"trial 1 \(128_64_1_384_1\) holds latency_ms=-3.0"):
    store_lib.TrialStore(str(tmp_path / "neg"), readonly=True).trials()
  _store_with_trial(tmp_path / "nan", objective_se='{"mlm_accuracy": NaN, "latency_ms": 0.1}')
  assert cli.main(["report", str(tmp_path / "nan")]) == 2
  with pytest.raises(ValueError, match="refusing to record latency_ms=-1"):
    store = store_lib.TrialStore(str(tmp_path / "new"))
    tid = store.start_trial("128_64_1_384_1", "initial", "initial", 0, dict(params=1, flops=1.0), str(tmp_path))
    store.finish_trial(tid, "ok", objectives=dict(latency_ms=-1.0))


@pytest.mark.parametrize("column,value,says", [("objectives", "[0.3, 2.0]", "holds a JSON list"),
                                               ("screening", None, "column 'screening', is None"),
                                               ("measurement", '"fast"', "holds a JSON str")])
def test_rows_of_the_wrong_shape_name_the_row_and_column(tmp_path, column, value, says, capsys):
  _store_with_trial(tmp_path, **{column: value})
  assert cli.main(["report", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "trial 1 (128_64_1_384_1)" in err and f"'{column}'" in err and says in err and "Traceback" not in err


@pytest.fixture(scope="module")
def student_params():
  """A one-block student's config and parameters, made once for this module's export tests."""
  from flax import nnx
  from ad.train.params import Rebuild
  from ad.models import student as student_lib
  scfg = student_lib.config_from_dict("128_64_2_256_1", configs.load_config("quickstart").model, num_blocks=1)
  return scfg, Rebuild(student_lib.Student(scfg, nnx.Rngs(0))).params


@pytest.fixture
def finished_student(tmp_path, student_params):
  """A distillation workdir holding a finished student (student.json + student/), made directly."""
  import jax
  from ad.data import pretrain, settings as data_settings
  from ad.train import checkpoints
  from ad.models import hf
  scfg, params = student_params
  wd = tmp_path / "wd"
  wd.mkdir()
  data_cfg = data_settings.config_from_dict(configs.load_config("quickstart").data)
  export.write_student_info(str(wd), scfg, pretrain.load_vocab(data_cfg, hf.minilm_dir()), data_cfg, "teacher",
                            "flash")
  params = jax.tree.map(lambda x: x, params)  # a test's own copy of the dict tree: tests change leaves
  return wd, params, lambda p: checkpoints.save_student_params(str(wd), p)


def test_export_checks_the_student_it_reads(finished_student, tmp_path, capsys):
  wd, params, save = finished_student
  params["embeddings"]["transform"]["kernel"] = params["embeddings"]["transform"]["kernel"].at[0, 0].set(np.nan)
  save(params)
  assert cli.main(["export", str(wd), "--out", str(tmp_path / "hf")]) == 2
  assert "non-finite parameters" in capsys.readouterr().err and not (tmp_path / "hf" / "model.safetensors").exists()
  chunk = max((p for p in (wd / "student").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  chunk.write_bytes(chunk.read_bytes()[:len(chunk.read_bytes()) // 3])  # a truncated chunk
  assert cli.main(["export", str(wd), "--out", str(tmp_path / "hf")]) == 2
  err = capsys.readouterr().err
  assert "cannot restore the student" in err and "Traceback" not in err


def test_export_onto_its_own_source_or_a_file_is_refused(finished_student, tmp_path, capsys):
  wd, params, save = finished_student
  save(params)
  assert cli.main(["export", str(wd), "--out", str(wd / "hf"), "--force"]) == 2
  assert "is (or contains, or is inside) the export's source" in capsys.readouterr().err
  (tmp_path / "a_file").write_text("x")
  assert cli.main(["export", str(wd), "--out", str(tmp_path / "a_file")]) == 2
  assert "a file is in the way" in capsys.readouterr().err


def test_written_files_follow_the_umask(finished_student, tmp_path):
  wd, params, save = finished_student
  save(params)
  old = os.umask(0o022)
  try:
    path = files.write_json(str(tmp_path / "x.json"), {})
    assert cli.main(["export", str(wd), "--out", str(tmp_path / "hf")]) == 0
  finally:
    os.umask(old)
  for p in (path, tmp_path / "hf" / "model.safetensors", tmp_path / "hf" / "config.json"):
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p


def test_ctrl_c_stops_a_fine_tuning_with_exit_130(tmp_path, tiny_teacher):
  args = [sys.executable, "-m", "ad.cli", "finetune", "--checkpoint", tiny_teacher, "--task", "rotten_tomatoes",
          "--workdir", str(tmp_path / "ft"), "--config", "quickstart", "--set", "finetune.seq_len=32",
          "--set", "finetune.batch_size=8", "--set", "finetune.max_eval_examples=64", "--epochs", "1"]
  proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not list((tmp_path / "ft").rglob("events.out.tfevents*")):
    time.sleep(0.2)  # training has started once its TensorBoard writer exists
  assert proc.poll() is None, proc.communicate()[1][-2000:]
  time.sleep(1.0)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  assert "interrupted (interrupted at step" in err and "run the same command again" in err
  assert not list((tmp_path / "ft").rglob(finetune_lib.RESULT_FILE))


# ---- misleading errors and hangs ----------------------------------------------------------------------

def test_superlm_extract_onto_a_file_is_refused_at_once(tmp_path, capsys):
  (tmp_path / "a_file").write_text("x")
  assert cli.main(["superlm", "extract", "--arch", "512_128_4_512_4", "--workdir", str(tmp_path / "none"), "--out",
                   str(tmp_path / "a_file")]) == 2
  assert "a file is in the way" in capsys.readouterr().err


def test_a_worker_joining_a_search_without_workers_stops_at_once(tmp_path, capsys):
  _store_with_trial(tmp_path)
  store = store_lib.TrialStore(str(tmp_path))
  store.set_meta("search_state", "sequential")
  store.close()
  assert cli.main(["worker", "--run-dir", str(tmp_path)]) == 2
  assert "a worker has nothing to claim" in capsys.readouterr().err
  store = store_lib.TrialStore(str(tmp_path))
  store.set_meta("search_state", "done")
  store.close()
  assert parallel.run_worker(str(tmp_path), log=lambda *_: None) == 0


def test_a_read_only_run_directory_is_reported_and_exported_from(tmp_path, capsys):
  run = tmp_path / "run"
  _store_with_trial(run)
  with read_only(run):
    assert cli.main(["report", str(run)]) == 2
    assert "is read-only: give the report another place" in capsys.readouterr().err
    assert cli.main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").is_file()
    assert store_lib.TrialStore(str(run), readonly=True).trials()[0].arch == "128_64_1_384_1"
    assert cli.main(["latency-model", str(run)]) == 2  # read, then refused for its single measurement-less trial
    assert "needs at least" in capsys.readouterr().err
    rc = cli.main(["search", "--config", "quickstart", "--run-dir", str(run), "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and "read-only" in err and "damaged" not in err


def test_a_directory_argument_that_is_a_file_is_named(tmp_path, capsys):
  (tmp_path / "f").write_text("x")
  assert cli.main(["search", "--config", "quickstart", "--run-dir", str(tmp_path / "f")]) == 2
  assert "a file is in the way" in capsys.readouterr().err
  with pytest.raises(FileExistsError, match="a file is in the way"):
    finetune_lib.claim_result_dir(str(tmp_path / "f"), str(tmp_path), "rotten_tomatoes", write=False)


def test_latency_model_names_the_row_and_column_of_a_bad_number(tmp_path, capsys):
  csv = tmp_path / "m.csv"
  csv.write_text("arch,num_blocks,latency_ms_median,flops\n" + "".join(
      f"128_64_1_384_{f},3,{1 + f},1e9\n" for f in (1, 2, 4, 6)) + "128_64_2_384_2,3,fast,1e9\n")
  assert cli.main(["latency-model", str(csv), "--folds", "2"]) == 2
  assert f"{csv} row 6: column 'latency_ms_median' is 'fast', expected a number" in capsys.readouterr().err


def test_a_finetune_workdir_under_a_read_only_parent_is_refused_before_any_work(tmp_path):
  parent = tmp_path / "shared"
  parent.mkdir()
  with read_only(parent):
    with pytest.raises(FileExistsError, match=r"shared is not writable; choose a writable place"):
      finetune_lib.claim_result_dir(str(parent / "ft" / "x_rotten_tomatoes"), str(tmp_path), "rotten_tomatoes",
                                    write=False)
