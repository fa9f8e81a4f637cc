"""Every kernel shape of the Table 1 space compiled through Mosaic for TPU chips, on this CPU.

    python -m experiments.tpu_kernel_sweep [--chips v5e,v4] [--json experiments/results/tpu_kernel_sweep.json]

The attention kernel for every head count A (1, 2, 4, 8) and head size D = bottleneck / A
(bottleneck 64, 96, 128, 160), every sequence length T in 128, 256, 384, 512, in bf16 and f32, as
forward, forward with probabilities, and backward through both; the stacked-FFN kernel for every
bottleneck, intermediate size (384, 512, 640) and FFN count F from 1 to 6, bf16 and f32, forward and
backward. paper_table1 (24 blocks, seq 128) uses a subset of these. Each program is compiled for one
compile-only device of the chip (profiling/tpu.py; nothing runs) and checked to hold the Mosaic
kernel(s); a failure is recorded with its error. Prints and writes the counts, the failures, the
FFN shapes that run as groups of kernels, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp

from ad import space as space_lib
from kernels import fused_attention as fa, fused_ffn as ff
from profiling import tpu

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
SEQS = (128, 256, 384, 512)
FFN_COUNTS = range(1, 7)




def attention_cases():
  S = jax.ShapeDtypeStruct
  for bn in space_lib.TABLE1["bottleneck"]:
    for a in space_lib.TABLE1["heads"]:
      for t in SEQS:
        for dname, dt in DTYPES.items():
          args = [S((2, t, a, bn // a), dt)] * 3 + [S((2, 1, 1, t), jnp.float32)]
          yield (f"attention A={a} D={bn // a} T={t} {dname} forward", lambda q, k, v, b: fa.mha(q, k, v, b)[0], args,
                 {"student_attention_fwd": 1})
          yield (f"attention A={a} D={bn // a} T={t} {dname} probabilities",
                 lambda q, k, v, b: fa.mha(q, k, v, b, return_probs=True), args, {"student_attention_fwd": 1})
          loss = lambda q, k, v, b: sum(jnp.sum(x.astype(jnp.float32)) for x in fa.mha(q, k, v, b, return_probs=True))
          yield (f"attention A={a} D={bn // a} T={t} {dname} backward", jax.grad(loss, argnums=(0, 1, 2)), args,
                 {"student_attention_bwd": 1})


def ffn_cases():
  S = jax.ShapeDtypeStruct
  for bn in space_lib.TABLE1["bottleneck"]:
    for i in space_lib.TABLE1["intermediate"]:
      for f in FFN_COUNTS:
        groups = len(ff.ffn_groups([S((f, bn, i), jnp.float32)], ff.BlockSizes().max_weight_bytes))
        for dname, dt in DTYPES.items():
          args = [S((2, 128, bn), dt), S((f, bn, i), jnp.float32), S((f, i), jnp.float32), S((f, i, bn), jnp.float32)]
          args += [S((f, bn), jnp.float32)] * 3
          yield (f"ffn Bn={bn} I={i} F={f} {dname} forward", lambda h, *w: ff.stacked_ffn(h, *w), args,
                 {"student_stacked_ffn_fwd": groups})
          loss = lambda *a: jnp.sum(ff.stacked_ffn(*a).astype(jnp.float32))
          yield (f"ffn Bn={bn} I={i} F={f} {dname} backward", jax.grad(loss, argnums=tuple(range(7))), args,
                 {"student_stacked_ffn_bwd": groups})


def sweep(chip: str, log=print) -> dict:
  device = tpu.topology_devices(chip)[0]
  out = dict(chip=chip, device_kind=device.device_kind, compiled=0, failed=[], grouped_ffn=set(), seconds=0.0)
  t0 = time.time()
  for name, fn, args, expect in list(attention_cases()) + list(ffn_cases()):
    try:
      hlo = tpu.compile_on_device(fn, args, device).as_text()
      counts = {k: tpu.mosaic_calls(hlo, k) for k in expect}
      if counts != expect:
        raise AssertionError(f"Mosaic kernels {counts}, expected {expect}")
      out["compiled"] += 1
      if name.startswith("ffn") and max(expect.values()) > 1:
        out["grouped_ffn"].add(f"{name.split(' float32')[0].split(' bfloat16')[0]}: {max(expect.values())} kernels")
    except Exception as e:  # every failure is recorded, with its reason
      out["failed"].append(dict(case=name, error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"))
      log(f"{chip}: FAILED {name}: {out['failed'][-1]['error']}")
  out["seconds"] = time.time() - t0
  out["grouped_ffn"] = sorted(out["grouped_ffn"])
  log(f"{chip}: {out['compiled']} compiled, {len(out['failed'])} failed in {out['seconds']:.0f} s")
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--chips", default="v5e,v4")
  p.add_argument("--json", default=os.path.join("experiments", "results", "tpu_kernel_sweep.json"))
  args = p.parse_args(argv)
  t0 = time.time()
  results = [sweep(c) for c in args.chips.split(",")]
  report = dict(command="python -m experiments.tpu_kernel_sweep --chips " + args.chips, wall_s=time.time() - t0,
                jax=jax.__version__, block_sizes=dict(attention=str(fa.BlockSizes()), ffn=str(ff.BlockSizes())),
                results=results)
  with open(args.json, "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps({r["chip"]: dict(compiled=r["compiled"], failed=len(r["failed"])) for r in results}))
  return 1 if any(r["failed"] for r in results) else 0


if __name__ == "__main__":
  raise SystemExit(main())
