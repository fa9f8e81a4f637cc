"""Does pairing with a reference make latency survive this machine's drift? (issue 30 item 0)

One run is one process: the quickstart search's own measurement (ad/search/measurement.py measure,
search.measure of the quickstart config) of the same 5 architectures, each timed alternately
with the reference (the baseline). It records, per architecture, the median timed alone in those
rounds and the paired ratio to the reference, each with its relative 95% CI. Run it several
times, at different times, in separate processes; `--summary` compares the runs: the spread of
each architecture's alone median across runs against the spread of its paired latency (ratio x
one scale: the reference's median over all runs), and how often two runs' intervals overlap.

`--searches RUN_A RUN_B` compares two finished searches instead (issue 30's Done-when: two
`make search` runs an hour apart): for every architecture both measured, its paired ratio to the
baseline in each run and whether their 95% intervals overlap; its paired latency (the ratio x each
run's own scale, the baseline's first reading in that run) and its median timed alone, likewise;
and which students dominate the baseline in each run (their summary.json).

Command:  .venv/bin/python -m experiments.latency_pairing            (one run, ~1-2 min here)
          .venv/bin/python -m experiments.latency_pairing --summary  (the table)
          .venv/bin/python -m experiments.latency_pairing --searches runs/repro/a runs/repro/b
Output:   experiments/results/latency_pairing.json (one entry per run, appended);
          experiments/results/search_reproducibility.json (--searches)
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import numpy as np

from ad import configs, files
from ad import space as space_lib
from ad.search import measurement
from ad.search.store import TrialStore

ARCHS = ("512_128_4_512_4", "512_128_1_512_4", "512_128_8_512_4", "256_64_2_384_2", "512_96_1_384_4")
RESULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "latency_pairing.json")
SEARCHES = os.path.join(os.path.dirname(RESULT), "search_reproducibility.json")


def one_run(config: str) -> dict:
  cfg = configs.load_config(config)
  rows = []
  with tempfile.TemporaryDirectory(prefix="ad_pairing_") as traces:
    for arch in ARCHS:
      m = measurement.measure(space_lib.Arch.parse(arch), cfg, os.path.join(traces, arch))
      rows.append(dict(arch=arch, alone_ms=m["latency_ms_median"], alone_rel_ci95=m["latency_rel_ci95"],
                       ratio=m["latency_ratio"], ratio_rel_ci95=m["latency_ratio_rel_ci95"],
                       reference_ms=m["reference_ms_median"], repetitions=m["repetitions"]))
      print(f"{arch}: alone {m['latency_ms_median']:.3f} ms +-{100 * m['latency_rel_ci95']:.1f}%, ratio to "
            f"{m['reference']} {m['latency_ratio']:.4f} +-{100 * m['latency_ratio_rel_ci95']:.1f}%", flush=True)
  return dict(when=time.strftime("%Y-%m-%d %H:%M:%S"), config=config, reference=cfg.search.baseline_arch,
              blocks=cfg.model.num_blocks, seq=cfg.search.measure.seq, rows=rows)


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
  """Two (estimate, relative 95% CI half-width) intervals overlap."""
  (lo, lo_ci), (hi, hi_ci) = sorted([a, b])
  return lo * (1 + lo_ci) >= hi * (1 - hi_ci)


def summary(runs: list[dict]) -> dict:
  """Per architecture: alone medians and paired latencies across runs, each with its spread
  ((max - min) / median) and the share of run pairs whose intervals overlap."""
  scale = float(np.median([r["reference_ms"] for run in runs for r in run["rows"]]))
  out = dict(runs=len(runs), when=[run["when"] for run in runs], scale_ms=scale, archs=[])
  for arch in ARCHS:
    rows = [next(r for r in run["rows"] if r["arch"] == arch) for run in runs]
    alone = [(r["alone_ms"], r["alone_rel_ci95"]) for r in rows]
    paired = [(r["ratio"] * scale, r["ratio_rel_ci95"]) for r in rows]
    entry = dict(arch=arch)
    for name, values in (("alone", alone), ("paired", paired)):
      v = np.asarray([x for x, _ in values])
      pairs = list(itertools.combinations(values, 2))
      entry[name] = dict(ms=[float(x) for x in v], rel_ci95=[float(c) for _, c in values],
                         spread=float((v.max() - v.min()) / np.median(v)),
                         overlapping_pairs=sum(_overlap(a, b) for a, b in pairs), pairs=len(pairs))
    out["archs"].append(entry)
  return out


def compare_searches(run_dirs: list[str]) -> dict:
  """Two finished searches side by side: per architecture measured ('ok') in both, the paired ratio,
  the paired latency and the alone median of each run with their relative 95% CIs and whether the
  intervals overlap; per run, its scale and the students dominating the baseline."""
  runs = []
  for d in run_dirs:
    store = TrialStore(d, readonly=True)
    try:
      rows = {r.arch: r.measurement for r in store.trials("ok")  # the reference itself is 1 by definition
              if (r.measurement or {}).get("latency_ratio") and r.arch != r.measurement["reference"]}
      started = min(r.started for r in store.trials())
    finally:
      store.close()
    summ = files.read_json(os.path.join(d, "summary.json"), "search summary")
    runs.append(dict(run_dir=os.path.basename(os.path.normpath(d)), rows=rows, started=time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime(started)), scale_ms=next(iter(rows.values()))["reference_scale_ms"],
                     dominating_baseline=summ["dominating_baseline"],
                     dominating_baseline_noise_blind=summ["dominating_baseline_noise_blind"]))
  a, b = runs
  archs = sorted(set(a["rows"]) & set(b["rows"]))
  quantities = dict(ratio=("latency_ratio", "latency_ratio_rel_ci95"),
                    paired_ms=("latency_ms_paired", "latency_ratio_rel_ci95"),
                    alone_ms=("latency_ms_median", "latency_rel_ci95"))
  table = []
  for arch in archs:
    entry = dict(arch=arch)
    for q, (value, ci) in quantities.items():
      x, y = [(float(r["rows"][arch][value]), float(r["rows"][arch][ci])) for r in runs]
      entry[q] = dict(values=[x[0], y[0]], rel_ci95=[x[1], y[1]], overlap=_overlap(x, y))
    table.append(entry)
  return dict(runs=[{k: v for k, v in r.items() if k != "rows"} for r in runs], archs=table,
              **{f"{q}_overlapping": f"{sum(e[q]['overlap'] for e in table)}/{len(table)}" for q in quantities})


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="quickstart")
  p.add_argument("--summary", action="store_true", help="compare the recorded runs instead of measuring")
  p.add_argument("--searches", nargs=2, metavar="RUN_DIR", help="compare two finished searches instead")
  args = p.parse_args(argv)
  if args.searches:
    c = compare_searches(args.searches)
    files.write_json(SEARCHES, c)
    for r in c["runs"]:
      print(f"{r['run_dir']}: started {r['started']}, scale {r['scale_ms']:.3f} ms; dominating the baseline beyond "
            f"the noise: {', '.join(r['dominating_baseline']) or 'none'} (noise-blind: "
            f"{', '.join(r['dominating_baseline_noise_blind']) or 'none'})")
    print(f"measured in both: {len(c['archs'])}; 95% intervals overlapping: ratio {c['ratio_overlapping']}, paired "
          f"latency {c['paired_ms_overlapping']}, alone {c['alone_ms_overlapping']}")
    print("| arch | ratio to the baseline, run 1 / run 2 | overlap | paired ms | overlap | alone ms | overlap |")
    print("|---|---|---|---|---|---|---|")
    for e in c["archs"]:
      cells = []
      for q in ("ratio", "paired_ms", "alone_ms"):
        x = e[q]
        cells += [" / ".join(f"{v:.3f} ±{100 * ci:.1f}%" for v, ci in zip(x["values"], x["rel_ci95"])),
                  "yes" if x["overlap"] else "no"]
      print(f"| `{e['arch']}` | " + " | ".join(cells) + " |")
    return
  runs = files.read_json(RESULT) if os.path.exists(RESULT) else []
  if not args.summary:
    runs.append(one_run(args.config))
    files.write_json(RESULT, runs)
    return
  if len(runs) < 2:
    raise SystemExit(f"{RESULT}: {len(runs)} run(s) recorded; run this without --summary at least twice")
  s = summary(runs)
  print(f"{s['runs']} runs ({', '.join(s['when'])}); paired latency = ratio x {s['scale_ms']:.3f} ms "
        "(the reference's median over all runs)")
  print("| arch | alone ms per run | alone spread | alone pairs overlapping | paired ms per run | paired spread "
        "| paired pairs overlapping |")
  print("|---|---|---|---|---|---|---|")
  for e in s["archs"]:
    cells = []
    for name in ("alone", "paired"):
      x = e[name]
      cells += [", ".join(f"{v:.3f} ±{100 * c:.1f}%" for v, c in zip(x["ms"], x["rel_ci95"])),
                f"{100 * x['spread']:.1f}%", f"{x['overlapping_pairs']}/{x['pairs']}"]
    print(f"| `{e['arch']}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
