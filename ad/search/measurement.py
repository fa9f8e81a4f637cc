"""A trial's latency measurement on this backend (profiling/harness.py, XLA traces kept), paired with
a reference architecture on one ms scale per machine, or estimated for a TPU chip by XLA's cost model
(ad/aot.py)."""

from __future__ import annotations

import os
import time
from typing import Any

from ad import aot, files, space as space_lib
from ad.search import settings
from profiling import harness, peaks as peaks_lib


def _chip(target: str) -> str | None:
  return target[len("tpu:"):] if target.startswith("tpu:") else None


def estimated_target(cfg) -> str | None:
  """The TPU chip of search.measure.target = 'tpu:<chip>' (latency estimated by XLA's TPU cost model,
  in this process: ad/aot.py estimate_latency), else None."""
  return _chip(settings.search_settings(cfg).measure.target)


def remote_target(cfg) -> str | None:
  """search.measure.target when it names a machine whose `ad worker --role measure` processes measure
  the trials (not an estimated TPU target), else None."""
  target = settings.search_settings(cfg).measure.target
  return None if _chip(target) else (target or None)


def measurement_reference(cfg, search: settings.SearchSettings | None = None) -> str | None:
  """The architecture each latency is measured against (search.measure.reference): 'baseline' is
  search.baseline_arch (none without a baseline), '' measures each alone. None for an estimated
  TPU target: an estimate does not drift. search: the config's search settings, if parsed already."""
  search = search or settings.search_settings(cfg)
  ref = search.measure.reference
  if _chip(search.measure.target) or not ref:
    return None
  return (search.baseline_arch or None) if ref == "baseline" else ref


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
  m = settings.search_settings(cfg).measure
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
  search = settings.search_settings(cfg)
  m = search.measure
  chip = _chip(m.target)
  if chip:
    return aot.estimate_latency(arch, cfg.model if model_cfg is None else model_cfg, chip, batch=m.batch, seq=m.seq)
  reference = measurement_reference(cfg, search)
  with peaks_lib.OtherLoad() as load:  # a quiet reading of the reference may become the machine's scale
    r = harness.measure_arch(arch, cfg.model if model_cfg is None else model_cfg, batch=m.batch, seq=m.seq,
                             trace_dir=trace_dir, target_rel_ci=m.target_rel_ci, max_reps=m.max_reps, chunk=m.chunk,
                             min_reps=min(20, m.max_reps), reference=reference, reference_model_cfg=cfg.model)
  if reference:
    first = dict(arch=r["reference"], ms=r["reference_ms_median"], target=target, source="run")
    if m.scale == "machine":
      first = machine_scale(first, cfg, load.fraction, peaks_lib.cpu_identity(cfg.model.dtype))
    scale = (store.first_meta(latency_scale_key(target), first) if store is not None else None) or first
    r.update(reference_scale_ms=float(scale["ms"]), reference_scale_source=scale.get("source", "run"),
             latency_ms_paired=r["latency_ratio"] * float(scale["ms"]))
  return r


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


def trace_dir_of(run_dir: str, name: str) -> str:
  return os.path.join(run_dir, "traces", name.replace(":", "_"))
