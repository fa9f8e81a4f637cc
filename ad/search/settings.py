"""The search and final sections of a config, typed: each setting and its default live here once.

ad/configs/common.py builds a config's `search` and `final` sections from these
dataclasses, so a config file writes only what it changes. The search reads them through
`search_settings(cfg)` / `final_settings(cfg)`, which give a hand-written section's missing keys
their defaults and name an unknown key (configs.section).
"""

from __future__ import annotations

import dataclasses

from ad import configs


@dataclasses.dataclass(frozen=True)
class MeasureSettings:
  """How each student's latency is measured (profiling/harness.py)."""
  batch: int = 1
  seq: int = 128
  target_rel_ci: float = 0.05
  max_reps: int = 100
  chunk: int = 10  # runs per trace
  # '' = trials are measured where they train, else the name of the machine whose
  # `ad worker --role measure --target NAME` processes measure them ('tpu:v5e': XLA's estimate).
  target: str = ""
  # Each student is timed alternately with this architecture and its latency is its ratio to it x
  # one run-wide scale, since this machine drifts 15-40% between readings that each claim 1-4%
  # ('baseline': search.baseline_arch; '': each timed alone).
  reference: str = "baseline"
  # The ms value of a paired latency is its ratio x the reference's latency on this machine:
  # 'machine' = the first quiet reading of it here, cached and shared by every search on this
  # machine (so two searches hours apart agree in ms where their ratios agree); 'run' = this run's
  # first reading.
  scale: str = "machine"


@dataclasses.dataclass(frozen=True)
class BOSettings:
  """The Bayesian-optimization designer (ad/search/trieste_service.py)."""
  optimizer_python: str = ""  # '' = .venv-opt's Python
  likelihood_variance: float = 1e-3
  # What BO makes of the trials other workers are running when it is asked for one ('exclude':
  # never suggests them; 'believer': also conditions its GPs on them at their posterior mean;
  # 'hippo': penalizes candidates predicted close to them). 'believer' reached three better models
  # in the fewest rounds with 4 workers on the analytic problem; on the 48-student table the three
  # differed by less than the spread over seeds (experiments/README.md section 12).
  pending: str = "believer"
  # The GPs also see each candidate's log parameters and log FLOPs (scaled to [0, 1]), with a prior
  # mean linear in them, so BO starts from what the size predicts. On: at the quickstart's scale it
  # found better students, regular's top 3 and the front sooner (experiments/README.md section 13).
  training_free: bool = True
  # What BO makes of a limit known only once a trial runs (constraints.max_latency_ms): 'filter'
  # excludes an infeasible trial only; 'model' fits a GP to every measured latency and weighs EHVI
  # by the probability that the limit is met.
  constraints: str = "filter"


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
  """Parallel trials (`ad search --workers N`, `ad worker`): a worker renews its claim on a trial
  every lease_s / 3 seconds; a trial whose lease ran out (a worker killed, a machine lost) is
  claimed again and resumes from its own checkpoints."""
  lease_s: float = 120.0
  poll_s: float = 1.0


@dataclasses.dataclass(frozen=True)
class EvolutionSettings:
  """004 Algorithm 2."""
  population: int = 25
  mutation_prob: float = 0.5
  explore_prob: float = 0.5


@dataclasses.dataclass(frozen=True)
class FireflySettings:
  """Yang (2010)."""
  population: int = 10
  beta0: float = 1.0
  gamma: float = 1.0
  alpha: float = 0.2


@dataclasses.dataclass(frozen=True)
class LatencyModelSettings:
  """The learned latency predictor behind the objective predicted_latency_ms (004): fitted on the
  measurements of a search's run directory or a CSV such as experiments/results/tabular.csv."""
  source: str = ""


def default_objectives(latency_reference_ms: float = 20.0) -> list[dict]:
  """Accuracy up, latency down, with the reference point given explicitly (trieste minimizes).
  reference_ratio: while latencies are paired (measure.reference), the reference point is this
  multiple of the reference architecture's latency (the run's scale): a student twice as slow as
  the baseline adds nothing. `reference` (ms) is used where nothing is paired (a TPU estimate, no
  baseline)."""
  return [dict(name="mlm_accuracy", direction="max", reference=0.0),
          dict(name="latency_ms", direction="min", reference=latency_reference_ms, reference_ratio=2.0)]


