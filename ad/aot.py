"""`ad compile`: one of the project's programs compiled ahead of time for a TPU topology, from a
machine without a TPU, with its per-device memory against HBM, FLOPs and bytes, XLA's estimated
step time, tokens/s and MFU, and which attention/FFN implementation its blocks use.

The programs are the trainers' own (ad/distill/trainer.py distill_programs, ad/distill/superlm.py
superlm_programs, ad/distill/teacher_head.py adapt_programs, profiling/harness.py
inference_program): the topology's compile-only devices take the place of jax.devices() in the
config's mesh (distill.mesh_data x distill.mesh_model, parameters sharded by the rule table of
ad/train/sharding.py), and the teacher is abstract (its shapes from its config), so nothing is
trained, prepared or allocated.

Each program is compiled twice: as training runs it (memory comes from this one), and as a costing
variant with its block loops unrolled, because XLA's cost analysis counts a while loop's body once
(profiling/tpu.py); a progressive step's cost depends on its stage, so its estimate is the mean of
the first stage's and the last stage's (the frozen prefix grows linearly in between). Every time
here is an estimate by XLA's TPU cost model, never a measurement.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Callable

import jax

from ad import files, space as space_lib
from ad.data import settings as data_settings
from ad.distill import settings as distill_settings, superlm, teacher_head, trainer
from ad.train import sharding
from ad.models import student as student_lib
from kernels import fused_ffn
from profiling import harness, tpu
from profiling.compile_stats import compile_concurrently

PROGRAMS = ("flash", "regular", "superlm", "teacher", "inference")


@dataclasses.dataclass(frozen=True)
class Request:
  """What to compile: a program of PROGRAMS for a topology (profiling/tpu.py parse_topology), with
  the config's values where a field is None."""
  topology: str
  program: str
  arch: str | None = None  # default: the config's search.baseline_arch
  batch: int | None = None  # global batch; default: distill.batch_size (inference: 1)
  seq: int | None = None  # default: data.seq_len (inference: search.measure.seq)
  blocks: int | None = None  # default: model.num_blocks
  dtype: str | None = None  # compute dtype; default: model.dtype
  mesh_model: int | None = None  # default: distill.mesh_model

  def __post_init__(self):
    if self.program not in PROGRAMS:
      raise ValueError(f"--program {self.program!r}: expected one of {PROGRAMS}")
    for name in ("batch", "seq", "blocks", "mesh_model"):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ValueError(f"--{name.replace('_', '-')} {value}: expected a positive integer")


