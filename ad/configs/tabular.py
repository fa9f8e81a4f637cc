"""The tabular benchmark (issue #8, experiments/README.md); flash fidelity has its own config (fidelity.py).

Command:  .venv/bin/python -m experiments.tabular           (the table: 144 architectures)
Machine:  the 2-core CPU dev machine; see experiments/README.md for the measured wall times.
Scale:    the first wave's scale, kept so the committed table (experiments/results/tabular.*) stays
          described: 1-block students at seq 32, batch 8, f32; the regular schedule is 400
          pre-training steps (+ 192 progressive), flash is 5% of it (20 + 10) as in 003 section
          4.7. Latency is measured at batch 1, seq 128 on this CPU. The committed table used the
          first wave's teacher (MLM head fitted on the frozen encoder, no adaptation); a rerun
          prepares today's adapted teacher for this data config (about 6 minutes, once).
Sub-space: heads fixed at 4 (MobileBERT's): 4 hidden x 4 bottleneck x 3 intermediate x 3 FFNs
          = 144 architectures, the MobileBERT-shaped baseline 512_128_4_512_4 among them. Heads
          change neither the parameter count nor the matmul FLOPs (attention runs at the
          bottleneck width), so fixing them keeps the whole range of size and cost.
"""

import ml_collections

from ad.configs import common
from ad.configs import quickstart


def get_config():
  c = quickstart.get_config()  # the quickstart's corpus and search settings, at the first wave's scale
  c.model.update(num_blocks=1, dtype="float32")
  c.data = common.pretraining_data(seq_len=32, max_predictions=5)
  c.distill = common.distillation(flash=dict(pretrain_steps=20, warmup_steps=2),
                                  regular=dict(pretrain_steps=400, warmup_steps=20), batch_size=8, lr=2e-3,
                                  checkpoint_every=1000,
                                  warmup_max_fraction=1.0)  # short stages tuned and measured with this warm-up
  c.search.measure.update(max_reps=30, chunk=10)
  c.table = ml_collections.ConfigDict(dict(fixed=dict(heads=4)))
  return c
