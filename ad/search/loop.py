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
import traceback
from typing import Any, Callable, Sequence

import numpy as np

from ad import configs, export, files, interrupt, multihost, rundir, space as space_lib
from ad.search import calibration, designers as designers_lib, latency_model, pareto, report as report_lib
from ad.search import store as store_lib
from ad.search import trieste_service  # its PENDING_METHODS (imported, it loads numpy only)
from ad.search.store import IN_FLIGHT, TrialStore
from ad.distill import evaluation, superlm, teacher_head, trainer
from ad.models import hf, student as student_lib
from profiling import harness, peaks as peaks_lib, tpu

# Objectives the search knows how to read from a trial; those in TRAINED need flash distillation
# (ad/distill/evaluation.py scores them, each with its standard error as `<name>_se`).
TRAINED = ("mlm_accuracy", "mlm_cross_entropy", "teacher_agreement", "nsp_accuracy")
MEASURED = {"latency_ms": "latency_ms_median", "peak_memory_bytes": "peak_memory_bytes",
            "throughput_per_s": "throughput_per_s", "flops_utilization": "flops_utilization"}
# Measured objectives whose noise is the latency's: the 95% CI of the median, as a relative half-width.
TIMED = ("latency_ms", "throughput_per_s", "flops_utilization")
SCREENED = ("params", "flops")
# Predicted before anything runs by the learned latency predictor (ad/search/latency_model.py),
# fitted on the measurements in search.latency_model.source; its noise is the held-out error.
PREDICTED = ("predicted_latency_ms",)
# search.* settings a resumed run may change: the failure budget, how trials are spread over workers, and
# the calibration that runs after the search.
RESUMABLE_SEARCH_KEYS = ("max_failed_trials", "workers", "calibrate")
# search.* settings added after runs were recorded, with the value an older record means by lacking them.
ADDED_SEARCH_KEYS = {"latency_model": {"source": ""}, "proxy": "flash"}
# the same for search.measure: older runs timed each student alone, and scaled by the run's reading
ADDED_MEASURE_KEYS = {"reference": "", "scale": "run"}
# search.bo.constraints: what BO makes of a limit known only once a trial runs (modelled_constraints)
CONSTRAINT_METHODS = ("filter", "model")
CONSTRAINT_KINDS = ("max_params", "max_flops", "max_latency_ms")  # the constraints section's keys (0: off)


def proxy_of(cfg) -> str:
  """search.proxy: 'flash' (003: flash-distill each candidate), 'superlm' (004) or 'fewshot' (001)."""
  return cfg.search.get("proxy", "flash")


def proxy_dir(run_dir: str, proxy: str) -> str:
  """Where a search keeps the SuperLM(s) its proxy extracts candidates from."""
  return os.path.join(run_dir, proxy)


def objective_spec(search_cfg) -> tuple[list[str], list[str], list[float]]:
  """(names, directions, reference point) from config.search.objectives, checked."""
  names, directions, reference = [], [], []
  objectives = search_cfg.objectives
  if isinstance(objectives, (str, bytes)) or not hasattr(objectives, "__len__"):
    raise ValueError(f"search.objectives={objectives!r}: expected a list of dicts with name, direction, reference")
  for i, o in enumerate(objectives):
    if not hasattr(o, "keys") or not {"name", "direction", "reference"} <= set(o.keys()):
      raise ValueError(f"search.objectives[{i}]={o!r}: expected a dict with keys name, direction and reference, e.g. "
                       "dict(name='mlm_accuracy', direction='max', reference=0.0)")
    name, direction = o["name"], o["direction"]
    if name not in TRAINED + tuple(MEASURED) + SCREENED + PREDICTED:
      raise ValueError(f"search.objectives[{i}].name={name!r}: expected one of "
                       f"{list(TRAINED) + list(MEASURED) + list(SCREENED) + list(PREDICTED)}")
    if direction not in pareto.DIRECTIONS:
      raise ValueError(f"search.objectives[{i}].direction={direction!r}: expected one of {pareto.DIRECTIONS}")
    ratio = o.get("reference_ratio")
    if ratio is not None and (name != "latency_ms" or isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                              or not ratio > 0):
      raise ValueError(f"search.objectives[{i}].reference_ratio={ratio!r}: expected a positive number on the "
                       "latency_ms objective (its reference point as a multiple of the reference architecture's "
                       "latency while latencies are paired)")
    names.append(name)
    directions.append(direction)
    reference.append(float(o["reference"]))
  if len(set(names)) != len(names) or len(names) < 1:
    raise ValueError(f"search.objectives: names {names} must be distinct and non-empty")
  if set(PREDICTED) & set(names):
    source = (search_cfg.get("latency_model") or {}).get("source") or ""
    if not source or not os.path.exists(source):
      raise ValueError(f"search.latency_model.source={source!r}: the objective predicted_latency_ms needs measured "
                       "architectures to learn from: a search's run directory or a CSV of measurements (e.g. "
                       "experiments/results/tabular.csv)")
  return names, directions, reference


def screening(arch: space_lib.Arch, model_cfg, seq: int) -> dict[str, Any]:
  """Closed-form size and inference cost of one student (no model is built).

  flops: 2 * (encoder weight parameters) * tokens + the attention score/context matmuls
  (4 * T^2 * bottleneck per block), batch 1: the forward's multiply-adds, which
  profiling/proxy_correlation measured to rank latency well on CPU.
  """
  return screening_of(student_lib.config_from_dict(arch, model_cfg), seq)


def screening_of(cfg, seq: int) -> dict[str, Any]:
  """`screening` of a StudentConfig."""
  arch = cfg.arch
  counts = student_lib.param_counts(cfg)
  weights = counts["encoder"]  # biases and norms add a negligible 2*T*(...) each
  flops = 2 * weights * seq + 4 * seq * seq * arch.bottleneck * cfg.num_blocks
  return dict(params=int(counts["paper_total"]), encoder_params=int(counts["encoder"]), flops=int(flops),
              num_blocks=cfg.num_blocks)