def compile_program(cfg, req: Request, log: Callable = print, cost=True, only=None) -> dict:
  """Compiles `req` for its topology; returns the report (module docstring). cost: True estimates
  every step program, False none (memory only: the costing variants are not compiled), or the names
  of those to estimate; only: the names of the step programs to compile (default all of the
  program's: progressive and pretrain_distill for flash/regular, step, forward)."""
  devices = tpu.topology_devices(req.topology)
  chip, shape = tpu.parse_topology(req.topology)
  if shape is None:  # a chip named alone: one chip
    devices = devices[:1]
  arch = space_lib.Arch.parse(req.arch or cfg.search.baseline_arch)
  scfg = student_lib.config_from_dict(arch, cfg.model, num_blocks=req.blocks, dtype=req.dtype)
  data_cfg = data_settings.config_from_dict(cfg.data)
  if req.program == "inference":
    seq = req.seq or cfg.search.measure.seq
    batch = req.batch or 1
  else:
    seq = req.seq or data_cfg.seq_len
    data_cfg = dataclasses.replace(data_cfg, seq_len=seq, max_predictions=min(data_cfg.max_predictions, seq))
    batch = req.batch
  if seq > scfg.max_positions:
    raise ValueError(f"--seq {seq} exceeds the model's {scfg.max_positions} positions (model.max_positions)")
  schedule = req.program if req.program in ("flash", "regular") else "flash"
  dcfg = distill_settings.distill_config_from(cfg.distill, schedule)
  dcfg = dataclasses.replace(dcfg, batch_size=batch or dcfg.batch_size, mesh_model=req.mesh_model or dcfg.mesh_model)
  if req.program == "inference":  # data parallel over as many devices as split the batch (batch 1: one chip)
    devices = devices[:math.gcd(dcfg.batch_size, len(devices))]
    dcfg = dataclasses.replace(dcfg, mesh_data=len(devices), mesh_model=1)
  batch = dcfg.batch_size
  mesh, mesh_data = _mesh(dcfg, devices, req)
  what, blocks, dtype = described_model(cfg, req.program, scfg)
  log(f"ad compile: {req.program} of {what} ({blocks} blocks, {dtype}) for {req.topology}: "
      f"{len(devices)} devices on {tpu.hosts(devices)} hosts, mesh data={mesh_data} x model={dcfg.mesh_model}, "
      f"global batch {batch}, seq {seq}")

  real, costing = _programs(cfg, req.program, scfg, dcfg, data_cfg, mesh, batch, seq)
  if only is not None:
    real = {k: v for k, v in real.items() if k in only}
  costing = {k: v for k, v in costing.items() if k.split("@")[0] in real and (cost is True or (
      cost and k.split("@")[0] in cost))}
  t0 = time.time()
  where = f"{req.program} of {what} at global batch {batch}, seq {seq} on {req.topology}"
  compiled = _compile(real, mesh, where)
  compile_s = time.time() - t0
  t0 = time.time()
  costed = _compile(costing, mesh, where)
  costing_compile_s = time.time() - t0

  device = devices[0]
  facts = tpu.device_facts(device)
  steps = {name: _step_report(req.program, name, exe, [costed[k] for k in costing if k.split("@")[0] == name],
                              device, batch * seq, len(mesh.devices.flat))
           for name, exe in compiled.items()}
  report = dict(
      program=req.program, topology=req.topology, chip=chip, device_kind=device.device_kind, devices=len(devices),
      hosts=tpu.hosts(devices), mesh=dict(data=mesh_data, model=dcfg.mesh_model), arch=what,
      num_blocks=blocks, dtype=dtype, global_batch=batch, seq_len=seq,
      hbm_bytes_per_device=int(facts.hbm_bytes), bf16_peak_per_device=facts.bf16_flops_per_s,
      hbm_bytes_per_s_per_device=facts.hbm_bytes_per_s, kernels=kernel_report(scfg, "tpu", req.program), steps=steps,
      fits=all(s["memory"]["fits"] for s in steps.values()), compile_s=compile_s,
      costing_compile_s=costing_compile_s, jax_version=jax.__version__,
      note=("estimated by XLA's TPU cost model, not measured; FLOPs are XLA's count of the whole program"
            + {"inference": "", "teacher": " (the teacher, its optimizer)"}.get(
                req.program, " (student, teacher forward, optimizer)")
            + "; a Pallas kernel is costed by its own CostEstimate"))
  if req.program in ("flash", "regular") and all("estimated_step_s" in steps.get(n, {}) for n in
                                                 ("progressive", trainer.PRETRAIN)):
    report["schedule"] = _schedule_estimate(dcfg, scfg.num_blocks, steps)
  return report


def _step_report(program: str, name: str, exe, costed: list, device, tokens: int, devices: int) -> dict:
  """One step program's figures: its memory (as training runs it) and, when its costing variants were
  compiled, XLA's estimate (their mean: the progressive step's first and last stage) and what follows
  from it."""
  out = dict(memory=tpu.memory(exe, device), mosaic_kernels=(exe.as_text() or "").count("tpu_custom_call"))
  if not costed:
    return out
  facts = tpu.device_facts(device)
  estimates = [tpu.estimate(c, device, what=f"{program} {name}") for c in costed]
  est = {k: sum(e[k] for e in estimates) / len(estimates)
         for k in ("estimated_s", "xla_optimal_seconds", "flops", "bytes_accessed", "roofline_s")}
  return dict(out, flops_per_device=est["flops"], flops_total=est["flops"] * devices,
              bytes_per_device=est["bytes_accessed"], estimated_step_s=est["estimated_s"],
              xla_optimal_seconds=est["xla_optimal_seconds"], roofline_s=est["roofline_s"],
              sentinel_ops=max(len(e["sentinel_ops"]) for e in estimates), tokens_per_s=tokens / est["estimated_s"],
              mfu=est["flops"] / (est["estimated_s"] * facts.bf16_flops_per_s),
              costed_as="mean of the first and the last progressive stage" if len(estimates) > 1 else "one step")


