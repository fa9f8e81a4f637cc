"""Quickstart: the default offline search on this CPU (the README's main job).

Command:  make search   (= make setup; ad teacher prepare --config quickstart;
                         ad search --config quickstart --run-dir runs/quickstart --resume)
Machine:  2-core CPU (AVX512-BF16/AMX), no accelerator; the target machine is this CPU.
Expected: see docs/MEASUREMENTS.md for the measured wall time, trial count and results:
          the MobileBERT-shaped baseline + 4 initial + 8 BO trials, each measured (batch 1,
          seq 128, this CPU) and flash-distilled, then regular distillation of the knee of the
          Pareto front and of the baseline, saved with orbax and exported to HF MobileBERT, and of
          two more students that grade the flash signal (search.calibrate).
Scale:    aimed at 15 minutes from a fresh HOME (teacher preparation included) on 2 cores; it
          measured 20 min 50 s (docs/MEASUREMENTS.md, before calibration was added): 3-block students (the teacher has 6 layers), seq 64, batch 16,
          bf16 compute (parameters f32), flash = 24 progressive + 50 pre-training steps,
          the teacher adapted to MLM for 240 steps (about 5 minutes). The held-out evaluation
          set has 16,387 masked tokens (1,894 pairs), so a score's standard error is about 0.0035.
"""

import ml_collections

from ad.configs import common


def get_config():
  c = ml_collections.ConfigDict()
  c.space = common.table1_space()
  c.model = common.student_model(num_blocks=3)
  c.model.dtype = "bfloat16"
  c.data = common.pretraining_data(seq_len=64, max_predictions=10)
  c.teacher = common.default_teacher()
  c.distill = common.distillation(flash=dict(steps_per_block=8, pretrain_steps=50, warmup_steps=5),
                                  regular=dict(steps_per_block=24, pretrain_steps=150, warmup_steps=15), batch_size=16,
                                  lr=8e-3, checkpoint_every=100,
                                  warmup_max_fraction=1.0)  # short stages tuned and measured with this warm-up
  c.constraints = ml_collections.ConfigDict(dict(max_params=0, max_flops=0.0, max_latency_ms=0.0))  # 0 = off
  c.search = common.search(num_initial=4, num_trials=12, measure_seq=128, latency_reference_ms=20.0)
  c.search.measure.update(max_reps=40, chunk=20)
  # Two more regular distillations after the finals grade the flash signal on this search's own
  # students (report.md "Calibration"); a regular run here is 3x a flash one (cost: experiments/README.md
  # section 15).
  c.search.calibrate = 2
  # The compute of the 13 trials' flash runs (13 x 74 = 962 steps) as 240 steps x 4 sub-networks;
  # the warm-up as measured (experiments/README.md section 8).
  c.superlm = common.superlm(steps=240, warmup_steps=24)
  c.final = common.final(count=1, choose="knee")
  c.finetune = common.finetune(seq_len=64, epochs=2, dtype="bfloat16")  # sentences of ~30 WordPieces; bf16 as distilled
  return c
