"""Weight-sharing SuperLMs: 004's one-shot SuperPLM and 001's few-shot SuperLMs over this project's
MobileBERT-style design space, as accuracy proxies beside flash distillation.

A SuperLM is one Student of the largest architecture of its (sub)space, the "super arch" (every
factor at its maximum). The sub-network of architecture (H, B, A, I, F) shares the leading slice of
every weight (004's and 001's bottom-left extraction): the embedding transform's columns [:H], the
bottleneck kernels [:H, :B], query/key/value/attention output [:B, :B], the first F FFNs with
[:B, :I] and [:I, :B], the output bottleneck [:B, :H], every norm and bias [:dim], the MLM transform
[:H, :H] and decoder rows [:H - E], the pooler [:H, :H]. The space fixes B and A and derives the
head size B / A (003 Table 1), so the A heads split the first B features as the Student's reshape
does; unlike 004, a head's width follows A.

Training, one compiled step whatever the sampled sub-network: the sub-network is data, an int32
vector of its five factors. Features beyond it are zeroed after every layer (so NoNorm's bias and
LayerNorm's statistics see exactly the sub-network's features), FFNs beyond F pass their input
through, and attention runs `max heads` times with a one-hot feature-to-head assignment. Each step
draws M sub-networks (`sampling='random'`: uniformly from the (sub)space, as 004 Algorithm 1 and 001
Algorithm 1 do; 'sandwich': the largest and the smallest plus M - 2 random ones, Yu et al. 2020),
computes eq. 3 (MLM + MLM-KD to the teacher + NSP: the loss of flash's pre-training stage, so the
comparison is about weight sharing, not the loss) for each on the same batch, and applies LAMB to the
mean gradient. The draws come from (seed, step), so a resumed run draws what the lost steps drew.

Few-shot (001): K SuperLMs, each owning the architectures whose `factor` value falls in one of K
contiguous groups of that factor's values, the one-shot step budget split evenly between them.

Proxy score: the sub-network extracted as a standalone Student (`extract`), scored on the held-out
set like every student (ad/distill/evaluation.py), without further training.

Layout: a one-shot workdir holds run.json, checkpoints/, losses.jsonl, tb/ and, once finished,
superlm.json; a few-shot workdir holds fewshot.json and one such workdir per part (part_<k>).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ad import files, multihost, space as space_lib
from ad.data import pretrain, settings as data_settings
from ad.distill import evaluation, losses, trainer
from ad.distill.context import TeacherContext
from ad.distill.settings import SuperLMConfig, distill_config_from, superlm_config_from
from ad.train import checkpoints, optim, sharding
from ad.train.params import Rebuild, without
from ad.train.steps import MetricsWriter, StepLoop
from ad.models import layers, stack, student as student_lib
from ad.models.student import ACTIVATIONS, TORCH_DEFAULT_LAYER_NORM_EPS, mask_to_bias
from profiling.compile_stats import compile_concurrently

PROXIES = ("flash", "superlm", "fewshot")
DONE_ONESHOT, DONE_FEWSHOT = "superlm.json", "fewshot.json"



# ---------------------------------------------------------------------------------------------
# The (sub)spaces and their super architectures.

def super_arch(archs: Sequence[space_lib.Arch]) -> space_lib.Arch:
  """Every factor at its maximum over `archs`. Heads do not shape any parameter: 1 keeps the Arch
  valid whatever the bottleneck (the elastic forward takes its head count from each sub-network)."""
  return space_lib.Arch(max(a.hidden for a in archs), max(a.bottleneck for a in archs), 1,
                        max(a.intermediate for a in archs), max(a.num_ffn for a in archs))


def partition(archs: Sequence[space_lib.Arch], factor: str, count: int) -> list[list[space_lib.Arch]]:
  """001's few-shot split: the values of `factor` in `count` contiguous groups (as equal as
  possible, np.array_split), each group's architectures one part, ordered by the factor."""
  values = sorted({getattr(a, factor) for a in archs})
  if count > len(values):
    raise ValueError(f"superlm.fewshot.count={count}: the space has only {len(values)} values of {factor} "
                     f"({values}) to split")
  groups = [set(int(v) for v in g) for g in np.array_split(np.asarray(values), count)]
  return [[a for a in archs if getattr(a, factor) in g] for g in groups]


