"""The `ad` command: space, arch, profile, teacher, distill, superlm, export, search, report (one subcommand per stage)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

# Only what every command needs (no JAX): each command imports the modules it runs when it runs,
# so that `ad --help`, `ad space` and a bad argument answer in a second, not after JAX, flax and
# TensorFlow load (5 s here).
from ad import configs, files, interrupt, space as space_lib, startup


def _add_config_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", default=None,
                 help="config name in experiments/configs/ (default: quickstart), or a path ending in .py; configs "
                      "are Python and are executed: use only configs you trust")
  p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                 help="do not use JAX's persistent compilation cache (default: on, in the user cache directory)")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field, e.g. --set model.num_blocks=4 (repeatable)")


def _at_least(low: int):
  """An argparse type: an integer >= low (argparse's error then names the option)."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
      raise argparse.ArgumentTypeError(f"{value}: expected an integer >= {low}")
    return value
  parse.__name__ = f"integer >= {low}"
  return parse


def _share(text: str) -> float:
  """An argparse type: a number strictly between 0 and 1."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not 0 < value < 1:
    raise argparse.ArgumentTypeError(f"{value}: expected a number between 0 and 1 (a share), e.g. 0.02")
  return value


def _split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Accepts big_vision-style `--config.key=value` as well as `--set key=value`."""
  rest, overrides = [], []
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      overrides.append(a[len("--config."):])
    else:
      rest.append(a)
  return rest, overrides


def cmd_space(args) -> int:
  cfg = configs.load_config(args.config, args.overrides)
  space = space_lib.DesignSpace.from_config(cfg.space)
  print(f"design space ({configs.resolve(args.config)}), {cfg.model.num_blocks} blocks per student:")
  print(space.describe())
  if args.list:
    for a in space.archs():
      print(a.name)
  return 0


def arch_report(arch_name: str, cfg, blocks=None, seq=128, batch=1, dtype=None) -> dict:
  """Parameter counts by part and forward FLOPs from XLA's cost analysis (the harness's forward)."""
  from ad.models import student as student_lib
  from profiling import harness

  arch = space_lib.Arch.parse(arch_name)
  if batch <= 0:
    raise ValueError(f"--batch must be positive, got {batch}")
  scfg = student_lib.config_from_dict(arch, cfg.model, num_blocks=blocks, dtype=dtype)
  if not 0 < seq <= scfg.max_positions:
    raise ValueError(f"--seq {seq} is outside (0, {scfg.max_positions}] (the model's position embeddings)")
  counts = student_lib.param_counts(scfg)
  real = student_lib.count_module_params(student_lib.abstract_student(scfg))
  if real != counts["total"]:
    raise AssertionError(f"closed-form parameter count {counts['total']} != module's {real} for {arch}")
  kw = dict(num_blocks=scfg.num_blocks, batch=batch, seq=seq, dtype=scfg.dtype)
  enc = harness.compile_only_arch(arch, cfg.model, **kw)
  full = harness.compile_only_arch(arch, cfg.model, heads=True, **kw)
  return dict(
      arch=arch.name, num_blocks=scfg.num_blocks, batch=batch, seq=seq, dtype=scfg.dtype,
      params={k: int(v) for k, v in counts.items()},
      flops_encoder=enc["flops"], flops_pretraining_heads=full["flops"],
      bytes_accessed_encoder=enc["bytes_accessed"], backend=enc["backend"])


def cmd_arch(args) -> int:
  cfg = configs.load_config(args.config, args.overrides)
  if not args.outside_space:
    space = space_lib.DesignSpace.from_config(cfg.space)
    for n in args.names:
      space.check(n)
  reports = [arch_report(n, cfg, args.blocks, args.seq, args.batch, args.dtype) for n in args.names]
  if args.json:
    print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
    return 0
  for r in reports:
    p = r["params"]
    m = lambda n: f"{n / 1e6:8.3f}M"
    print(f"{r['arch']}  ({r['num_blocks']} blocks, batch {r['batch']}, seq {r['seq']}, {r['dtype']}, {r['backend']})")
    print(f"  embeddings {m(p['embeddings'])}   encoder {m(p['encoder'])} ({p['block']:,} per block)")
    print(f"  pooler     {m(p['pooler'])}   MLM head {m(p['mlm_head'])}   NSP head {m(p['nsp_head'])}")
    print(f"  total (as 003 Table 2 counts) {m(p['paper_total'])}   + MLM extra decoder {m(p['mlm_extra'])}"
          f" = {m(p['total'])} (as HF MobileBertForPreTraining counts)")
    print(f"  forward FLOPs (XLA cost analysis): encoder {r['flops_encoder'] / 1e9:.3f} GFLOP, "
          f"with MLM+NSP heads {r['flops_pretraining_heads'] / 1e9:.3f} GFLOP")
  return 0


def cmd_profile(args) -> int:
  from profiling import harness
  cfg = configs.load_config(args.config, args.overrides)
  if not args.outside_space:
    space_lib.DesignSpace.from_config(cfg.space).check(args.arch)
  kw = dict(num_blocks=args.blocks, batch=args.batch, seq=args.seq, dtype=args.dtype)
  if args.target:
    from ad import aot
    from profiling import tpu
    chip, shape = tpu.parse_topology(args.target)
    if shape is not None or not args.target.startswith("tpu:"):
      raise ValueError(f"--target {args.target!r}: expected tpu:<chip>, one of "
                       f"{['tpu:' + c for c in sorted(tpu.peaks.TPU_CHIPS)]}")
    r = aot.estimate_latency(args.arch, cfg.model, chip, log=lambda m: print(m, file=sys.stderr), **kw)
    if args.json:
      print(json.dumps(r, indent=2))
      return 0
    print(f"{r['arch']} ({r['num_blocks']} blocks, batch {r['batch']}, seq {r['seq']}, {r['dtype']}) on one "
          f"{r['device_kind']}: {r['latency_ms_median']:.3f} ms, estimated by XLA's TPU cost model (not measured; "
          f"{r['kernels']['why']})")
    print(f"  {r['flops'] / 1e9:.3f} GFLOP, {r['bytes_accessed'] / 1e6:.1f} MB accessed; roofline "
          f"{r['roofline_ms']:.3f} ms; {r['tokens_per_s']:,.0f} tokens/s; MFU {100 * r['flops_utilization']:.1f}%; "
          f"memory {r['peak_memory_bytes'] / 1e6:.1f} MB")
    return 0
  if args.compile_only:
    r = harness.compile_only_arch(args.arch, cfg.model, **kw)
  else:
    if args.reference:
      space_lib.Arch.parse(args.reference)
    r = harness.measure_arch(args.arch, cfg.model, trace_dir=args.trace_dir, target_rel_ci=args.target_ci,
                             max_reps=args.max_reps, min_reps=min(args.min_reps, args.max_reps),
                             recalibrate=args.recalibrate, reference=args.reference or None, **kw)
  if args.json:
    print(json.dumps(r, indent=2))
    return 0
  if args.compile_only:
    print(f"{r['arch']} ({r['num_blocks']} blocks, batch {r['batch']}, seq {r['seq']}, {r['dtype']}, {r['backend']}): "
          f"{r['flops'] / 1e9:.3f} GFLOP, {r['bytes_accessed'] / 1e6:.1f} MB accessed, "
          f"peak memory {r.get('peak_bytes', 0) / 1e6:.1f} MB (compile only)")
    return 0
  print(f"{r['arch']} ({r['num_blocks']} blocks, batch {r['batch']}, seq {r['seq']}, {r['dtype']}) on "
        f"{r['backend']} / {r['device_kind']}")
  print(f"  latency (trace)  median {r['latency_ms_median']:.3f} ms  mean {r['latency_ms_mean']:.3f}  "
        f"p90 {r['latency_ms_p90']:.3f}  cv {r['latency_cv']:.3f}  (+-{100 * r['latency_rel_ci95']:.1f}% 95% CI "
        f"of the median, {r['repetitions']} reps{'' if r['converged'] else ', NOT converged'})")
  if args.reference:
    print(f"  paired with {r['reference']} (called in turn): ratio {r['latency_ratio']:.4f} "
          f"(+-{100 * r['latency_ratio_rel_ci95']:.1f}% 95% CI); the reference's median in these rounds "
          f"{r['reference_ms_median']:.3f} ms. The ratio holds where each latency alone drifts with the machine.")
  print(f"  latency (wall)   median {r['wall_ms_median']:.3f} ms  (wall - device {r['wall_minus_device_ms']:+.3f} ms)")
  print(f"  throughput {r['throughput_per_s']:.1f} seq/s, {r['tokens_per_s']:.0f} tokens/s")
  print(f"  {r['flops'] / 1e9:.3f} GFLOP, {r['bytes_accessed'] / 1e6:.1f} MB accessed"
        f"{' (undercounted: loops or Pallas grids)' if r['flops_undercounted'] else ''}; "
        f"FLOPS util {100 * r['flops_utilization']:.1f}%, bandwidth util {100 * r['bandwidth_utilization']:.1f}% "
        f"(peaks from {r['peak_source']}: {r['peak_flops_per_s'] / 1e9:.0f} GFLOP/s, "
        f"{r['peak_bytes_per_s'] / 1e9:.0f} GB/s); peak memory {r['peak_memory_bytes'] / 1e6:.1f} MB")
  print(f"  matmuls (dots, and fusions or library calls holding one): {100 * r['matmul_share']:.0f}% of op time, "
        f"{r['matmul_ms_median']:.3f} ms of the median: the latency with every other op free")
  print("  top ops:")
  for op in r["top_ops"][:5]:
    print(f"    {100 * op['share']:5.1f}%  {op['time_us'] / op['count']:9.1f} us x{op['count']:<4d} {op['name']}  {op['scope']}")
  print(f"  trace: {r['trace_dir']}  (tensorboard --logdir {r['trace_dir']})")
  return 0


def cmd_compile(args) -> int:
  from ad import aot
  cfg = configs.load_config(args.config, args.overrides)
  req = aot.Request(topology=args.topology, program=args.program, arch=args.arch, batch=args.batch, seq=args.seq,
                    blocks=args.blocks, dtype=args.dtype, mesh_model=args.mesh_model)
  log = lambda m: print(m, file=sys.stderr)
  if args.largest_batch:
    r = aot.largest_batch(cfg, req, log=log)
    print(json.dumps(r, indent=2) if args.json else f"largest global batch that fits: {r['largest_global_batch']} "
          f"({r['per_device']} per data-parallel device)")
    return 0
  try:
    r = aot.compile_program(cfg, req, log=log)
  except aot.DoesNotFit as e:
    print(f"ad compile: error: {e}", file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps(r, indent=2))
  else:
    print(aot.format_report(r))
  over = {n: s["memory"] for n, s in r["steps"].items() if not s["memory"]["fits"]}
  for name, m in over.items():
    print(f"ad compile: error: {name} does not fit one {r['device_kind']} device: it needs {m['total_bytes'] / 2**30:.2f} "
          f"GiB, the device has {m['hbm_bytes'] / 2**30:.2f} GiB (over by {m['over_bytes'] / 2**30:.2f} GiB); use a "
          "smaller --batch, more devices, or --mesh-model", file=sys.stderr)
  return 1 if over else 0


def _data_config(cfg):
  from ad.data import pretrain
  return pretrain.config_from_dict(cfg.data)


def cmd_teacher(args) -> int:
  from ad.distill import teacher_head
  cfg = configs.load_config(args.config, args.overrides)
  data_cfg = _data_config(cfg)
  if args.action == "prepare":
    out, meta = teacher_head.prepare_from_config(cfg.teacher, data_cfg, source=args.source, out_dir=args.out,
                                                 force=args.force, adapt_headed=True if args.adapt else None,
                                                 log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(dict(prepared_dir=out, hf_dir=os.path.join(out, teacher_head.HF_DIR), **meta["validation"]),
                     indent=2))
    return 0
  # eval: the held-out evaluation set of the config's data section
  from ad.data import pretrain
  from ad.distill import evaluation
  model, meta = teacher_head.load(args.dir)
  vocab = pretrain.load_vocab(data_cfg, meta["source_dir"])
  es = evaluation.build_eval_set(data_cfg, vocab, log=lambda m: print(m, file=sys.stderr))
  _, metrics = evaluation.teacher_reference(args.dir, model, es, log=lambda m: print(m, file=sys.stderr))
  print(json.dumps(dict(prepared_dir=args.dir, **metrics), indent=2))
  return 0


def cmd_distill(args) -> int:
  from ad.distill import sharding, trainer
  sharding.maybe_initialize_distributed()
  cfg = configs.load_config(args.config, args.overrides)
  if not args.outside_space:
    space_lib.DesignSpace.from_config(cfg.space).check(args.arch)
  if args.export:
    from ad import export
    export.check_out(args.export, args.force, source=args.workdir, what="--export")
  # The student alone is always saved (workdir/student), so `ad export WORKDIR` works on any finished run.
  metrics = trainer.distill(args.arch, cfg, args.schedule, args.workdir, resume=args.resume,
                            log=lambda m: print(m, file=sys.stderr), progress=not args.no_progress,
                            save_student=True, export_dir=args.export, init_student=args.init_student)
  print(json.dumps(metrics, indent=2))
  return 0


def cmd_superlm(args) -> int:
  from ad.distill import sharding, superlm
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
  from ad import export
  from ad.search import report
  export.check_out(args.out, args.force, source=args.path)
  for d in export.export_path(args.path, args.out, log=lambda m: print(m, file=sys.stderr),
                              latencies=report.card_latencies(os.path.abspath(args.path))):
    print(d)
  return 0


def cmd_finetune(args) -> int:
  from ad.finetune import trainer as finetune_lib
  cfg = configs.load_config(args.config, args.overrides)
  fcfg = finetune_lib.config_from_dict(cfg.get("finetune"))
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


def cmd_search(args) -> int:
  from ad.distill import sharding
  from ad.search import loop
  sharding.maybe_initialize_distributed()
  cfg = configs.load_config(args.config, args.overrides + ([f"search.proxy={args.proxy}"] if args.proxy else []))
  summary = loop.run_search(cfg, args.run_dir, resume=args.resume, designer=args.designer,
                            log=lambda m: print(m, file=sys.stderr), progress=not args.no_progress,
                            workers=args.workers, store_url=args.store)
  if summary:
    print(json.dumps({k: v for k, v in summary.items() if k != "hypervolume_history"}, indent=2))
    print(f"report: {os.path.join(os.path.abspath(args.run_dir), 'report.md')}", file=sys.stderr)
  return 0


def cmd_worker(args) -> int:
  from ad.search import parallel
  ran = parallel.run_worker(args.run_dir, args.store, args.worker_id, log=lambda m: print(m, file=sys.stderr, flush=True),
                            max_trials=args.max_trials, role=args.role, target=args.target)
  print(json.dumps(dict(trials_run=ran)))
  return 0


def cmd_report(args) -> int:
  from ad.search import report, store as store_lib
  store = store_lib.TrialStore(args.run_dir, url=args.store, readonly=True) if args.store else None
  if store is not None:
    store.check_run_dir(args.run_dir)  # never another search's content in this run directory
  summary = report.write_report(args.run_dir, store, out_dir=args.out)
  print(json.dumps({k: v for k, v in summary.items() if k != "hypervolume_history"}, indent=2))
  print(f"report: {os.path.join(os.path.abspath(args.out or args.run_dir), 'report.md')}", file=sys.stderr)
  return 0


def cmd_latency_model(args) -> int:
  from ad.search import latency_model
  data = latency_model.from_measurements(latency_model.load_measurements(args.source, args.store))
  r = latency_model.held_out_error(data["x"], data["latency_ms"], folds=args.folds, seed=args.seed, flops=data["flops"])
  r["names"] = data["names"]
  r["measured_ms"] = data["latency_ms"].tolist()
  if args.json:
    print(json.dumps(r, indent=2))
    return 0
  print(f"{r['architectures']} measured architectures, {r['folds']}-fold cross-validation (each latency predicted by "
        "a model fitted without it):")
  for name, key in (("MLP on the architecture", "mlp"), ("log-linear in FLOPs", "flops_baseline")):
    e = r[key]
    print(f"  {name:<24} mean abs error {100 * e['mape']:.1f}% +- {100 * e['mape_se']:.1f}%, median "
          f"{100 * e['median_ape']:.1f}%, worst {100 * e['max_ape']:.1f}%, Kendall tau {e['kendall_tau']:+.3f}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="ad", description="AutoDistill in JAX (see README.md)")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("space", help="print the design space and its size")
  _add_config_args(p)
  p.add_argument("--list", action="store_true", help="also list every architecture name")
  p.set_defaults(fn=cmd_space)

  p = sub.add_parser("arch", help="parameter counts and forward FLOPs of architectures")
  p.add_argument("names", nargs="+", metavar="NAME", help="architecture names H_B_A_I_F, e.g. 512_128_4_512_4")
  p.add_argument("--blocks", type=_at_least(1), default=None, help="number of blocks (default: config model.num_blocks)")
  p.add_argument("--seq", type=_at_least(8), default=128)
  p.add_argument("--batch", type=_at_least(1), default=1)
  p.add_argument("--dtype", default=None, help="compute dtype (default: config model.dtype)")
  p.add_argument("--json", action="store_true")
  p.add_argument("--outside-space", action="store_true",
                 help="allow architectures outside the config's design space")
  _add_config_args(p)
  p.set_defaults(fn=cmd_arch)

  p = sub.add_parser("profile", help="measure a student's latency, throughput and utilization from XLA traces")
  p.add_argument("--arch", required=True, help="architecture name H_B_A_I_F")
  p.add_argument("--blocks", type=_at_least(1), default=None, help="number of blocks (default: config model.num_blocks)")
  p.add_argument("--batch", type=_at_least(1), default=1)
  p.add_argument("--seq", type=_at_least(8), default=128)
  p.add_argument("--dtype", default=None, help="compute dtype (default: config model.dtype)")
  p.add_argument("--trace-dir", default=None, help="where traces are kept (default: a new temp dir)")
  p.add_argument("--target-ci", type=_share, default=0.02,
                 help="stop when the 95%% CI of the median is within this fraction of it")
  p.add_argument("--max-reps", type=_at_least(1), default=300, help="stop after this many executions even if not converged")
  p.add_argument("--min-reps", type=_at_least(1), default=20, help="at least this many executions (capped by --max-reps)")
  p.add_argument("--compile-only", action="store_true", help="FLOPs, bytes and memory without running")
  p.add_argument("--reference", default=None, metavar="ARCH",
                 help="also time this architecture, the two called in turn, and report the latency ratio to it "
                      "(stops when the ratio's 95%% CI is within --target-ci; what the search does with its baseline)")
  p.add_argument("--target", default=None, metavar="tpu:CHIP",
                 help="instead of measuring here: the latency XLA's TPU cost model estimates on one chip (tpu:v4, "
                      "tpu:v5e, tpu:v5p, tpu:v6e), compiled ahead of time on this machine")
  p.add_argument("--recalibrate", action="store_true",
                 help="measure the CPU peaks afresh (replacing the cached calibration) before computing utilizations")
  p.add_argument("--json", action="store_true")
  p.add_argument("--outside-space", action="store_true", help="allow architectures outside the design space")
  _add_config_args(p)
  p.set_defaults(fn=cmd_profile)

  p = sub.add_parser("compile", help="compile a program ahead of time for a TPU topology (no TPU needed): memory per "
                     "device against HBM, FLOPs, bytes, estimated step time, tokens/s, MFU, kernels")
  p.add_argument("--topology", required=True,
                 help="a TPU slice as libtpu names it: v4:2x2x1, v5p:2x2x1, v5e:4x4, v5e:16x16, v6e:2x2, ... (a chip "
                      "alone, e.g. v5e, is one chip)")
  p.add_argument("--program", required=True, choices=("flash", "regular", "superlm", "teacher", "inference"),
                 help="flash / regular: the distillation steps (progressive and pre-training); superlm: the SuperLM "
                      "step; teacher: the teacher adaptation step; inference: the batch-B forward")
  p.add_argument("--arch", default=None, help="architecture H_B_A_I_F (default: the config's search.baseline_arch)")
  p.add_argument("--batch", type=_at_least(1), default=None, help="global batch (default: distill.batch_size; inference: 1)")
  p.add_argument("--seq", type=_at_least(8), default=None, help="sequence length (default: data.seq_len; inference: "
                 "search.measure.seq)")
  p.add_argument("--blocks", type=_at_least(1), default=None, help="number of blocks (default: model.num_blocks)")
  p.add_argument("--dtype", default=None, help="compute dtype (default: model.dtype)")
  p.add_argument("--mesh-model", type=_at_least(1), default=None, help="devices on the mesh's model axis (default: "
                 "distill.mesh_model); the rest form the data axis")
  p.add_argument("--largest-batch", action="store_true",
                 help="instead: the largest global batch whose programs fit the devices' HBM")
  p.add_argument("--json", action="store_true")
  _add_config_args(p)
  p.set_defaults(fn=cmd_compile)

  p = sub.add_parser("teacher", help="prepare (fit an MLM head, cache) or evaluate the teacher")
  tsub = p.add_subparsers(dest="action", required=True)
  q = tsub.add_parser("prepare", help="load an HF teacher, fit an MLM head if it lacks one, save with orbax")
  q.add_argument("--from", dest="source", default=None, help="HF checkpoint directory (default: packaged MiniLM)")
  q.add_argument("--out", default=None, help="where to save (default: a cache dir keyed by source and settings)")
  q.add_argument("--force", action="store_true", help="prepare again even if a cached one exists")
  q.add_argument("--adapt", action="store_true",
                 help="adapt a checkpoint that already has an MLM head too (teacher.adapt_headed)")
  _add_config_args(q)
  q.set_defaults(fn=cmd_teacher)
  q = tsub.add_parser("eval", help="held-out MLM (and NSP) accuracy of a prepared teacher")
  q.add_argument("dir", help="a directory written by `ad teacher prepare`")
  _add_config_args(q)
  q.set_defaults(fn=cmd_teacher)

  p = sub.add_parser("distill", help="flash or regular distillation of one architecture")
  p.add_argument("--arch", required=True)
  p.add_argument("--schedule", choices=("flash", "regular"), default="flash")
  p.add_argument("--workdir", required=True, help="checkpoints, losses.jsonl, TensorBoard logs, metrics.json")
  p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--outside-space", action="store_true")
  p.add_argument("--export", default=None, metavar="DIR",
                 help="also export the final student as a complete Hugging Face directory (weights, config, "
                      "tokenizer, model card)")
  p.add_argument("--force", action="store_true", help="with --export: write into a non-empty DIR")
  p.add_argument("--init-student", default=None, metavar="DIR",
                 help="start from this orbax student checkpoint of the same architecture (e.g. `ad superlm extract`'s "
                      "OUT/student) instead of a random one")
  _add_config_args(p)
  p.set_defaults(fn=cmd_distill)

  p = sub.add_parser("superlm", help="weight-sharing SuperLMs (004 one-shot, 001 few-shot): train, score "
                                     "sub-networks without training, extract them as students")
  ssub = p.add_subparsers(dest="action", required=True)
  q = ssub.add_parser("train", help="train a SuperLM over the config's space (or K few-shot ones) by distillation")
  q.add_argument("--workdir", required=True, help="checkpoints, losses.jsonl, TensorBoard logs, superlm.json")
  q.add_argument("--fewshot", action="store_true",
                 help="001's few-shot: superlm.fewshot.count SuperLMs over a partition of the space (workdir/part_<k>)")
  q.add_argument("--resume", action="store_true", help="continue the training in --workdir from its checkpoints")
  q.add_argument("--no-progress", action="store_true")
  _add_config_args(q)
  q.set_defaults(fn=cmd_superlm)
  q = ssub.add_parser("score", help="held-out MLM scores of sub-networks extracted from trained SuperLM(s)")
  q.add_argument("archs", nargs="+", metavar="ARCH", help="architecture names H_B_A_I_F")
  q.add_argument("--workdir", required=True, help="a `superlm train` workdir (one-shot or --fewshot)")
  q.add_argument("--json", action="store_true")
  _add_config_args(q)
  q.set_defaults(fn=cmd_superlm)
  q = ssub.add_parser("extract", help="one sub-network as a standalone orbax student checkpoint (OUT/student)")
  q.add_argument("--arch", required=True)
  q.add_argument("--workdir", required=True, help="a `superlm train` workdir (one-shot or --fewshot)")
  q.add_argument("--out", required=True)
  _add_config_args(q)
  q.set_defaults(fn=cmd_superlm)

  p = sub.add_parser("export", help="a finished distillation workdir (or every final of a search run directory) "
                                    "-> complete Hugging Face model directories")
  p.add_argument("path", help="an `ad distill --workdir`, a search's final/<arch>, or a search --run-dir")
  p.add_argument("--out", required=True, help="the HF directory (for a run directory: one subdirectory per final)")
  p.add_argument("--force", action="store_true", help="write into a non-empty --out")
  p.set_defaults(fn=cmd_export)

  p = sub.add_parser("finetune", help="fine-tune a student, teacher or baseline checkpoint on a downstream task")
  p.add_argument("--checkpoint", required=True,
                 help="a distillation workdir, a search run directory (its finals), a prepared teacher, or a Hugging "
                      "Face BERT/MobileBERT directory with vocab.txt")
  p.add_argument("--task", action="append", required=True,
                 help="rotten_tomatoes (offline) or glue_cola, glue_sst2, glue_mrpc, glue_qqp, glue_stsb, glue_mnli, "
                      "glue_qnli, glue_rte, glue_wnli, squad_v1 (a prepared TFDS data dir, or --squad-dir); repeatable")
  p.add_argument("--workdir", default=None,
                 help="results go to WORKDIR/<checkpoint name>_<task> (default: runs/finetune)")
  p.add_argument("--epochs", type=_at_least(1), default=None, help="default: config finetune.epochs")
  p.add_argument("--tfds-data-dir", default=None,
                 help="where prepared GLUE/SQuAD TFDS datasets are (finetune.tfds_data_dir)")
  p.add_argument("--squad-dir", default=None,
                 help="the official train-v1.1.json and dev-v1.1.json for squad_v1 (finetune.squad_dir)")
  p.add_argument("--no-progress", action="store_true")
  _add_config_args(p)
  p.set_defaults(fn=cmd_finetune)

  p = sub.add_parser("search", help="multi-objective architecture search with flash distillation (the main job)")
  p.add_argument("--run-dir", required=True, help="trial store, report.md, pareto.png, traces, trial and final runs")
  p.add_argument("--resume", action="store_true", help="continue the search in --run-dir from its trial store")
  p.add_argument("--designer", default=None, choices=("bo", "random", "evolutionary", "firefly"),
                 help="who proposes architectures (default: config search.designer)")
  p.add_argument("--proxy", default=None, choices=("flash", "superlm", "fewshot"),
                 help="the accuracy objective's proxy: flash distillation of each candidate (003), or candidates "
                      "extracted from a one-shot (004) / few-shot (001) SuperLM trained once in RUN_DIR/<proxy> "
                      "(default: config search.proxy)")
  p.add_argument("--workers", type=_at_least(1), default=1,
                 help="run trials in N worker processes, each pinned to its share of the CPU cores (default 1: "
                      "in this process); more can join with `ad worker`")
  p.add_argument("--store", default=None, metavar="URL",
                 help="a PostgreSQL trial store (postgresql://user:password@host/db, one database per search) "
                      "instead of RUN_DIR/trials.sqlite, for workers on several machines")
  p.add_argument("--no-progress", action="store_true")
  _add_config_args(p)
  p.set_defaults(fn=cmd_search)

  p = sub.add_parser("worker", help="join a running search (ad search --workers / --store): claim, run and record "
                                    "trials until it is done")
  p.add_argument("--run-dir", required=True,
                 help="the search's run directory (its SQLite store, and where trials write checkpoints and traces)")
  p.add_argument("--store", default=None, metavar="URL", help="the search's PostgreSQL store, if it has one")
  p.add_argument("--worker-id", default=None, help="this worker's name in the store (default: host:pid)")
  p.add_argument("--max-trials", type=_at_least(0), default=0, help="stop after this many trials (default 0: until done)")
  p.add_argument("--role", default="train", choices=("train", "measure"),
                 help="train: claim and distill trials (and measure them, unless the search has "
                      "search.measure.target); measure: measure trials on this machine for --target")
  p.add_argument("--target", default=None, help="with --role measure: the search's search.measure.target")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                 help="do not use JAX's persistent compilation cache")
  p.set_defaults(fn=cmd_worker)

  p = sub.add_parser("latency-model", help="fit the learned latency predictor (004) on measured architectures and "
                     "report its error on held-out ones")
  p.add_argument("source", help="a search's --run-dir, or a CSV of measurements (e.g. experiments/results/tabular.csv)")
  p.add_argument("--store", default=None, metavar="URL", help="the search's PostgreSQL store, if it has one")
  p.add_argument("--folds", type=_at_least(2), default=5)
  p.add_argument("--seed", type=_at_least(0), default=0, help="how architectures are dealt into folds")
  p.add_argument("--json", action="store_true")
  p.set_defaults(fn=cmd_latency_model)

  p = sub.add_parser("report", help="rebuild report.md and pareto.png of a search from its trial store")
  p.add_argument("run_dir", help="the --run-dir of an `ad search`")
  p.add_argument("--store", default=None, metavar="URL", help="the search's PostgreSQL store, if it has one")
  p.add_argument("--out", default=None, metavar="DIR",
                 help="where report.md and pareto.png go (default: the run directory; give one for a read-only run)")
  p.set_defaults(fn=cmd_report)
  return parser


def _search_stopped():
  from ad.search.loop import SearchStopped
  return SearchStopped


def _service_error():
  from ad.search.designers import OptimizerServiceError
  return OptimizerServiceError


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  argv, dotted = _split_config_overrides(argv)
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:  # argparse printed the usage and the error (or --help): its code, not an exception
    return e.code if isinstance(e.code, int) else 2
  if hasattr(args, "overrides"):
    args.overrides = dotted + args.overrides
  interrupt.install()  # Ctrl-C / SIGTERM stop at the next step or trial boundary
  if args.fn is cmd_worker:  # before JAX starts its thread pools
    from ad.search import parallel
    parallel.pin_to_cores()
  if getattr(args, "compile_cache", False) and os.environ.get("AD_COMPILE_CACHE", "1") != "0":
    startup.enable_compile_cache()
  try:
    return args.fn(args) or 0
  except (interrupt.Interrupted, KeyboardInterrupt) as e:
    where = f" ({e})" if isinstance(e, interrupt.Interrupted) else ""
    again = {"teacher": "run the same command again: it resumes", "worker": "run the same command again: it resumes",
             "finetune": "run the same command again: a fine-tuning keeps no checkpoint and starts afresh"}.get(
                 args.command, "run the same command with --resume to continue")
    print(f"ad {args.command}: interrupted{where}; {again}", file=sys.stderr)
    return 130
  except (ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError, FloatingPointError, MemoryError,
          files.LockedError, _service_error(), _search_stopped()) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"ad {args.command}: error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
