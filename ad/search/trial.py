"""One trial of the search: what runs next, its target (a student of the space or the baseline
checkpoint), its evaluation (measurement, latency constraint, flash distillation or the SuperLM
proxy), and its record in the store. The sequential loop (ad/search/loop.py) and the workers
(ad/search/parallel.py) both run trials through this module."""

from __future__ import annotations

import os
import time
import traceback
from typing import Any, Callable

from ad import files, interrupt, multihost, space as space_lib
from ad.data import pretrain, settings as data_settings
from ad.distill import evaluation, settings as distill_settings, superlm, trainer
from ad.distill.context import TeacherContext
from ad.models import hf, student as student_lib
from ad.search import report as report_lib, settings
from ad.search.measurement import latency_verdict, measure, trace_dir_of
from ad.search.store import Trial
from ad.search.objectives import (TRAINED, checked_objectives, designer_trials, modelled_constraints, screening,
                                  screening_of, with_prediction)


def proxy_of(cfg) -> str:
  """search.proxy: 'flash' (003: flash-distill each candidate), 'superlm' (004) or 'fewshot' (001)."""
  return settings.search_settings(cfg).proxy


def proxy_dir(run_dir: str, proxy: str) -> str:
  """Where a search keeps the SuperLM(s) its proxy extracts candidates from."""
  return os.path.join(run_dir, proxy)


def evaluate_trial(arch: space_lib.Arch, cfg, workdir: str, trace_dir: str, names, log: Callable,
                   measure_here: bool = True, proxy_workdir: str = "", lock_wait_s: float = 0.0,
                   store=None, context: TeacherContext | None = None) -> dict[str, Any]:
  """Measures, checks the latency constraint, flash-distills; returns the trial's record fields.

  The accuracy objectives come from the search's proxy (search.proxy): a flash distillation in
  `workdir`, or the candidate extracted from the SuperLM(s) in `proxy_workdir`.
  Raises on failure (the loop records the error); returns status 'infeasible' without training
  when the measured latency breaks constraints.max_latency_ms. With several processes, process
  0's measurement decides feasibility and every process follows it. measure_here=False: only
  distills (a measure worker on the target measures the trial, search.measure.target). context: the
  search's teacher and evaluation set (ad/distill/context.py).
  """
  out = dict(measurement=None, measure_s=None, distill=None, distill_s=None)
  if measure_here:
    t0 = time.time()
    out["measurement"] = measure(arch, cfg, trace_dir, store=store)
    out["measure_s"] = time.time() - t0
    error = latency_verdict(out["measurement"], cfg)
    if multihost.broadcast_str("infeasible" if error else "ok") == "infeasible":
      out.update(status="infeasible", error=error)
      return out
  if any(n in TRAINED for n in names):
    t0 = time.time()
    proxy = proxy_of(cfg)
    if proxy == "flash":
      out["distill"] = trainer.distill(arch, cfg, "flash", workdir, resume=True, log=log, progress=False,
                                       lock_wait_s=lock_wait_s, context=context)
    else:  # extracted from the SuperLM(s) trained before the first trial, scored without training
      out["distill"] = superlm.proxy_scores(arch, cfg, proxy_workdir, log=log, context=context)
    out["distill_s"] = time.time() - t0
  out["status"] = "ok"
  return out


def checkpoint_model_cfg(path: str, cfg) -> tuple[Any, dict]:
  """(StudentConfig, model section) of a MobileBERT-family HF checkpoint directory: its own shape
  and options, computed like the search's students (config.model's dtype and kernels)."""
  scfg = hf.student_config_from_hf(hf.read_config(path), os.path.join(path, hf.CONFIG_FILE))
  section = student_lib.model_section(scfg)
  section.update({k: cfg.model[k] for k in ("dtype", "attention_impl", "ffn_impl") if k in cfg.model})
  return scfg, section