def feasible_candidates(space: space_lib.DesignSpace, model_cfg, constraints, seq: int):
  """(feasible archs, {arch name: why pruned}) under the constraints known before training."""
  keep, pruned = [], {}
  for a in space.archs():
    s = screening(a, model_cfg, seq)
    if constraints.max_params and s["params"] > constraints.max_params:
      pruned[a.name] = f"params {s['params']:,} > constraints.max_params {constraints.max_params:,}"
    elif constraints.max_flops and s["flops"] > constraints.max_flops:
      pruned[a.name] = f"flops {s['flops']:.3g} > constraints.max_flops {constraints.max_flops:.3g}"
    else:
      keep.append(a)
  return keep, pruned


def estimated_target(cfg) -> str | None:
  """The TPU chip of search.measure.target = 'tpu:<chip>' (latency estimated by XLA's TPU cost model,
  in this process: ad/aot.py estimate_latency), else None."""
  target = cfg.search.measure.get("target") or ""
  return target[len("tpu:"):] if target.startswith("tpu:") else None


def remote_target(cfg) -> str | None:
  """search.measure.target when it names a machine whose `ad worker --role measure` processes measure
  the trials (not an estimated TPU target), else None."""
  target = cfg.search.measure.get("target") or None
  return None if estimated_target(cfg) else target


def measurement_reference(cfg) -> str | None:
  """The architecture each latency is measured against (search.measure.reference): 'baseline' is
  search.baseline_arch (none without a baseline), '' measures each alone. None for an estimated
  TPU target: an estimate does not drift."""
  ref = cfg.search.measure.get("reference", "")
  if estimated_target(cfg) or not ref:
    return None
  return (cfg.search.baseline_arch or None) if ref == "baseline" else ref


LATENCY_SCALE_KEY = "latency_reference"  # store meta: the reference's first reading, the run-wide scale


def latency_scale_key(target: str = "") -> str:
  """The store meta key of the latency scale of the machine `target` ('' where the trials train)."""
  return f"{LATENCY_SCALE_KEY}:{target}" if target else LATENCY_SCALE_KEY


SCALES = ("machine", "run")  # search.measure.scale: where the ms scale of paired latencies comes from
SCALE_CACHE = "latency_scales"  # <cache>/latency_scales/<key>.json: each machine's quiet reading of a reference


def machine_scale(reading: dict, cfg, other_load: float | None, cpu: dict) -> dict:
  """The scale of this machine for the reference program (search.measure.scale = 'machine'): its
  first quiet reading of the reference on this machine, cached like the CPU peaks (a reading
  taken while other processes used over peaks.MAX_OTHER_LOAD of the CPU is not cached), so that
  searches run hours apart on one machine share one scale and their paired latencies agree in ms
  where their ratios agree. Without a cached one: `reading` itself, for this run only unless quiet.
  reading: dict(arch, ms, target) of the reference; cpu: peaks.cpu_identity of this machine."""
  m = cfg.search.measure
  key = files.fingerprint(dict(cpu=cpu, reference=reading["arch"], model=cfg.model.to_dict(), batch=m.batch,
                               seq=m.seq))
  path = os.path.join(files.cache_root(), SCALE_CACHE, f"{key}.json")
  if os.path.exists(path):
    return dict(files.read_json(path, "latency scale"), source="machine")
  quiet = other_load is not None and other_load <= peaks_lib.MAX_OTHER_LOAD
  out = dict(reading, measured_at=time.time(), other_load=other_load)
  if quiet:
    files.write_json(path, out)
  return dict(out, source="machine" if quiet else "run")


def measure(arch: space_lib.Arch, cfg, trace_dir: str, model_cfg=None, store=None, target: str = "") -> dict[str, Any]:
  """The search's latency measurement of one architecture (config search.measure), on this backend,
  or with search.measure.target = 'tpu:<chip>' the TPU estimate of XLA's cost model. The tabular
  benchmark calls it too, so both measure the same way. model_cfg: the model section to build it
  with (default: the config's).

  Paired (search.measure.reference): measured alternately with the reference architecture, its
  latency is `latency_ms_paired` = its ratio to the reference x the run's scale, which the store
  records at the run's first paired measurement (one constant per run, so every trial is on one
  scale however the machine drifts between them; one scale per machine: `target`, the measure
  workers' search.measure.target, or '' where the trials train): with search.measure.scale =
  'machine' this machine's cached quiet reading of the reference (machine_scale), with 'run'
  the reference's median in that first measurement; without a store, this measurement's."""
  m = cfg.search.measure
  chip = estimated_target(cfg)
  if chip:
    from ad import aot  # lazy: pulls in TensorFlow and libtpu's compiler
    return aot.estimate_latency(arch, cfg.model if model_cfg is None else model_cfg, chip, batch=m.batch, seq=m.seq)
  reference = measurement_reference(cfg)
  with peaks_lib.OtherLoad() as load:  # a quiet reading of the reference may become the machine's scale
    r = harness.measure_arch(arch, cfg.model if model_cfg is None else model_cfg, batch=m.batch, seq=m.seq,
                             trace_dir=trace_dir, target_rel_ci=m.target_rel_ci, max_reps=m.max_reps, chunk=m.chunk,
                             min_reps=min(20, m.max_reps), reference=reference, reference_model_cfg=cfg.model)
  if reference:
    first = dict(arch=r["reference"], ms=r["reference_ms_median"], target=target, source="run")
    if m.get("scale", "run") == "machine":
      first = machine_scale(first, cfg, load.fraction, peaks_lib.cpu_identity(cfg.model.dtype))
    scale = (store.first_meta(latency_scale_key(target), first) if store is not None else None) or first
    r.update(reference_scale_ms=float(scale["ms"]), reference_scale_source=scale.get("source", "run"),
             latency_ms_paired=r["latency_ratio"] * float(scale["ms"]))
  return r


