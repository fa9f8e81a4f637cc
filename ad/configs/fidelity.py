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
          is about 7 minutes of it alone, 15 minutes beside another). The 12 + 1 study of
          2026-12-01 (experiments/README.md section 3b) ran 5% for all students and 2.5 / 10% for
          the first five:  --set fidelity.count=12 --set "fidelity.fractions=[0.05]"
          --run-dir runs/fidelity_12 --out experiments/results/fidelity_12 (a run directory keeps
          its first choice of students; within one, finished runs are kept and a rerun does only
          what is missing). Its finished runs' JSON files are in
          experiments/results/fidelity_12/runs_fidelity_12.tar.gz: `tar xzf ... -C runs` and rerun
          with other fractions to add what is missing.
"""

import ml_collections

from ad.configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.distill.regular.update(steps_per_block=160, pretrain_steps=1000, warmup_steps=100)
  c.fidelity = ml_collections.ConfigDict(dict(count=6, fractions=[0.025, 0.05, 0.1], base_fraction=0.05,
                                              bootstrap=2000, seed=0))
  return c
