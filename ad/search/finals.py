"""After the search: the Pareto set re-timed beside the reference, the chosen students regularly
distilled and exported, the calibration runs, and the finals fine-tuned (003 Table 3)."""

from __future__ import annotations

import functools
import os
import time
import traceback
from typing import Callable

from ad import export, interrupt, multihost, rundir
from ad.data import settings as data_settings
from ad.distill import teacher_head, trainer
from ad.distill.context import TeacherContext
from ad.finetune import settings as finetune_settings, trainer as finetune_lib
from ad.search import calibration, report as report_lib, settings
from ad.search.measurement import LATENCY_SCALE_KEY, measurement_reference, remote_target, trace_dir_of
from ad.search.objectives import TIMED
from profiling import harness


def remeasure_front(cfg, run_dir: str, store, names, directions, log: Callable) -> dict | None:
  """Before the finals: the Pareto students and the reference timed together, in turn, in one
  process (harness.measure_together), so the front's latencies are compared within one session
  rather than across the search's hours of drift. Kept in the store's meta (once per front:
  a resumed run does not time the same front again); report.md shows it beside the search's."""
  reference = measurement_reference(cfg)
  if not reference or remote_target(cfg) or not set(TIMED) & set(names):
    return None  # nothing paired, or the target machine is elsewhere
  ok, mask = report_lib.front(store.trials(), names, directions)
  archs = sorted(r.arch for r, m in zip(ok, mask) if m)
  done = store.get_meta(report_lib.REMEASURED_KEY)
  if not archs or (done and done["archs"] == archs):
    return done
  m = settings.search_settings(cfg).measure
  programs = []
  for name in [reference] + [a for a in archs if a != reference]:
    fn, args, scfg = harness.student_forward(name, cfg.model, batch=m.batch, seq=m.seq)
    programs.append((name, fn, args))
  log(f"search: timing the Pareto set ({len(archs)}) and the reference {reference} together before the finals")
  rows = harness.measure_together(programs, reference=0, trace_dir=trace_dir_of(run_dir, "remeasure"),
                                  chunk=m.chunk, min_reps=min(20, m.max_reps), max_reps=m.max_reps,
                                  target_rel_ci=m.target_rel_ci,
                                  compiler_options=harness.inference_compiler_options(scfg.dtype) or None)
  scale = (store.get_meta(LATENCY_SCALE_KEY) or {}).get("ms") or rows[0]["latency_ms_median"]
  out = dict(reference=reference, scale_ms=float(scale), archs=archs, when=time.time(),
             rows={r["name"]: dict(latency_ms=r["latency_ratio"] * float(scale), rel_ci95=r["latency_ratio_rel_ci95"],
                                   latency_ratio=r["latency_ratio"], alone_ms=r["latency_ms_median"],
                                   repetitions=r["repetitions"]) for r in rows})
  store.set_meta(report_lib.REMEASURED_KEY, out)
  return out


