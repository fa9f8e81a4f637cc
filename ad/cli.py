"""The `ad` command: its arguments, and the dispatch to the module that runs each command (COMMANDS).

Only what every command needs is imported here (no JAX): `ad --help`, `ad space` and a bad argument
answer in a second, not after JAX, flax and TensorFlow load (5 s here).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ad import files, interrupt, startup


def _add_config_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", default=None,
                 help="config name in ad/configs/ (default: quickstart), or a path ending in .py; configs "
                      "are Python and are executed: use only configs you trust")
  p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                 help="do not use JAX's persistent compilation cache (default: on, in the user cache directory)")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config field, e.g. --set model.num_blocks=4 (repeatable)")


def _at_least(low: int):
  """An argparse type: an integer >= low (argparse's error then names the option)."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
      raise argparse.ArgumentTypeError(f"{value}: expected an integer >= {low}")
    return value
  parse.__name__ = f"integer >= {low}"
  return parse


def _share(text: str) -> float:
  """An argparse type: a number strictly between 0 and 1."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not 0 < value < 1:
    raise argparse.ArgumentTypeError(f"{value}: expected a number between 0 and 1 (a share), e.g. 0.02")
  return value


def _split_config_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Accepts big_vision-style `--config.key=value` as well as `--set key=value`."""
  rest, overrides = [], []
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      overrides.append(a[len("--config."):])
    else:
      rest.append(a)
  return rest, overrides


def _space_args(p: argparse.ArgumentParser) -> None:
  _add_config_args(p)
  p.add_argument("--list", action="store_true", help="also list every architecture name")


def _arch_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("names", nargs="+", metavar="NAME", help="architecture names H_B_A_I_F, e.g. 512_128_4_512_4")
  p.add_argument("--blocks", type=_at_least(1), default=None, help="number of blocks (default: config model.num_blocks)")
  p.add_argument("--seq", type=_at_least(8), default=128)
  p.add_argument("--batch", type=_at_least(1), default=1)
  p.add_argument("--dtype", default=None, help="compute dtype (default: config model.dtype)")
  p.add_argument("--json", action="store_true")
  p.add_argument("--outside-space", action="store_true",
                 help="allow architectures outside the config's design space")
  _add_config_args(p)


def _profile_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--arch", required=True, help="architecture name H_B_A_I_F")
  p.add_argument("--blocks", type=_at_least(1), default=None, help="number of blocks (default: config model.num_blocks)")
  p.add_argument("--batch", type=_at_least(1), default=1)
  p.add_argument("--seq", type=_at_least(8), default=128)
  p.add_argument("--dtype", default=None, help="compute dtype (default: config model.dtype)")
  p.add_argument("--trace-dir", default=None, help="where traces are kept (default: a new temp dir)")
  p.add_argument("--target-ci", type=_share, default=0.02,
                 help="stop when the 95%% CI of the median is within this fraction of it")
  p.add_argument("--max-reps", type=_at_least(1), default=300, help="stop after this many executions even if not converged")
  p.add_argument("--min-reps", type=_at_least(1), default=20, help="at least this many executions (capped by --max-reps)")
  p.add_argument("--compile-only", action="store_true", help="FLOPs, bytes and memory without running")
  p.add_argument("--reference", default=None, metavar="ARCH",
                 help="also time this architecture, the two called in turn, and report the latency ratio to it "
                      "(stops when the ratio's 95%% CI is within --target-ci; what the search does with its baseline)")
  p.add_argument("--target", default=None, metavar="tpu:CHIP",
                 help="instead of measuring here: the latency XLA's TPU cost model estimates on one chip (tpu:v4, "
                      "tpu:v5e, tpu:v5p, tpu:v6e), compiled ahead of time on this machine")
  p.add_argument("--recalibrate", action="store_true",
                 help="measure the CPU peaks afresh (replacing the cached calibration) before computing utilizations")
  p.add_argument("--json", action="store_true")
  p.add_argument("--outside-space", action="store_true", help="allow architectures outside the design space")
  _add_config_args(p)


def _compile_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--topology", required=True,
                 help="a TPU slice as libtpu names it: v4:2x2x1, v5p:2x2x1, v5e:4x4, v5e:16x16, v6e:2x2, ... (a chip "
                      "alone, e.g. v5e, is one chip)")
  p.add_argument("--program", required=True, choices=("flash", "regular", "superlm", "teacher", "inference"),
                 help="flash / regular: the distillation steps (progressive and pre-training); superlm: the SuperLM "
                      "step; teacher: the teacher adaptation step; inference: the batch-B forward")
  p.add_argument("--arch", default=None, help="architecture H_B_A_I_F (default: the config's search.baseline_arch)")
  p.add_argument("--batch", type=_at_least(1), default=None, help="global batch (default: distill.batch_size; inference: 1)")
  p.add_argument("--seq", type=_at_least(8), default=None, help="sequence length (default: data.seq_len; inference: "
                 "search.measure.seq)")
  p.add_argument("--blocks", type=_at_least(1), default=None, help="number of blocks (default: model.num_blocks)")
  p.add_argument("--dtype", default=None, help="compute dtype (default: model.dtype)")
  p.add_argument("--mesh-model", type=_at_least(1), default=None, help="devices on the mesh's model axis (default: "
                 "distill.mesh_model); the rest form the data axis")
  p.add_argument("--largest-batch", action="store_true",
                 help="instead: the largest global batch whose programs fit the devices' HBM")
  p.add_argument("--json", action="store_true")
  _add_config_args(p)


