"""Student inference against Hugging Face transformers' PyTorch MobileBERT on the same CPU.

    python -m profiling.bench_inference [--archs A,B] [--blocks 24] [--batch 1] [--seq 128]
                                        [--rounds 15] [--calls 5] [--torch-compile] [--json OUT]

Both sides get the same weights (the student exported with ad/models/hf.py and loaded by
transformers), the same token ids, batch and length, and run in this one process, alternating
round by round so that a change of machine load hits every implementation alike. Each round
runs each implementation for two untimed calls (the other side's threads stop spinning) and then
times `--calls` back-to-back calls; the table gives the median of the per-call times over rounds
and their spread (the 10th-90th percentile), and ratios of medians.

Implementations:
  ad f32 / ad bf16     the project's inference forward (profiling/harness.py student_forward:
                       encoder and pooler), compute dtype float32 or bfloat16, parameters f32
  hf eager f32         transformers MobileBertModel, eval mode, torch.inference_mode
  hf autocast bf16     the same under torch.autocast("cpu", dtype=torch.bfloat16)
  hf compile f32       torch.compile of the eager model (only with --torch-compile: minutes)

It also prints the numerical agreement: sequence output ad f32 vs hf f32 (same weights), and
the MLM logits of ad bf16 against ad f32 (relative error, argmax agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from ad.models import hf, stack, student as student_lib
from ad.space import Arch
from profiling import harness, peaks as peaks_lib

DEFAULT_ARCHS = ("512_128_4_512_4", "512_128_1_640_2", "512_128_4_512_2", "256_64_2_384_2")


# Calls after switching implementation that are run but not timed: the other side's thread pool
# (torch's OpenMP threads, XLA's Eigen threads) keeps spinning for a while after its last call, so
# the first calls after a switch measured the switch too (profiling/bench_dots.py: XLA's chain of
# MobileBERT's matmuls took 66 ms timed right after torch's calls, 41-44 ms after two untimed calls).
SETTLE_CALLS = 2


def time_alternating(impls: dict, rounds: int, calls: int) -> dict[str, list[float]]:
  """{name: fn} -> {name: seconds of each timed call}: `rounds` rounds, each running every
  implementation SETTLE_CALLS untimed calls and then `calls` timed ones, back to back."""
  times = {name: [] for name in impls}
  for _ in range(rounds):
    for name, fn in impls.items():
      for i in range(SETTLE_CALLS + calls):
        s = time.perf_counter()
        fn()
        if i >= SETTLE_CALLS:
          times[name].append(time.perf_counter() - s)
  return times


def parse_archs(parser: argparse.ArgumentParser, text: str) -> list[str]:
  """--archs A,B,... -> the architecture names; a malformed one is an argument error naming it."""
  archs = [a.strip() for a in text.split(",") if a.strip()]
  for arch in archs:
    try:
      Arch.parse(arch)
    except ValueError as e:
      parser.error(f"--archs: {e}")
  return archs


def _spread(x) -> tuple[float, float]:
  return float(np.percentile(x, 10)), float(np.percentile(x, 90))


def _hf_model(student, tmp: str):
  import torch
  import transformers
  hf.export_mobilebert(student, tmp)
  model = transformers.MobileBertForPreTraining.from_pretrained(tmp, attn_implementation="eager").eval()
  torch.set_grad_enabled(False)
  return model


def bench_arch(arch: str, *, blocks: int, batch: int, seq: int, rounds: int, calls: int, torch_compile: bool,
               log=print) -> dict:
  import jax
  import torch
  from flax import nnx

  impls = {}
  fn32, (state, ids), cfg = harness.student_forward(arch, num_blocks=blocks, batch=batch, seq=seq, dtype="float32")
  run32 = harness.inference_callable(fn32, state, ids, "float32")
  fn16, _, _ = harness.student_forward(arch, num_blocks=blocks, batch=batch, seq=seq, dtype="bfloat16")
  run16 = harness.inference_callable(fn16, state, ids, "bfloat16")  # the same f32 parameters, bf16 compute
  impls["ad f32"] = lambda: jax.block_until_ready(run32(ids))
  impls["ad bf16"] = lambda: jax.block_until_ready(run16(ids))

  # The very parameters timed above, stacked back into a model for the export to transformers.
  student = nnx.merge(nnx.graphdef(student_lib.abstract_student(cfg)), stack.restack(state))
  with tempfile.TemporaryDirectory() as tmp:
    ref = _hf_model(student, tmp)
  t_ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
  encoder = ref.mobilebert

  def hf_eager():
    with torch.inference_mode():
      return encoder(input_ids=t_ids)

  def hf_autocast():
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
      return encoder(input_ids=t_ids)

  impls["hf eager f32"] = hf_eager
  impls["hf autocast bf16"] = hf_autocast
  if torch_compile:
    compiled = torch.compile(encoder)

    def hf_compiled():
      with torch.inference_mode():
        return compiled(input_ids=t_ids)
    impls["hf compile f32"] = hf_compiled

  # Numerics: the same weights give the same sequence output; bf16's MLM logits against f32's.
  ours = np.asarray(run32(ids)[0], np.float32)
  theirs = hf_eager().last_hidden_state.float().numpy()
  seq_rel_err = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))
  logits = {}
  for dtype in ("float32", "bfloat16"):
    fnh, _, _ = harness.student_forward(arch, num_blocks=blocks, batch=batch, seq=seq, dtype=dtype, heads=True)
    logits[dtype] = np.asarray(jax.jit(fnh)(state, ids)[0], np.float32)
  l32, l16 = logits["float32"], logits["bfloat16"]
  bf16_rel_err = float(np.linalg.norm(l16 - l32) / np.linalg.norm(l32))
  bf16_argmax = float((l16.argmax(-1) == l32.argmax(-1)).mean())

  t0 = time.time()
  for fn in impls.values():  # warm-up (and compilation) outside the timed rounds
    for _ in range(2):
      fn()
  warm_s = time.time() - t0
  times = time_alternating(impls, rounds, calls)
  ms = {n: np.asarray(v) * 1e3 for n, v in times.items()}
  flops = harness.compile_only_arch(arch, num_blocks=blocks, batch=batch, seq=seq)["flops"]
  out = dict(arch=arch, blocks=blocks, batch=batch, seq=seq, rounds=rounds, calls=calls, gflop=flops / 1e9,
             warmup_s=warm_s, seq_output_rel_err_vs_hf=seq_rel_err, bf16_mlm_logits_rel_err=bf16_rel_err,
             bf16_mlm_argmax_agreement=bf16_argmax,
             median_ms={n: float(np.median(v)) for n, v in ms.items()},
             spread_ms={n: _spread(v) for n, v in ms.items()})
  med = out["median_ms"]
  out["speedup_vs_hf_eager_f32"] = med["hf eager f32"] / med["ad f32"]
  out["speedup_bf16_vs_hf_autocast"] = med["hf autocast bf16"] / med["ad bf16"]
  if "hf compile f32" in med:
    out["speedup_vs_hf_compile_f32"] = med["hf compile f32"] / med["ad f32"]
  out["ad_f32_gflop_per_s"] = flops / (med["ad f32"] / 1e3) / 1e9
  return out


def format_table(rows: list[dict], peak_gflops: float | None) -> str:
  names = list(rows[0]["median_ms"])
  head = "| arch | GFLOP | " + " | ".join(f"{n} ms (p10-p90)" for n in names) + \
         " | ad f32 vs hf eager | ad bf16 vs hf autocast | ad f32 GFLOP/s" + (" | of f32 peak" if peak_gflops else "") + " |"
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in rows:
    cells = [f"{r['median_ms'][n]:.1f} ({r['spread_ms'][n][0]:.1f}-{r['spread_ms'][n][1]:.1f})" for n in names]
    line = (f"| {r['arch']} | {r['gflop']:.2f} | " + " | ".join(cells) +
            f" | {r['speedup_vs_hf_eager_f32']:.2f}x | {r['speedup_bf16_vs_hf_autocast']:.2f}x | "
            f"{r['ad_f32_gflop_per_s']:.0f}")
    if peak_gflops:
      line += f" | {r['ad_f32_gflop_per_s'] / peak_gflops:.0%}"
    lines.append(line + " |")
  lines.append("")
  lines.append("| arch | seq output, ad f32 vs hf f32 (max rel.) | MLM logits bf16 vs f32 (rel. L2) | argmax agreement |")
  lines.append("|---|---|---|---|")
  for r in rows:
    lines.append(f"| {r['arch']} | {r['seq_output_rel_err_vs_hf']:.1e} | {r['bf16_mlm_logits_rel_err']:.1e} | "
                 f"{r['bf16_mlm_argmax_agreement']:.4f} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m profiling.bench_inference", description=__doc__.split("\n\n")[0])
  p.add_argument("--archs", default=",".join(DEFAULT_ARCHS), help="comma-separated architectures")
  p.add_argument("--blocks", type=int, default=24)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--rounds", type=int, default=15)
  p.add_argument("--calls", type=int, default=5, help="back-to-back calls per implementation per round")
  p.add_argument("--torch-compile", action="store_true", help="also time torch.compile (compiles for minutes)")
  p.add_argument("--json", default="", help="write the rows as JSON here")
  args = p.parse_args(argv)
  import jax
  archs = parse_archs(p, args.archs)
  peak = None
  if jax.default_backend() == "cpu":
    cal = peaks_lib.cpu_peaks("float32")
    peak = cal.flops_per_s / 1e9
    print(f"f32 matmul peak (calibrated, profiling/peaks.py): {peak:.0f} GFLOP/s", file=sys.stderr)
  rows = []
  for arch in archs:
    t0 = time.time()
    rows.append(bench_arch(arch, blocks=args.blocks, batch=args.batch, seq=args.seq, rounds=args.rounds,
                           calls=args.calls, torch_compile=args.torch_compile))
    print(f"{arch}: {time.time() - t0:.0f} s", file=sys.stderr)
  import torch
  print(f"batch {args.batch}, seq {args.seq}, {args.blocks} blocks; {args.rounds} alternating rounds x {args.calls} "
        f"calls; jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)")
  print(format_table(rows, peak))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(dict(rows=rows, peak_f32_gflop_per_s=peak, command="python -m profiling.bench_inference " + " ".join(sys.argv[1:])), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