def encode(arch: space_lib.Arch) -> np.ndarray:
  return np.asarray([arch.hidden, arch.bottleneck, arch.heads, arch.intermediate, arch.num_ffn], np.int32)


def draw(archs: Sequence[space_lib.Arch], scfg: SuperLMConfig, step: int) -> list[space_lib.Arch]:
  """The M sub-networks of `step` (deterministic in (seed, step): a resumed run draws the same)."""
  rng = np.random.default_rng([scfg.seed, step])
  picks = [archs[i] for i in rng.integers(0, len(archs), scfg.samples_per_step)]
  if scfg.sampling == "sandwich":
    by_size = sorted(archs, key=lambda a: (a.hidden * a.bottleneck * a.intermediate * a.num_ffn, a.heads))
    picks[0], picks[-1] = by_size[-1], by_size[0]
  return picks


# ---------------------------------------------------------------------------------------------
# The elastic forward: the super Student run as sub-network `sub` (int32 [5]), one program for all.

def _masked_norm(x, scale, bias, kind: str, eps, mask, n):
  """NoNorm / LayerNorm over the first n features of x (mask: 1 there, 0 beyond), zero beyond."""
  if kind == "no_norm":
    return (x * scale.astype(x.dtype) + bias.astype(x.dtype)) * mask.astype(x.dtype)
  m = mask.astype(jnp.float32)
  xf = x.astype(jnp.float32)
  mean = (xf * m).sum(-1, keepdims=True) / n
  var = (jnp.square(xf - mean) * m).sum(-1, keepdims=True) / n
  y = (xf - mean) * jax.lax.rsqrt(var + eps)
  return ((y * scale + bias) * m).astype(x.dtype)


def _norm_of(module, kind, eps, mask, n):
  return lambda x: _masked_norm(x, module.scale[...], module.bias[...], kind, eps, mask, n)


