"""The same fine-tuning through transformers: an exported student (or any HF MobileBERT/BERT
directory) fine-tuned on the offline task with transformers' Trainer, with `ad finetune`'s
settings (the config's `finetune` section), scored on the same test split with the same
bootstrap interval. Compare with `ad finetune` on the same checkpoint (experiments/README.md).

Command:  python -m experiments.finetune_transformers HF_DIR [--config quickstart]
Results:  experiments/results/finetune_transformers_<name>.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

from ad import configs, files, stats
from ad.finetune import settings as finetune_settings, tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("hf_dir")
  p.add_argument("--config", default="quickstart")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "finetune_transformers"))
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "results"))
  args = p.parse_args(argv)
  import torch
  import transformers
  fcfg = finetune_settings.config_from_dict(configs.load_config(args.config, args.overrides).get("finetune"))
  torch.manual_seed(fcfg.seed)
  t0 = time.time()
  tok = transformers.AutoTokenizer.from_pretrained(args.hf_dir)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(args.hf_dir, num_labels=2)
  data = tasks.rotten_tomatoes()

  def encode(rows):
    enc = tok([t for t, _ in rows], truncation=True, max_length=fcfg.seq_len, padding="max_length")
    return [dict(input_ids=enc["input_ids"][i], attention_mask=enc["attention_mask"][i],
                 token_type_ids=enc["token_type_ids"][i], labels=l) for i, (_, l) in enumerate(rows)]

  train, val, test = encode(data["train"]), encode(data["validation"]), encode(data["test"])
  steps_per_epoch = len(train) // fcfg.batch_size
  eval_every = max(1, steps_per_epoch // fcfg.evals_per_epoch)
  targs = transformers.TrainingArguments(
      output_dir=os.path.join(args.workdir, os.path.basename(os.path.normpath(args.hf_dir))),
      per_device_train_batch_size=fcfg.batch_size, per_device_eval_batch_size=2 * fcfg.batch_size,
      num_train_epochs=fcfg.epochs, learning_rate=fcfg.lr, weight_decay=fcfg.weight_decay,
      warmup_steps=int(fcfg.warmup_fraction * steps_per_epoch * fcfg.epochs), lr_scheduler_type="linear", eval_strategy="steps", eval_steps=eval_every,
      save_strategy="steps", save_steps=eval_every, load_best_model_at_end=True, metric_for_best_model="accuracy",
      save_total_limit=1, logging_steps=50, report_to=[], use_cpu=True, disable_tqdm=True, seed=fcfg.seed,
      dataloader_drop_last=True, bf16=fcfg.dtype == "bfloat16")
  metrics = lambda ev: dict(accuracy=float(np.mean(np.argmax(ev.predictions, -1) == ev.label_ids)))
  t = transformers.Trainer(model=model, args=targs, train_dataset=train, eval_dataset=val, compute_metrics=metrics,
                           callbacks=[transformers.EarlyStoppingCallback(early_stopping_patience=fcfg.patience)])
  t.train()
  t.args.dataloader_drop_last = False  # training drops the last partial batch (as `ad finetune` does); scoring not
  pred = t.predict(test)
  labels = np.asarray([ex["labels"] for ex in test])
  result = dict(checkpoint=files.portable(os.path.abspath(args.hf_dir), ROOT), task="rotten_tomatoes", path="transformers Trainer",
                finetune=dataclasses.asdict(fcfg),
                test=stats.task_metric_with_noise("accuracy", labels, np.argmax(pred.predictions, -1), seed=fcfg.seed),
                steps=t.state.global_step, best_validation=t.state.best_metric, wall_s=time.time() - t0,
                command="python -m experiments.finetune_transformers " + " ".join(argv or sys.argv[1:]))
  os.makedirs(args.out, exist_ok=True)
  name = os.path.basename(os.path.normpath(args.hf_dir))
  files.write_json(os.path.join(args.out, f"finetune_transformers_{name}.json"), result)
  r = result["test"]
  print(f"{name}: transformers test accuracy {r['value']:.4f} +- {r['se']:.4f} [{r['ci95'][0]:.4f}, "
        f"{r['ci95'][1]:.4f}] after {result['steps']} steps (best validation {result['best_validation']:.4f}); "
        f"{result['wall_s']:.0f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
