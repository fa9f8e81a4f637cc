"""Flash and regular distillation (003 section 3.3): `distill()` and the helpers it delegates to.

Schedule: K progressive stages (stage k trains block k and its adapter on attention KL +
feature MSE against the mapped teacher layer, blocks < k frozen; stage 0 also trains the
embeddings, which feed block 0), then pre-training distillation of the whole student
(alpha MLM + (1 - alpha) MLM-KD + NSP, eq. 3) until the step budget. Flash and regular
distillation are the same machinery with different step counts (distill.flash / .regular).

Compiled programs, whatever K (one of each per run; the persistent cache serves re-runs):
- one progressive step for all K stages. The stage k is data: the frozen blocks 0..k-1 and
  teacher layers 0..m(k)-1 run forward in a while loop, block k and its adapter are indexed
  dynamically from the stacked parameters, and which parameters move is a mask over the
  parameter tree computed from k (STAGE_RULES);
- one pre-training-distillation step (the blocks in a scan);
- one optimizer initialization per optimizer (a stage starts with fresh LAMB moments and its
  own warm-up and linear decay), one evaluation.
Frozen parameters get an update of exactly zero, so they stay bit-for-bit equal.

Resumable: orbax checkpoints every `checkpoint_every` steps, at the end of every stage and on an interrupt
hold the parameters (student + adapters), the stage's optimizer state and the
position; the data stream is deterministic for the seed and index-addressable, so a resumed run
starts reading at its step instead of replaying the batches already used. The frozen teacher is never checkpointed. A workdir is locked while a run uses it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ad import export, files, multihost
from ad.data import pretrain, settings as data_settings
from ad.distill import evaluation, losses
from ad.distill.context import TeacherContext
from ad.distill.settings import DistillConfig, distill_config_from
from ad.train import optim, sharding
from ad.train.checkpoints import (Checkpoints, LossLog, check_run_record, check_student_checkpoint,
                                  restore_student_params, save_student_params)
from ad.train.params import Rebuild, without
from ad.train.steps import MetricsWriter, StepLoop
from profiling.compile_stats import CompileLog, compile_concurrently
from ad.models import stack, student as student_lib
from ad.models.student import mask_to_bias

PRETRAIN = "pretrain_distill"
# Which parameters a progressive stage moves: the block and adapter slices of stage k, the
# embeddings in stage 0 (the MobileBERT recipe also moves earlier ones, more slowly); never the
# heads or the pooler. First match wins (optim.labels).
STAGE_RULES = [(r"student/blocks/.*", "block"), (r"adapters/.*", "block"),
               (r"student/embeddings/.*", "embeddings"), (r".*", "frozen")]



# ---------------------------------------------------------------------------------------------
# The stage plan.

@dataclasses.dataclass(frozen=True)
class Stage:
  name: str  # progressive_block_<k> or pretrain_distill
  block: int | None  # k for a progressive stage
  start: int  # global steps [start, end)
  end: int


def stage_plan(dcfg: DistillConfig, num_blocks: int) -> list[Stage]:
  out, g = [], 0
  for k in range(num_blocks):
    out.append(Stage(f"progressive_block_{k}", k, g, g + dcfg.block_steps(num_blocks)))
    g = out[-1].end
  out.append(Stage(PRETRAIN, None, g, g + dcfg.pretrain_steps))
  return out


def stage_schedules(dcfg: DistillConfig, num_blocks: int):
  """(progressive, pre-training) learning-rate schedules, each over its own stage's steps:
  warm-up (DistillConfig.stage_warmup), then linear decay to 0 at the stage's end."""
  prog_steps = dcfg.block_steps(num_blocks)
  return (optim.warmup_linear_decay(dcfg.progressive_lr or dcfg.lr, dcfg.stage_warmup(prog_steps), prog_steps),
          optim.warmup_linear_decay(dcfg.lr, dcfg.stage_warmup(dcfg.pretrain_steps), dcfg.pretrain_steps))


def train_stream(task, data_cfg, per_host: int, total_steps: int, start: int):
  """This host's training batches of a `total_steps` run from step `start` on: a resumed run
  continues the stream without reading what it already used (the stream is index-addressable,
  ad/data/pretrain.py); a small run's batches are memoized in-process."""
  where = (jax.process_index(), jax.process_count())
  if total_steps * per_host * data_cfg.seq_len <= pretrain.CACHE_MAX_TOKENS:
    return iter(pretrain.cached_batches(task, data_cfg, "train", per_host, total_steps, *where)[start:])
  return pretrain.batches(task, data_cfg, "train", per_host, *where, start_batch=start)