def elastic_encode(s, sub, input_ids, token_type_ids, attention_mask, max_heads: int, unroll: bool = False) -> dict:
  """The super Student `s` computing sub-network `sub` = [H, B, A, I, F] (int32, traced):
  sequence_output [B, T, H_super] (zero beyond H) and pooled [B, H_super]."""
  cfg = s.cfg
  Hs, Bs, Is = cfg.arch.hidden, cfg.arch.bottleneck, cfg.arch.intermediate
  nh, nb, na, ni, nf = (sub[i] for i in range(5))
  dt = cfg.compute_dtype
  mh, mb, mi = ((jnp.arange(d) < n).astype(dt) for d, n in ((Hs, nh), (Bs, nb), (Is, ni)))
  fh, fb = nh.astype(jnp.float32), nb.astype(jnp.float32)
  act = ACTIVATIONS[cfg.hidden_act]
  mask_bias = mask_to_bias(attention_mask)

  # Embeddings (ad/models/student.py Embeddings), their output zero beyond H.
  e = s.embeddings
  ew = e.word[...][input_ids].astype(dt)
  if cfg.trigram_input:
    ew = jnp.concatenate([jnp.pad(ew[:, 1:], ((0, 0), (0, 1), (0, 0))), ew,
                          jnp.pad(ew[:, :-1], ((0, 0), (1, 0), (0, 0)))], axis=-1)
  T = input_ids.shape[1]
  h = e.transform(ew)
  h = h + e.position[...][:T][None].astype(h.dtype) + e.token_type[...][token_type_ids].astype(h.dtype)
  emb = _norm_of(e.norm, cfg.norm, TORCH_DEFAULT_LAYER_NORM_EPS, mh, fh)(h * mh)

  # Attention heads: feature c < B belongs to head c // (B / A).
  head_dim = nb // na
  feature = jnp.arange(Bs)
  heads_of = ((feature[None, :] // head_dim == jnp.arange(max_heads)[:, None])
              & (feature[None, :] < nb)).astype(dt)  # [A_max, B_super]
  scale = head_dim.astype(jnp.float32) ** -0.5

  def block(blk, x):
    norm = lambda mod, mask, n: _norm_of(mod, cfg.norm, cfg.layer_norm_eps, mask, n)
    layer_input = norm(blk.input_norm, mb, fb)(blk.input_bottleneck(x) * mb)
    if cfg.use_bottleneck_attention:
      qk, v_in = layer_input, layer_input
    else:
      qk, v_in = norm(blk.qk_norm, mb, fb)(blk.qk_bottleneck(x) * mb), x
    q, k, v = blk.query(qk) * mb, blk.key(qk) * mb, blk.value(v_in) * mb  # [B, T, B_super]
    scores = jnp.einsum("btc,ac,bsc->bats", q, heads_of, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(scores + mask_bias, axis=-1)  # [B, A_max, T, T] f32
    ctx = jnp.einsum("bats,ac,bsc->btc", probs.astype(v.dtype), heads_of, v,
                     preferred_element_type=jnp.float32).astype(q.dtype)
    h = norm(blk.attn_norm, mb, fb)(blk.attn_out(ctx) * mb + layer_input)
    f = blk.ffn
    for j in range(f.w_in.shape[0]):  # FFN j runs when j < F; the last one has MobileBertOutput's eps
      u = act(layers.linear(h, f.w_in[...][j]).astype(jnp.float32) + f.b_in[...][j]) * mi.astype(jnp.float32)
      y = layers.linear(u.astype(dt), f.w_out[...][j]).astype(jnp.float32) + f.b_out[...][j]
      eps = jnp.where(j == nf - 1, TORCH_DEFAULT_LAYER_NORM_EPS, cfg.layer_norm_eps)
      h_next = _masked_norm((y + h.astype(jnp.float32)).astype(dt), f.norm_scale[...][j], f.norm_bias[...][j],
                            cfg.norm, eps, mb, fb)
      h = jnp.where(j < nf, h_next, h)
    out = norm(blk.output_norm, mh, fh)(blk.output_bottleneck(h) * mh + x)
    return out

  h, _ = stack.scan(s.blocks, lambda blk, x: (lambda o: (o, None))(block(blk, x)), emb, unroll=unroll)
  first = h[:, 0]
  pooled = jnp.tanh(s.pooler(first) * mh) if cfg.classifier_activation else first
  return dict(sequence_output=h, pooled=pooled, mh=mh, fh=fh)


def elastic_mlm_logits(s, enc: dict, h):
  """The MLM head of sub-network features h [..., H_super] (zero beyond H) -> [..., V] f32."""
  cfg, E = s.cfg, s.cfg.embedding_size
  t = ACTIVATIONS[cfg.hidden_act](s.mlm_transform(h)) * enc["mh"]
  t = _masked_norm(t, s.mlm_norm.scale[...], s.mlm_norm.bias[...], "layer_norm", cfg.layer_norm_eps, enc["mh"],
                   enc["fh"])
  logits = layers.linear_transposed(t[..., :E], s.embeddings.word[...]).astype(jnp.float32)
  if s.mlm_extra.shape[0]:
    logits += layers.linear(t[..., E:], s.mlm_extra[...]).astype(jnp.float32)
  return logits + s.mlm_bias[...]


# ---------------------------------------------------------------------------------------------
# Extraction: a sub-network as a standalone Student.

def extract(super_params: dict, sub_cfg):
  """The Student of StudentConfig `sub_cfg` whose every parameter is the leading slice of the
  SuperLM's (pure dict of the super Student's parameters) of the same path."""
  rebuild = Rebuild(nnx.eval_shape(lambda: student_lib.Student(sub_cfg, nnx.Rngs(0))))

  def take(path, leaf):
    node = super_params
    for k in path:
      node = node[getattr(k, "key", k)]
    if any(a < b for a, b in zip(node.shape, leaf.shape)) or node.ndim != leaf.ndim:
      raise ValueError(f"SuperLM parameter {optim.path_str(path)} of shape {tuple(node.shape)} cannot hold "
                       f"{sub_cfg.arch.name}'s {tuple(leaf.shape)}: the architecture is outside the SuperLM's space")
    return node[tuple(slice(0, n) for n in leaf.shape)]
  return rebuild(jax.tree_util.tree_map_with_path(take, rebuild.params))


# ---------------------------------------------------------------------------------------------
# Training one SuperLM.

@dataclasses.dataclass
class SuperLMPrograms:
  """The jitted programs of SuperLM training on `mesh` and the abstract arguments each compiles for
  (ad/distill/trainer.py DistillPrograms is the same for distillation)."""
  teacher_of: Rebuild
  teacher_sh: dict
  jitted: dict
  abstract_args: dict

  def jobs(self, init: bool = True) -> dict:
    names = ["step"] + (["init", "opt_init"] if init else [])
    return {n: (self.jitted[n], self.abstract_args[n]) for n in names}


def superlm_programs(super_cfg, scfg: SuperLMConfig, dcfg, data_cfg, max_heads: int, teacher, mesh,
                     unroll: bool = False) -> SuperLMPrograms:
  """The SuperLM (super_cfg's Student, abstract), its shardings on `mesh`, and the jitted programs:
  parameter and optimizer initialization and the training step (the teacher's logits once, then
  eq. 3 for each of the M sampled sub-networks, gradients accumulated, one LAMB update). `teacher`
  may be abstract. unroll: block and sub-network loops unrolled, for XLA's cost analysis (ad/aot.py)."""
  rngs = lambda seed: nnx.Rngs(jax.random.key(seed, impl="rbg"))
  make_student = lambda: student_lib.Student(super_cfg, rngs(dcfg.seed))
  student_abs = nnx.eval_shape(make_student)
  student_of, teacher_of = Rebuild(student_abs), Rebuild(teacher)
  param_sh = without(sharding.param_shardings(student_abs, mesh), student_of.empty)
  teacher_sh = sharding.param_shardings(teacher, mesh)
  stacked = without(optim.stacked_leaves(student_abs), student_of.empty)

  def init_params(t_params):
    student = make_student()
    losses.init_embeddings_from_teacher(student, teacher_of(t_params))
    return without(nnx.state(student).to_pure_dict(), student_of.empty)

  tx = optim.lamb_direction(dcfg.weight_decay, stacked)
  opt_sh = sharding.opt_shardings(tx, student_of.params, param_sh, mesh)

  def sub_loss(s_params, b, sub, t_mlm):
    s = student_of(s_params)
    enc = elastic_encode(s, sub, b["input_ids"], b["token_type_ids"], b["attention_mask"], max_heads, unroll)
    s_mlm = elastic_mlm_logits(s, enc, losses.gather_positions(enc["sequence_output"], b["masked_positions"]))
    s_nsp = s.nsp_logits(enc["pooled"])
    return losses.pretraining_loss(s_mlm, t_mlm, s_nsp, b, dcfg.alpha, dcfg.temperature)

  def step(params, opt_state, t_params, b, subs, lr):
    t = teacher_of(t_params)
    to = t.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"], unroll=unroll, with_attentions=False)
    t_mlm = jax.lax.stop_gradient(t.mlm_logits(losses.gather_positions(to["sequence_output"], b["masked_positions"])))

    def one(g_sum, sub):  # one sampled sub-network: its gradient joins the sum (001/004: accumulate)
      (loss, terms), g = jax.value_and_grad(sub_loss, has_aux=True)(params, b, sub, t_mlm)
      return jax.tree.map(jnp.add, g_sum, g), (loss, terms)
    g, (loss, terms) = jax.lax.scan(one, jax.tree.map(jnp.zeros_like, params), subs, unroll=unroll)
    g = jax.tree.map(lambda x: x / subs.shape[0], g)
    direction, opt_state = tx.update(g, opt_state, params)
    params = optax.apply_updates(params, jax.tree.map(lambda d: -lr * d, direction))
    return params, opt_state, loss, terms  # per sub-network [M]

  params_abs = sharding.sharded_abstract(student_of.params, param_sh)
  opt_abs = sharding.sharded_abstract(jax.eval_shape(tx.init, params_abs), opt_sh)
  t_abs = sharding.sharded_abstract(teacher_of.params, teacher_sh)
  batch_abs = sharding.abstract_batch(dcfg.batch_size, data_cfg.seq_len, data_cfg.max_predictions, mesh)
  subs_abs = jax.ShapeDtypeStruct((scfg.samples_per_step, 5), jnp.int32)
  jitted = dict(init=jax.jit(init_params, out_shardings=param_sh), opt_init=jax.jit(tx.init, out_shardings=opt_sh),
                step=jax.jit(step, donate_argnums=(0, 1), in_shardings=(param_sh, opt_sh, None, None, None, None),
                             out_shardings=(param_sh, opt_sh, None, None)))
  abstract_args = dict(init=(t_abs,), opt_init=(params_abs,),
                       step=(params_abs, opt_abs, t_abs, batch_abs, subs_abs, jax.ShapeDtypeStruct((), jnp.float32)))
  return SuperLMPrograms(teacher_of, teacher_sh, jitted, abstract_args)


def _run_record(cfg, archs, steps):
  """(the run record a SuperLM workdir holds, its settings): what a --resume must match."""
  scfg = superlm_config_from(cfg)
  dcfg = distill_config_from(cfg.distill, "flash")  # batch size, optimizer, loss weights, mesh
  archs = list(archs) if archs is not None else space_lib.DesignSpace.from_config(cfg.space).archs()
  steps = int(steps or scfg.steps)
  data_cfg = data_settings.config_from_dict(cfg.data)
  super_cfg = student_lib.config_from_dict(super_arch(archs), cfg.model)
  record = dict(arch=super_cfg.arch.name, schedule="superlm", candidates=[a.name for a in archs], steps=steps,
                superlm=dataclasses.asdict(scfg), distill=dataclasses.asdict(dcfg), data=repr(data_cfg),
                model=repr(student_lib.resolve_kernels(super_cfg, jax.default_backend())), teacher=dict(cfg.teacher))
  return record, (scfg, dcfg, archs, steps, data_cfg, super_cfg)


def train(cfg, workdir: str, archs: Sequence[space_lib.Arch] | None = None, steps: int | None = None,
          resume: bool = False, log: Callable = print, progress: bool = True,
          context: TeacherContext | None = None) -> dict:
  """Trains one SuperLM over `archs` (default: the config's whole space) for `steps` (default
  superlm.steps) in `workdir`; resumable from its orbax checkpoints. Returns superlm.json's dict.
  context: the config's teacher and vocabulary (ad/distill/context.py; built here when not given)."""
  workdir = os.path.abspath(workdir)
  done = os.path.join(workdir, DONE_ONESHOT)
  lock = files.DirectoryLock(workdir, "SuperLM workdir") if multihost.is_main() else None
  if lock:
    lock.__enter__()
  try:
    if resume and os.path.isfile(done):  # finished: reused only if it is the SuperLM this config asks for
      checkpoints.check_run_record(workdir, _run_record(cfg, archs, steps)[0], resume=True)
      return files.read_json(done, "SuperLM record")
    return _train(cfg, workdir, archs, steps, resume, log, progress, context)
  finally:
    if lock:
      lock.__exit__(None, None, None)


def _train(cfg, workdir, archs, steps, resume, log, progress, context) -> dict:
  t_start = time.time()
  record, (scfg, dcfg, archs, steps, data_cfg, super_cfg) = _run_record(cfg, archs, steps)
  max_heads = max(a.heads for a in archs)
  is_main = multihost.is_main()
  os.makedirs(workdir, exist_ok=True)
  checkpoints.check_run_record(workdir, record, resume)

  mesh, _ = sharding.training_mesh(dcfg)
  context = context or TeacherContext.build(cfg, log=log, progress=progress)
  context.check_serves(cfg, super_cfg.dtype)
  teacher, teacher_dir = context.teacher, context.teacher_dir
  task = pretrain.make_task(data_cfg, context.vocab, min(super_cfg.max_positions, teacher.cfg.max_positions),
                            super_cfg.vocab_size)
  per_host = dcfg.batch_size // jax.process_count()

  progs = superlm_programs(super_cfg, scfg, dcfg, data_cfg, max_heads, teacher, mesh)
  params_abs, opt_abs = progs.abstract_args["step"][0], progs.abstract_args["step"][1]
  t_params = jax.device_put(jax.device_get(progs.teacher_of.params), progs.teacher_sh)
  lr_schedule = optim.warmup_linear_decay(scfg.lr or dcfg.lr, min(scfg.warmup_steps, steps - 1), steps)

  ckpts = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), dcfg.keep_checkpoints)
  next_step, params, opt_state = 0, None, None
  if resume and ckpts.latest() is not None:
    last = ckpts.latest()
    next_step = int(ckpts.restore(last, meta=None)["meta"]["next_step"])
    restored = ckpts.restore(last, params=params_abs, opt=opt_abs)
    params, opt_state = restored["params"], restored["opt"]
    log(f"superlm: resuming at step {next_step}/{steps} from {ckpts.directory}")
  loss_log = checkpoints.LossLog(os.path.join(workdir, "losses.jsonl"), next_step, is_main)
  writer = MetricsWriter(os.path.join(workdir, "tb"), enabled=is_main)

  jobs = progs.jobs(init=params is None)
  t_compile = time.time()
  compiled = compile_concurrently(jobs, mesh)
  compile_s = time.time() - t_compile
  if params is None:
    params = compiled["init"](t_params)
    opt_state = compiled["opt_init"](params)

  stream = trainer.train_stream(task, data_cfg, per_host, steps, next_step)

  def save(g: int, state) -> None:
    ckpts.save(g, *state, dict(next_step=g, arch=super_cfg.arch.name))

  def step(state, g: int):
    subs = draw(archs, scfg, g)
    b = sharding.global_batch(next(stream), mesh)
    lr = float(lr_schedule(g))
    params, opt_state, loss, terms = compiled["step"](*state, t_params, b, np.stack([encode(a) for a in subs]),
                                                      np.float32(lr))
    loss = np.asarray(loss)
    return (params, opt_state), dict(step=g, loss=float(loss.mean()), lr=lr, subnets=[a.name for a in subs],
                                     sub_losses=[float(x) for x in loss],
                                     **{n: float(np.mean(v)) for n, v in terms.items()})

  def nonfinite(g: int, rec: dict) -> str:
    return (f"SuperLM in {workdir}: non-finite loss {rec['sub_losses']} at step {g} for sub-networks "
            f"{rec['subnets']}; lower superlm.lr")

  with StepLoop(start=next_step, total=steps, what=f"the SuperLM in {workdir}", desc=f"superlm {super_cfg.arch.name}",
                progress=progress, is_main=is_main, loss_log=loss_log, writer=writer, log_every=dcfg.log_every,
                checkpoint_every=scfg.checkpoint_every, save=save) as loop:
    loop.run((params, opt_state), steps, step, nonfinite)
  ckpts.close()
  loop_s, in_loop, ckpt_s = loop.loop_s, loop.compiles, loop.checkpoint_s
  out = dict(super_arch=super_cfg.arch.name, candidates=len(archs), max_heads=max_heads, steps=steps,
             samples_per_step=scfg.samples_per_step, sampling=scfg.sampling, batch_size=dcfg.batch_size,
             seq_len=data_cfg.seq_len, dtype=super_cfg.dtype, resumed_from=next_step if resume else None,
             compile_wall_s=compile_s + in_loop["compile_s"], train_s=loop_s, checkpoint_s=ckpt_s,
             wall_s=time.time() - t_start, teacher_dir=teacher_dir)
  if is_main:
    files.write_json(os.path.join(workdir, DONE_ONESHOT), out)
  return out


