"""One flash distillation at CPU scale (the `make demo` pieces and README's distillation numbers).

Command:  ad teacher prepare --config cpu_flash
          ad distill --config cpu_flash --arch 512_128_4_512_4 --schedule flash --workdir runs/flash_mobilebert
Machine:  2-core CPU, no accelerator.
Expected: teacher held-out MLM accuracy 0.3763 +- 0.0041 (900 adaptation steps: 16-40 min on
          this machine depending on its speed that hour; once, then cached). See README.md.
"""

import ml_collections

from ad.configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.space = common.table1_space()
  c.model = common.student_model(num_blocks=2)
  c.data = common.pretraining_data(seq_len=128)
  # The teacher at seq 128, adapted longer than the quickstart's (about 20 minutes, once, then cached).
  c.teacher = common.default_teacher(adapt_steps=900, adapt_batch_size=16, adapt_warmup_steps=90)
  # The paper's structure at CPU scale: flash is 5% of regular, progressive/pretrain = 0.48.
  c.distill = common.distillation(flash=dict(pretrain_steps=100, warmup_steps=10),
                                  regular=dict(pretrain_steps=2000, warmup_steps=100), batch_size=16, lr=2e-3,
                                  warmup_max_fraction=1.0)  # short stages tuned and measured with this warm-up
  c.constraints = ml_collections.ConfigDict(dict(max_params=0, max_flops=0.0, max_latency_ms=0.0))  # 0 = off
  c.search = common.search(num_initial=4, num_trials=12, measure_seq=128, latency_reference_ms=30.0)
  c.superlm = common.superlm(steps=480)  # 13 flash runs of 148 steps = 1,924 sub-network steps at 4 per step
  c.final = common.final(count=1, choose="knee")
  c.finetune = common.finetune(seq_len=128)
  return c