def stage_at(plan: list[Stage], step: int) -> Stage:
  return next(s for s in plan if s.start <= step < s.end)


# ---------------------------------------------------------------------------------------------
# The losses of the two step functions.

def stage_mask(updates, labels, k, num_blocks: int, earlier_scale: float):
  """Scales the updates of progressive stage k (k traced) by label (STAGE_RULES): stacked
  block/adapter slice k by 1, earlier slices by `earlier_scale` (the MobileBERT recipe; 0
  otherwise), the embeddings by 1 in stage 0 (else `earlier_scale`), everything else by 0."""
  j = jnp.arange(num_blocks)
  scales = {"block": (j == k).astype(jnp.float32) + (j < k).astype(jnp.float32) * earlier_scale,  # [K]
            "embeddings": jnp.where(k == 0, 1.0, earlier_scale), "frozen": jnp.zeros(())}

  def one(u, lab):
    s = scales[lab]
    return u * s.reshape(s.shape + (1,) * (u.ndim - s.ndim)).astype(u.dtype)
  return jax.tree.map(one, updates, labels)


def _progressive_loss(dcfg, num_blocks, mapping, student_of, adapters_of, teacher_of, cost_stage=None):
  """loss(params, teacher_params, batch, k) of progressive stage k (eq. 1 + eq. 2).

  cost_stage: an int makes the program stage `cost_stage`'s alone, k a constant and its loops
  unrolled, so XLA's cost analysis counts every block it runs (ad/aot.py); None: k is data and one
  program serves every stage (what training runs)."""
  earlier_trainable = dcfg.earlier_scale > 0
  unroll = cost_stage is not None

  def loss_fn(params, t_params, b, k):
    if unroll:
      k = cost_stage
    mask_bias = mask_to_bias(b["attention_mask"])
    s, a, t = student_of(params["student"]), adapters_of(params["adapters"]), teacher_of(t_params)
    # Teacher: layers 0..m-1 in a loop, then layer m with its attention probabilities.
    m = mapping[k]  # an int under cost_stage (mapping is then a list): the teacher prefix unrolls too
    th = stack.run_first(losses.teacher_layers(t), lambda layer, h: layer(h, mask_bias)[0],
                         t.embed(b["input_ids"], b["token_type_ids"]), m)
    th, tp = jax.lax.stop_gradient(t.block(m)(th, mask_bias))
    emb = s.embed(b["input_ids"], b["token_type_ids"])
    if earlier_trainable:  # the MobileBERT recipe trains earlier blocks too: differentiate through all
      step = lambda block, h: (lambda out: (out[0], out))(block(h, mask_bias))
      _, (hs, ps) = stack.scan(s.blocks, step, emb, unroll=unroll)
      sh, sp = jnp.take(hs, k, axis=0), jnp.take(ps, k, axis=0)
    else:  # blocks < k are frozen: forward only (stopped parameters), then block k
      frozen = student_of(jax.lax.stop_gradient(params["student"]))
      prefix = stack.run_first(frozen.blocks, lambda block, h: block(h, mask_bias, with_probs=False)[0],
                              jax.lax.stop_gradient(emb), k)
      sh, sp = s.block(k)(jnp.where(k == 0, emb, prefix), mask_bias)
    mha = losses.attention_kl(tp, sp, b["attention_mask"])
    adapted = a(k, sh)
    if dcfg.recipe == "mobilebert":
      # MobileBERT's weights (hidden MSE 100, attention 1, mean 5000, variance 5), over the layer count.
      mse, mean_t, var_t = losses.mobilebert_feature_loss(th, adapted, b["attention_mask"])
      total = (100 * mse + mha + 5000 * mean_t + 5 * var_t) / num_blocks
      return total, dict(mha=mha, fm=mse, fm_mean=mean_t, fm_var=var_t)
    fm = losses.feature_mse(th, adapted, b["attention_mask"])
    return dcfg.mha_weight * mha + dcfg.fm_weight * fm, dict(mha=mha, fm=fm)
  return loss_fn