def train_fewshot(cfg, workdir: str, resume: bool = False, log: Callable = print, progress: bool = True,
                  context: TeacherContext | None = None) -> dict:
  """001's K SuperLMs in workdir/part_<k>, each over its part of the space for superlm.steps / K."""
  scfg = superlm_config_from(cfg)
  archs = space_lib.DesignSpace.from_config(cfg.space).archs()
  parts = partition(archs, scfg.fewshot_factor, scfg.fewshot_count)
  steps = max(1, scfg.steps // len(parts))
  workdir = os.path.abspath(workdir)
  done = os.path.join(workdir, DONE_FEWSHOT)
  if resume and os.path.isfile(done):  # finished: reused only if every part is what this config asks for
    for k, part in enumerate(parts):
      checkpoints.check_run_record(os.path.join(workdir, f"part_{k}"), _run_record(cfg, part, steps)[0], resume=True)
    return files.read_json(done, "few-shot SuperLM record")
  if os.path.isfile(done) and not resume:
    raise FileExistsError(f"{workdir} already holds trained few-shot SuperLMs; pass --resume to reuse them or choose "
                          "a new --workdir")
  t0 = time.time()
  runs = []
  for k, part in enumerate(parts):
    values = sorted({getattr(a, scfg.fewshot_factor) for a in part})
    log(f"superlm: few-shot part {k + 1}/{len(parts)}: {scfg.fewshot_factor} in {values}, {len(part)} architectures, "
        f"{steps} steps")
    r = train(cfg, os.path.join(workdir, f"part_{k}"), part, steps, resume=resume, log=log, progress=progress,
              context=context)
    runs.append(dict(r, part=k, values=values))
  out = dict(factor=scfg.fewshot_factor, count=len(parts), steps_per_part=steps, parts=runs,
             wall_s=sum(r["wall_s"] for r in runs), wall_s_this_run=time.time() - t0)
  if multihost.is_main():
    files.write_json(done, out)
  return out


def ensure_trained(cfg, workdir: str, proxy: str, log: Callable = print, progress: bool = True,
                   context: TeacherContext | None = None) -> dict:
  """The SuperLM(s) of `proxy` ('superlm' or 'fewshot') in `workdir`, trained or resumed as needed."""
  if proxy == "superlm":
    return train(cfg, workdir, resume=True, log=log, progress=progress, context=context)
  if proxy == "fewshot":
    return train_fewshot(cfg, workdir, resume=True, log=log, progress=progress, context=context)
  raise ValueError(f"proxy {proxy!r}: a SuperLM proxy is one of {PROXIES[1:]}")


# ---------------------------------------------------------------------------------------------
# The proxy score of one architecture.

_LOADED: dict = {}  # (workdir, step) -> (pure super params, StudentConfig of the super arch)


def _owner(workdir: str, arch: space_lib.Arch) -> str:
  """The one-shot SuperLM's workdir, or the few-shot part whose space holds `arch`."""
  if os.path.isfile(os.path.join(workdir, DONE_ONESHOT)):
    return workdir
  fewshot = os.path.join(workdir, DONE_FEWSHOT)
  if os.path.isfile(fewshot):
    rec = files.read_json(fewshot, "few-shot SuperLM record")
    for part in rec["parts"]:
      if getattr(arch, rec["factor"]) in part["values"]:
        return os.path.join(workdir, f"part_{part['part']}")
    raise ValueError(f"{fewshot}: no part owns {arch.name} ({rec['factor']}={getattr(arch, rec['factor'])})")
  raise FileNotFoundError(f"{workdir}: no trained SuperLM ({DONE_ONESHOT} or {DONE_FEWSHOT} missing); train one with "
                          f"`ad superlm train --config ... --workdir {workdir} [--fewshot]`")


def load(workdir: str, cfg):
  """(pure parameters, super StudentConfig, candidate names) of the finished SuperLM in workdir."""
  record = files.read_json(os.path.join(workdir, "run.json"), "SuperLM run record")
  ckpts = checkpoints.Checkpoints(os.path.join(workdir, "checkpoints"), 2)
  try:
    step = ckpts.latest()
    if step is None:
      raise files.BadFileError(f"{workdir}/checkpoints: no SuperLM checkpoint")
    key = (workdir, step)
    if key not in _LOADED:
      super_cfg = student_lib.config_from_dict(record["arch"], cfg.model)
      _check_same_model(workdir, record, student_lib.resolve_kernels(super_cfg, jax.default_backend()))
      abstract = Rebuild(nnx.eval_shape(lambda: student_lib.Student(super_cfg, nnx.Rngs(0)))).params
      params = ckpts.restore(step, params=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract))
      _LOADED.clear()  # one SuperLM in memory at a time
      _LOADED[key] = (params["params"], super_cfg, set(record["candidates"]))
  finally:
    ckpts.close()
  return _LOADED[key]