def _teacher_args(p: argparse.ArgumentParser) -> None:
  tsub = p.add_subparsers(dest="action", required=True)
  q = tsub.add_parser("prepare", help="load an HF teacher, fit an MLM head if it lacks one, save with orbax")
  q.add_argument("--from", dest="source", default=None, help="HF checkpoint directory (default: packaged MiniLM)")
  q.add_argument("--out", default=None, help="where to save (default: a cache dir keyed by source and settings)")
  q.add_argument("--force", action="store_true", help="prepare again even if a cached one exists")
  q.add_argument("--adapt", action="store_true",
                 help="adapt a checkpoint that already has an MLM head too (teacher.adapt_headed)")
  _add_config_args(q)
  q = tsub.add_parser("eval", help="held-out MLM (and NSP) accuracy of a prepared teacher")
  q.add_argument("dir", help="a directory written by `ad teacher prepare`")
  _add_config_args(q)


def _distill_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--arch", required=True)
  p.add_argument("--schedule", choices=("flash", "regular"), default="flash")
  p.add_argument("--workdir", required=True, help="checkpoints, losses.jsonl, TensorBoard logs, metrics.json")
  p.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--outside-space", action="store_true")
  p.add_argument("--export", default=None, metavar="DIR",
                 help="also export the final student as a complete Hugging Face directory (weights, config, "
                      "tokenizer, model card)")
  p.add_argument("--force", action="store_true", help="with --export: write into a non-empty DIR")
  p.add_argument("--init-student", default=None, metavar="DIR",
                 help="start from this orbax student checkpoint of the same architecture (e.g. `ad superlm extract`'s "
                      "OUT/student) instead of a random one")
  _add_config_args(p)


def _superlm_args(p: argparse.ArgumentParser) -> None:
  ssub = p.add_subparsers(dest="action", required=True)
  q = ssub.add_parser("train", help="train a SuperLM over the config's space (or K few-shot ones) by distillation")
  q.add_argument("--workdir", required=True, help="checkpoints, losses.jsonl, TensorBoard logs, superlm.json")
  q.add_argument("--fewshot", action="store_true",
                 help="001's few-shot: superlm.fewshot.count SuperLMs over a partition of the space (workdir/part_<k>)")
  q.add_argument("--resume", action="store_true", help="continue the training in --workdir from its checkpoints")
  q.add_argument("--no-progress", action="store_true")
  _add_config_args(q)
  q = ssub.add_parser("score", help="held-out MLM scores of sub-networks extracted from trained SuperLM(s)")
  q.add_argument("archs", nargs="+", metavar="ARCH", help="architecture names H_B_A_I_F")
  q.add_argument("--workdir", required=True, help="a `superlm train` workdir (one-shot or --fewshot)")
  q.add_argument("--json", action="store_true")
  _add_config_args(q)
  q = ssub.add_parser("extract", help="one sub-network as a standalone orbax student checkpoint (OUT/student)")
  q.add_argument("--arch", required=True)
  q.add_argument("--workdir", required=True, help="a `superlm train` workdir (one-shot or --fewshot)")
  q.add_argument("--out", required=True)
  _add_config_args(q)


