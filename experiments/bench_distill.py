"""Speed of the flash-distillation steps on this machine: ours vs plain JAX.

"Ours": the pre-training-distillation step (eq. 3: student + teacher forward, student
backward, LAMB) and the progressive step of block 0 (eq. 1 + 2), jitted with NamedShardings
over the device mesh, as ad/distill/trainer.py runs them. "Plain": the same math run op by
op (jax.disable_jit: no XLA fusion, no sharding), the baseline a from-scratch JAX loop
starts at. Both in the same process on the same batch.

Command:  .venv/bin/python -m experiments.bench_distill [--arch 512_128_4_512_4] [--steps 10]
Machine:  the 2-core CPU dev machine; about 3 minutes (the plain path is slow).
Prints:   compile time, steady-state step time and tokens/s for each path, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ad import configs
from ad.data import pretrain, settings as data_settings
from ad.distill import losses, teacher_head
from ad.train import sharding
from ad.models import student as student_lib


def _median_step_s(step, s_state, opt_state, t_state, batch, n: int) -> float:
  """Median seconds of n chained steps (each waits for its loss)."""
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    s_state, opt_state, loss = step(s_state, opt_state, t_state, batch)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="512_128_4_512_4")
  p.add_argument("--config", default="cpu_flash")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--plain-steps", type=int, default=2)
  args = p.parse_args(argv)
  cfg = configs.load_config(args.config)
  data_cfg = data_settings.config_from_dict(cfg.data)
  tdir, tmeta = teacher_head.prepare_from_config(cfg.teacher, data_cfg)
  teacher, _ = teacher_head.load(tdir)
  scfg = student_lib.config_from_dict(args.arch, cfg.model)
  student = student_lib.Student(scfg, nnx.Rngs(0))
  losses.init_embeddings_from_teacher(student, teacher)
  batch_size = cfg.distill.batch_size
  task = pretrain.make_task(data_cfg, pretrain.load_vocab(data_cfg, tmeta["source_dir"]))
  batch = next(pretrain.batches(task, data_cfg, "train", batch_size))
  tokens = batch_size * data_cfg.seq_len

  s_gd, s_state = nnx.split(student)
  t_gd, t_state = nnx.split(teacher)
  tx = optax.lamb(1e-3, weight_decay=0.01)

  def step(s_state, opt_state, t_state, b):
    def loss_fn(s_state):
      s = nnx.merge(s_gd, s_state)
      so = s.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"])
      s_mlm = s.mlm_logits(losses.gather_positions(so["sequence_output"], b["masked_positions"]))
      tm = nnx.merge(t_gd, t_state)
      to = tm.encode(b["input_ids"], b["token_type_ids"], b["attention_mask"])
      t_mlm = jax.lax.stop_gradient(tm.mlm_logits(losses.gather_positions(to["sequence_output"], b["masked_positions"])))
      return losses.pretraining_loss(s_mlm, t_mlm, s.nsp_logits(so["pooled"]), b, 0.5, 1.0)[0]
    loss, g = jax.value_and_grad(loss_fn)(s_state)
    updates, opt_state = tx.update(g, opt_state, s_state)
    return optax.apply_updates(s_state, updates), opt_state, loss

  mesh = sharding.make_mesh(jax.device_count(), 1)
  s_sh = jax.tree.map(lambda _: sharding.NamedSharding(mesh, sharding.P()), s_state)  # one device here
  opt_state = tx.init(s_state)
  opt_sh = jax.tree.map(lambda _: sharding.NamedSharding(mesh, sharding.P()), opt_state)
  ours = jax.jit(step, in_shardings=(s_sh, opt_sh, None, None), out_shardings=(s_sh, opt_sh, None))
  gb = sharding.global_batch(batch, mesh)
  s0, o0 = jax.device_put(s_state, s_sh), jax.device_put(opt_state, opt_sh)

  t0 = time.perf_counter()
  compiled = ours.lower(s0, o0, t_state, gb).compile()
  compile_s = time.perf_counter() - t0
  s1, o1, _ = compiled(s0, o0, t_state, gb)  # warm-up
  jax.block_until_ready(s1)
  ours_s = _median_step_s(compiled, s1, o1, t_state, gb, args.steps)
  jb = {k: jnp.asarray(v) for k, v in batch.items()}
  with jax.disable_jit():
    plain_s = _median_step_s(step, s_state, opt_state, t_state, jb, args.plain_steps)
  r = dict(arch=scfg.arch.name, num_blocks=scfg.num_blocks, batch=batch_size, seq=data_cfg.seq_len,
           devices=jax.device_count(), backend=jax.default_backend(), compile_s=compile_s,
           ours_step_ms=1e3 * ours_s, ours_tokens_per_s=tokens / ours_s,
           plain_step_ms=1e3 * plain_s, plain_tokens_per_s=tokens / plain_s, speedup=plain_s / ours_s,
           ours_steps=args.steps, plain_steps=args.plain_steps)
  print(json.dumps(r, indent=2))


if __name__ == "__main__":
  main()