def _pretrain_loss(dcfg, student_of, teacher_of, unroll: bool = False):
  """loss(student_params, teacher_params, batch) of pre-training distillation (eq. 3); unroll: the
  block loops unrolled in the program (for XLA's cost analysis, ad/aot.py)."""
  def loss_fn(s_params, t_params, b):
    s, t = student_of(s_params), teacher_of(t_params)
    so = s.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"], unroll=unroll, with_attentions=False)
    s_mlm = s.mlm_logits(losses.gather_positions(so["sequence_output"], b["masked_positions"]))
    s_nsp = s.nsp_logits(so["pooled"])
    to = t.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"], unroll=unroll, with_attentions=False)
    t_mlm = jax.lax.stop_gradient(t.mlm_logits(losses.gather_positions(to["sequence_output"], b["masked_positions"])))
    total, terms = losses.pretraining_loss(s_mlm, t_mlm, s_nsp, b, dcfg.alpha, dcfg.temperature)
    w = b["masked_weights"]
    terms["mlm_acc"] = ((jnp.argmax(s_mlm, -1) == b["masked_ids"]) * w).sum() / jnp.maximum(w.sum(), 1.0)
    return total, terms
  return loss_fn


# ---------------------------------------------------------------------------------------------
# The programs of a run: what `distill` compiles and runs, and what `ad compile` compiles for a TPU
# topology (ad/aot.py), one code path for both.

@dataclasses.dataclass
class DistillPrograms:
  """The jitted programs of a distillation run on `mesh` and the abstract (sharded) arguments each
  compiles for; `jobs()` hands them to compile_concurrently."""
  mesh: jax.sharding.Mesh
  student_of: Rebuild
  adapters_of: Rebuild
  teacher_of: Rebuild
  params_abs: dict  # dict(student=..., adapters=...) ShapeDtypeStructs with shardings
  teacher_sh: dict
  jitted: dict  # name -> jax.jit-wrapped function
  abstract_args: dict  # name -> tuple of abstract arguments

  def jobs(self, init: bool = True, progressive: bool = True) -> dict:
    """{name: (jitted, abstract args)} of the programs a run still needs: the parameter initialization
    unless restored, the progressive step and its optimizer initialization unless every progressive
    stage is done, the pre-training step and its optimizer initialization always."""
    names = (["init"] if init else []) + (["progressive", "progressive_opt_init"] if progressive else [])
    names += [PRETRAIN, "pretrain_opt_init"]
    return {n: (self.jitted[n], self.abstract_args[n]) for n in names}


