"""`ad search`: the AutoDistill loop (003 Fig. 1) over the trial store.

  prune the space by the constraints computable without training (params, FLOPs)
  -> evaluate the MobileBERT-shaped baseline the same way as every trial, and a baseline
     checkpoint if given (search.baseline_checkpoint: measured the same way, scored as it is)
  -> initial design (shared by every designer for the seed), then the designer's suggestions;
     per trial: measure on this backend (profiling/harness.py, traces kept), check the latency
     constraint, flash-distill (ad/distill/trainer.py), record objectives
  -> Pareto set, hypervolume, report.md, pareto.png, TensorBoard scalars
  -> regular distillation of the chosen Pareto students -> orbax + HF MobileBERT export
  -> fine-tuning of the finals, the baseline's final and the teacher on final.finetune_tasks
     (ad/finetune/), reported like 003 Table 3

Its parts: ad/search/objectives.py (what a trial is scored on), measurement.py (its latency),
trial.py (one trial, run here or by a worker, ad/search/parallel.py), finals.py (after the search),
ad/rundir.py (the run directory's layout); this module validates the config, keeps a resumed run
the same search, and runs the trials one at a time.

Resumable: every trial is in the SQLite store before it runs and after it ends. `--resume`
re-runs interrupted trials (their distillation resumes from its checkpoints), repeats no
completed one, and asks the designer only for what is still missing. Ctrl-C / SIGTERM stop at
the next step or trial boundary (ad/interrupt.py). Multi-host: every process runs every trial
on the global mesh; process 0 alone talks to the designer and writes the store (a no-op writer
elsewhere, ad/multihost.py), and broadcasts each architecture to the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
from tqdm import tqdm

from ad import configs, files, interrupt, multihost, space as space_lib
from ad.data import settings as data_settings, tf_setup
from ad.distill import settings as distill_settings, superlm, teacher_head
from ad.finetune import settings as finetune_settings, tasks as tasks_lib
from ad.models import student as student_lib
from ad.search import designers as designers_lib, finals, parallel, pareto, report as report_lib
from ad.search import settings, store as store_lib
from ad.search import trieste_service  # its PENDING_METHODS (imported, it loads numpy only)
from ad.search.measurement import SCALES, estimated_target, remote_target
from ad.search.objectives import feasible_candidates, modelled_constraints, objective_spec, screening
from ad.search.store import IN_FLIGHT, Trial, TrialStore
from ad.search.trial import (check_baseline_checkpoint, failure_budget_check, next_trial, proxy_dir, proxy_of,
                             run_trial, search_context, trial_target)
from ad.train.steps import MetricsWriter
from profiling import tpu


# search.* settings a resumed run may change: the failure budget, how trials are spread over workers, and
# the calibration that runs after the search.
RESUMABLE_SEARCH_KEYS = ("max_failed_trials", "workers", "calibrate")
# search.bo.constraints: what BO makes of a limit known only once a trial runs (modelled_constraints)
CONSTRAINT_METHODS = ("filter", "model")
CONSTRAINT_KINDS = ("max_params", "max_flops", "max_latency_ms")  # the constraints section's keys (0: off)


def check_search_ranges(cfg) -> None:
  """The numeric settings of the search, measure and constraints sections, each within what a run
  can use (ad/configs.py check_range names the setting, the value and the range)."""
  s, c, check = settings.search_settings(cfg), cfg.constraints, configs.check_range
  for k in ("seed", "max_failed_trials", "num_initial"):
    check(f"search.{k}", getattr(s, k), low=0)
  check("search.num_trials", s.num_trials, low=1)
  # a worker renews its lease every lease_s / 3: shorter than a few seconds, leases lapse between beats
  check("search.workers.lease_s", s.workers.lease_s, low=5)
  check("search.workers.poll_s", s.workers.poll_s, low=0, high=s.workers.lease_s / 3, low_open=True)
  for k in ("batch", "max_reps", "chunk"):
    check(f"search.measure.{k}", getattr(s.measure, k), low=1)
  check("search.measure.seq", s.measure.seq, low=8)
  check("search.measure.target_rel_ci", s.measure.target_rel_ci, low=0, high=1, low_open=True, high_open=True)
  for o in s.objectives:
    check(f"search.objectives[{o.get('name')}].reference", o.get("reference"))
  for k in c:  # 0 turns a constraint off
    check(f"constraints.{k}", c[k], low=0)
  check("search.bo.likelihood_variance", s.bo.likelihood_variance, low=0, low_open=True)
  check("search.evolution.population", s.evolution.population, low=2)
  for k in ("mutation_prob", "explore_prob"):
    check(f"search.evolution.{k}", getattr(s.evolution, k), low=0, high=1)
  check("search.firefly.population", s.firefly.population, low=1)
  for k in ("beta0", "gamma", "alpha"):
    check(f"search.firefly.{k}", getattr(s.firefly, k), low=0)
  check("final.count", settings.final_settings(cfg).count, low=0)


def _validated(cfg, run_dir: str, designer: str | None):
  """Everything a search needs, checked before anything is written (a bad config must leave no
  search record behind): (designer, objective spec, space, feasible candidates, pruned)."""
  names, directions, reference = objective_spec(cfg.search)  # a list of the wrong shape is named first
  s = settings.search_settings(cfg)  # an unknown key of the section fails here, naming it
  designer = designer or s.designer
  if designer not in designers_lib.DESIGNERS:
    raise ValueError(f"designer {designer!r}: expected one of {designers_lib.DESIGNERS}")
  check_search_ranges(cfg)
  if estimated_target(cfg):
    if tpu.parse_topology(estimated_target(cfg))[1] is not None:
      raise ValueError(f"search.measure.target={s.measure.target!r}: a latency estimate is for one chip, "
                       "'tpu:<chip>' (tpu:v4, tpu:v5e, tpu:v5p, tpu:v6e)")
  space = space_lib.DesignSpace.from_config(cfg.space)
  feasible, pruned = feasible_candidates(space, cfg.model, cfg.constraints, s.measure.seq)
  cands = designers_lib.Candidates(feasible, space)
  if s.num_trials > len(cands) or s.num_initial < 0 or s.num_initial > s.num_trials:
    raise ValueError(f"search.num_trials={s.num_trials}, search.num_initial={s.num_initial}: need "
                     f"0 <= num_initial <= num_trials <= {len(cands)} feasible architectures")
  if s.baseline_arch:
    space_lib.Arch.parse(s.baseline_arch)
  if s.bo.pending not in trieste_service.PENDING_METHODS:
    raise ValueError(f"search.bo.pending={s.bo.pending!r}: expected one of {trieste_service.PENDING_METHODS}")
  if not isinstance(s.bo.training_free, bool):
    raise ValueError(f"search.bo.training_free={s.bo.training_free!r}: expected True or False")
  if s.bo.constraints not in CONSTRAINT_METHODS:
    raise ValueError(f"search.bo.constraints={s.bo.constraints!r}: expected one of {CONSTRAINT_METHODS} ('filter': "
                     "an infeasible trial is only excluded; 'model': BO models the measured latency's limit)")
  k = s.calibrate
  if not isinstance(k, int) or isinstance(k, bool) or k < 0:
    raise ValueError(f"search.calibrate={k!r}: expected a whole number >= 0 of search students to regular-distill "
                     "after the finals (0: off; more than the search has: all of them)")
  unknown = sorted(set(cfg.constraints) - set(CONSTRAINT_KINDS))
  if unknown:
    raise ValueError(f"constraints.{unknown[0]}: unknown constraint; expected one of {CONSTRAINT_KINDS}")
  timed_against = s.measure.reference
  if timed_against not in ("", "baseline"):
    try:
      space_lib.Arch.parse(timed_against)
    except ValueError as e:
      raise ValueError(f"search.measure.reference={timed_against!r}: expected 'baseline' (search.baseline_arch), '' "
                       f"(each student timed alone) or an architecture such as 512_128_4_512_4 ({e})") from None
  if s.measure.scale not in SCALES:
    raise ValueError(f"search.measure.scale={s.measure.scale!r}: expected one of {SCALES}")
  if s.baseline_checkpoint:
    check_baseline_checkpoint(s.baseline_checkpoint, cfg)
  final = settings.final_settings(cfg)
  if final.choose not in report_lib.CHOICES:
    raise ValueError(f"final.choose={final.choose!r}: expected one of {report_lib.CHOICES}")
  if final.finetune_tasks:
    fcfg = finetune_settings.config_from_dict(cfg.get("finetune"))
    for task in final.finetune_tasks:  # unknown tasks and missing data fail now, not after the search
      tasks_lib.check_data(tasks_lib.get(task), fcfg.tfds_data_dir or None, fcfg.squad_dir or None)
  distill_settings.distill_config_from(cfg.distill, "flash")
  distill_settings.distill_config_from(cfg.distill, final.schedule)
  if proxy_of(cfg) not in superlm.PROXIES:
    raise ValueError(f"search.proxy={proxy_of(cfg)!r}: expected one of {superlm.PROXIES}")
  if proxy_of(cfg) != "flash":
    distill_settings.superlm_config_from(cfg)
  data_cfg = data_settings.config_from_dict(cfg.data)
  student_lib.config_from_dict(feasible[0], cfg.model)
  teacher_head.check_config(cfg.teacher, data_cfg)  # a teacher that does not fit fails now, not in every trial
  return designer, (names, directions, reference), space, cands, pruned


def designer_features(cfg, cands: designers_lib.Candidates, designer: str):
  """[N, 2] training-free inputs of BO's GPs (log parameters and log FLOPs of each candidate) when
  search.bo.training_free is on, else None."""
  search = settings.search_settings(cfg)
  if designer != "bo" or not search.bo.training_free:
    return None
  seq = search.measure.seq
  return designers_lib.training_free_features(
      [(sc["params"], sc["flops"]) for sc in (screening(a, cfg.model, seq) for a in cands.archs)])


def comparable(config: dict) -> dict:
  """The part of a run record's config that makes it the same search: what may change between runs
  (how, not what, is searched) is left out."""
  search = settings.record_config(config)["search"]
  search["measure"].pop("scale")  # a run keeps the scale its store recorded first, whatever this says
  # what BO makes of trials in flight, and what it sees beside the encoding, are how, not what,
  # is searched
  search["bo"] = {k: v for k, v in search.get("bo", {}).items()
                  if k not in ("pending", "training_free", "constraints")}
  # and where the hypervolume's reference point lies (it weighs the front, it changes no trial)
  search["objectives"] = [{k: v for k, v in o.items() if k != "reference_ratio"}
                          for o in search.get("objectives", [])]
  search = {k: v for k, v in search.items() if k not in RESUMABLE_SEARCH_KEYS}
  # and what runs after the search (the final distillations and their fine-tuning), and the
  # SuperLM settings of a search that does not use them
  ignored = ("final", "finetune") + (("superlm",) if search["proxy"] == "flash" else ())
  # the typed sections are compared as what they mean, so a key added later with its default
  # (data.shuffle_window) does not make an older run another search
  typed = dict(data=dataclasses.asdict(data_settings.config_from_dict(config.get("data"))),
               teacher=dataclasses.asdict(distill_settings.teacher_settings(config.get("teacher"))))
  return {k: v for k, v in dict(config, search=search, **typed).items() if k not in ignored}


def check_same_search(old: dict, record: dict, store_path: str) -> None:
  """--resume continues the search its store recorded, or fails naming the settings that differ."""
  new_c, old_c = comparable(record["config"]), comparable(old["config"])
  diff = sorted(k for k in set(new_c) | set(old_c)
                if json.dumps(new_c.get(k), sort_keys=True) != json.dumps(old_c.get(k), sort_keys=True))
  if diff or old["designer"] != record["designer"]:
    search_diff = sorted(f"search.{k}" for k in set(new_c["search"]) | set(old_c["search"])
                         if json.dumps(new_c["search"].get(k), sort_keys=True) !=
                         json.dumps(old_c["search"].get(k), sort_keys=True))
    diff = [d for d in diff if d != "search"] + search_diff
    raise ValueError(f"{store_path}: cannot resume, the config differs in {diff or ['designer']}")


def _sequential_trials(cfg, run_dir, store, initial, des, names, designer, bar, record_scalars, hv_now, log,
                       context) -> None:
  """One trial at a time in this process (on every process of a multi-host run: process 0
  decides and broadcasts, all train on the global mesh, process 0 records)."""
  s = settings.search_settings(cfg)
  is_main = multihost.is_main()
  while True:
    interrupt.check("a trial boundary of the search (completed trials are in the store)")
    name, role, who, existing, designer_s = "", "", "", None, 0.0
    if is_main:
      current = store.trials()
      failure_budget_check(current, s.max_failed_trials)
      in_flight = [t for t in current if t.status in IN_FLIGHT]
      if in_flight:  # interrupted by a crash (or queued by a parallel run): its distillation resumes
        existing = in_flight[0]
        name, role, who = existing.arch, existing.role, existing.designer
      else:
        name, role, who, designer_s = next_trial(cfg, current, initial, des, names, designer)
    name = multihost.broadcast_str(name or "-")
    if name == "-":
      break
    bar.set_postfix_str(f"hv={hv_now():.4g} in flight: {name} ({role})")
    if existing is None:
      workdir, screen, _ = trial_target(name, cfg, run_dir, names)
      trial_id = store.start_trial(name, role, who, s.seed, screen, workdir)  # None off host 0 (no-op store)
      row = Trial(arch=name, role=role, status="running", id=trial_id, designer=who, seed=s.seed, screening=screen,
                  workdir=workdir)
    else:
      row = existing
      store.restart_trial(row.id)
    r = run_trial(cfg, run_dir, store, row, names, log, designer_s, context=context)
    if is_main:
      record_scalars(r)
      if role not in report_lib.BASELINE_ROLES:
        bar.update(1)
      bar.set_postfix_str(f"hv={hv_now():.4g} last: {name} {r['status']}")
  if is_main:
    failure_budget_check(store.trials(), s.max_failed_trials)


def run_search(cfg, run_dir: str, *, resume: bool = False, designer: str | None = None, log: Callable = print,
               progress: bool = True, workers: int = 1, store_url: str | None = None) -> dict[str, Any]:
  """Runs (or resumes) the search of `cfg` in `run_dir`; returns the summary written to summary.json.

  The run directory is locked while the search runs; a second process gets an error naming it.
  workers > 1: trials run in that many worker processes over the store (ad/search/parallel.py);
  store_url: a PostgreSQL store instead of the run directory's SQLite file."""
  designer, spec, space, cands, pruned = _validated(cfg, run_dir, designer)
  if workers < 1:
    raise ValueError(f"--workers {workers}: expected at least 1")
  if store_url:
    store_lib.check_url(store_url)  # before the run directory is made
  if workers > 1 and jax.process_count() > 1:
    raise ValueError("--workers runs trials in worker processes on one host; a multi-host search (AD_NUM_PROCESSES) "
                     "runs each trial on the global mesh instead: use one or the other")
  run_dir = os.path.abspath(run_dir)
  lock = files.DirectoryLock(run_dir, "search run directory") if multihost.is_main() else None
  if lock:
    lock.__enter__()
  try:
    return _run_search(cfg, run_dir, resume, designer, spec, space, cands, pruned, log, progress, workers,
                       store_url)
  finally:
    if lock:
      lock.__exit__(None, None, None)