def finetune_finals(cfg, run_dir: str, store, log: Callable, progress: bool, teacher_dir: str | None = None) -> None:
  """Fine-tunes every finished final (the baseline's included) and the teacher on each of
  final.finetune_tasks, recording each run in the store; a finished one is not run again.
  teacher_dir: the prepared teacher (the search's context has it; found from the config when not given)."""
  fcfg = finetune_settings.config_from_dict(cfg.get("finetune"))
  if teacher_dir is None:
    teacher_dir, _ = teacher_head.prepare_from_config(cfg.teacher, data_settings.config_from_dict(cfg.data), log=log,
                                                      progress=False)
  models = [(f["arch"], os.path.join(rundir.finals_dir(run_dir), f["arch"]))
            for f in store.finals() if f["status"] == "ok"]
  models.append(("teacher", teacher_dir))
  done = {(r["model"], r["task"]) for r in store.finetunes() if r["status"] == "ok"}
  for task in settings.final_settings(cfg).finetune_tasks:
    for name, path in models:
      interrupt.check("a fine-tuning boundary")
      if (name, task) in done:
        continue
      store.start_finetune(name, task)
      try:
        r = finetune_lib.finetune(path, task, fcfg, os.path.join(run_dir, "finetune", f"{name}_{task}"),
                                  log=lambda m: None, progress=progress)
      except (KeyboardInterrupt, SystemExit, interrupt.Interrupted):
        raise
      except Exception as e:
        log(f"search: fine-tuning {name} on {task} failed: {type(e).__name__}: {str(e)[:300]}")
        store.finish_finetune(name, task, "failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
        continue
      store.finish_finetune(name, task, "ok", result=r)
      log(f"search: {name} on {task}: test {r['metric']} {r['test']['value']:.4f} +- {r['test']['se']:.4f}")


def run_finals(cfg, run_dir: str, store, names, directions, log: Callable, progress: bool,
               context: TeacherContext | None = None) -> list[str]:
  """Everything after the search's last trial, each step resumable from the store: the front re-timed,
  report.md, the regular distillation of the chosen Pareto students (and of the baseline, like for
  like), search.calibrate more students, and the fine-tuning of the finals. Process 0 decides and
  records; every process of a multi-host run trains. Returns the chosen students. context: the search's
  teacher and evaluation set (ad/distill/context.py), shared by every run here."""
  is_main = multihost.is_main()
  if is_main:
    interrupt.check("the re-measurement of the Pareto set")
    remeasure_front(cfg, run_dir, store, names, directions, log)
    report_lib.write_report(run_dir, store)  # the search's report exists before the long final runs
  final, baseline = settings.final_settings(cfg), settings.search_settings(cfg).baseline_arch
  chosen = report_lib.choose_finals(store.trials(), names, directions, final) if is_main else []
  if is_main and final.include_baseline and baseline and chosen:
    chosen.append(baseline)
  chosen = [c for c in multihost.broadcast_str(",".join(chosen)).split(",") if c]
  distill = functools.partial(trainer.distill, context=context)
  distill_finals(cfg, run_dir, store, chosen, log, progress, distill)
  calibrate(cfg, run_dir, store, names, directions, chosen, log, progress, distill)
  if is_main and final.finetune_tasks:
    finetune_finals(cfg, run_dir, store, log, progress, context.teacher_dir if context else None)
  return chosen


def distill_finals(cfg, run_dir: str, store, chosen: list[str], log: Callable, progress: bool,
                   distill: Callable) -> None:
  """Regular distillation (final.schedule, by `distill`: trainer.distill with the search's context) of each
  chosen student into <run>/final/<arch>, saved and exported to Hugging Face; a finished one is skipped, a
  failed one recorded and the next run."""
  final = settings.final_settings(cfg)
  for name in chosen:
    interrupt.check("a final distillation boundary")
    done = {f["arch"]: f for f in store.finals()}
    if name in done and done[name]["status"] == "ok":
      continue
    workdir = os.path.join(rundir.finals_dir(run_dir), name)
    store.start_final(name)
    log(f"search: regular distillation of {name} into {workdir}")
    measured = next((t for t in reversed(store.trials("ok")) if t.arch == name), None)  # its latency, for the card
    try:
      m = distill(name, cfg, final.schedule, workdir, resume=True, log=lambda msg: None, progress=progress,
                  save_student=True, export_dir=os.path.join(workdir, "hf") if final.export_hf else None,
                  card_latency=export.card_latency(measured.objectives, measured.measurement) if measured else None)
    except (KeyboardInterrupt, SystemExit, interrupt.Interrupted):
      raise
    except Exception as e:
      log(f"search: final distillation of {name} failed: {type(e).__name__}: {str(e)[:300]}")
      store.finish_final(name, "failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
      continue
    store.finish_final(name, "ok", metrics=m, checkpoint=m.get("student_checkpoint"), hf_dir=m.get("hf_dir"))


def calibrate(cfg, run_dir: str, store, names, directions, chosen: list[str], log: Callable, progress: bool,
              distill: Callable) -> None:
  """search.calibrate more students regularly distilled, to grade the accuracy proxy (report.md)."""
  k = settings.search_settings(cfg).calibrate
  if k > 0 and "mlm_accuracy" not in names:
    log(f"search: search.calibrate={k} skipped: it grades the accuracy proxy, and the objectives {names} "
        "have no mlm_accuracy")
  elif k > 0:
    is_main = multihost.is_main()
    todo = (calibration.todo(store, *report_lib.front(store.trials(), names, directions), chosen, k, log)
            if is_main else [])
    todo = [c for c in multihost.broadcast_str(",".join(todo)).split(",") if c]
    calibration.distill_students(cfg, run_dir, todo, distill,
                                 calibration.record_in(store) if is_main else (lambda name, entry: None), log,
                                 progress)
