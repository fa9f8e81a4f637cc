"""The accelerator check: everything that only means something on a GPU or TPU, in one run.

    make device-check            (= python -m profiling.device_check --out runs/device_check)

On a GPU or TPU backend it runs, each step in its own process with its own time limit, and
all within about 10 minutes:
  1. kernels    the Pallas kernel tests (tests/kernels: the numerics classes run compiled there)
  2. bench      the kernel benchmark, fused vs XLA, real timings (profiling/bench_kernels.py)
  3. profile    `ad profile` of MobileBERT's block shape (24 blocks, batch 1, seq 128) in bf16 and
                f32 with the device-plane trace parser on a real trace
  4. forward    the student forward with the fused kernels (attention_impl=ffn_impl=pallas) in bf16
  5. distill    a few flash-distillation steps in bf16 (a quickly prepared teacher, tiny schedule)
and writes `report.json` (each step's command, exit status, wall time and output tail) into
--out. The JAX in .venv must be the accelerator build (e.g. `pip install "jax[cuda12]"` or
`"jax[tpu]"`); BUILD.md says what was measured where. On a CPU backend there is nothing to
check: it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ARCH = "512_128_4_512_4"
QUICK_TEACHER = ["--set", "teacher.head_steps=10", "--set", "teacher.adapt_steps=10",
                 "--set", "teacher.adapt_warmup_steps=2"]
TINY_FLASH = ["--set", "distill.flash.steps_per_block=2", "--set", "distill.flash.pretrain_steps=4",
              "--set", "distill.flash.warmup_steps=1", "--set", "model.dtype=bfloat16"]

FORWARD_WITH_KERNELS = f"""
import json, time, jax, numpy as np
from profiling import harness
out = {{}}
for dtype in ("bfloat16", "float32"):
  cfg = dict(num_blocks=24, attention_impl="pallas", ffn_impl="pallas", dtype=dtype)
  fn, (params, ids), _ = harness.student_forward("{ARCH}", cfg, batch=8, seq=128, dtype=dtype)
  ref_fn, _, _ = harness.student_forward("{ARCH}", dict(num_blocks=24, dtype=dtype), batch=8, seq=128, dtype=dtype)
  r = harness.measure_fn(fn, (params, ids), name="pallas_" + dtype, batch=8, seq=128, dtype=dtype, max_reps=100)
  x = harness.measure_fn(ref_fn, (params, ids), name="xla_" + dtype, batch=8, seq=128, dtype=dtype, max_reps=100)
  a, b = np.asarray(jax.jit(fn)(params, ids)[0], np.float32), np.asarray(jax.jit(ref_fn)(params, ids)[0], np.float32)
  out[dtype] = dict(pallas_ms=r["latency_ms_median"], xla_ms=x["latency_ms_median"], fused_ffn_ran=r["fused_ffn_ran"],
                    max_rel_err=float(np.abs(a - b).max() / np.abs(b).max()))
print(json.dumps(out))
"""


def steps(python: str, ad: str, out: str) -> list[tuple[str, list[str], int]]:
  """(name, command, time limit in s) of each check."""
  return [
      ("kernels", [python, "-m", "pytest", "-q", "tests/kernels", "-k", "not Mosaic"], 140),
      ("bench", [python, "-m", "profiling.bench_kernels", "--json", os.path.join(out, "bench_kernels.json")], 110),
      ("profile_bf16", [ad, "profile", "--arch", ARCH, "--blocks", "24", "--dtype", "bfloat16", "--json",
                        "--trace-dir", os.path.join(out, "trace_bf16")], 60),
      ("profile_f32", [ad, "profile", "--arch", ARCH, "--blocks", "24", "--dtype", "float32", "--json",
                       "--trace-dir", os.path.join(out, "trace_f32")], 60),
      ("forward", [python, "-c", FORWARD_WITH_KERNELS], 80),
      ("distill", [ad, "distill", "--arch", ARCH, "--schedule", "flash", "--workdir", os.path.join(out, "distill"),
                   "--no-progress", *QUICK_TEACHER, *TINY_FLASH], 150),
  ]


def run(out: str, budget_s: float) -> dict:
  import jax
  backend = jax.default_backend()
  report = dict(backend=backend, devices=[d.device_kind for d in jax.devices()], jax=jax.__version__,
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), steps={})
  if backend not in ("gpu", "tpu"):
    report["note"] = f"backend {backend}: nothing to check (the device check is for GPUs and TPUs)"
    return report
  bindir = os.path.dirname(sys.executable)
  ad = os.path.join(bindir, "ad")
  env = dict(os.environ, HOME=os.environ.get("HOME", "/tmp"), PYTHONUNBUFFERED="1")
  t_start = time.time()
  for name, cmd, limit in steps(sys.executable, ad, out):
    left = budget_s - (time.time() - t_start)
    if left < 20:
      report["steps"][name] = dict(skipped=f"no time left in the {budget_s:.0f} s budget")
      continue
    t0 = time.time()
    try:
      p = subprocess.run(cmd, capture_output=True, text=True, timeout=min(limit, left), env=env)
      rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
      rc, text = "timeout", ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes)
                             else (e.stdout or ""))
    report["steps"][name] = dict(command=" ".join(cmd[:3]) + (" ..." if len(cmd) > 3 else ""), rc=rc,
                                 wall_s=round(time.time() - t0, 1), output_tail=text[-4000:])
    print(f"device check: {name}: rc={rc} in {time.time() - t0:.0f} s", flush=True)
  return report


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m profiling.device_check", description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default=os.environ.get("OUT", "runs/device_check"), help="where report.json goes")
  p.add_argument("--budget-s", type=float, default=570.0, help="stop starting steps after this many seconds")
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  report = run(args.out, args.budget_s)
  path = os.path.join(args.out, "report.json")
  with open(path, "w") as f:
    json.dump(report, f, indent=1)
  if "note" in report:
    print(f"device check: {report['note']}")
    return 0
  failed = [n for n, s in report["steps"].items() if s.get("rc") not in (0, None)]
  print(f"device check: report in {path}; " + (f"FAILED: {failed}" if failed else "all steps passed"))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