def _run_search(cfg, run_dir, resume, designer, spec, space, cands, pruned, log, progress, workers,
                store_url) -> dict[str, Any]:
  tf_setup.hide_accelerators_from_tf()  # before TensorFlow's first op (the TensorBoard writer below)

  s = settings.search_settings(cfg)
  names, directions, reference = spec
  is_main = multihost.is_main()
  t_start = time.time()

  # ---- run record: a run directory holds one search; --resume must continue the same one -------
  store = multihost.main_only(lambda: TrialStore(run_dir, url=store_url), dict(trials=list, finals=list))
  record = dict(config=json.loads(cfg.to_json_best_effort()), designer=designer)
  store.bind_coordinator(run_dir)  # this run directory's search, and only one coordinator at a time
  old = store.get_meta("record")
  if old is not None and not resume:
    raise FileExistsError(f"{run_dir} already holds a search ({len(store.trials())} trials); pass --resume to "
                          "continue it or choose a new --run-dir")
  if old is not None:
    check_same_search(old, record, store.path)
  store.set_meta("record", record)

  log(f"search: {len(cands)} feasible architectures of {len(space)} ({len(pruned)} pruned by constraints); "
      f"designer {designer}, {s.num_initial} initial + {s.num_trials - s.num_initial} designed trials")
  # the hypervolume's reference point, resolved when it is needed: a latency reference given as a
  # ratio is known in ms only once the first paired measurement set the run's scale
  reference_now = lambda: report_lib.hypervolume_reference(s.objectives, reference, store.trials())
  des = (designers_lib.make_designer(designer, cands, directions, reference_now, s.seed, s,
                                     log_path=os.path.join(run_dir, "optimizer_service.log"),
                                     features=designer_features(cfg, cands, designer),
                                     constraints=modelled_constraints(cfg))
         if is_main else None)
  initial = designers_lib.initial_design(cands, s.num_initial, s.seed)
  writer = MetricsWriter(os.path.join(run_dir, "tb"), enabled=is_main)

  def hv_now() -> float:
    ok = [t for t in store.trials() if t.status == "ok" and t.role not in report_lib.BASELINE_ROLES]
    return pareto.hypervolume(pareto.to_min([[t.objectives[n] for n in names] for t in ok], directions),
                              pareto.to_min([reference_now()], directions)[0]) if ok else 0.0

  def record_scalars(r: dict) -> None:
    trial_values = {f"trial/{k}": v for k, v in r["objectives"].items()} if r["status"] == "ok" else {}
    writer.scalars(len(store.trials()), {**trial_values, "search/hypervolume": hv_now()})
    writer.flush()

  done_designed = lambda: sum(1 for t in store.trials()
                              if t.role not in report_lib.BASELINE_ROLES and t.status not in IN_FLIGHT)
  context = search_context(cfg, names, log)  # the teacher and evaluation set every trial and final shares
  if proxy_of(cfg) != "flash":  # the SuperLM(s) every trial is extracted from: trained once, resumable
    log(f"search: accuracy proxy {proxy_of(cfg)}: training (or resuming) the SuperLM(s) in "
        f"{proxy_dir(run_dir, proxy_of(cfg))}")
    superlm.ensure_trained(cfg, proxy_dir(run_dir, proxy_of(cfg)), proxy_of(cfg), log=log, progress=progress,
                           context=context)
  bar = tqdm(total=s.num_trials, initial=done_designed() if is_main else 0, disable=not (progress and is_main),
             dynamic_ncols=True, desc="search")
  try:
    if workers > 1 or remote_target(cfg):  # workers, or measurement on another machine: over the store
      parallel.coordinate(cfg, run_dir, store, store_url, workers, initial, des, names, designer, bar,
                          on_result=record_scalars, hv_now=hv_now, log=log)
    else:
      store.set_meta("search_state", "sequential")  # a worker that joins is told there is nothing to claim
      _sequential_trials(cfg, run_dir, store, initial, des, names, designer, bar, record_scalars, hv_now, log,
                         context)
      store.set_meta("search_state", "done")
  finally:
    bar.close()
    if des is not None and hasattr(des, "close"):
      des.close()

  finals.run_finals(cfg, run_dir, store, names, directions, log, progress, context)

  summary = {}
  if is_main:
    summary = report_lib.write_report(run_dir, store)
    summary["wall_s_this_run"] = time.time() - t_start
    files.write_json(os.path.join(run_dir, "summary.json"), summary)
    store.close()
  return summary
