"""`ad teacher`, `ad distill`, `ad superlm`, `ad export`, `ad finetune`: the training stages one at a time."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from ad import configs, export, space as space_lib
from ad.data import pretrain, settings as data_settings
from ad.distill import evaluation, superlm, teacher_head, trainer
from ad.finetune import settings as finetune_settings, trainer as finetune_lib
from ad.search import report
from ad.train import sharding


def cmd_teacher(args) -> int:
  cfg = configs.load_config(args.config, args.overrides)
  data_cfg = data_settings.config_from_dict(cfg.data)
  if args.action == "prepare":
    out, meta = teacher_head.prepare_from_config(cfg.teacher, data_cfg, source=args.source, out_dir=args.out,
                                                 force=args.force, adapt_headed=True if args.adapt else None,
                                                 log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(dict(prepared_dir=out, hf_dir=os.path.join(out, teacher_head.HF_DIR), **meta["validation"]),
                     indent=2))
    return 0
  # eval: the held-out evaluation set of the config's data section
  model, meta = teacher_head.load(args.dir)
  vocab = pretrain.load_vocab(data_cfg, meta["source_dir"])
  es = evaluation.build_eval_set(data_cfg, vocab, log=lambda m: print(m, file=sys.stderr))
  _, metrics = evaluation.teacher_reference(args.dir, model, es, log=lambda m: print(m, file=sys.stderr))
  print(json.dumps(dict(prepared_dir=args.dir, **metrics), indent=2))
  return 0


def cmd_distill(args) -> int:
  sharding.maybe_initialize_distributed()
  cfg = configs.load_config(args.config, args.overrides)
  if not args.outside_space:
    space_lib.DesignSpace.from_config(cfg.space).check(args.arch)
  if args.export:
    export.check_out(args.export, args.force, source=args.workdir, what="--export")
  # The student alone is always saved (workdir/student), so `ad export WORKDIR` works on any finished run.
  metrics = trainer.distill(args.arch, cfg, args.schedule, args.workdir, resume=args.resume,
                            log=lambda m: print(m, file=sys.stderr), progress=not args.no_progress,
                            save_student=True, export_dir=args.export, init_student=args.init_student)
  print(json.dumps(metrics, indent=2))
  return 0


def cmd_superlm(args) -> int:
  sharding.maybe_initialize_distributed()
  cfg = configs.load_config(args.config, args.overrides)
  log = lambda m: print(m, file=sys.stderr)
  if args.action == "train":
    if args.fewshot:
      r = superlm.train_fewshot(cfg, args.workdir, resume=args.resume, log=log, progress=not args.no_progress)
    else:
      r = superlm.train(cfg, args.workdir, resume=args.resume, log=log, progress=not args.no_progress)
    print(json.dumps(r, indent=2))
    return 0
  space = space_lib.DesignSpace.from_config(cfg.space)
  if args.action == "extract":
    print(superlm.save_extracted(space.check(args.arch), cfg, args.workdir, args.out))
    return 0
  rows = []
  for name in args.archs:
    r = superlm.proxy_scores(space.check(name), cfg, args.workdir, log=log)
    rows.append({k: v for k, v in r.items() if k != "per_sequence"})
  if args.json:
    print(json.dumps(rows, indent=2))
    return 0
  for r in rows:
    print(f"{r['arch']:<18} MLM accuracy {r['mlm_accuracy']:.4f} +- {r['mlm_accuracy_se']:.4f}  cross-entropy "
          f"{r['mlm_cross_entropy']:.3f} +- {r['mlm_cross_entropy_se']:.3f}  ({r['wall_s']:.1f}s)")
  return 0


def cmd_export(args) -> int:
  export.check_out(args.out, args.force, source=args.path)
  for d in export.export_path(args.path, args.out, log=lambda m: print(m, file=sys.stderr),
                              latencies=report.card_latencies(os.path.abspath(args.path))):
    print(d)
  return 0


def cmd_finetune(args) -> int:
  cfg = configs.load_config(args.config, args.overrides)
  fcfg = finetune_settings.config_from_dict(cfg.get("finetune"))
  flags = dict(epochs=args.epochs, tfds_data_dir=args.tfds_data_dir, squad_dir=args.squad_dir)
  fcfg = dataclasses.replace(fcfg, **{k: v for k, v in flags.items() if v is not None})
  results = []
  for task in args.task:
    for ckpt in finetune_lib.checkpoints_of(args.checkpoint):
      workdir = finetune_lib.result_dir(args.workdir or os.path.join("runs", "finetune"), ckpt, task)
      results.append(finetune_lib.finetune(ckpt, task, fcfg, workdir, log=lambda m: print(m, file=sys.stderr),
                                           progress=not args.no_progress))
  print(json.dumps([{k: v for k, v in r.items() if k != "history"} for r in results], indent=2))
  return 0