def remeasure_front(cfg, run_dir: str, store, names, directions, log: Callable) -> dict | None:
  """Before the finals: the Pareto students and the reference timed together, in turn, in one
  process (harness.measure_together), so the front's latencies are compared within one session
  rather than across the search's hours of drift. Kept in the store's meta (once per front:
  a resumed run does not time the same front again); report.md shows it beside the search's."""
  reference = measurement_reference(cfg)
  if not reference or remote_target(cfg) or not set(TIMED) & set(names):
    return None  # nothing paired, or the target machine is elsewhere
  ok, mask = report_lib.front(store.trials(), names, directions)
  archs = sorted(r["arch"] for r, m in zip(ok, mask) if m)
  done = store.get_meta(report_lib.REMEASURED_KEY)
  if not archs or (done and done["archs"] == archs):
    return done
  m = cfg.search.measure
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


def latency_of(measurement: dict) -> tuple[float, float]:
  """(latency in ms, relative half-width of its 95% CI) of a measurement: paired where it was
  (ratio x run scale, the ratio's CI), else its median and the median's CI."""
  if "latency_ms_paired" in measurement:
    return float(measurement["latency_ms_paired"]), float(measurement["latency_ratio_rel_ci95"])
  return float(measurement["latency_ms_median"]), float(measurement["latency_rel_ci95"])


def latency_verdict(measurement: dict, cfg) -> str | None:
  """The error of a measurement that breaks constraints.max_latency_ms, else None."""
  limit = cfg.constraints.max_latency_ms
  latency = latency_of(measurement)[0]
  if limit and latency > limit:
    return f"latency {latency:.3f} ms > constraints.max_latency_ms {limit}"
  return None


def evaluate_trial(arch: space_lib.Arch, cfg, workdir: str, trace_dir: str, names, log: Callable,
                   measure_here: bool = True, proxy_workdir: str = "", lock_wait_s: float = 0.0,
                   store=None) -> dict[str, Any]:
  """Measures, checks the latency constraint, flash-distills; returns the trial's record fields.

  The accuracy objectives come from the search's proxy (search.proxy): a flash distillation in
  `workdir`, or the candidate extracted from the SuperLM(s) in `proxy_workdir`.
  Raises on failure (the loop records the error); returns status 'infeasible' without training
  when the measured latency breaks constraints.max_latency_ms. With several processes, process
  0's measurement decides feasibility and every process follows it. measure_here=False: only
  distills (a measure worker on the target measures the trial, search.measure.target).
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
                                       lock_wait_s=lock_wait_s)
    else:  # extracted from the SuperLM(s) trained before the first trial, scored without training
      out["distill"] = superlm.proxy_scores(arch, cfg, proxy_workdir, log=log)
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
  from ad.data import pretrain  # lazy: pulls in TensorFlow (seqio)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"search.baseline_checkpoint={path!r}: no such directory (expected a Hugging Face "
                            "MobileBERT-family checkpoint: config.json, model.safetensors, vocab.txt)")
  checkpoint_model_cfg(path, cfg)
  vocab_file = os.path.join(path, "vocab.txt")
  data_vocab = pretrain.load_vocab(pretrain.config_from_dict(cfg.data), cfg.teacher.source or None).vocab_file
  if not os.path.isfile(vocab_file):
    raise FileNotFoundError(f"search.baseline_checkpoint: {vocab_file} is missing; it is needed to check the "
                            f"checkpoint tokenizes like the evaluation data ({data_vocab})")
  if files.sha256_file(vocab_file) != files.sha256_file(data_vocab):
    raise ValueError(f"search.baseline_checkpoint: {vocab_file} differs from the evaluation data's vocabulary "
                     f"{data_vocab}; its scores on the held-out set would mean nothing")


def evaluate_checkpoint(path: str, cfg, trace_dir: str, log: Callable, store=None) -> dict[str, Any]:
  """A baseline checkpoint, as it is (no distillation): measured like a trial (its own shape, this
  backend, search.measure) and scored on the held-out evaluation set with its standard errors,
  teacher agreement against the search's teacher."""
  from ad.data import pretrain  # lazy: pulls in TensorFlow (seqio)
  scfg, section = checkpoint_model_cfg(path, cfg)
  t0 = time.time()
  measurement = measure(scfg.arch, cfg, trace_dir, model_cfg=section, store=store)
  measure_s = time.time() - t0
  t0 = time.time()
  data_cfg = pretrain.config_from_dict(cfg.data)
  teacher_dir, _ = teacher_head.prepare_from_config(cfg.teacher, data_cfg, log=log, progress=False)
  teacher, meta = teacher_head.load_for_training(teacher_dir, section["dtype"])
  es = evaluation.build_eval_set(data_cfg, pretrain.load_vocab(data_cfg, meta["source_dir"]), log=log)
  top1, _ = evaluation.teacher_reference(teacher_dir, teacher, es, log=log)
  scores = evaluation.evaluate(hf.load_mobilebert(path, dtype=section["dtype"]), es, top1, what=path)
  scores.update(checkpoint=os.path.abspath(path), num_blocks=scfg.num_blocks)
  return dict(status="ok", measurement=measurement, measure_s=measure_s, distill=scores, distill_s=time.time() - t0)