def _export_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("path", help="an `ad distill --workdir`, a search's final/<arch>, or a search --run-dir")
  p.add_argument("--out", required=True, help="the HF directory (for a run directory: one subdirectory per final)")
  p.add_argument("--force", action="store_true", help="write into a non-empty --out")


def _finetune_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--checkpoint", required=True,
                 help="a distillation workdir, a search run directory (its finals), a prepared teacher, or a Hugging "
                      "Face BERT/MobileBERT directory with vocab.txt")
  p.add_argument("--task", action="append", required=True,
                 help="rotten_tomatoes (offline) or glue_cola, glue_sst2, glue_mrpc, glue_qqp, glue_stsb, glue_mnli, "
                      "glue_qnli, glue_rte, glue_wnli, squad_v1 (a prepared TFDS data dir, or --squad-dir); repeatable")
  p.add_argument("--workdir", default=None,
                 help="results go to WORKDIR/<checkpoint name>_<task> (default: runs/finetune)")
  p.add_argument("--epochs", type=_at_least(1), default=None, help="default: config finetune.epochs")
  p.add_argument("--tfds-data-dir", default=None,
                 help="where prepared GLUE/SQuAD TFDS datasets are (finetune.tfds_data_dir)")
  p.add_argument("--squad-dir", default=None,
                 help="the official train-v1.1.json and dev-v1.1.json for squad_v1 (finetune.squad_dir)")
  p.add_argument("--no-progress", action="store_true")
  _add_config_args(p)


def _search_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--run-dir", required=True, help="trial store, report.md, pareto.png, traces, trial and final runs")
  p.add_argument("--resume", action="store_true", help="continue the search in --run-dir from its trial store")
  p.add_argument("--designer", default=None, choices=("bo", "random", "evolutionary", "firefly"),
                 help="who proposes architectures (default: config search.designer)")
  p.add_argument("--proxy", default=None, choices=("flash", "superlm", "fewshot"),
                 help="the accuracy objective's proxy: flash distillation of each candidate (003), or candidates "
                      "extracted from a one-shot (004) / few-shot (001) SuperLM trained once in RUN_DIR/<proxy> "
                      "(default: config search.proxy)")
  p.add_argument("--workers", type=_at_least(1), default=1,
                 help="run trials in N worker processes, each pinned to its share of the CPU cores (default 1: "
                      "in this process); more can join with `ad worker`")
  p.add_argument("--store", default=None, metavar="URL",
                 help="a PostgreSQL trial store (postgresql://user:password@host/db, one database per search) "
                      "instead of RUN_DIR/trials.sqlite, for workers on several machines")
  p.add_argument("--no-progress", action="store_true")
  _add_config_args(p)


def _worker_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--run-dir", required=True,
                 help="the search's run directory (its SQLite store, and where trials write checkpoints and traces)")
  p.add_argument("--store", default=None, metavar="URL", help="the search's PostgreSQL store, if it has one")
  p.add_argument("--worker-id", default=None, help="this worker's name in the store (default: host:pid)")
  p.add_argument("--max-trials", type=_at_least(0), default=0, help="stop after this many trials (default 0: until done)")
  p.add_argument("--role", default="train", choices=("train", "measure"),
                 help="train: claim and distill trials (and measure them, unless the search has "
                      "search.measure.target); measure: measure trials on this machine for --target")
  p.add_argument("--target", default=None, help="with --role measure: the search's search.measure.target")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                 help="do not use JAX's persistent compilation cache")


def _latency_model_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("source", help="a search's --run-dir, or a CSV of measurements (e.g. experiments/results/tabular.csv)")
  p.add_argument("--store", default=None, metavar="URL", help="the search's PostgreSQL store, if it has one")
  p.add_argument("--folds", type=_at_least(2), default=5)
  p.add_argument("--seed", type=_at_least(0), default=0, help="how architectures are dealt into folds")
  p.add_argument("--json", action="store_true")