def distill_programs(scfg, dcfg: DistillConfig, data_cfg, teacher, mesh, cost_stage: int | None = None
                     ) -> DistillPrograms:
  """The student and adapters (abstract), their parameter and optimizer shardings on `mesh` from the
  declared logical axes, and the jitted programs: parameter initialization, the progressive step
  for every stage, the pre-training-distillation step, an optimizer initialization for each.
  `teacher` may be abstract (nnx.eval_shape): nothing here reads its values.

  cost_stage: the programs XLA's cost analysis can count whole (ad/aot.py): block loops unrolled,
  the progressive step that of stage `cost_stage` alone. Training never runs these."""
  K = scfg.num_blocks
  L, Ht, _ = losses.teacher_dims(teacher)
  mapping = losses.block_mapping(K, L)
  mapping = mapping if cost_stage is not None else jnp.asarray(mapping, jnp.int32)
  # RngBitGenerator keys: the initialization compiles in a fraction of threefry's time on CPU.
  rngs = lambda seed: nnx.Rngs(jax.random.key(seed, impl="rbg"))
  make_student = lambda: student_lib.Student(scfg, rngs(dcfg.seed))
  make_adapters = lambda: losses.Adapters(K, scfg.arch.hidden, Ht, rngs(dcfg.seed + 1), scfg.dtype)
  student_abs, adapters_abs = nnx.eval_shape(make_student), nnx.eval_shape(make_adapters)
  student_of, adapters_of, teacher_of = Rebuild(student_abs), Rebuild(adapters_abs), Rebuild(teacher)
  param_sh = dict(student=without(sharding.param_shardings(student_abs, mesh), student_of.empty),
                  adapters=sharding.param_shardings(adapters_abs, mesh))
  teacher_sh = sharding.param_shardings(teacher, mesh)
  stacked = dict(student=without(optim.stacked_leaves(student_abs), student_of.empty),
                 adapters=optim.stacked_leaves(adapters_abs))

  def init_params(t_params):  # one compiled program, made directly in its shardings (flax lm1b's way)
    student, adapters = make_student(), make_adapters()
    losses.init_embeddings_from_teacher(student, teacher_of(t_params))
    return dict(student=without(nnx.state(student).to_pure_dict(), student_of.empty),
                adapters=nnx.state(adapters).to_pure_dict())
  params_abs = sharding.sharded_abstract(dict(student=student_of.params, adapters=adapters_of.params), param_sh)
  labels = optim.labels(params_abs, STAGE_RULES)

  tx_prog = optim.lamb_direction(dcfg.weight_decay, stacked)
  tx_pre = optim.lamb_direction(dcfg.weight_decay, stacked["student"])
  prog_opt_sh = sharding.opt_shardings(tx_prog, params_abs, param_sh, mesh)
  pre_opt_sh = sharding.opt_shardings(tx_pre, params_abs["student"], param_sh["student"], mesh)
  prog_loss = _progressive_loss(dcfg, K, mapping, student_of, adapters_of, teacher_of, cost_stage)
  pre_loss = _pretrain_loss(dcfg, student_of, teacher_of, unroll=cost_stage is not None)

  def progressive_step(params, opt_state, t_params, b, k, lr):
    (loss, terms), g = jax.value_and_grad(prog_loss, has_aux=True)(params, t_params, b, k)
    direction, opt_state = tx_prog.update(g, opt_state, params)
    updates = stage_mask(jax.tree.map(lambda d: -lr * d, direction), labels, k, K, dcfg.earlier_scale)
    return optax.apply_updates(params, updates), opt_state, loss, terms

  def pretrain_step(s_params, opt_state, t_params, b, lr):
    (loss, terms), g = jax.value_and_grad(pre_loss, has_aux=True)(s_params, t_params, b)
    direction, opt_state = tx_pre.update(g, opt_state, s_params)
    return optax.apply_updates(s_params, jax.tree.map(lambda d: -lr * d, direction)), opt_state, loss, terms

  jitted = dict(
      init=jax.jit(init_params, out_shardings=param_sh),
      progressive=jax.jit(progressive_step, donate_argnums=(0, 1),
                          in_shardings=(param_sh, prog_opt_sh, None, None, None, None),
                          out_shardings=(param_sh, prog_opt_sh, None, None)),
      progressive_opt_init=jax.jit(tx_prog.init, out_shardings=prog_opt_sh),
      **{PRETRAIN: jax.jit(pretrain_step, donate_argnums=(0, 1),
                           in_shardings=(param_sh["student"], pre_opt_sh, None, None, None),
                           out_shardings=(param_sh["student"], pre_opt_sh, None, None))},
      pretrain_opt_init=jax.jit(tx_pre.init, out_shardings=pre_opt_sh))
  t_abs = sharding.sharded_abstract(teacher_of.params, teacher_sh)
  batch_abs = sharding.abstract_batch(dcfg.batch_size, data_cfg.seq_len, data_cfg.max_predictions, mesh)
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype)
  prog_opt_abs = sharding.sharded_abstract(jax.eval_shape(tx_prog.init, params_abs), prog_opt_sh)
  pre_opt_abs = sharding.sharded_abstract(jax.eval_shape(tx_pre.init, params_abs["student"]), pre_opt_sh)
  abstract_args = dict(
      init=(t_abs,),
      progressive=(params_abs, prog_opt_abs, t_abs, batch_abs, scalar(jnp.int32), scalar(jnp.float32)),
      progressive_opt_init=(params_abs,),
      **{PRETRAIN: (params_abs["student"], pre_opt_abs, t_abs, batch_abs, scalar(jnp.float32))},
      pretrain_opt_init=(params_abs["student"],))
  return DistillPrograms(mesh, student_of, adapters_of, teacher_of, params_abs, teacher_sh, jitted, abstract_args)


# ---------------------------------------------------------------------------------------------
# distill()