def finetune_finals(cfg, run_dir: str, store, log: Callable, progress: bool) -> None:
  """Fine-tunes every finished final (the baseline's included) and the teacher on each of
  final.finetune_tasks, recording each run in the store; a finished one is not run again."""
  from ad.data import pretrain  # lazy: pulls in TensorFlow (seqio)
  from ad.finetune import trainer as finetune_lib  # lazy: pulls in TensorFlow (seqio)
  fcfg = finetune_lib.config_from_dict(cfg.get("finetune"))
  teacher_dir, _ = teacher_head.prepare_from_config(cfg.teacher, pretrain.config_from_dict(cfg.data), log=log,
                                                    progress=False)
  models = [(f["arch"], os.path.join(rundir.finals_dir(run_dir), f["arch"]))
            for f in store.finals() if f["status"] == "ok"]
  models.append(("teacher", teacher_dir))
  done = {(r["model"], r["task"]) for r in store.finetunes() if r["status"] == "ok"}
  for task in cfg.final.finetune_tasks:
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


def trial_timings(r: dict, designer_s: float) -> dict[str, float]:
  """A trial's wall-time split: designer, measurement, and the flash distillation's setup,
  compilation, training steps, checkpoints and evaluation."""
  d = r.get("distill") or {}
  out = dict(designer_s=designer_s, measure_s=r.get("measure_s") or 0.0)
  for k in ("setup_s", "compile_wall_s", "train_steps_s", "checkpoint_s", "eval_s", "wall_s"):
    out[f"distill_{k}"] = float(d.get(k) or 0.0)
  out["total_s"] = out["designer_s"] + out["measure_s"] + out["distill_wall_s"]
  return out


class MissingObjectiveError(ValueError):
  """A trial's results lack an objective the search optimizes."""


def objective_values(names, distill: dict | None, measurement: dict | None,
                     screen: dict) -> tuple[dict[str, float], dict[str, float]]:
  """(values, standard errors) of the objectives `names` for one trial.

  Trained objectives carry the evaluation's sequence-level standard error; timed ones the 95%
  confidence interval of the median latency turned into a standard error (half-width / 1.96);
  exact ones (params, FLOPs, peak memory) 0.
  """
  vals, ses = {}, {}
  for n in names:
    if n in TRAINED:
      if n not in (distill or {}) or f"{n}_se" not in distill:
        raise MissingObjectiveError(f"the trial's evaluation gave no {n} (an objective of search.objectives), only "
                         f"{sorted(distill or {})}")
      vals[n], ses[n] = float(distill[n]), float(distill[f"{n}_se"])
    elif n in PREDICTED:
      vals[n], ses[n] = float(screen[n]), float(screen[f"{n}_se"])
    elif n in TIMED:  # all three follow the latency, paired where it was
      latency, rel_ci = latency_of(measurement)
      if n == "latency_ms":
        vals[n] = latency
      elif n == "throughput_per_s":
        vals[n] = measurement["batch"] * 1e3 / latency
      else:  # the utilization at the paired latency instead of the median alone
        vals[n] = float(measurement["flops_utilization"]) * float(measurement["latency_ms_median"]) / latency
      ses[n] = abs(vals[n]) * rel_ci / 1.96
    elif n in MEASURED:
      vals[n], ses[n] = float(measurement[MEASURED[n]]), 0.0
    else:
      vals[n], ses[n] = float(screen[n]), 0.0
  return vals, ses


def trace_dir_of(run_dir: str, name: str) -> str:
  return os.path.join(run_dir, "traces", name.replace(":", "_"))


def is_checkpoint_trial(name: str, cfg) -> bool:
  ckpt_path = cfg.search.get("baseline_checkpoint") or ""
  return bool(ckpt_path) and name == report_lib.checkpoint_name(ckpt_path)


def trial_target(name: str, cfg, run_dir: str, names, measure_here: bool = True,
                 lock_wait_s: float = 0.0, store=None) -> tuple[str, dict, Callable[[], dict]]:
  """(workdir, screening, evaluate) of a trial: a student of the space, or the baseline
  checkpoint (search.baseline_checkpoint, named by report.checkpoint_name; always measured
  where it is scored)."""
  s = cfg.search
  trace_dir = trace_dir_of(run_dir, name)
  if is_checkpoint_trial(name, cfg):
    ckpt_path = s.baseline_checkpoint
    model_cfg = checkpoint_model_cfg(ckpt_path, cfg)[0]
    screen = with_prediction(screening_of(model_cfg, s.measure.seq), model_cfg.arch, names, cfg)
    return (os.path.abspath(ckpt_path), screen,
            lambda: evaluate_checkpoint(ckpt_path, cfg, trace_dir, log=lambda m: None, store=store))
  arch = space_lib.Arch.parse(name)
  workdir = os.path.join(run_dir, "trials", arch.name)
  return (workdir, with_prediction(screening(arch, cfg.model, s.measure.seq), arch, names, cfg),
          lambda: evaluate_trial(arch, cfg, workdir, trace_dir, names, log=lambda m: None, measure_here=measure_here,
                                 proxy_workdir=proxy_dir(run_dir, proxy_of(cfg)), lock_wait_s=lock_wait_s,
                                 store=store))


def with_prediction(screen: dict, arch: space_lib.Arch, names, cfg) -> dict:
  """`screen` plus the predicted latency when an objective asks for it."""
  if not set(PREDICTED) & set(names):
    return screen
  return dict(screen, **latency_model.predict(arch, screen["num_blocks"], cfg.search.latency_model.source))


def nonfinite_objectives(objectives: dict | None) -> str | None:
  """The error of objectives with a NaN or infinite value (the trial fails), else None."""
  bad = [n for n, v in (objectives or {}).items() if not np.isfinite(v)]
  return f"non-finite objective(s) {', '.join(f'{n}={objectives[n]}' for n in bad)}" if bad else None


def checked_objectives(names, distill: dict | None, measurement: dict | None,
                       screen: dict) -> tuple[dict | None, dict | None, str | None]:
  """(values, standard errors, None) of a finished trial, or (None, None, the error) when its
  results lack an objective or hold a non-finite one: such a trial fails, and never reaches the
  designer or the Pareto set (the error names the values; the store holds finite numbers only)."""
  try:
    objectives, ses = objective_values(names, distill, measurement, screen)
  except MissingObjectiveError as e:
    return None, None, str(e)
  error = nonfinite_objectives(objectives)
  return (None, None, error) if error else (objectives, ses, None)