class DoesNotFit(ValueError):
  """XLA refused a program that needs more memory than a device has: names both, per device."""


def _compile(jobs: dict, mesh, where: str) -> dict:
  """compile_concurrently, with the compiler's out-of-memory refusal as DoesNotFit."""
  try:
    with tpu.persistent_cache_off():
      return compile_concurrently(jobs, mesh)
  except jax.errors.JaxRuntimeError as e:
    text = str(e)
    if "RESOURCE_EXHAUSTED" not in text:
      raise
    m = re.search(r"required for ([^(]+) \(([\d.]+\w?)\) exceeds available HBM \(([\d.]+\w?)\)", text)
    need = f"{m.group(1).strip()} need {m.group(2)}B per device, the device has {m.group(3)}B available" if m else (
        text.strip().splitlines()[0][:300])
    raise DoesNotFit(f"{where} does not fit HBM: {need}; use a smaller --batch, more devices or --mesh-model") from None


def _mesh(dcfg, devices, req: Request):
  try:
    return sharding.training_mesh(dcfg, devices)
  except ValueError as e:
    raise ValueError(f"{req.topology} ({len(devices)} devices): {e}") from None


def _programs(cfg, program: str, scfg, dcfg, data_cfg, mesh, batch: int, seq: int) -> tuple[dict, dict]:
  """({name: (jitted, abstract args)} as training runs them, {name or name@variant: ...} for costing)."""
  if program in ("flash", "regular"):
    teacher = teacher_head.abstract_teacher(cfg.teacher, scfg.dtype)
    real = trainer.distill_programs(scfg, dcfg, data_cfg, teacher, mesh).jobs()
    real = {k: real[k] for k in ("progressive", trainer.PRETRAIN)}
    K = scfg.num_blocks
    costing = {}
    for stage in sorted({0, K - 1}):
      progs = trainer.distill_programs(scfg, dcfg, data_cfg, teacher, mesh, cost_stage=stage)
      costing[f"progressive@{stage}"] = (progs.jitted["progressive"], progs.abstract_args["progressive"])
    costing[trainer.PRETRAIN] = (progs.jitted[trainer.PRETRAIN], progs.abstract_args[trainer.PRETRAIN])
    return real, costing
  if program == "superlm":
    _, (lm_cfg, _, archs, _, _, super_cfg) = superlm._run_record(cfg, None, None)
    super_cfg = dataclasses.replace(super_cfg, num_blocks=scfg.num_blocks, dtype=scfg.dtype)
    teacher = teacher_head.abstract_teacher(cfg.teacher, scfg.dtype)
    max_heads = max(a.heads for a in archs)
    build = lambda unroll: superlm.superlm_programs(super_cfg, lm_cfg, dcfg, data_cfg, max_heads, teacher, mesh,
                                                    unroll=unroll)
    return {"step": build(False).jobs(init=False)["step"]}, {"step": build(True).jobs(init=False)["step"]}
  if program == "teacher":
    t = distill_settings.teacher_settings(cfg.teacher)
    teacher = teacher_head.abstract_teacher(cfg.teacher, t.adapt_dtype)
    if not hasattr(teacher, "layers"):
      raise ValueError("--program teacher: the adaptation step is for BERT teachers; this config's teacher is a "
                       "MobileBERT-family checkpoint, used as it is (ad teacher prepare)")
    build = lambda unroll: teacher_head.adapt_programs(
        teacher, steps=t.adapt_steps, lr=t.adapt_lr, head_lr=t.adapt_head_lr, warmup_steps=t.adapt_warmup_steps,
        dtype=t.adapt_dtype, mesh=mesh, batch_size=batch, seq_len=seq,
        max_predictions=data_cfg.max_predictions, unroll=unroll)
    real, cost = build(False), build(True)
    return {"step": (real.jitted["step"], real.abstract_args["step"])}, {"step": (cost.jitted["step"],
                                                                                  cost.abstract_args["step"])}
  fn, args, _ = harness.inference_program(scfg.arch, cfg.model, mesh=mesh, num_blocks=scfg.num_blocks, batch=batch,
                                          seq=seq, dtype=scfg.dtype)
  return {"forward": (fn, args)}, {"forward": (fn, args)}