def distill(arch, cfg, schedule: str, workdir: str, resume: bool = False, log: Callable = print,
            progress: bool = True, save_student: bool = False, export_dir: str | None = None,
            card_latency: dict | None = None, init_student: str | None = None, lock_wait_s: float = 0.0,
            context: TeacherContext | None = None) -> dict:
  """Flash- or regular-distills `arch` per `cfg` (a loaded experiment ConfigDict); returns metrics.

  init_student: an orbax checkpoint of this architecture's student parameters alone (e.g. a
  sub-network extracted from a SuperLM, ad/distill/superlm.py) to start from instead of the random
  initialization; the adapters start as usual.
  save_student: also write the final student alone (no adapters, no optimizer) as an orbax
  checkpoint in `workdir/student`; export_dir: also export it there as a complete Hugging Face
  directory (ad/export.py; card_latency: the measured latency for its model card). lock_wait_s:
  how long to wait for the workdir held by another process (a trial's previous holder) before
  files.LockedError. context: the teacher, vocabulary and evaluation set the runs of this config share
  (ad/distill/context.py; built here when not given).
  """
  workdir = os.path.abspath(workdir)
  lock = files.DirectoryLock(workdir, "distillation workdir", wait_s=lock_wait_s) if multihost.is_main() else None
  with CompileLog() as compiles:
    if lock:
      lock.__enter__()
    try:
      metrics = _distill(arch, cfg, schedule, workdir, resume, log, progress, save_student, export_dir, compiles,
                         card_latency, init_student, context)
    finally:
      if lock:
        lock.__exit__(None, None, None)
  return metrics


def run_record(scfg, schedule: str, dcfg: DistillConfig, data_cfg, teacher_cfg, init_student: str | None) -> dict:
  """What makes a distillation run the same run (run.json): a --resume with another record is refused."""
  record = dict(arch=scfg.arch.name, schedule=schedule, distill=dataclasses.asdict(dcfg), data=repr(data_cfg),
                model=repr(student_lib.resolve_kernels(scfg, jax.default_backend())), teacher=dict(teacher_cfg))
  if init_student:  # only when given, so the records of runs made before the option still match
    record["init_student"] = init_student
  return record


def _resume_point(ckpts: Checkpoints, params_abs, plan: list[Stage], data_cfg, arch_name: str, log: Callable):
  """(next step, parameters, the checkpoint whose optimizer state to restore or None) of a --resume: the
  latest checkpoint's, or step 0 when there is none."""
  last = ckpts.latest()
  if last is None:
    log(f"distill: --resume given but {ckpts.directory} has no checkpoint; starting from step 0")
    return 0, None, None
  meta = ckpts.restore(last, meta=None)["meta"]
  next_step = int(meta["next_step"])
  pretrain.remember_epoch_lengths(data_cfg, meta.get("data_epoch_lengths", []))  # skip to the step for free
  params = ckpts.restore(last, params=params_abs)["params"]
  total_steps = plan[-1].end
  # mid-stage, the saved optimizer state belongs to this stage; at a stage's start a fresh one begins
  mid_stage = 0 < next_step < total_steps and stage_at(plan, next_step) == stage_at(plan, next_step - 1)
  log(f"distill: resuming {arch_name} at step {next_step}/{total_steps} from {ckpts.directory}")
  return next_step, params, last if mid_stage else None


