"""Does pre-training MLM accuracy rank students as a downstream task does? (003 Tables 2-3)

For each student: regular distillation with the config's schedule (`ad distill --schedule
regular`, the student saved), then fine-tuning on a task (`ad finetune`, the config's `finetune`
section); the teacher is fine-tuned too. Reports each model's held-out MLM accuracy and test
score, each with its standard error, and the agreement of the two rankings over the students:
Kendall tau and pairwise accuracy, with 95% intervals over students resampled with replacement.

Command (docs/MEASUREMENTS.md):
  python -m experiments.downstream [--config quickstart] [--task rotten_tomatoes]
Every run resumes or is skipped when finished (rerun the same command after an interrupt).
Results: experiments/results/downstream.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

from ad import configs, files, startup
from ad.stats import bootstrap_interval, kendall_tau, pairwise_accuracy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")
# Six 003 Table 1 students from small to MobileBERT-shaped, heads varied: the quickstart's knee
# (512_64_4_384_4), its baseline (512_128_4_512_4) and four spread over the parameter range.
DEFAULT_ARCHS = ("128_64_1_384_2", "256_64_2_384_2", "256_128_8_512_4", "384_96_2_640_2", "512_64_4_384_4",
                 "512_128_4_512_4")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="quickstart")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  p.add_argument("--task", default="rotten_tomatoes")
  p.add_argument("--archs", nargs="+", default=list(DEFAULT_ARCHS))
  p.add_argument("--run-dir", default=os.path.join(ROOT, "runs", "downstream"))
  p.add_argument("--out", default=RESULTS)
  p.add_argument("--resamples", type=int, default=2000)
  args = p.parse_args(argv)
  from ad.data import settings as data_settings
  from ad.distill import teacher_head, trainer
  from ad.finetune import settings as finetune_settings, trainer as finetune_lib
  startup.enable_compile_cache()
  cfg = configs.load_config(args.config, args.overrides)
  fcfg = finetune_settings.config_from_dict(cfg.get("finetune"))
  t0 = time.time()
  teacher_dir, _ = teacher_head.prepare_from_config(cfg.teacher, data_settings.config_from_dict(cfg.data))
  rows = []
  for name, path in [(a, os.path.join(args.run_dir, a)) for a in args.archs] + [("teacher", teacher_dir)]:
    if name != "teacher":
      metrics_path = os.path.join(path, "metrics.json")
      if os.path.isfile(metrics_path) and os.path.isdir(os.path.join(path, "student")):
        m = files.read_json(metrics_path)
      else:
        m = trainer.distill(name, cfg, "regular", path, resume=True, save_student=True, progress=False)
      mlm, mlm_se = m["mlm_accuracy"], m["mlm_accuracy_se"]
    else:
      meta = files.read_json(os.path.join(teacher_dir, teacher_head.META_FILE))
      mlm, mlm_se = meta["validation"]["mlm_accuracy"], meta["validation"]["mlm_accuracy_se"]
    ft_dir = os.path.join(args.run_dir, "finetune", f"{name}_{args.task}")
    result_path = os.path.join(ft_dir, finetune_lib.RESULT_FILE)
    if os.path.isfile(result_path):
      r = files.read_json(result_path)
    else:
      r = finetune_lib.finetune(path, args.task, fcfg, ft_dir, progress=False)
    rows.append(dict(model=name, mlm_accuracy=mlm, mlm_accuracy_se=mlm_se, test=r["test"],
                     encoder_params=r["encoder_params"], finetune_wall_s=r["wall_s"], steps=r["steps"],
                     best_step=r["best_step"]))
    print(f"{name:18s} MLM {mlm:.4f} +- {mlm_se:.4f}   {args.task} test {r['metric']} {r['test']['value']:.4f} "
          f"+- {r['test']['se']:.4f} [{r['test']['ci95'][0]:.4f}, {r['test']['ci95'][1]:.4f}]  "
          f"({r['wall_s']:.0f}s)", flush=True)
  students = [r for r in rows if r["model"] != "teacher"]
  a = np.asarray([r["mlm_accuracy"] for r in students])
  b = np.asarray([r["test"]["value"] for r in students])
  summary = dict(
      task=args.task, config=args.config, finetune=dataclasses.asdict(fcfg), rows=rows,
      kendall_tau=kendall_tau(a, b), kendall_tau_ci95=bootstrap_interval(a, b, kendall_tau, args.resamples, 0),
      pairwise_accuracy=pairwise_accuracy(a, b),
      pairwise_accuracy_ci95=bootstrap_interval(a, b, pairwise_accuracy, args.resamples, 0),
      wall_s=time.time() - t0,
      command="python -m experiments.downstream " + " ".join(argv if argv is not None else sys.argv[1:]))
  os.makedirs(args.out, exist_ok=True)
  files.write_json(os.path.join(args.out, "downstream.json"), summary)
  print(f"pre-training MLM accuracy vs {args.task} test score over {len(students)} students: Kendall tau "
        f"{summary['kendall_tau']:+.3f} [{summary['kendall_tau_ci95'][0]:+.2f}, {summary['kendall_tau_ci95'][1]:+.2f}], "
        f"pairwise accuracy {summary['pairwise_accuracy']:.3f} [{summary['pairwise_accuracy_ci95'][0]:.2f}, "
        f"{summary['pairwise_accuracy_ci95'][1]:.2f}]; {summary['wall_s']:.0f}s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