def _schedule_estimate(dcfg, num_blocks: int, steps: dict) -> dict:
  """The whole schedule's estimated time: every progressive stage's steps at the mean progressive step
  time, then the pre-training steps."""
  prog = num_blocks * dcfg.block_steps(num_blocks)
  total = prog * steps["progressive"]["estimated_step_s"] + dcfg.pretrain_steps * steps[trainer.PRETRAIN][
      "estimated_step_s"]
  return dict(progressive_steps=prog, pretrain_steps=dcfg.pretrain_steps, estimated_s=total,
              estimated_hours=total / 3600)


def described_model(cfg, program: str, scfg) -> tuple[str, int, str]:
  """(name, blocks, compute dtype) of what `program` trains or runs: the student, the SuperLM's super
  architecture, or the teacher (its own layers and adaptation dtype)."""
  if program == "superlm":
    _, (_, _, _, _, _, super_cfg) = superlm._run_record(cfg, None, None)
    return "SuperLM " + super_cfg.arch.name, scfg.num_blocks, scfg.dtype
  if program == "teacher":
    dtype = distill_settings.teacher_settings(cfg.teacher).adapt_dtype
    t = teacher_head.abstract_teacher(cfg.teacher, dtype).cfg
    name = f"teacher BERT L{t.num_layers} H{t.hidden_size}" if hasattr(t, "num_layers") else "teacher"
    return name, getattr(t, "num_layers", scfg.num_blocks), dtype
  return scfg.arch.name, scfg.num_blocks, scfg.dtype


def kernel_report(scfg, platform: str, program: str = "flash") -> dict:
  """Which implementation every block's attention and FFN uses on `platform`, and why; the FFN's
  kernel count per block when its FFNs run as groups (kernels/fused_ffn.py). The SuperLM's elastic
  forward and the BERT teacher run XLA's path (they have no fused kernels)."""
  if program in ("superlm", "teacher"):
    why = ("the SuperLM's elastic forward masks features per sub-network (ad/distill/superlm.py)"
           if program == "superlm" else "the BERT teacher has no fused kernels")
    return {w: dict(impl="xla", why=why, blocks=scfg.num_blocks) for w in ("attention", "ffn")}
  out = {}
  for which in ("attention", "ffn"):
    impl, why = student_lib.kernel_choice(scfg, which, platform)
    out[which] = dict(impl=impl, why=why, blocks=scfg.num_blocks)
  if out["ffn"]["impl"] == "pallas":
    a = scfg.arch
    groups = fused_ffn.ffn_groups([jax.ShapeDtypeStruct((a.num_ffn, a.bottleneck, a.intermediate), "float32")],
                                  fused_ffn.BlockSizes().max_weight_bytes)
    if groups is None:
      out["ffn"].update(impl="xla", why="one FFN's weights exceed the kernel's on-chip budget (fused_ffn.BlockSizes)")
    else:
      out["ffn"]["kernels_per_block"] = len(groups)
  return out


# Search estimates compile the XLA path: XLA's TPU cost model models XLA's own instructions, while a
# Pallas call is costed only by the kernel's declared CostEstimate (FLOPs and bytes, no schedule), so
# with the kernels the latency ranking would largely be our own annotations of them.
ESTIMATE_KERNELS = "xla"
ESTIMATE_KERNELS_WHY = ("XLA's path: XLA's TPU cost model models its own instructions, a Pallas kernel only by its "
                        "declared CostEstimate")


