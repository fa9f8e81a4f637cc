"""Quickstart: the default offline search on this CPU (the README's main job).

Command:  make search   (= make setup; ad teacher prepare --config quickstart;
                         ad search --config quickstart --run-dir runs/quickstart --resume)
Machine:  2-core CPU, no accelerator; the target machine is this CPU.
Expected: see README.md "Measurements" for the measured wall time, trial count and Pareto set.
          12 search trials (4 initial + 8 BO) + the MobileBERT-shaped baseline, each measured
          (batch 1, seq 128, this CPU) and flash-distilled, then one regular distillation of
          the knee of the Pareto front, saved with orbax and exported to HF MobileBERT.
Scale:    shrunk to fit 15 minutes on 2 cores: 1-block students trained at seq 32, batch 8,
          flash = 12 + 6 steps, regular = 20x that (the paper's 5%), a teacher head fitted on
          32 batches. A trial costs about 35 s, most of it XLA compiling the 2 step functions
          for the new shapes. At this budget flash accuracy barely separates architectures
          (see README.md); the config exists to run the whole machinery, not to rank students.
"""

import ml_collections

from experiments.configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.space = common.table1_space()
  c.model = common.student_model(num_blocks=1)
  c.data = common.pretraining_data(seq_len=32, max_predictions=5)
  c.teacher = common.default_teacher(head_pool_batches=32, head_steps=100, eval_batches=20)
  c.distill = common.distillation(flash=dict(pretrain_steps=12, warmup_steps=2),
                                  regular=dict(pretrain_steps=240, warmup_steps=12), batch_size=8, lr=2e-3,
                                  checkpoint_every=100)
  c.constraints = ml_collections.ConfigDict(dict(max_params=0, max_flops=0.0, max_latency_ms=0.0))  # 0 = off
  c.search = common.search(num_initial=4, num_trials=12, measure_seq=128, latency_reference_ms=20.0)
  c.search.measure.update(max_reps=60, chunk=20)
  c.final = common.final(count=1, choose="knee")
  return c