def check_baseline_checkpoint(path: str, cfg) -> None:
  """search.baseline_checkpoint must be a MobileBERT-family HF directory tokenizing like the data."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"search.baseline_checkpoint={path!r}: no such directory (expected a Hugging Face "
                            "MobileBERT-family checkpoint: config.json, model.safetensors, vocab.txt)")
  checkpoint_model_cfg(path, cfg)
  vocab_file = os.path.join(path, "vocab.txt")
  teacher_source = distill_settings.teacher_settings(cfg.teacher).source
  data_vocab = pretrain.load_vocab(data_settings.config_from_dict(cfg.data), teacher_source or None).vocab_file
  if not os.path.isfile(vocab_file):
    raise FileNotFoundError(f"search.baseline_checkpoint: {vocab_file} is missing; it is needed to check the "
                            f"checkpoint tokenizes like the evaluation data ({data_vocab})")
  if files.sha256_file(vocab_file) != files.sha256_file(data_vocab):
    raise ValueError(f"search.baseline_checkpoint: {vocab_file} differs from the evaluation data's vocabulary "
                     f"{data_vocab}; its scores on the held-out set would mean nothing")


def evaluate_checkpoint(path: str, cfg, trace_dir: str, log: Callable, store=None,
                        context: TeacherContext | None = None) -> dict[str, Any]:
  """A baseline checkpoint, as it is (no distillation): measured like a trial (its own shape, this
  backend, search.measure) and scored on the held-out evaluation set with its standard errors,
  teacher agreement against the search's teacher."""
  scfg, section = checkpoint_model_cfg(path, cfg)
  t0 = time.time()
  measurement = measure(scfg.arch, cfg, trace_dir, model_cfg=section, store=store)
  measure_s = time.time() - t0
  t0 = time.time()
  context = context or TeacherContext.build(cfg, log=log)
  context.check_serves(cfg, section["dtype"])
  scores = evaluation.evaluate(hf.load_mobilebert(path, dtype=section["dtype"]), context.eval_set,
                               context.teacher_top1, what=path)
  scores.update(checkpoint=os.path.abspath(path), num_blocks=scfg.num_blocks)
  return dict(status="ok", measurement=measurement, measure_s=measure_s, distill=scores, distill_s=time.time() - t0)


def trial_timings(r: dict, designer_s: float) -> dict[str, float]:
  """A trial's wall-time split: designer, measurement, and the flash distillation's setup,
  compilation, training steps, checkpoints and evaluation."""
  d = r.get("distill") or {}
  out = dict(designer_s=designer_s, measure_s=r.get("measure_s") or 0.0)
  for k in ("setup_s", "compile_wall_s", "train_steps_s", "checkpoint_s", "eval_s", "wall_s"):
    out[f"distill_{k}"] = float(d.get(k) or 0.0)
  out["total_s"] = out["designer_s"] + out["measure_s"] + out["distill_wall_s"]
  return out


def is_checkpoint_trial(name: str, cfg) -> bool:
  ckpt_path = settings.search_settings(cfg).baseline_checkpoint
  return bool(ckpt_path) and name == report_lib.checkpoint_name(ckpt_path)


def trial_target(name: str, cfg, run_dir: str, names, measure_here: bool = True,
                 lock_wait_s: float = 0.0, store=None,
                 context: TeacherContext | None = None) -> tuple[str, dict, Callable[[], dict]]:
  """(workdir, screening, evaluate) of a trial: a student of the space, or the baseline
  checkpoint (search.baseline_checkpoint, named by report.checkpoint_name; always measured
  where it is scored). context: the search's teacher and evaluation set, for `evaluate`."""
  s = settings.search_settings(cfg)
  trace_dir = trace_dir_of(run_dir, name)
  if is_checkpoint_trial(name, cfg):
    ckpt_path = s.baseline_checkpoint
    model_cfg = checkpoint_model_cfg(ckpt_path, cfg)[0]
    screen = with_prediction(screening_of(model_cfg, s.measure.seq), model_cfg.arch, names, cfg)
    return (os.path.abspath(ckpt_path), screen,
            lambda: evaluate_checkpoint(ckpt_path, cfg, trace_dir, log=lambda m: None, store=store, context=context))
  arch = space_lib.Arch.parse(name)
  workdir = os.path.join(run_dir, "trials", arch.name)
  return (workdir, with_prediction(screening(arch, cfg.model, s.measure.seq), arch, names, cfg),
          lambda: evaluate_trial(arch, cfg, workdir, trace_dir, names, log=lambda m: None, measure_here=measure_here,
                                 proxy_workdir=proxy_dir(run_dir, proxy_of(cfg)), lock_wait_s=lock_wait_s,
                                 store=store, context=context))