def estimate_latency(arch, model_cfg, chip: str, *, num_blocks=None, batch: int = 1, seq: int = 128, dtype=None,
                     log: Callable = print) -> dict:
  """The search's TPU latency objective (search.measure.target = 'tpu:<chip>'): the batch-`batch`,
  seq-`seq` inference forward compiled for one `chip` (the XLA path, ESTIMATE_KERNELS_WHY) and timed
  by XLA's TPU cost model. Returns the latency harness's fields (latency_ms_median, ...; a model's
  estimate has no repetitions, so its confidence interval is 0) plus estimate=True and its source.
  Cached per (arch, blocks, chip, batch, seq, dtype, model options, jax and libtpu versions)."""
  from importlib import metadata

  scfg = student_lib.config_from_dict(arch, model_cfg, num_blocks=num_blocks, dtype=dtype,
                                      attention_impl=ESTIMATE_KERNELS, ffn_impl=ESTIMATE_KERNELS)
  key = dict(model=repr(scfg), chip=chip, batch=batch, seq=seq, jax=jax.__version__,
             libtpu=metadata.version("libtpu"))
  path = os.path.join(files.cache_root(), "tpu_estimates", f"{scfg.arch.name}-{chip}-{files.fingerprint(key)}.json")
  if os.path.isfile(path):
    cached = files.read_json(path, "TPU estimate")
    if cached.get("key") == key:
      return cached["result"]
  device = tpu.topology_devices(chip)[0]
  mesh = jax.sharding.Mesh([device], ("data",))
  fn, args, _ = harness.inference_program(scfg.arch, student_lib.model_section(scfg), mesh=mesh,
                                          num_blocks=scfg.num_blocks, batch=batch, seq=seq, dtype=scfg.dtype)
  t0 = time.time()
  compiled = _compile({"forward": (fn, args)}, mesh, f"the inference of {scfg.arch.name} on {chip}")["forward"]
  compile_s = time.time() - t0
  est = tpu.estimate(compiled, device, what=f"the inference of {scfg.arch.name} on {chip}")
  mem = tpu.memory(compiled, device)
  facts = tpu.device_facts(device)
  ms = 1e3 * est["estimated_s"]
  result = dict(
      name=f"{scfg.arch.name}_b{batch}_s{seq}", arch=scfg.arch.name, num_blocks=scfg.num_blocks, estimate=True,
      source=est["source"], backend="tpu (compiled ahead of time, not run)", device_kind=device.device_kind,
      target=f"tpu:{chip}", jax_version=jax.__version__, dtype=scfg.dtype, batch=batch, seq=seq, repetitions=0,
      latency_ms_median=ms, latency_ms_mean=ms, latency_ms_p90=ms, latency_cv=0.0, latency_rel_ci95=0.0,
      converged=True, throughput_per_s=batch / est["estimated_s"], tokens_per_s=batch * seq / est["estimated_s"],
      flops=est["flops"], bytes_accessed=est["bytes_accessed"], flops_undercounted=False,
      flops_utilization=est["flops"] / (est["estimated_s"] * facts.bf16_flops_per_s),
      bandwidth_utilization=est["bytes_accessed"] / (est["estimated_s"] * facts.hbm_bytes_per_s),
      peak_flops_per_s=facts.bf16_flops_per_s, peak_bytes_per_s=facts.hbm_bytes_per_s, peak_source="tpu_table",
      peak_memory_bytes=mem["total_bytes"], compile_s=compile_s, xla_optimal_seconds=est["xla_optimal_seconds"],
      sentinel_ops=len(est["sentinel_ops"]), roofline_ms=1e3 * est["roofline_s"],
      kernels=dict(impl=ESTIMATE_KERNELS, why=ESTIMATE_KERNELS_WHY))
  files.write_json(path, dict(key=key, result=result))
  log(f"TPU estimate: {scfg.arch.name} ({scfg.num_blocks} blocks) on {chip}: {ms:.3f} ms "
      f"(XLA's cost model; {compile_s:.1f} s to compile)")
  return result


