"""Flash and regular distillation (003 section 3.3): one function, banner sections.

Schedule: K progressive stages (stage k trains block k and its adapter on attention KL +
feature MSE against the mapped teacher layer, blocks < k frozen; stage 0 also trains the
embeddings, which feed block 0), then pre-training distillation of the whole student
(MLM + MLM-KD + NSP, eq. 3) until the step budget. Flash and regular distillation are the
same machinery with different step counts (config: distill.flash / distill.regular).

Each stage has its own LAMB state (warm-up, then linear decay) over exactly the parameters
it trains; frozen parameters are not differentiated at all, so they stay bit-for-bit equal.
The progressive step of stage k is compiled once with k static: blocks after k and teacher
layers after the mapped one are never run.

Resumable: orbax checkpoints every `checkpoint_every` steps and at stage boundaries hold the
trainable parameters (student + adapters), the stage's optimizer state and the position; the
data stream is deterministic for the seed, and a resumed run skips the batches already used.
The frozen teacher is never checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from ad.distill import evaluation, losses, sharding

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
  checkpoint_every: int = 50
  keep_checkpoints: int = 2
  log_every: int = 10
  mesh_data: int = 0  # 0: all devices
  mesh_model: int = 1
  seed: int = 0

  def __post_init__(self):
    if self.recipe not in RECIPES:
      raise ValueError(f"distill.recipe={self.recipe!r}: expected one of {RECIPES}")
    for k in ("pretrain_steps", "batch_size", "checkpoint_every", "log_every"):
      if getattr(self, k) <= 0:
        raise ValueError(f"distill.{k}={getattr(self, k)} must be positive")
    if not 0 <= self.alpha <= 1:
      raise ValueError(f"distill.alpha={self.alpha}: eq. 3 needs 0 <= alpha <= 1")
    if self.temperature <= 0:
      raise ValueError(f"distill.temperature={self.temperature} must be positive")

  def block_steps(self, num_blocks: int) -> int:
    return self.steps_per_block or max(1, round(self.progressive_ratio * self.pretrain_steps / num_blocks))


def config_from(cfg_distill, schedule: str) -> DistillConfig:
  """distill section + one named schedule (distill.flash / distill.regular) -> DistillConfig."""
  d = dict(cfg_distill)
  schedules = {k: v for k, v in d.items() if k in ("flash", "regular")}
  if schedule not in schedules:
    raise ValueError(f"schedule {schedule!r}: the config defines {sorted(schedules)} under distill")
  base = {k: v for k, v in d.items() if k not in schedules}
  base.update(dict(schedules[schedule]))
  fields = {f.name for f in dataclasses.fields(DistillConfig)}
  unknown = sorted(set(base) - fields)
  if unknown:
    raise ValueError(f"config.distill has unknown keys {unknown}; known: {sorted(fields)}")
  return DistillConfig(**base)


# ---------------------------------------------------------------------------------------------
# Flat parameter dicts: {"student/blocks/0/query/kernel": array}. String keys keep optax,
# orbax and the sharding rules simple, and make "which parameters train" a prefix test.

def flatten(pure: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in pure.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "/"))
    else:
      out[key] = v
  return out


def unflatten(flat: dict[str, Any]) -> dict:
  out: dict = {}
  for key, v in flat.items():
    node = out
    parts = [int(p) if p.isdigit() else p for p in key.split("/")]
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out


def _params_of(module) -> dict:
  return nnx.state(module, nnx.Param).to_pure_dict()


def _merge(graphdef, abstract_state, pure):
  state = jax.tree.map(lambda x: x, abstract_state)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def stage_trainable(stage: int, num_blocks: int, recipe_scale: float) -> Callable[[str], float]:
  """key -> update scale for stage `stage` (0 = frozen). Stage num_blocks is pre-training distillation."""
  def scale(key: str) -> float:
    if stage == num_blocks:
      return 1.0 if key.startswith("student/") else 0.0
    if key.startswith(f"student/blocks/{stage}/") or key.startswith(f"adapters/dense/{stage}/"):
      return 1.0
    if stage == 0 and key.startswith("student/embeddings/"):
      return 1.0
    if recipe_scale > 0:
      for j in range(stage):
        if key.startswith(f"student/blocks/{j}/") or key.startswith(f"adapters/dense/{j}/"):
          return recipe_scale
      if key.startswith("student/embeddings/"):
        return recipe_scale
    return 0.0
  return scale


def make_optimizer(cfg: DistillConfig, steps: int, lr: float, scales: dict[str, float]):
  """LAMB with linear warm-up to `lr` then linear decay to 0 over `steps`; `scales` multiplies
  each parameter's update (the MobileBERT recipe's reduced rate for earlier blocks)."""
  warmup = max(1, min(cfg.warmup_steps, steps - 1))
  sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                                optax.linear_schedule(lr, 0.0, max(steps - warmup, 1))], [warmup])
  tx = optax.lamb(sched, weight_decay=cfg.weight_decay,
                  mask=lambda p: {k: np.ndim(v) >= 2 for k, v in p.items()})  # no decay on biases / norms
  if any(v != 1.0 for v in scales.values()):
    tx = optax.chain(tx, _scale_updates(scales))
  return tx, sched


def _scale_updates(scales: dict[str, float]) -> optax.GradientTransformation:
  def init(params):
    return optax.EmptyState()

  def update(updates, state, params=None):
    return {k: u * scales[k] for k, u in updates.items()}, state
  return optax.GradientTransformation(init, update)


class NonFiniteLossError(FloatingPointError):
  """A NaN or inf loss: names the step and stage."""


def _stage_name(stage: int, num_blocks: int) -> str:
  return "pretrain_distill" if stage == num_blocks else f"progressive_block_{stage}"


def distill(arch, cfg, schedule: str, workdir: str, resume: bool = False, log: Callable = print,
            progress: bool = True, save_student: bool = False, export_dir: str | None = None) -> dict:
  """Flash- or regular-distills `arch` per `cfg` (a loaded experiment ConfigDict); returns metrics.

  save_student: also write the final student alone (no adapters, no optimizer) as an orbax
  checkpoint in `workdir/student`; export_dir: also export it in HF MobileBERT format there.
  """
  import tensorflow as tf  # TensorBoard summaries; ad.data has already hidden accelerators from TF
  from tqdm import tqdm

  from ad.data import pretrain
  from ad.distill import teacher_head
  from ad.models import student as student_lib

  t_start = time.time()
  dcfg = config_from(cfg.distill, schedule)
  data_cfg = pretrain.config_from_dict(cfg.data)
  scfg = student_lib.config_from_dict(arch, cfg.model)
  K = scfg.num_blocks
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0  # one host writes logs and reports; orbax coordinates checkpoints

  # ---- run record: a workdir holds one run; --resume must continue the same one ------------------
  record = dict(arch=scfg.arch.name, schedule=schedule, distill=dataclasses.asdict(dcfg), data=repr(data_cfg),
                model=repr(scfg), teacher=dict(cfg.teacher))
  record_path = os.path.join(workdir, "run.json")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  existed = os.path.exists(record_path)
  if existed:
    with open(record_path) as f:
      old = json.load(f)
    if not resume:
      raise FileExistsError(f"{workdir} already holds a distillation run ({old['arch']}, {old['schedule']}); "
                            "pass --resume to continue it or choose a new --workdir")
    diff = sorted(k for k in record if json.dumps(record[k], sort_keys=True) != json.dumps(old.get(k), sort_keys=True))
    if diff:
      raise ValueError(f"{record_path}: cannot resume, the config differs in {diff}")
  if jax.process_count() > 1:  # every host has looked before the main host writes
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("ad_distill_run_record")
  if not existed and is_main:
    with open(record_path, "w") as f:
      json.dump(record, f, indent=2)

  # ---- mesh ----------------------------------------------------------------------------------
  n_dev = jax.device_count()
  mesh_data = dcfg.mesh_data or n_dev // dcfg.mesh_model
  mesh = sharding.make_mesh(mesh_data, dcfg.mesh_model)
  if dcfg.batch_size % mesh_data:
    raise ValueError(f"distill.batch_size={dcfg.batch_size} is not divisible by the mesh's data axis ({mesh_data})")
  per_host = dcfg.batch_size // jax.process_count()

  # ---- teacher (frozen, never checkpointed here) ------------------------------------------------
  teacher_dir, _ = teacher_head.prepare_from_config(cfg.teacher, data_cfg, log=log, progress=progress)
  teacher, teacher_meta = teacher_head.load(teacher_dir)
  teacher = teacher_head.with_compute_dtype(teacher, scfg.dtype)  # runs in the student's compute dtype
  L, Ht, _ = losses.teacher_dims(teacher)
  mapping = losses.block_mapping(K, L)
  if teacher.cfg.vocab_size != scfg.vocab_size:
    raise ValueError(f"teacher vocab {teacher.cfg.vocab_size} != student vocab {scfg.vocab_size} (config.model.vocab_size)")

  # ---- data: per-host shard, deterministic for the seed ----------------------------------------
  vocab = pretrain.load_vocab(data_cfg, teacher_meta["source_dir"])
  task = pretrain.make_task(data_cfg, vocab, min(scfg.max_positions, teacher.cfg.max_positions), scfg.vocab_size)
  eval_set = evaluation.build_eval_set(data_cfg, vocab, log=log)
  teacher_top1, teacher_scores = evaluation.teacher_reference(teacher_dir, teacher, eval_set, log=log)

  def stream(split: str, batch_size: int, count: int, shard: bool):
    where = (jax.process_index(), jax.process_count()) if shard else (0, 1)
    if count * batch_size * data_cfg.seq_len <= pretrain.CACHE_MAX_TOKENS:  # small run: memoized in-process
      return iter(pretrain.cached_batches(task, data_cfg, split, batch_size, count, *where))
    return pretrain.batches(task, data_cfg, split, batch_size, *where)

  # ---- student, adapters -----------------------------------------------------------------------
  student = student_lib.Student(scfg, nnx.Rngs(dcfg.seed))
  losses.init_embeddings_from_teacher(student, teacher)
  adapters = losses.Adapters(K, scfg.arch.hidden, Ht, nnx.Rngs(dcfg.seed + 1))
  s_gd, s_state = nnx.split(student)
  a_gd, a_state = nnx.split(adapters)
  t_gd, t_state = nnx.split(teacher)
  abstract = lambda st: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), st)
  s_tmpl, a_tmpl = abstract(s_state), abstract(a_state)
  params = {**flatten(_params_of(student), "student/"), **flatten(_params_of(adapters), "adapters/")}
  # Zero-size parameters (mlm_extra when embedding == hidden) carry nothing to train or save.
  empty = {k: v for k, v in params.items() if np.size(v) == 0}
  params = {k: v for k, v in params.items() if k not in empty}

  # ---- shard -----------------------------------------------------------------------------------
  # From host memory: every process holds the same initial values, and device_put onto a
  # mesh that spans other hosts' devices takes host arrays.
  param_sh = sharding.state_shardings(params, mesh)
  params = jax.device_put(jax.device_get(params), param_sh)
  t_state = jax.device_put(jax.device_get(t_state), sharding.state_shardings(t_state, mesh))

  def build(p: dict):
    p = {**empty, **p}
    s = _merge(s_gd, s_tmpl, unflatten({k[8:]: v for k, v in p.items() if k.startswith("student/")}))
    a = _merge(a_gd, a_tmpl, unflatten({k[9:]: v for k, v in p.items() if k.startswith("adapters/")}))
    return s, a

  # ---- steps -----------------------------------------------------------------------------------
  def progressive_loss(k: int):
    t_layer = mapping[k]

    def loss_fn(trainable, frozen, t_state, b):
      s, a = build({**frozen, **trainable})
      so = s.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"], num_blocks=k + 1)
      to = jax.lax.stop_gradient(
          nnx.merge(t_gd, t_state).encode(b["input_ids"], b["token_type_ids"], b["attention_mask"],
                                          num_blocks=t_layer + 1))
      mha = losses.attention_kl(to["attentions"][t_layer], so["attentions"][k], b["attention_mask"])
      adapted = a(k, so["hidden_states"][k])
      if dcfg.recipe == "mobilebert":
        # MobileBERT's weights (hidden MSE 100, attention 1, mean 5000, variance 5), over the layer count.
        mse, mean_t, var_t = losses.mobilebert_feature_loss(to["hidden_states"][t_layer], adapted, b["attention_mask"])
        total = (100 * mse + mha + 5000 * mean_t + 5 * var_t) / K
        return total, dict(mha=mha, fm=mse, fm_mean=mean_t, fm_var=var_t)
      fm = losses.feature_mse(to["hidden_states"][t_layer], adapted, b["attention_mask"])
      return dcfg.mha_weight * mha + dcfg.fm_weight * fm, dict(mha=mha, fm=fm)
    return loss_fn

  def pretrain_loss(trainable, frozen, t_state, b):
    s, _ = build({**frozen, **trainable})
    so = s.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    s_mlm = s.mlm_logits(losses.gather_positions(so["sequence_output"], b["masked_positions"]))
    s_nsp = s.nsp_logits(so["pooled"])
    teacher_m = nnx.merge(t_gd, t_state)
    to = teacher_m.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"])
    t_mlm = jax.lax.stop_gradient(teacher_m.mlm_logits(losses.gather_positions(to["sequence_output"], b["masked_positions"])))
    total, terms = losses.pretraining_loss(s_mlm, t_mlm, s_nsp, b, dcfg.alpha, dcfg.temperature)
    w = b["masked_weights"]
    terms["mlm_acc"] = ((jnp.argmax(s_mlm, -1) == b["masked_ids"]) * w).sum() / jnp.maximum(w.sum(), 1.0)
    return total, terms

  step_fns: dict[str, Any] = {}

  def make_stage(stage: int):
    """(jitted step, tx, schedule, trainable keys) for one stage."""
    scale_of = stage_trainable(stage, K, dcfg.earlier_blocks_lr_scale if dcfg.recipe == "mobilebert" else 0.0)
    keys = sorted(k for k in params if scale_of(k) > 0)
    scales = {k: scale_of(k) for k in keys}
    steps = dcfg.pretrain_steps if stage == K else dcfg.block_steps(K)
    lr = dcfg.lr if stage == K or not dcfg.progressive_lr else dcfg.progressive_lr
    tx, sched = make_optimizer(dcfg, steps, lr, scales)
    loss_fn = pretrain_loss if stage == K else progressive_loss(stage)
    train_sh = {k: param_sh[k] for k in keys}
    frozen_sh = {k: v for k, v in param_sh.items() if k not in scales}
    opt_sh = sharding.state_shardings(jax.eval_shape(tx.init, {k: params[k] for k in keys}), mesh)

    def step(trainable, frozen, opt_state, t_state, b):
      (loss, terms), g = jax.value_and_grad(loss_fn, has_aux=True)(trainable, frozen, t_state, b)
      updates, opt_state = tx.update(g, opt_state, trainable)
      return optax.apply_updates(trainable, updates), opt_state, loss, terms

    jitted = jax.jit(step, donate_argnums=(0, 2),
                     in_shardings=(train_sh, frozen_sh, opt_sh, None, None),
                     out_shardings=(train_sh, opt_sh, None, None))
    step_fns[_stage_name(stage, K)] = jitted
    return jitted, tx, sched, keys, opt_sh

  # ---- checkpoints, logs -----------------------------------------------------------------------
  stage_steps = [dcfg.block_steps(K)] * K + [dcfg.pretrain_steps]
  bounds = np.cumsum([0] + stage_steps)  # stage s covers [bounds[s], bounds[s + 1])
  total_steps = int(bounds[-1])
  stage_of = lambda g: int(np.searchsorted(bounds, g, side="right") - 1)
  mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=dcfg.keep_checkpoints, create=True))
  losses_path = os.path.join(workdir, "losses.jsonl")
  next_step, restored_opt = 0, None
  if resume and mngr.latest_step() is not None:
    last = mngr.latest_step()
    meta = mngr.restore(last, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    next_step = int(meta["next_step"])
    params = mngr.restore(last, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                                     params, param_sh))))["params"]
    if next_step < total_steps and next_step > 0 and stage_of(next_step) == stage_of(next_step - 1):
      restored_opt = last  # mid-stage: the saved optimizer state belongs to this stage
    log(f"distill: resuming {scfg.arch.name} at step {next_step}/{total_steps} from {ckpt_dir}")
  elif resume:
    log(f"distill: --resume given but {ckpt_dir} has no checkpoint; starting from step 0")
  # Steps past the checkpoint are recomputed; drop their log lines.
  history = []
  if os.path.exists(losses_path):
    with open(losses_path) as f:
      history = [json.loads(l) for l in f if l.strip()]
    history = [h for h in history if h["step"] < next_step]
  if is_main:
    with open(losses_path, "w") as f:
      f.writelines(json.dumps(h) + "\n" for h in history)
  train_iter = stream("train", per_host, total_steps, shard=True)
  for _ in range(next_step):  # the data stream is deterministic: skip what was already used
    next(train_iter)
  writer = tf.summary.create_file_writer(os.path.join(workdir, "tb"))

  def save(g_next: int, opt_state) -> None:
    mngr.save(g_next, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(dict(next_step=g_next, stage=_stage_name(stage_of(min(g_next, total_steps - 1)), K),
                                    arch=scfg.arch.name))), force=True)
    mngr.wait_until_finished()

  # ---- loop ------------------------------------------------------------------------------------
  bar = tqdm(total=total_steps, initial=next_step, disable=not (progress and is_main), dynamic_ncols=True,
             desc=f"{scfg.arch.name}")
  t_loop, tokens = time.time(), 0
  setup_s = t_loop - t_start  # teacher, data pipeline, student init, sharding
  g = next_step
  try:
    while g < total_steps:
      stage = stage_of(g)
      name = _stage_name(stage, K)
      step_fn, tx, sched, keys, opt_sh = make_stage(stage)
      trainable = {k: params[k] for k in keys}
      frozen = {k: v for k, v in params.items() if k not in trainable}
      if restored_opt is not None:
        abstract_opt = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                    jax.eval_shape(tx.init, trainable), opt_sh)
        opt_state = mngr.restore(restored_opt, args=ocp.args.Composite(opt=ocp.args.StandardRestore(abstract_opt)))["opt"]
        restored_opt = None
      else:
        opt_state = jax.device_put(tx.init(trainable), opt_sh)
      bar.set_description(f"{scfg.arch.name} {name} ({stage + 1}/{K + 1})")
      end = int(bounds[stage + 1])
      while g < end:
        local = next(train_iter)
        b = sharding.global_batch(local, mesh)
        try:
          trainable, opt_state, loss, terms = step_fn(trainable, frozen, opt_state, t_state, b)
        except jax.errors.JaxRuntimeError as e:
          if "RESOURCE_EXHAUSTED" in str(e) or "Out of memory" in str(e):
            raise MemoryError(f"architecture {scfg.arch.name} ({K} blocks, batch {dcfg.batch_size}, seq "
                              f"{data_cfg.seq_len}) does not fit in device memory during {name}: {e}") from e
          raise
        loss_v = float(loss)
        if not math.isfinite(loss_v):
          raise NonFiniteLossError(f"non-finite loss {loss_v} at step {g} (stage {name}, step {g - bounds[stage]} of "
                                   f"{stage_steps[stage]}) for {scfg.arch.name}; lower distill.lr or check the data")
        rec = dict(step=g, stage=name, loss=loss_v, lr=float(sched(g - bounds[stage])),
                   **{k: float(v) for k, v in terms.items()})
        if is_main:
          with open(losses_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        tokens += int(local["attention_mask"].sum()) * jax.process_count()
        if is_main and (g % dcfg.log_every == 0 or g == end - 1):
          with writer.as_default(step=g):
            for k, v in rec.items():
              if k not in ("step", "stage"):
                tf.summary.scalar(f"{name}/{k}" if k not in ("loss", "lr") else k, v)
          bar.set_postfix(loss=f"{loss_v:.4f}")
        g += 1
        bar.update(1)
        params.update(trainable)
        if g % dcfg.checkpoint_every == 0 or g == end:
          save(g, opt_state)
  finally:
    bar.close()
    writer.flush()
  train_s = time.time() - t_loop

  # ---- evaluation: held-out MLM and NSP accuracy (the search's accuracy objective) ---------------
  t_eval = time.time()
  if jax.process_count() > 1:  # every host evaluates the full parameters on its own
    from jax.experimental import multihost_utils
    host_params = multihost_utils.process_allgather(params, tiled=True)
  else:
    host_params = jax.device_get(params)
  final_student, _ = build(host_params)
  val = evaluation.evaluate(final_student, eval_set, teacher_top1, what=f"student {scfg.arch.name} in {workdir}")
  if is_main:
    with writer.as_default(step=total_steps):
      for k in ("mlm_accuracy", "mlm_cross_entropy", "teacher_agreement", "nsp_accuracy"):
        tf.summary.scalar(f"eval/{k}", val[k])
    writer.flush()
  metrics = dict(
      arch=scfg.arch.name, num_blocks=K, schedule=schedule, steps=total_steps, steps_per_block=dcfg.block_steps(K),
      pretrain_steps=dcfg.pretrain_steps, batch_size=dcfg.batch_size, seq_len=data_cfg.seq_len,
      **val, teacher_mlm_accuracy=teacher_scores["mlm_accuracy"],
      teacher_mlm_accuracy_se=teacher_scores["mlm_accuracy_se"], resumed_from=next_step if resume else None,
      setup_s=setup_s, train_s=train_s, wall_s=time.time() - t_start,
      train_tokens_per_s=tokens / train_s if train_s > 0 and tokens else None,
      mesh=dict(data=mesh_data, model=dcfg.mesh_model), teacher_dir=teacher_dir,
      compiles={k: fn._cache_size() for k, fn in step_fns.items()},
  )
  # ---- the student alone, ready for fine-tuning ---------------------------------------------------
  if save_student:
    student_dir = os.path.join(workdir, "student")
    if os.path.exists(student_dir):  # a resumed run that had already saved it
      import shutil
      if is_main:
        shutil.rmtree(student_dir)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("ad_distill_student_dir")
    student_params = unflatten({k[8:]: v for k, v in params.items() if k.startswith("student/")})
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(student_dir, student_params)
    checkpointer.wait_until_finished()
    metrics["student_checkpoint"] = student_dir
  if export_dir and is_main:
    from ad.models import hf
    metrics["hf_dir"] = hf.export_mobilebert(final_student, export_dir)
  if is_main:
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(metrics, f, indent=2)
  return metrics

