"""Paper scale (003 section 4): the Table 1 space, 24-block students, MobileBERT's embedding.

Command:  ad space --config paper_table1 ; ad arch 512_128_4_512_4 --config paper_table1
Machine:  any; the search at this scale targets a TPU pod (see BUILD.md).
Expected: 576 architectures per block; MobileBERT 25.1M parameters counted the paper's way.
"""

import ml_collections

from experiments.configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.space = common.table1_space()
  c.model = common.student_model(num_blocks=24)
  c.data = common.pretraining_data(seq_len=128)
  c.teacher = common.default_teacher()
  # 003 section 4: flash = 500 steps per block + 25k pre-training steps (500 warm-up);
  # regular = 10k per block + 500k (10k warm-up); batch 2048; LAMB.
  c.distill = common.distillation(flash=dict(steps_per_block=500, pretrain_steps=25_000, warmup_steps=500),
                                  regular=dict(steps_per_block=10_000, pretrain_steps=500_000, warmup_steps=10_000),
                                  batch_size=2048, lr=1e-3, checkpoint_every=1000, eval_batches=200, log_every=100)
  c.constraints = ml_collections.ConfigDict(dict(max_params=0, max_flops=0.0, max_latency_ms=0.0))
  return c