def largest_batch(cfg, req: Request, log: Callable = print, limit: int = 1 << 20) -> dict:
  """The largest global batch (a multiple of the mesh's data axis) whose programs fit HBM, to within
  1/16 (`smallest_over` is the smallest batch found not to fit): doubling, then bisection, compiling
  only the programs training runs (no costing)."""
  devices = tpu.topology_devices(req.topology)
  if tpu.parse_topology(req.topology)[1] is None:
    devices = devices[:1]
  schedule = req.program if req.program in ("flash", "regular") else "flash"
  dcfg = distill_settings.distill_config_from(cfg.distill, schedule)
  dcfg = dataclasses.replace(dcfg, mesh_model=req.mesh_model or dcfg.mesh_model)
  unit = dcfg.mesh_data or len(devices) // dcfg.mesh_model
  tried = {}

  def fits(b: int) -> bool:
    if b not in tried:
      try:
        r = compile_program(cfg, dataclasses.replace(req, batch=b), log=lambda *_: None, cost=False)
        tried[b] = (max(s["memory"]["total_bytes"] for s in r["steps"].values()), r["fits"])
      except DoesNotFit as e:  # the compiler itself refused it
        tried[b] = (None, False)
        log(f"ad compile: global batch {b}: {e}")
        return False
      log(f"ad compile: global batch {b}: {tried[b][0] / 2**30:.2f} GiB per device "
          f"({'fits' if tried[b][1] else 'over'} HBM)")
    return tried[b][1]

  # doubling from the requested batch (or one per data-parallel device), then bisection to within
  # 1/16 of the answer: each probe compiles the programs anew (a minute or more at paper scale)
  lo, hi = 0, max(unit, (req.batch or unit) // unit * unit)
  while hi <= limit and fits(hi):
    lo, hi = hi, hi * 2
  while hi - lo > max(unit, lo // 16):
    mid = (lo + hi) // 2 // unit * unit
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return dict(largest_global_batch=lo, per_device=lo // unit if unit else 0, smallest_over=hi,
              tried={b: dict(bytes_per_device=v[0], fits=v[1]) for b, v in sorted(tried.items())})


def format_report(r: dict) -> str:
  """The report as a few lines of text (`ad compile` without --json)."""
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  k = r["kernels"]
  lines = [f"{r['program']} of {r['arch']} ({r['num_blocks']} blocks, {r['dtype']}, global batch {r['global_batch']}, "
           f"seq {r['seq_len']}) on {r['topology']}: {r['devices']} x {r['device_kind']} on {r['hosts']} hosts, mesh "
           f"data={r['mesh']['data']} x model={r['mesh']['model']}; compiled in {r['compile_s']:.1f} s "
           f"(+{r['costing_compile_s']:.1f} s for costing)",
           f"  kernels: attention {k['attention']['impl']} ({k['attention']['why']}), ffn {k['ffn']['impl']} "
           f"({k['ffn']['why']})"]
  for name, s in r["steps"].items():
    m = s["memory"]
    lines.append(f"  {name}: {gib(m['total_bytes'])} per device of {gib(m['hbm_bytes'])} HBM "
                 f"({'fits' if m['fits'] else 'OVER by ' + gib(m['over_bytes'])}; arguments {gib(m['argument_bytes'])}, "
                 f"outputs {gib(m['output_bytes'])}, temporaries {gib(m['temp_bytes'])}, code {gib(m['code_bytes'])})")
    if "estimated_step_s" in s:
      lines.append(f"    {s['flops_per_device'] / 1e9:.2f} GFLOP and {s['bytes_per_device'] / 1e9:.3f} GB per device; "
                   f"estimated {1e3 * s['estimated_step_s']:.3f} ms per step ({s['costed_as']}), "
                   f"{s['tokens_per_s']:,.0f} tokens/s, MFU {100 * s['mfu']:.1f}% (roofline {1e3 * s['roofline_s']:.3f} ms)")
  if "schedule" in r:
    sch = r["schedule"]
    lines.append(f"  schedule: {sch['progressive_steps']} progressive + {sch['pretrain_steps']} pre-training steps, "
                 f"estimated {sch['estimated_s']:.1f} s ({sch['estimated_hours']:.2f} h)")
  lines.append(f"  ({r['note']})")
  return "\n".join(lines)
