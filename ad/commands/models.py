"""`ad arch`, `ad profile`, `ad compile`: one student's size, its measured or estimated latency, and
its programs compiled ahead of time for a TPU topology."""

from __future__ import annotations

import json
import sys

from ad import aot, configs, space as space_lib
from ad.models import student as student_lib
from profiling import harness, tpu


def arch_report(arch_name: str, cfg, blocks=None, seq=128, batch=1, dtype=None) -> dict:
  """Parameter counts by part and forward FLOPs from XLA's cost analysis (the harness's forward)."""

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
  cfg = configs.load_config(args.config, args.overrides)
  if not args.outside_space:
    space_lib.DesignSpace.from_config(cfg.space).check(args.arch)
  kw = dict(num_blocks=args.blocks, batch=args.batch, seq=args.seq, dtype=args.dtype)
  if args.target:
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
