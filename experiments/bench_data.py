"""Throughput of the seqio pre-training pipeline (documents -> WordPiece -> MLM + NSP batches).

Command:  .venv/bin/python -m experiments.bench_data [--batch 32] [--seq 128] [--batches 100]
          [--start-batches 0 1000 100000]
Machine:  the 2-core CPU dev machine.
Prints:   time to the first batch (document loading, sentence split) and steady-state
          examples/s and tokens/s; with --start-batches, the time to the first batch of a stream
          started at each of those batches (what a resumed run pays: the stream is
          index-addressable, so it should not grow with the start).
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
  p.add_argument("--start-batches", type=int, nargs="*", default=[])
  args = p.parse_args(argv)
  cfg = pretrain.DataConfig(seq_len=args.seq)
  t0 = time.perf_counter()
  task = pretrain.make_task(cfg, pretrain.load_vocab(cfg))
  it = pretrain.batches(task, cfg, "train", args.batch)
  next(it)  # the first batch pays for loading and splitting the documents
  t1 = time.perf_counter()
  n_tok = 0
  for b in itertools.islice(it, args.batches):
    n_tok += int(b["attention_mask"].sum())
  t2 = time.perf_counter()
  ex = args.batches * args.batch
  print(f"first batch after {t1 - t0:.1f}s; then {ex / (t2 - t1):.0f} examples/s, {n_tok / (t2 - t1):.0f} "
        f"non-pad tokens/s (batch {args.batch}, seq {args.seq}, {args.batches} batches)")
  for start in args.start_batches:
    # Twice: first counting the epochs before the start, then with their lengths known, as a
    # resumed run knows them from its checkpoint.
    for how in ("epoch lengths counted", "epoch lengths known"):
      t = time.perf_counter()
      next(pretrain.batches(task, cfg, "train", args.batch, start_batch=start))
      print(f"stream started at batch {start:,} (example {start * args.batch:,}), {how}: first batch after "
            f"{time.perf_counter() - t:.2f}s; replaying to it at the rate above would take "
            f"{start * args.batch / (ex / (t2 - t1)):.0f}s", flush=True)


if __name__ == "__main__":
  main()