def search_context(cfg, names, log: Callable) -> TeacherContext | None:
  """The teacher context a process running the search's trials builds once (ad/distill/context.py):
  when its trials are scored (a trained objective, or a baseline checkpoint), else None."""
  if not (set(TRAINED) & set(names) or settings.search_settings(cfg).baseline_checkpoint):
    return None
  return TeacherContext.build(cfg, log=log)


def finish_joined(cfg, store, row: Trial, names, log: Callable) -> dict:
  """A trial measured on its target and distilled elsewhere, both halves in the store: its
  objectives (or 'infeasible' when the measurement breaks the latency constraint)."""
  error = latency_verdict(row.measurement, cfg)
  if error:
    store.finish_trial(row.id, "infeasible", error=error, measurement=row.measurement)  # BO models it
    return dict(status="infeasible", objectives=None)
  objectives, ses, error = checked_objectives(names, row.distill, row.measurement, row.screening)
  if error:
    log(f"search: trial {row.arch} failed: {error}")
    store.finish_trial(row.id, "failed", error=error)
    return dict(status="failed", objectives=None)
  store.finish_trial(row.id, "ok", objectives=objectives, objective_se=ses, measurement=row.measurement,
                     distill=row.distill, measure_s=row.measure_s, distill_s=row.distill_s,
                     timings=row.timings)
  return dict(status="ok", objectives=objectives)


def run_measurement(cfg, run_dir: str, store, row: Trial, names, log: Callable, worker: str) -> dict:
  """A measure worker's job: measures the trial's architecture on this machine, records it, and
  joins it with the distillation if that is already in. A failed measurement fails the trial."""
  name = row.arch
  try:
    t0 = time.time()
    measurement = measure(row.architecture, cfg, trace_dir_of(run_dir, name), store=store,
                          target=row.measure_target)
    measure_s = time.time() - t0
  except (KeyboardInterrupt, SystemExit, interrupt.Interrupted):
    raise
  except Exception as e:
    log(f"search: measuring {name} failed: {type(e).__name__}: {str(e)[:300]}")
    store.finish_trial(row.id, "failed", error=f"measurement on {row.measure_target}: {type(e).__name__}: {e}\n"
                                              f"{traceback.format_exc(limit=6)}")
    return dict(status="failed")
  recorded, complete = store.record_measurement(row.id, worker, measurement, measure_s)
  if complete:
    return dict(finish_joined(cfg, store, complete, names, log), recorded=recorded)
  return dict(status="measured" if recorded else "lost", recorded=recorded)


