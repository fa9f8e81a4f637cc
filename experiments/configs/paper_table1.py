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
  c.constraints = ml_collections.ConfigDict(dict(max_params=0, max_flops=0.0, max_latency_ms=0.0))
  return c