@dataclasses.dataclass(frozen=True)
class SearchSettings:
  """The search section (ad/search/loop.py). num_trials counts the initial design too; the
  baseline is evaluated on top of it."""
  designer: str = "bo"
  seed: int = 0
  num_initial: int = 4
  num_trials: int = 12
  baseline_arch: str = "512_128_4_512_4"  # MobileBERT's block shape (003 Table 2), evaluated like every trial
  # An HF MobileBERT-family directory (e.g. google/mobilebert-uncased, downloaded by the user):
  # measured like every trial and scored as it is on the held-out set, marked in the report.
  baseline_checkpoint: str = ""
  max_failed_trials: int = 10  # the search stops with an error once more trials have failed (0: no limit)
  workers: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)
  objectives: list = dataclasses.field(default_factory=default_objectives)
  measure: MeasureSettings = dataclasses.field(default_factory=MeasureSettings)
  latency_model: LatencyModelSettings = dataclasses.field(default_factory=LatencyModelSettings)
  # The accuracy objective's proxy: 'flash' distills each candidate (003); 'superlm' / 'fewshot'
  # extract it from weight-sharing SuperLMs (004 / 001) trained once in the run directory
  # (ad/distill/superlm.py, the config's `superlm` section).
  proxy: str = "flash"
  bo: BOSettings = dataclasses.field(default_factory=BOSettings)
  # After the finals, regular-distill this many more search students, spread along the front (then
  # over the other students' flash accuracy), and grade the accuracy proxy against regular
  # distillation and the parameter count on the finals and them (report.md's "Calibration";
  # ad/search/calibration.py). 0: the finals only; more than the search has: all of them.
  calibrate: int = 0
  evolution: EvolutionSettings = dataclasses.field(default_factory=EvolutionSettings)
  firefly: FireflySettings = dataclasses.field(default_factory=FireflySettings)


@dataclasses.dataclass(frozen=True)
class FinalSettings:
  """Which Pareto students get the full (regular) distillation, saved with orbax and exported to
  HF. include_baseline: the baseline too, so the final comparison is like for like (003 Table 2);
  finetune_tasks: downstream tasks (ad/finetune/tasks.py) each final, the baseline's final and the
  teacher are fine-tuned on at the end, with the `finetune` section's settings (a 003 Table 3)."""
  count: int = 1
  choose: str = "knee"
  schedule: str = "regular"
  export_hf: bool = True
  include_baseline: bool = True
  finetune_tasks: list = dataclasses.field(default_factory=list)


_SEARCH_PARTS = dict(workers=WorkerSettings, measure=MeasureSettings, latency_model=LatencyModelSettings,
                     bo=BOSettings, evolution=EvolutionSettings, firefly=FireflySettings)


def search_settings_from(section) -> SearchSettings:
  """SearchSettings from a `search` mapping (a config's ConfigDict or a plain dict); absent keys
  take their defaults, an unknown key is an error naming it. SearchSettings are returned as they are."""
  if isinstance(section, SearchSettings):
    return section
  given = dict(section or {})
  parts = {name: configs.section(cls, given.pop(name, None), f"search.{name}") for name, cls in _SEARCH_PARTS.items()}
  if "objectives" in given:
    given["objectives"] = [dict(o) for o in given["objectives"]]
  return configs.section(SearchSettings, given, "search", **parts)


def search_settings(cfg) -> SearchSettings:
  return search_settings_from(cfg.get("search"))


def final_settings(cfg) -> FinalSettings:
  final = configs.section(FinalSettings, cfg.get("final"), "final")
  return dataclasses.replace(final, finetune_tasks=list(final.finetune_tasks))


# What a run record written before a setting existed means by lacking it, so that a resumed search
# and its workers read an old record as the run it was: older runs timed each student alone and
# scaled by the run's own reading, and their BO neither conditioned on trials in flight nor saw
# the training-free inputs.
RECORD_DEFAULTS = dict(latency_model=dict(source=""), proxy="flash", calibrate=0,
                       measure=dict(reference="", scale="run"),
                       bo=dict(pending="exclude", training_free=False, constraints="filter"))


def record_config(config: dict) -> dict:
  """A recorded config (the store's run record) with the search settings an older record lacks
  filled in with what they meant then (RECORD_DEFAULTS)."""
  search = dict(config.get("search", {}))
  for key, meant in RECORD_DEFAULTS.items():
    if isinstance(meant, dict):
      search[key] = dict(meant, **search.get(key, {}))
    else:
      search.setdefault(key, meant)
  return dict(config, search=search)
