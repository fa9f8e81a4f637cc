"""What a training run keeps in its workdir: the run record (a workdir holds one run), the loss log,
orbax checkpoints of (parameters, optimizer state, position), and a student's parameters saved alone
(for fine-tuning, export and `--init-student`)."""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import orbax.checkpoint as ocp

from ad import files, multihost
from ad.train.optim import path_str
from ad.train.params import nonfinite


def check_run_record(workdir: str, record: dict, resume: bool) -> None:
  """A workdir holds one run: refuse another without --resume, and a --resume of a different one."""
  path = os.path.join(workdir, "run.json")
  if os.path.exists(path):
    old = files.read_json(path, "run record")
    if not resume:
      raise FileExistsError(f"{workdir} already holds a distillation run ({old.get('arch')}, {old.get('schedule')}); "
                            "pass --resume to continue it or choose a new --workdir")
    diff = sorted(k for k in record if json.dumps(record[k], sort_keys=True) != json.dumps(old.get(k), sort_keys=True))
    if diff:
      raise ValueError(f"{path}: cannot resume, the config differs in {diff}")
  multihost.sync("ad_distill_run_record")  # every host has looked before the main host writes
  if not os.path.exists(path) and multihost.is_main():
    files.write_json(path, record)


class LossLog:
  """losses.jsonl: one JSON line per step, appended. On resume the lines of steps after the
  checkpoint (about to be recomputed) are cut off by truncation, never by rewriting the file."""

  def __init__(self, path: str, next_step: int, enabled: bool):
    self.path, self.enabled = path, enabled
    if enabled and os.path.exists(path):
      keep = 0
      with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
          if not line.strip():
            break
          try:
            step = json.loads(line)["step"]
          except (ValueError, KeyError):
            raise files.BadFileError(f"{path}: line {n} is not a loss record (JSON with 'step'); the file is damaged "
                                     "(delete it to keep the run, the checkpoints do not depend on it)") from None
          if step >= next_step:
            break
          keep += len(line)
      os.truncate(path, keep)

  def append(self, rec: dict) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(rec) + "\n")


class Checkpoints:
  """orbax checkpoints of (params, optimizer state, position) in `directory`."""

  def __init__(self, directory: str, keep: int):
    self.directory = directory
    if multihost.is_main():  # what a killed save left behind
      for stale in glob.glob(os.path.join(directory, "*.orbax-checkpoint-tmp*")):
        shutil.rmtree(stale, ignore_errors=True)
    self.mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest(self) -> int | None:
    return self.mngr.latest_step()

  def save(self, step: int, params, opt_state, meta: dict) -> None:
    self.mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                 opt=ocp.args.StandardSave(opt_state), meta=ocp.args.JsonSave(meta)),
                   force=True)
    self.mngr.wait_until_finished()

  def restore(self, step: int, **abstract) -> dict:
    """Restores the named items ('meta', or 'params'/'opt' given abstract targets with shardings);
    a failure or a non-finite parameter is an error naming the checkpoint."""
    where = os.path.join(self.directory, str(step))
    args = {k: ocp.args.JsonRestore() if v is None else ocp.args.StandardRestore(v) for k, v in abstract.items()}
    try:
      out = self.mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # orbax/tensorstore raise many types for a damaged or foreign checkpoint
      raise files.BadFileError(f"{where}: cannot restore {sorted(abstract)} ({type(e).__name__}: {str(e)[:300]}); "
                               "delete the damaged step directory to resume from an earlier one") from None
    if "params" in out:
      bad = nonfinite(out["params"])
      if bad:
        raise files.BadFileError(f"{where}: non-finite parameters {bad[:5]}; the checkpoint is damaged")
    return out

  def close(self) -> None:
    self.mngr.close()


def check_student_checkpoint(path: str, abstract) -> None:
  """A student's parameters saved alone (save_student_params, `ad superlm extract`) must have the
  paths and shapes of `abstract`; checked before anything compiles, the error names both."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--init-student {path}: no such checkpoint directory")
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(path)
  saved = getattr(saved, "item_metadata", saved)
  want = {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract)}
  have = {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(saved)
          if hasattr(x, "shape")}
  if want != have:
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))[:4]
    raise ValueError(f"--init-student {path}: its parameters do not fit this student (first differences as "
                     f"(path, saved, expected): {[(k, have.get(k), want.get(k)) for k in diff]}); extract or save "
                     "the same architecture")


def restore_student_params(path: str, abstract):
  """A student's parameters saved alone, checked (check_student_checkpoint), in the shapes and
  shardings of `abstract`."""
  check_student_checkpoint(path, abstract)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, abstract)


def save_student_params(workdir: str, student_params) -> str:
  """The student's parameters alone (no adapters, no optimizer) as an orbax checkpoint."""
  student_dir = os.path.join(workdir, "student")
  if os.path.exists(student_dir):  # a resumed run that had already saved it
    if multihost.is_main():
      shutil.rmtree(student_dir)
    multihost.sync("ad_distill_student_dir")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(student_dir, student_params)
  return student_dir
