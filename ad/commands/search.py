"""`ad search` and `ad worker`: the search, and a worker that joins it."""

from __future__ import annotations

import json
import os
import sys

from ad import configs
from ad.search import loop, parallel
from ad.search.designers import OptimizerServiceError
from ad.search.trial import SearchStopped
from ad.train import sharding

# The errors these commands end with a message rather than a traceback (beside ad/cli.py's USER_ERRORS).
ERRORS = (SearchStopped, OptimizerServiceError)


def cmd_search(args) -> int:
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
  ran = parallel.run_worker(args.run_dir, args.store, args.worker_id, log=lambda m: print(m, file=sys.stderr, flush=True),
                            max_trials=args.max_trials, role=args.role, target=args.target)
  print(json.dumps(dict(trials_run=ran)))
  return 0