def run_trial(cfg, run_dir: str, store, row: Trial, names, log: Callable, designer_s: float = 0.0,
              worker: str | None = None, context: TeacherContext | None = None) -> dict:
  """Evaluates the trial of store row `row` (already started or claimed) and records it: its
  objectives, or 'failed' with the error (a NaN, an OOM, a damaged checkpoint: the search goes
  on). With `worker`, the result is written only while that worker still holds the trial.
  context: the search's teacher and evaluation set (search_context)."""
  name = row.arch
  remote = bool(row.measure_target) and not is_checkpoint_trial(name, cfg)  # measured by a measure worker
  # A worker that took the trial over waits up to a lease for its previous holder, alive but late,
  # to learn it lost the trial (its heartbeat) and let go of the workdir.
  wait = float(settings.search_settings(cfg).workers.lease_s) if worker else 0.0
  workdir, screen, evaluate = trial_target(name, cfg, run_dir, names, measure_here=not remote, lock_wait_s=wait,
                                           store=store, context=context)
  try:
    r = evaluate()
  except (KeyboardInterrupt, SystemExit, interrupt.Interrupted):
    raise  # the trial stays in flight: --resume (or the next worker) runs it again from its checkpoints
  except files.LockedError as e:
    if not worker or e.directory != os.path.abspath(workdir):
      raise
    # Still held after a lease: not the trial's fault. It goes back to the queue, not into the failures.
    store.release_trial(row.id, worker)
    log(f"search: trial {name} is still held by its previous holder after {wait:.0f} s; back in the queue")
    return dict(status="released", recorded=False)
  except Exception as e:
    err = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    log(f"search: trial {name} failed: {type(e).__name__}: {str(e)[:300]}")
    store.finish_trial(row.id, "failed", error=err, timings=dict(designer_s=designer_s), worker=worker)
    return dict(status="failed")
  if remote and r["status"] == "ok":  # the training half; the trial completes when both halves are in
    recorded, complete = store.record_distillation(row.id, worker, r["distill"], r["distill_s"],
                                                   trial_timings(r, designer_s))
    if complete:
      return dict(finish_joined(cfg, store, complete, names, log), recorded=recorded)
    return dict(status="trained" if recorded else "lost", recorded=recorded)
  objectives, ses, error = (checked_objectives(names, r["distill"], r["measurement"], screen) if r["status"] == "ok"
                            else (None, None, None))
  status = r["status"]
  if error:
    status = "failed"
    log(f"search: trial {name} failed: {error}")
  else:
    error = r.get("error")
  recorded = store.finish_trial(row.id, status, objectives=objectives, objective_se=ses,
                                measurement=r["measurement"], distill=r["distill"], error=error,
                                measure_s=r["measure_s"], distill_s=r["distill_s"],
                                timings=trial_timings(r, designer_s), worker=worker)
  if worker and not recorded:
    log(f"search: trial {name} finished on {worker} after its lease ran out; another worker's result counts")
  return dict(status=status, objectives=objectives, recorded=recorded)


class SearchStopped(RuntimeError):
  """The search cannot go on (too many failed trials, a worker that keeps dying): says why."""


def failure_budget_check(rows: list[Trial], max_failed: int) -> None:
  """Stops the search with a clear message once more than `max_failed` trials failed (0: no limit)."""
  failed = [r for r in rows if r.status == "failed"]
  if max_failed and len(failed) > max_failed:
    last = (failed[-1].error or "").splitlines()[0][:300]
    raise SearchStopped(f"search: {len(failed)} trials failed, more than search.max_failed_trials={max_failed} "
                       f"(the last, {failed[-1].arch}: {last}); the run directory's store lists every error. "
                       "Fix the cause, then --resume (failed trials are not run again; raise "
                       "search.max_failed_trials to go on regardless)")


def next_trial(cfg, rows: list[Trial], initial, des, names, designer: str,
               pending: tuple[space_lib.Arch, ...] = ()) -> tuple[str, str, str, float]:
  """What to run next given the store's rows: (name, role, designer, designer seconds), or
  ('', '', '', 0) when the budget is spent. The baseline first, then the baseline checkpoint,
  the initial design, then the designer's suggestions (avoiding `pending`: the architectures in
  flight)."""
  s = settings.search_settings(cfg)
  by_name = {t.arch for t in rows}
  ckpt_name = report_lib.checkpoint_name(s.baseline_checkpoint) if s.baseline_checkpoint else None
  if s.baseline_arch and s.baseline_arch not in by_name:
    return s.baseline_arch, "baseline", "baseline", 0.0
  if ckpt_name and ckpt_name not in by_name:
    return ckpt_name, report_lib.CHECKPOINT_ROLE, "checkpoint", 0.0
  designed = [t for t in rows if t.role not in report_lib.BASELINE_ROLES]
  if len(designed) >= s.num_trials:
    return "", "", "", 0.0
  n_initial = sum(1 for t in rows if t.role == "initial")
  todo = [a for a in initial if a.name not in by_name]
  if n_initial < s.num_initial and todo:
    return todo[0].name, "initial", "initial", 0.0
  t0 = time.time()
  des.update(designer_trials(rows, names, modelled_constraints(cfg)))
  return des.suggest(1, list(pending))[0].name, "designer", designer, time.time() - t0
