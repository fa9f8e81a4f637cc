"""Throughput of the seqio pre-training pipeline (documents -> WordPiece -> MLM + NSP batches).

Command:  .venv/bin/python -m experiments.bench_data [--batch 32] [--seq 128] [--batches 100]
Machine:  the 2-core CPU dev machine.
Prints:   time to the first batch (document loading, sentence split, shuffle buffer) and
          steady-state examples/s and tokens/s.
"""

import argparse
import itertools
import time

from ad.data import pretrain


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--batches", type=int, default=100)
  args = p.parse_args(argv)
  cfg = pretrain.DataConfig(seq_len=args.seq)
  t0 = time.perf_counter()
  task = pretrain.make_task(cfg, pretrain.load_vocab(cfg))
  it = pretrain.batches(task, cfg, "train", args.batch)
  next(it)  # the first batch pays for loading, splitting and the shuffle buffer
  t1 = time.perf_counter()
  n_tok = 0
  for b in itertools.islice(it, args.batches):
    n_tok += int(b["attention_mask"].sum())
  t2 = time.perf_counter()
  ex = args.batches * args.batch
  print(f"first batch after {t1 - t0:.1f}s; then {ex / (t2 - t1):.0f} examples/s, {n_tok / (t2 - t1):.0f} "
        f"non-pad tokens/s (batch {args.batch}, seq {args.seq}, {args.batches} batches)")


if __name__ == "__main__":
  main()
