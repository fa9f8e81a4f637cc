"""Pre-training data: documents -> WordPiece -> BERT MLM + NSP examples, as seqio Tasks.

TensorFlow (seqio's engine) must never take accelerator memory: `tf_setup.hide_accelerators_from_tf()`
runs when a task is made (pretrain.make_task) and at the start of the `ad` command, not on import.
"""