def _distill(arch, cfg, schedule, workdir, resume, log, progress, save_student, export_dir, compiles,
             card_latency, init_student, context) -> dict:
  t_start = time.time()
  dcfg = distill_config_from(cfg.distill, schedule)
  data_cfg = data_settings.config_from_dict(cfg.data)
  scfg = student_lib.config_from_dict(arch, cfg.model)
  K = scfg.num_blocks
  is_main = multihost.is_main()

  # ---- mesh, teacher, starting checkpoint: checked before the workdir holds anything -------------
  mesh, mesh_data = sharding.training_mesh(dcfg)
  # The teacher (frozen, never checkpointed here) in the student's compute dtype, and the evaluation set.
  context = context or TeacherContext.build(cfg, log=log, progress=progress)
  context.check_serves(cfg, scfg.dtype)
  teacher, teacher_dir = context.teacher, context.teacher_dir
  if teacher.cfg.vocab_size != scfg.vocab_size:
    raise ValueError(f"teacher vocab {teacher.cfg.vocab_size} != student vocab {scfg.vocab_size} (config.model.vocab_size)")
  if init_student:
    init_student = os.path.abspath(init_student)
    if not (resume and os.path.isdir(os.path.join(workdir, "checkpoints"))):  # a wrong one fails before anything
      check_student_checkpoint(init_student, Rebuild(student_lib.abstract_student(scfg)).params)

  # ---- run record: a workdir holds one run; --resume must continue the same one -------------------
  os.makedirs(workdir, exist_ok=True)
  check_run_record(workdir, run_record(scfg, schedule, dcfg, data_cfg, cfg.teacher, init_student), resume)

  # ---- data: per-host shard, deterministic for the seed; the fixed evaluation set ---------------
  vocab = context.vocab
  task = pretrain.make_task(data_cfg, vocab, min(scfg.max_positions, teacher.cfg.max_positions), scfg.vocab_size)
  student_info = export.write_student_info(workdir, scfg, vocab, data_cfg, teacher_dir, schedule) if is_main else None
  eval_set, teacher_top1, teacher_scores = context.eval_set, context.teacher_top1, context.teacher_scores
  plan = stage_plan(dcfg, K)
  total_steps = plan[-1].end
  per_host = dcfg.batch_size // jax.process_count()

  # ---- student, adapters, their parameters and shardings, the programs (each compiled once) --------
  progs = distill_programs(scfg, dcfg, data_cfg, teacher, mesh)
  student_of, params_abs = progs.student_of, progs.params_abs
  # From host memory: every process holds the same teacher values, and device_put onto a mesh
  # that spans other hosts' devices takes host arrays.
  t_params = jax.device_put(jax.device_get(progs.teacher_of.params), progs.teacher_sh)
  prog_lr, pre_lr = stage_schedules(dcfg, K)

  # ---- checkpoints, logs -----------------------------------------------------------------------
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), dcfg.keep_checkpoints)
  next_step, params, restored_opt = (_resume_point(ckpts, params_abs, plan, data_cfg, scfg.arch.name, log) if resume
                                     else (0, None, None))
  loss_log = LossLog(os.path.join(workdir, "losses.jsonl"), next_step, is_main)
  train_iter = train_stream(task, data_cfg, per_host, total_steps, next_step)
  writer = MetricsWriter(os.path.join(workdir, "tb"), enabled=is_main)

  # ---- compile what the remaining stages need, side by side (ahead of time, on abstract values) ----
  prog_opt_abs, pre_opt_abs = progs.abstract_args["progressive"][1], progs.abstract_args[PRETRAIN][1]
  jobs = progs.jobs(init=params is None, progressive=next_step < plan[-1].start)
  t_compile = time.time()
  compiled = compile_concurrently(jobs, mesh)
  compile_wall_s = time.time() - t_compile
  if params is None:
    params = compiled["init"](t_params)
    if init_student:
      params = dict(params, student=restore_student_params(init_student, params_abs["student"]))

  def save(g: int, state) -> None:
    params, opt_state = state
    ckpts.save(g, params, opt_state, dict(next_step=g, stage=stage_at(plan, min(g, total_steps - 1)).name,
                                          arch=scfg.arch.name, data_epoch_lengths=pretrain.epoch_lengths(data_cfg)))

  tokens = 0

  def step(state, g: int):
    nonlocal tokens
    params, opt_state = state
    stage = stage_at(plan, g)
    local = next(train_iter)
    b = sharding.global_batch(local, mesh)
    lr = float((prog_lr if stage.block is not None else pre_lr)(g - stage.start))
    try:
      if stage.block is not None:
        params, opt_state, loss, terms = compiled["progressive"](params, opt_state, t_params, b, np.int32(stage.block),
                                                                 np.float32(lr))
      else:
        s_params, opt_state, loss, terms = compiled[PRETRAIN](params["student"], opt_state, t_params, b, np.float32(lr))
        params = dict(params, student=s_params)
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
        raise MemoryError(f"architecture {scfg.arch.name} ({K} blocks, batch {dcfg.batch_size}, seq "
                          f"{data_cfg.seq_len}) does not fit in device memory during {stage.name}: {e}") from e
      raise
    tokens += int(local["attention_mask"].sum()) * jax.process_count()
    return (params, opt_state), dict(step=g, stage=stage.name, loss=float(loss), lr=lr,
                                     **{n: float(v) for n, v in terms.items()})

  def nonfinite(g: int, rec: dict) -> str:
    stage = stage_at(plan, g)
    return (f"non-finite loss {rec['loss']} at step {g} (stage {stage.name}, step {g - stage.start} of "
            f"{stage.end - stage.start}) for {scfg.arch.name}; lower distill.lr or check the data")

  # ---- the stages: each starts with fresh optimizer moments, or the ones a mid-stage resume restored ----
  setup_s = time.time() - t_start - compile_wall_s  # teacher, data pipeline, evaluation set, student init, sharding
  with StepLoop(start=next_step, total=total_steps, what=scfg.arch.name, desc=scfg.arch.name, progress=progress,
                is_main=is_main, loss_log=loss_log, writer=writer, log_every=dcfg.log_every,
                checkpoint_every=dcfg.checkpoint_every, save=save) as loop:
    while loop.step < total_steps:
      stage = stage_at(plan, loop.step)
      progressive = stage.block is not None
      if restored_opt is not None:
        opt_state = ckpts.restore(restored_opt, opt=prog_opt_abs if progressive else pre_opt_abs)["opt"]
        restored_opt = None
      else:
        opt_state = compiled["progressive_opt_init" if progressive else "pretrain_opt_init"](
            params if progressive else params["student"])
      loop.bar.set_description(f"{scfg.arch.name} {stage.name} ({plan.index(stage) + 1}/{len(plan)})")
      params, _ = loop.run((params, opt_state), stage.end, step, nonfinite, prefix=f"{stage.name}/")
  loop_s, in_loop, ckpt_s = loop.loop_s, loop.compiles, loop.checkpoint_s
  ckpts.close()

  # ---- evaluation on the held-out set (the search's accuracy objective) ----------------------------
  final_student = student_of(multihost.allgather(params["student"]))
  val = evaluation.evaluate(final_student, eval_set, teacher_top1, what=f"student {scfg.arch.name} in {workdir}")
  writer.scalars(total_steps, {f"eval/{n}": val[n]
                               for n in ("mlm_accuracy", "mlm_cross_entropy", "teacher_agreement", "nsp_accuracy")})
  writer.flush()
  compile_in_loop_s = in_loop["compile_s"] + in_loop["trace_s"] + in_loop["lower_s"]
  metrics = dict(
      arch=scfg.arch.name, num_blocks=K, schedule=schedule, steps=total_steps, steps_per_block=dcfg.block_steps(K),
      pretrain_steps=dcfg.pretrain_steps, batch_size=dcfg.batch_size, seq_len=data_cfg.seq_len, dtype=scfg.dtype,
      **val, teacher_mlm_accuracy=teacher_scores["mlm_accuracy"],
      teacher_mlm_accuracy_se=teacher_scores["mlm_accuracy_se"], resumed_from=next_step if resume else None,
      # Wall-time split: setup (teacher, data, evaluation set), compiling (the step programs side by
      # side before the loop, plus what the loop still compiles), training steps proper, checkpoint
      # writes, evaluation (below).
      setup_s=setup_s, compile_wall_s=compile_wall_s + compile_in_loop_s, train_s=loop_s,
      train_steps_s=max(loop_s - compile_in_loop_s - ckpt_s, 0.0), checkpoint_s=ckpt_s,
      train_tokens_per_s=tokens / loop_s if loop_s > 0 and tokens else None,
      mesh=dict(data=mesh_data, model=dcfg.mesh_model), teacher_dir=teacher_dir,
      compiled_steps=sorted(n for n in compiled if n in ("progressive", PRETRAIN)),
  )
  # ---- the student alone, ready for fine-tuning ---------------------------------------------------
  if save_student:
    metrics["student_checkpoint"] = save_student_params(workdir, params["student"])
  if export_dir and is_main:  # a complete HF directory: weights, config, tokenizer, model card
    metrics["hf_dir"] = export.export_student(final_student, export_dir, student_info, workdir, metrics,
                                              latency=card_latency)
  summary = compiles.summary()
  metrics.update(programs_compiled=summary["programs"], compile_cache_hits=summary["cache_hits"],
                 compile_cpu_s=summary["compile_s"] + summary["trace_s"] + summary["lower_s"], wall_s=time.time() - t_start)
  metrics["eval_s"] = val["eval_s"]
  if is_main:
    files.write_json(os.path.join(workdir, "metrics.json"), metrics)
  return metrics


