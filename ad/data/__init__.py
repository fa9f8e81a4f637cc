"""Pre-training data: documents -> WordPiece -> BERT MLM + NSP examples, as seqio Tasks.

TensorFlow (seqio's engine) must never take accelerator memory, so importing this package
hides GPUs and TPUs from TF before anything else touches it.
"""

from ad.data import tf_setup as _tf_setup

_tf_setup.hide_accelerators_from_tf()
