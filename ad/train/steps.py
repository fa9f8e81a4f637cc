"""The step loop the trainers share, and the TensorBoard writer every trainer uses.

StepLoop owns what distillation and SuperLM training repeat around their step functions: the
progress bar, the non-finite check, the loss log, TensorBoard scalars, the checkpoint cadence, a
checkpoint on Ctrl-C / SIGTERM before stopping, and the time split (checkpoint writes, what still
compiles inside the loop). A trainer keeps only its recipe: what one step does (its step function)
and what its checkpoints hold (its save function). Fine-tuning (no checkpoints, early stopping) and
the teacher's adaptation (a fixed number of steps inside one compiled program per stage) use the
writer and the non-finite error only.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import tensorflow as tf  # TensorBoard summaries (TensorFlow is loaded with the data pipeline already)
from tqdm import tqdm

from ad import interrupt
from ad.train.checkpoints import LossLog
from profiling.compile_stats import CompileLog


class NonFiniteLossError(FloatingPointError):
  """A NaN or inf loss: names the step and where in the run it happened."""


class MetricsWriter:
  """TensorBoard scalars in `logdir`; a writer that is not `enabled` (off process 0) does nothing."""

  def __init__(self, logdir: str, enabled: bool = True):
    self._writer = tf.summary.create_file_writer(logdir) if enabled else None

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._writer is None:
      return
    with self._writer.as_default(step=step):
      for tag, value in values.items():
        tf.summary.scalar(tag, value)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()


class StepLoop:
  """Steps `start`..`total` - 1 of one run, in one or more segments (distillation's stages; a SuperLM's
  training is one). `with StepLoop(...) as loop: state = loop.run(state, end, step, nonfinite)`.

  Each step's record is appended to the loss log, its float fields go to TensorBoard every
  `log_every` steps and at a segment's last step, and `save(g, state)` writes a checkpoint every
  `checkpoint_every` steps and at the end of every segment: a resume repeats at most
  checkpoint_every steps and never a finished segment (short flash stages are shorter than
  checkpoint_every). On Ctrl-C / SIGTERM the loop saves the step it reached, then stops with
  interrupt.Interrupted. After the block: `checkpoint_s`, `loop_s` and `compiles` (what compiled
  inside it, profiling/compile_stats.py)."""

  def __init__(self, *, start: int, total: int, what: str, desc: str, progress: bool, is_main: bool,
               loss_log: LossLog, writer: MetricsWriter, log_every: int, checkpoint_every: int,
               save: Callable[[int, Any], None]):
    self.step, self.what = start, what
    self.loss_log, self.writer, self.log_every, self.checkpoint_every = loss_log, writer, log_every, checkpoint_every
    self._save = save
    self.bar = tqdm(total=total, initial=start, disable=not (progress and is_main), dynamic_ncols=True, desc=desc)
    self.checkpoint_s = self.loop_s = 0.0
    self.compiles: dict = {}

  def __enter__(self) -> "StepLoop":
    self._compile_log = CompileLog().__enter__()
    self._t0 = time.time()
    return self

  def __exit__(self, *exc) -> bool:
    self.bar.close()
    self.writer.flush()
    self.loop_s = time.time() - self._t0
    self._compile_log.__exit__(*exc)
    self.compiles = self._compile_log.summary()
    return False

  def save(self, g: int, state) -> None:
    t = time.time()
    self._save(g, state)
    self.checkpoint_s += time.time() - t

  def run(self, state, end: int, step: Callable[[Any, int], tuple[Any, dict]],
          nonfinite: Callable[[int, dict], str], prefix: str = ""):
    """Runs steps self.step .. end - 1 and returns the state after them. step(state, g) -> (state,
    record): the record holds 'step', 'loss' (a float; with 'sub_losses', one per network a step
    trains), 'lr' and the loss terms. nonfinite(g, record): the error's message when a loss is NaN
    or infinite. prefix: before the TensorBoard tag of each term (not of 'loss' and 'lr')."""
    g = self.step
    while g < end:
      state, rec = step(state, g)
      if not all(math.isfinite(x) for x in rec.get("sub_losses", [rec["loss"]])):
        raise NonFiniteLossError(nonfinite(g, rec))
      self.loss_log.append(rec)
      if g % self.log_every == 0 or g == end - 1:
        self.writer.scalars(g, {n if n in ("loss", "lr") else prefix + n: v for n, v in rec.items()
                                if isinstance(v, float)})
      self.bar.set_postfix(loss=f"{rec['loss']:.4f}")
      g = self.step = g + 1
      self.bar.update(1)
      saved = g % self.checkpoint_every == 0 or g == end
      if saved:
        self.save(g, state)
      if interrupt.requested():  # leave a checkpoint at this step, then stop
        if not saved:
          self.save(g, state)
        interrupt.check(f"step {g} of {self.what} (checkpoint saved; --resume continues)")
    return state
