"""Paper scale (003 section 4): the Table 1 space, 24-block students, MobileBERT's embedding.

Command:  ad space --config paper_table1 ; ad arch 512_128_4_512_4 --config paper_table1
          ad search --config paper_table1 --run-dir RUN   (on a TPU pod: one process per host)
Machine:  any for space/arch; the search at this scale targets a TPU pod (see BUILD.md) and
          has not been run (no accelerator here). The teacher should be an IB-BERT-sized
          checkpoint (`--set teacher.source=DIR`); with the packaged 6-layer MiniLM each teacher
          layer supervises a group of 4 consecutive student blocks (ad/distill/losses.py
          block_mapping). Each stage warms up for at most 10% of its steps (distill.warmup_max_fraction).
Expected: 576 architectures per block; MobileBERT 25.1M parameters counted the paper's way.
          The paper's search: about 300 trials to find 7 students that beat MobileBERT in
          both accuracy and TPUv4i latency (003 section 4.2).
"""

import ml_collections

from ad.configs import common


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
                                  batch_size=2048, lr=1e-3, checkpoint_every=1000, log_every=100)
  c.constraints = ml_collections.ConfigDict(dict(max_params=0, max_flops=0.0, max_latency_ms=0.0))  # 003: none
  # 003 section 4.2: MLM accuracy and batch-1 inference latency; reference: accuracy 0, latency
  # well above MobileBERT's on the target chip (set it from a first measurement of the baseline).
  c.search = common.search(num_initial=10, num_trials=300, measure_seq=128, latency_reference_ms=10.0)
  c.superlm = common.superlm(steps=50_000)  # 200k sub-network steps: about five flash runs of this config
  c.final = common.final(count=7, choose="spread")
  c.finetune = common.finetune(seq_len=128)
  return c
