"""The tabular benchmark at the quickstart's scale (issue 30 item 7): 47 + 1 students, flash and regular.

Command:  .venv/bin/python -m experiments.fidelity --config table_quickstart --run-dir runs/table_quickstart \
              --out experiments/results/table_quickstart        (after `ad teacher prepare --config quickstart`)
Machine:  the 2-core CPU dev machine; the measured wall time is in experiments/README.md section 17.
Scale:    exactly the quickstart search's: its teacher, data (seq 64), 3-block bf16 students, its flash
          schedule (8 progressive steps per block + 50 pre-training, batch 16) and its regular schedule
          (24 per block + 150, 3x flash), the one search.calibrate and the finals use. The fidelity study's
          regular (20x flash, about 7 minutes a student alone) would take 6 hours for 48 students here.
Students: experiments.fidelity's choice: 47 architectures at evenly spaced quantiles of closed-form
          FLOPs over the whole Table 1 space, heads varied, plus the MobileBERT-shaped baseline.
Latency:  batch 1, seq 128 on this CPU, each student timed alternately with the baseline; its
          latency is its ratio to the baseline x the baseline's first reading in the run (one scale).
"""

from ad.configs import fidelity
from ad.configs import quickstart


def get_config():
  c = fidelity.get_config()
  c.distill = quickstart.get_config().distill
  # The flash schedule is a third of the regular one (74 of 222 steps): fraction 0.333 keeps it as is.
  c.fidelity.update(count=47, fractions=[0.333], base_fraction=0.333)
  return c