def finish_joined(cfg, store, row: dict, names, log: Callable) -> dict:
  """A trial measured on its target and distilled elsewhere, both halves in the store: its
  objectives (or 'infeasible' when the measurement breaks the latency constraint)."""
  error = latency_verdict(row["measurement"], cfg)
  if error:
    store.finish_trial(row["id"], "infeasible", error=error, measurement=row["measurement"])  # BO models it
    return dict(status="infeasible", objectives=None)
  objectives, ses, error = checked_objectives(names, row["distill"], row["measurement"], row["screening"])
  if error:
    log(f"search: trial {row['arch']} failed: {error}")
    store.finish_trial(row["id"], "failed", error=error)
    return dict(status="failed", objectives=None)
  store.finish_trial(row["id"], "ok", objectives=objectives, objective_se=ses, measurement=row["measurement"],
                     distill=row["distill"], measure_s=row["measure_s"], distill_s=row["distill_s"],
                     timings=row["timings"])
  return dict(status="ok", objectives=objectives)


def run_measurement(cfg, run_dir: str, store, row: dict, names, log: Callable, worker: str) -> dict:
  """A measure worker's job: measures the trial's architecture on this machine, records it, and
  joins it with the distillation if that is already in. A failed measurement fails the trial."""
  name = row["arch"]
  try:
    t0 = time.time()
    measurement = measure(space_lib.Arch.parse(name), cfg, trace_dir_of(run_dir, name), store=store,
                          target=row["measure_target"])
    measure_s = time.time() - t0
  except (KeyboardInterrupt, SystemExit, interrupt.Interrupted):
    raise
  except Exception as e:
    log(f"search: measuring {name} failed: {type(e).__name__}: {str(e)[:300]}")
    store.finish_trial(row["id"], "failed", error=f"measurement on {row['measure_target']}: {type(e).__name__}: {e}\n"
                                                  f"{traceback.format_exc(limit=6)}")
    return dict(status="failed")
  recorded, complete = store.record_measurement(row["id"], worker, measurement, measure_s)
  if complete:
    return dict(finish_joined(cfg, store, complete, names, log), recorded=recorded)
  return dict(status="measured" if recorded else "lost", recorded=recorded)


