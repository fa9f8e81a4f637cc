"""`ad report` and `ad latency-model`: what a search's store holds, read back."""

from __future__ import annotations

import json
import os
import sys

from ad.search import latency_model, report, store as store_lib


def cmd_report(args) -> int:
  store = store_lib.TrialStore(args.run_dir, url=args.store, readonly=True) if args.store else None
  if store is not None:
    store.check_run_dir(args.run_dir)  # never another search's content in this run directory
  summary = report.write_report(args.run_dir, store, out_dir=args.out)
  print(json.dumps({k: v for k, v in summary.items() if k != "hypervolume_history"}, indent=2))
  print(f"report: {os.path.join(os.path.abspath(args.out or args.run_dir), 'report.md')}", file=sys.stderr)
  return 0


def cmd_latency_model(args) -> int:
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
