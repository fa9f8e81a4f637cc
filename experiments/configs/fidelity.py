"""Flash-distillation fidelity at the quickstart's scale (issue: "flash that ranks like regular").

Command:  .venv/bin/python -m experiments.fidelity          (after `make search` prepared the teacher)
Machine:  the 2-core CPU dev machine; the measured wall time is in experiments/README.md.
Scale:    the quickstart's teacher, data (seq 64), 3-block students and bf16 compute. Flash (5%)
          is the quickstart's flash schedule (8 progressive steps per block + 50 pre-training,
          batch 16); regular is 20x that (160 per block + 1,000), 003's ratio; the curves run
          2.5 / 5 / 10% of regular for every student.
Students: `count` architectures spread over the design space by closed-form FLOPs (evenly spaced
          quantiles, heads varied), plus the MobileBERT-shaped baseline.
Budget:   6 + 1 students and three fractions take about 70 minutes of this machine (a regular run
          is about 7 minutes of it). The issue's full study (12 + 1 students, 1.25 / 2.5 / 5 / 10 /
          20%) is about 3 hours:  --set fidelity.count=12 --set "fidelity.fractions=[0.0125, 0.025,
          0.05, 0.1, 0.2]" --run-dir runs/fidelity_full  (a run directory keeps its first choice of
          students; within one, finished runs are kept and a rerun does only what is missing).
"""

import ml_collections

from experiments.configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.distill.regular.update(steps_per_block=160, pretrain_steps=1000, warmup_steps=100)
  c.fidelity = ml_collections.ConfigDict(dict(count=6, fractions=[0.025, 0.05, 0.1], base_fraction=0.05,
                                              bootstrap=2000, seed=0))
  return c
