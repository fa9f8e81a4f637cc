"""The layout of a search's run directory: what the search writes where, for the commands that
read a finished run (export, fine-tuning) without importing the search."""

from __future__ import annotations

import os

STORE_FILE = "trials.sqlite"  # the trial store (SQLite) when the search has no --store URL
FINAL_DIR = "final"  # final/<arch>/: the regular-distilled students


def finals_dir(run_dir: str) -> str:
  return os.path.join(run_dir, FINAL_DIR)


def is_search_run(path: str) -> bool:
  """A search run directory with finals (its SQLite store and final/), not a distillation workdir."""
  return os.path.isfile(os.path.join(path, STORE_FILE)) and os.path.isdir(finals_dir(path))