def _report_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("run_dir", help="the --run-dir of an `ad search`")
  p.add_argument("--store", default=None, metavar="URL", help="the search's PostgreSQL store, if it has one")
  p.add_argument("--out", default=None, metavar="DIR",
                 help="where report.md and pareto.png go (default: the run directory; give one for a read-only run)")


# command -> (its help, its arguments, the module of ad/commands/ that runs it as cmd_<command>: imported
# only when the command runs, so that JAX and TensorFlow load where they are used)
COMMANDS = {
    "space": ("print the design space and its size", _space_args, "space"),
    "arch": ("parameter counts and forward FLOPs of architectures", _arch_args, "models"),
    "profile": ("measure a student's latency, throughput and utilization from XLA traces", _profile_args, "models"),
    "compile": ("compile a program ahead of time for a TPU topology (no TPU needed): memory per device against HBM, "
                "FLOPs, bytes, estimated step time, tokens/s, MFU, kernels", _compile_args, "models"),
    "teacher": ("prepare (fit an MLM head, cache) or evaluate the teacher", _teacher_args, "training"),
    "distill": ("flash or regular distillation of one architecture", _distill_args, "training"),
    "superlm": ("weight-sharing SuperLMs (004 one-shot, 001 few-shot): train, score sub-networks without training, "
                "extract them as students", _superlm_args, "training"),
    "export": ("a finished distillation workdir (or every final of a search run directory) -> complete Hugging Face "
               "model directories", _export_args, "training"),
    "finetune": ("fine-tune a student, teacher or baseline checkpoint on a downstream task", _finetune_args,
                 "training"),
    "search": ("multi-objective architecture search with flash distillation (the main job)", _search_args, "search"),
    "worker": ("join a running search (ad search --workers / --store): claim, run and record trials until it is done",
               _worker_args, "search"),
    "latency-model": ("fit the learned latency predictor (004) on measured architectures and report its error on "
                      "held-out ones", _latency_model_args, "results"),
    "report": ("rebuild report.md and pareto.png of a search from its trial store", _report_args, "results"),
}
# What a command ends with a message for rather than a traceback: bad input and a stopped run. A command
# module adds its own in ERRORS.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError, FloatingPointError,
               MemoryError, files.LockedError)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="ad", description="AutoDistill in JAX (see README.md)")
  sub = parser.add_subparsers(dest="command", required=True)
  for name, (help_text, add_arguments, _) in COMMANDS.items():
    add_arguments(sub.add_parser(name, help=help_text))
  return parser


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  argv, dotted = _split_config_overrides(argv)
  try:
    args = build_parser().parse_args(argv)
  except SystemExit as e:  # argparse printed the usage and the error (or --help): its code, not an exception
    return e.code if isinstance(e.code, int) else 2
  if hasattr(args, "overrides"):
    args.overrides = dotted + args.overrides
  interrupt.install()  # Ctrl-C / SIGTERM stop at the next step or trial boundary
  if args.command == "worker":
    startup.pin_to_worker_cores()  # before JAX and its thread pools are imported with the command's module
  module = importlib.import_module(f"ad.commands.{COMMANDS[args.command][2]}")
  run = getattr(module, "cmd_" + args.command.replace("-", "_"))
  if getattr(args, "compile_cache", False) and os.environ.get("AD_COMPILE_CACHE", "1") != "0":
    startup.enable_compile_cache()
  try:
    return run(args) or 0
  except (interrupt.Interrupted, KeyboardInterrupt) as e:
    where = f" ({e})" if isinstance(e, interrupt.Interrupted) else ""
    again = {"teacher": "run the same command again: it resumes", "worker": "run the same command again: it resumes",
             "finetune": "run the same command again: a fine-tuning keeps no checkpoint and starts afresh"}.get(
                 args.command, "run the same command with --resume to continue")
    print(f"ad {args.command}: interrupted{where}; {again}", file=sys.stderr)
    return 130
  except USER_ERRORS + getattr(module, "ERRORS", ()) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"ad {args.command}: error: {msg}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
