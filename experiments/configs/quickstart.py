"""Quickstart: the default offline search on this CPU.

Command:  make demo      (or: .venv/bin/ad arch --config quickstart ...)
Machine:  2-core CPU, no accelerator.
Expected: see README.md; the search pieces land with the search issue. Today this config
          drives `ad space` and `ad arch`: the Table 1 space with 2-block students.
"""

import ml_collections

from experiments.configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.space = common.table1_space()
  c.model = common.student_model(num_blocks=2)
  c.data = common.pretraining_data(seq_len=128)
  c.teacher = common.default_teacher()
  # CPU scale, same structure as the paper: flash is 5% of regular, progressive/pretrain = 0.48.
  c.distill = common.distillation(flash=dict(pretrain_steps=100, warmup_steps=10),
                                  regular=dict(pretrain_steps=2000, warmup_steps=100), batch_size=16, lr=2e-3)
  c.constraints = ml_collections.ConfigDict(dict(max_params=0, max_flops=0.0, max_latency_ms=0.0))  # 0 = off
  return c