def run_trial(cfg, run_dir: str, store, row: dict, names, log: Callable, designer_s: float = 0.0,
              worker: str | None = None) -> dict:
  """Evaluates the trial of store row `row` (already started or claimed) and records it: its
  objectives, or 'failed' with the error (a NaN, an OOM, a damaged checkpoint: the search goes
  on). With `worker`, the result is written only while that worker still holds the trial."""
  name = row["arch"]
  remote = bool(row.get("measure_target")) and not is_checkpoint_trial(name, cfg)  # measured by a measure worker
  # A worker that took the trial over waits up to a lease for its previous holder, alive but late,
  # to learn it lost the trial (its heartbeat) and let go of the workdir.
  wait = float(cfg.search.workers.lease_s) if worker else 0.0
  workdir, screen, evaluate = trial_target(name, cfg, run_dir, names, measure_here=not remote, lock_wait_s=wait,
                                           store=store)
  try:
    r = evaluate()
  except (KeyboardInterrupt, SystemExit, interrupt.Interrupted):
    raise  # the trial stays in flight: --resume (or the next worker) runs it again from its checkpoints
  except files.LockedError as e:
    if not worker or e.directory != os.path.abspath(workdir):
      raise
    # Still held after a lease: not the trial's fault. It goes back to the queue, not into the failures.
    store.release_trial(row["id"], worker)
    log(f"search: trial {name} is still held by its previous holder after {wait:.0f} s; back in the queue")
    return dict(status="released", recorded=False)
  except Exception as e:
    err = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
    log(f"search: trial {name} failed: {type(e).__name__}: {str(e)[:300]}")
    store.finish_trial(row["id"], "failed", error=err, timings=dict(designer_s=designer_s), worker=worker)
    return dict(status="failed")
  if remote and r["status"] == "ok":  # the training half; the trial completes when both halves are in
    recorded, complete = store.record_distillation(row["id"], worker, r["distill"], r["distill_s"],
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
  recorded = store.finish_trial(row["id"], status, objectives=objectives, objective_se=ses,
                                measurement=r["measurement"], distill=r["distill"], error=error,
                                measure_s=r["measure_s"], distill_s=r["distill_s"],
                                timings=trial_timings(r, designer_s), worker=worker)
  if worker and not recorded:
    log(f"search: trial {name} finished on {worker} after its lease ran out; another worker's result counts")
  return dict(status=status, objectives=objectives, recorded=recorded)


class SearchStopped(RuntimeError):
  """The search cannot go on (too many failed trials, a worker that keeps dying): says why."""


def failure_budget_check(rows: list[dict], max_failed: int) -> None:
  """Stops the search with a clear message once more than `max_failed` trials failed (0: no limit)."""
  failed = [r for r in rows if r["status"] == "failed"]
  if max_failed and len(failed) > max_failed:
    last = (failed[-1].get("error") or "").splitlines()[0][:300]
    raise SearchStopped(f"search: {len(failed)} trials failed, more than search.max_failed_trials={max_failed} "
                       f"(the last, {failed[-1]['arch']}: {last}); the run directory's store lists every error. "
                       "Fix the cause, then --resume (failed trials are not run again; raise "
                       "search.max_failed_trials to go on regardless)")


def next_trial(cfg, rows: list[dict], initial, des, names, designer: str, pending=()) -> tuple[str, str, str, float]:
  """What to run next given the store's rows: (name, role, designer, designer seconds), or
  ('', '', '', 0) when the budget is spent. The baseline first, then the baseline checkpoint,
  the initial design, then the designer's suggestions (avoiding `pending`: architectures in
  flight)."""
  s = cfg.search
  by_name = {t["arch"] for t in rows}
  ckpt_path = s.get("baseline_checkpoint") or ""
  ckpt_name = report_lib.checkpoint_name(ckpt_path) if ckpt_path else None
  if s.baseline_arch and s.baseline_arch not in by_name:
    return s.baseline_arch, "baseline", "baseline", 0.0
  if ckpt_name and ckpt_name not in by_name:
    return ckpt_name, report_lib.CHECKPOINT_ROLE, "checkpoint", 0.0
  designed = [t for t in rows if t["role"] not in report_lib.BASELINE_ROLES]
  if len(designed) >= s.num_trials:
    return "", "", "", 0.0
  n_initial = sum(1 for t in rows if t["role"] == "initial")
  todo = [a for a in initial if a.name not in by_name]
  if n_initial < s.num_initial and todo:
    return todo[0].name, "initial", "initial", 0.0
  t0 = time.time()
  des.update(designer_trials(rows, names, modelled_constraints(cfg)))
  pending_archs = [space_lib.Arch.parse(a) for a in pending]
  return des.suggest(1, pending_archs)[0].name, "designer", designer, time.time() - t0


def modelled_constraints(cfg) -> list[float]:
  """The limits BO models rather than only filters (search.bo.constraints = 'model'): those known
  only once a trial runs. Today that is constraints.max_latency_ms, a measurement; the params and
  FLOPs limits are closed-form and prune the space before the search (feasible_candidates). Only the
  BO designer uses them; the others ignore them."""
  limit = float(cfg.constraints.max_latency_ms)
  return [limit] if limit and cfg.search.bo.get("constraints") == "model" else []


def designer_trials(rows: list[dict], names, constraints: Sequence[float] = ()) -> list[dict]:
  """Store rows -> the designer's view (arch, status, values and standard errors in objective
  order). Trials in flight are the designer's pending points, not observations; failed ones are
  reported as failed (never as an observation of the GP). With modelled `constraints` (the latency
  limit), every measured trial, feasible or not, also carries its latency and standard error."""
  out = []
  for r in rows:
    if r["status"] in IN_FLIGHT or r["role"] == report_lib.CHECKPOINT_ROLE:  # not a student of the space
      continue
    t = dict(arch=space_lib.Arch.parse(r["arch"]), status=r["status"])
    if r["status"] == "ok":
      t["values"] = [r["objectives"][n] for n in names]
      se = r.get("objective_se") or {}
      t["noise"] = [se.get(n) for n in names]  # None where an older store has no standard error
    if constraints and r.get("measurement"):
      latency, rel_ci95 = latency_of(r["measurement"])
      t.update(constraints=[latency], constraint_noise=[latency * rel_ci95 / 1.96])
    out.append(t)
  return out


def check_search_ranges(cfg) -> None:
  """The numeric settings of the search, measure and constraints sections, each within what a run
  can use (ad/configs.py check_range names the setting, the value and the range)."""
  s, c, check = cfg.search, cfg.constraints, configs.check_range
  for k in ("seed", "max_failed_trials", "num_initial"):
    check(f"search.{k}", s[k], low=0)
  check("search.num_trials", s.num_trials, low=1)
  # a worker renews its lease every lease_s / 3: shorter than a few seconds, leases lapse between beats
  check("search.workers.lease_s", s.workers.lease_s, low=5)
  check("search.workers.poll_s", s.workers.poll_s, low=0, high=s.workers.lease_s / 3, low_open=True)
  for k in ("batch", "max_reps", "chunk"):
    check(f"search.measure.{k}", s.measure[k], low=1)
  check("search.measure.seq", s.measure.seq, low=8)
  check("search.measure.target_rel_ci", s.measure.target_rel_ci, low=0, high=1, low_open=True, high_open=True)
  for o in s.objectives:
    check(f"search.objectives[{o.get('name')}].reference", o.get("reference"))
  for k in c:  # 0 turns a constraint off
    check(f"constraints.{k}", c[k], low=0)
  check("search.bo.likelihood_variance", s.bo.likelihood_variance, low=0, low_open=True)
  check("search.evolution.population", s.evolution.population, low=2)
  for k in ("mutation_prob", "explore_prob"):
    check(f"search.evolution.{k}", s.evolution[k], low=0, high=1)
  check("search.firefly.population", s.firefly.population, low=1)
  for k in ("beta0", "gamma", "alpha"):
    check(f"search.firefly.{k}", s.firefly[k], low=0)
  check("final.count", cfg.final.count, low=0)


def _validated(cfg, run_dir: str, designer: str | None):
  """Everything a search needs, checked before anything is written (a bad config must leave no
  search record behind): (designer, objective spec, space, feasible candidates, pruned)."""
  s = cfg.search
  designer = designer or s.designer
  if designer not in designers_lib.DESIGNERS:
    raise ValueError(f"designer {designer!r}: expected one of {designers_lib.DESIGNERS}")
  names, directions, reference = objective_spec(s)
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
  if s.bo.get("pending", "exclude") not in trieste_service.PENDING_METHODS:
    raise ValueError(f"search.bo.pending={s.bo.pending!r}: expected one of {trieste_service.PENDING_METHODS}")
  if not isinstance(s.bo.get("training_free", False), bool):
    raise ValueError(f"search.bo.training_free={s.bo.training_free!r}: expected True or False")
  if s.bo.get("constraints", "filter") not in CONSTRAINT_METHODS:
    raise ValueError(f"search.bo.constraints={s.bo.constraints!r}: expected one of {CONSTRAINT_METHODS} ('filter': "
                     "an infeasible trial is only excluded; 'model': BO models the measured latency's limit)")
  k = s.get("calibrate", 0)
  if not isinstance(k, int) or isinstance(k, bool) or k < 0:
    raise ValueError(f"search.calibrate={k!r}: expected a whole number >= 0 of search students to regular-distill "
                     "after the finals (0: off; more than the search has: all of them)")
  unknown = sorted(set(cfg.constraints) - set(CONSTRAINT_KINDS))
  if unknown:
    raise ValueError(f"constraints.{unknown[0]}: unknown constraint; expected one of {CONSTRAINT_KINDS}")
  timed_against = s.measure.get("reference", "")
  if timed_against not in ("", "baseline"):
    try:
      space_lib.Arch.parse(timed_against)
    except ValueError as e:
      raise ValueError(f"search.measure.reference={timed_against!r}: expected 'baseline' (search.baseline_arch), '' "
                       f"(each student timed alone) or an architecture such as 512_128_4_512_4 ({e})") from None
  if s.measure.get("scale", "run") not in SCALES:
    raise ValueError(f"search.measure.scale={s.measure.scale!r}: expected one of {SCALES}")
  if s.get("baseline_checkpoint"):
    check_baseline_checkpoint(s.baseline_checkpoint, cfg)
  if cfg.final.choose not in report_lib.CHOICES:
    raise ValueError(f"final.choose={cfg.final.choose!r}: expected one of {report_lib.CHOICES}")
  if cfg.final.get("finetune_tasks"):
    from ad.finetune import tasks as tasks_lib, trainer as finetune_lib  # lazy: pulls in TensorFlow (seqio)
    fcfg = finetune_lib.config_from_dict(cfg.get("finetune"))
    for task in cfg.final.finetune_tasks:  # unknown tasks and missing data fail now, not after the search
      tasks_lib.check_data(tasks_lib.get(task), fcfg.tfds_data_dir or None, fcfg.squad_dir or None)
  from ad.data import pretrain  # lazy: pulls in TensorFlow (seqio)
  trainer.config_from(cfg.distill, "flash")
  trainer.config_from(cfg.distill, cfg.final.schedule)
  if proxy_of(cfg) not in superlm.PROXIES:
    raise ValueError(f"search.proxy={proxy_of(cfg)!r}: expected one of {superlm.PROXIES}")
  if proxy_of(cfg) != "flash":
    superlm.config_from(cfg)
  data_cfg = pretrain.config_from_dict(cfg.data)
  student_lib.config_from_dict(feasible[0], cfg.model)
  teacher_head.check_config(cfg.teacher, data_cfg)  # a teacher that does not fit fails now, not in every trial
  return designer, (names, directions, reference), space, cands, pruned


def _sequential_trials(cfg, run_dir, store, initial, des, names, designer, bar, record_scalars, hv_now, log) -> None:
  """One trial at a time in this process (on every process of a multi-host run: process 0
  decides and broadcasts, all train on the global mesh, process 0 records)."""
  s = cfg.search
  is_main = multihost.is_main()
  while True:
    interrupt.check("a trial boundary of the search (completed trials are in the store)")
    name, role, who, existing, designer_s = "", "", "", None, 0.0
    if is_main:
      current = store.trials()
      failure_budget_check(current, s.max_failed_trials)
      in_flight = [t for t in current if t["status"] in IN_FLIGHT]
      if in_flight:  # interrupted by a crash (or queued by a parallel run): its distillation resumes
        existing = in_flight[0]
        name, role, who = existing["arch"], existing["role"], existing["designer"]
      else:
        name, role, who, designer_s = next_trial(cfg, current, initial, des, names, designer)
    name = multihost.broadcast_str(name or "-")
    if name == "-":
      break
    bar.set_postfix_str(f"hv={hv_now():.4g} in flight: {name} ({role})")
    if existing is None:
      workdir, screen, _ = trial_target(name, cfg, run_dir, names)
      row = dict(id=store.start_trial(name, role, who, s.seed, screen, workdir), arch=name)
    else:
      row = existing
      store.restart_trial(row["id"])
    r = run_trial(cfg, run_dir, store, row, names, log, designer_s)
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
  import jax
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
  import tensorflow as tf  # TensorBoard scalars
  from tqdm import tqdm

  from ad.data import tf_setup  # lazy: pulls in TensorFlow (seqio)
  tf_setup.hide_accelerators_from_tf()  # before TF's first op (the TensorBoard writer below)

  s = cfg.search
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
    def comparable(config: dict) -> dict:  # what may change between runs: how, not what, is searched
      search = dict(ADDED_SEARCH_KEYS, **config.get("search", {}))
      search["measure"] = dict(ADDED_MEASURE_KEYS, **search.get("measure", {}))
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
      return {k: v for k, v in dict(config, search=search).items() if k not in ignored}
    new_c, old_c = comparable(record["config"]), comparable(old["config"])
    diff = sorted(k for k in set(new_c) | set(old_c)
                  if json.dumps(new_c.get(k), sort_keys=True) != json.dumps(old_c.get(k), sort_keys=True))
    if diff or old["designer"] != designer:
      search_diff = sorted(f"search.{k}" for k in set(new_c["search"]) | set(old_c["search"])
                           if json.dumps(new_c["search"].get(k), sort_keys=True) !=
                           json.dumps(old_c["search"].get(k), sort_keys=True))
      diff = [d for d in diff if d != "search"] + search_diff
      raise ValueError(f"{store.path}: cannot resume, the config differs in {diff or ['designer']}")
  store.set_meta("record", record)

  log(f"search: {len(cands)} feasible architectures of {len(space)} ({len(pruned)} pruned by constraints); "
      f"designer {designer}, {s.num_initial} initial + {s.num_trials - s.num_initial} designed trials")
  features = None
  if designer == "bo" and s.bo.get("training_free", False):  # what the size predicts, as GP inputs
    features = designers_lib.training_free_features(
        [(sc["params"], sc["flops"]) for sc in (screening(a, cfg.model, s.measure.seq) for a in cands.archs)])
  # the hypervolume's reference point, resolved when it is needed: a latency reference given as a
  # ratio is known in ms only once the first paired measurement set the run's scale
  reference_now = lambda: report_lib.hypervolume_reference(s.objectives, reference, store.trials())
  des = (designers_lib.make_designer(designer, cands, directions, reference_now, s.seed, s,
                                     log_path=os.path.join(run_dir, "optimizer_service.log"), features=features,
                                     constraints=modelled_constraints(cfg))
         if is_main else None)
  initial = designers_lib.initial_design(cands, s.num_initial, s.seed)
  writer = tf.summary.create_file_writer(os.path.join(run_dir, "tb")) if is_main else None

  def hv_now() -> float:
    ok = [t for t in store.trials() if t["status"] == "ok" and t["role"] not in report_lib.BASELINE_ROLES]
    return pareto.hypervolume(pareto.to_min([[t["objectives"][n] for n in names] for t in ok], directions),
                              pareto.to_min([reference_now()], directions)[0]) if ok else 0.0

  def record_scalars(r: dict) -> None:
    n = len(store.trials())
    with writer.as_default(step=n):
      if r["status"] == "ok":
        for k, v in r["objectives"].items():
          tf.summary.scalar(f"trial/{k}", v)
      tf.summary.scalar("search/hypervolume", hv_now())
    writer.flush()

  done_designed = lambda: sum(1 for t in store.trials()
                              if t["role"] not in report_lib.BASELINE_ROLES and t["status"] not in IN_FLIGHT)
  if proxy_of(cfg) != "flash":  # the SuperLM(s) every trial is extracted from: trained once, resumable
    log(f"search: accuracy proxy {proxy_of(cfg)}: training (or resuming) the SuperLM(s) in "
        f"{proxy_dir(run_dir, proxy_of(cfg))}")
    superlm.ensure_trained(cfg, proxy_dir(run_dir, proxy_of(cfg)), proxy_of(cfg), log=log, progress=progress)
  bar = tqdm(total=s.num_trials, initial=done_designed() if is_main else 0, disable=not (progress and is_main),
             dynamic_ncols=True, desc="search")
  try:
    if workers > 1 or remote_target(cfg):  # workers, or measurement on another machine: over the store
      from ad.search import parallel  # lazy: parallel imports the loop (a cycle until the loop is split)
      parallel.coordinate(cfg, run_dir, store, store_url, workers, initial, des, names, designer, bar,
                          on_result=record_scalars, hv_now=hv_now, log=log)
    else:
      store.set_meta("search_state", "sequential")  # a worker that joins is told there is nothing to claim
      _sequential_trials(cfg, run_dir, store, initial, des, names, designer, bar, record_scalars, hv_now, log)
      store.set_meta("search_state", "done")
  finally:
    bar.close()
    if des is not None and hasattr(des, "close"):
      des.close()

  # ---- regular distillation of the chosen Pareto students, and of the baseline (like for like) ----
  if is_main:
    interrupt.check("the re-measurement of the Pareto set")
    remeasure_front(cfg, run_dir, store, names, directions, log)
    report_lib.write_report(run_dir, store)  # the search's report exists before the long final runs
  chosen = report_lib.choose_finals(store.trials(), names, directions, cfg.final) if is_main else []
  if is_main and cfg.final.include_baseline and s.baseline_arch and chosen:
    chosen.append(s.baseline_arch)
  chosen = [c for c in multihost.broadcast_str(",".join(chosen)).split(",") if c]
  for name in chosen:
    interrupt.check("a final distillation boundary")
    done = {f["arch"]: f for f in store.finals()}
    if name in done and done[name]["status"] == "ok":
      continue
    workdir = os.path.join(rundir.finals_dir(run_dir), name)
    store.start_final(name)
    log(f"search: regular distillation of {name} into {workdir}")
    measured = [t for t in store.trials("ok") if t["arch"] == name]  # its latency, for the model card
    try:
      m = trainer.distill(name, cfg, cfg.final.schedule, workdir, resume=True, log=lambda msg: None,
                          progress=progress, save_student=True,
                          export_dir=os.path.join(workdir, "hf") if cfg.final.export_hf else None,
                          card_latency=export.card_latency(measured[-1]) if measured else None)
    except (KeyboardInterrupt, SystemExit, interrupt.Interrupted):
      raise
    except Exception as e:
      log(f"search: final distillation of {name} failed: {type(e).__name__}: {str(e)[:300]}")
      store.finish_final(name, "failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}")
      continue
    store.finish_final(name, "ok", metrics=m, checkpoint=m.get("student_checkpoint"), hf_dir=m.get("hf_dir"))

  # ---- calibration: regular runs of search.calibrate more students, to grade the proxy (report.md) ----
  k = int(s.get("calibrate", 0))
  if k > 0 and "mlm_accuracy" not in names:
    log(f"search: search.calibrate={k} skipped: it grades the accuracy proxy, and the objectives {names} "
        "have no mlm_accuracy")
  elif k > 0:
    todo = (calibration.todo(store, *report_lib.front(store.trials(), names, directions), chosen, k, log)
            if is_main else [])
    todo = [c for c in multihost.broadcast_str(",".join(todo)).split(",") if c]
    calibration.distill_students(cfg, run_dir, todo, trainer.distill,
                                 calibration.record_in(store) if is_main else (lambda name, entry: None), log,
                                 progress)

  if is_main and cfg.final.get("finetune_tasks"):
    finetune_finals(cfg, run_dir, store, log, progress)

  summary = {}
  if is_main:
    summary = report_lib.write_report(run_dir, store)
    summary["wall_s_this_run"] = time.time() - t_start
    files.write_json(os.path.join(run_dir, "summary.json"), summary)
    store.close()
  return summary