def _check_same_model(workdir: str, record: dict, super_cfg) -> None:
  """The config's model section must be the one the SuperLM was trained with (its run record): a
  checkpoint of another shape would not restore, and the fault is the config's, not the checkpoint's."""
  trained = record.get("model", "")
  differ = [f"model.{f.name}: trained with {m.group(1)}, the config has {getattr(super_cfg, f.name)!r}"
            for f in dataclasses.fields(super_cfg) if f.name != "arch"
            for m in [re.search(rf"\b{f.name}=('[^']*'|[^,)]+)", trained)]
            if m and m.group(1) != repr(getattr(super_cfg, f.name))]
  if differ:
    raise ValueError(f"the SuperLM in {workdir} was trained with another model section ({'; '.join(differ)}); score "
                     "it with the config it was trained with (its run.json), the checkpoint itself is fine")


def proxy_scores(arch, cfg, workdir: str, log: Callable = print, context: TeacherContext | None = None) -> dict:
  """The held-out scores (evaluation.evaluate's fields, with standard errors) of `arch` extracted
  from the trained SuperLM(s) in `workdir`, without further training; plus the proxy's timings.
  context: the config's teacher and evaluation set (built here, quietly, when not given)."""
  t0 = time.time()
  arch = space_lib.Arch.parse(arch)
  owner = _owner(os.path.abspath(workdir), arch)
  params, _, candidates = load(owner, cfg)
  if arch.name not in candidates:
    raise ValueError(f"{arch.name} is not in the space the SuperLM in {owner} was trained on")
  sub_cfg = student_lib.config_from_dict(arch, cfg.model)
  student = extract(params, sub_cfg)
  # The SuperLM's own teacher (training prepared it), found again quietly when no context is given.
  context = context or TeacherContext.build(cfg, log=lambda m: None)
  context.check_serves(cfg, sub_cfg.dtype)
  eval_set, top1, teacher_scores = context.eval_set, context.teacher_top1, context.teacher_scores
  setup_s = time.time() - t0
  val = evaluation.evaluate(student, eval_set, top1, what=f"{arch.name} extracted from the SuperLM in {owner}")
  return dict(val, arch=arch.name, proxy_workdir=owner, num_blocks=sub_cfg.num_blocks, dtype=sub_cfg.dtype,
              teacher_mlm_accuracy=teacher_scores["mlm_accuracy"], setup_s=setup_s, compile_wall_s=0.0,
              train_steps_s=0.0, checkpoint_s=0.0, wall_s=time.time() - t0)


def save_extracted(arch, cfg, workdir: str, out_dir: str) -> str:
  """`arch` extracted from the SuperLM(s) in workdir, saved alone as an orbax student checkpoint
  (out_dir/student: what `ad distill --init-student` and `ad finetune` read)."""
  import orbax.checkpoint as ocp
  arch = space_lib.Arch.parse(arch)
  path = os.path.join(os.path.abspath(out_dir), "student")
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise FileExistsError(f"--out {out_dir}: a file is in the way; give a directory (the student goes to OUT/student)")
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; choose another --out")
  owner = _owner(os.path.abspath(workdir), arch)
  params, _, _ = load(owner, cfg)
  student = extract(params, student_lib.config_from_dict(arch, cfg.model))
  pure = Rebuild(student).params
  os.makedirs(os.path.abspath(out_dir), exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, pure)
  return path

