"""Flax NNX models: the MobileBERT-style student (student.py), the BERT teacher (teacher.py),
and Hugging Face import/export (hf.py)."""
