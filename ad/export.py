"""Students out to the transformers ecosystem: complete Hugging Face model directories.

An exported directory holds everything `transformers` needs at once: `config.json` and
`model.safetensors` (MobileBertForPreTraining, ad/models/hf.py), the WordPiece tokenizer the data
pipeline used (`vocab.txt`, `tokenizer_config.json`, `special_tokens_map.json`), and a model card
(`README.md`: architecture, teacher, data, held-out metrics with standard errors, latency where
measured, the command that made it). So `pipeline("fill-mask", model=DIR)`,
`AutoTokenizer.from_pretrained(DIR)` and `AutoModelForSequenceClassification.from_pretrained(DIR)`
work on it unchanged.

A distillation workdir records what an export needs in `student.json` (written when the run
starts: student config, tokenizer, data, teacher) and the final student alone in `student/`
(orbax). `ad export WORKDIR|RUN_DIR --out DIR` exports one workdir, or every finished final
student of a search run directory into DIR/<arch>.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from ad import files, rundir
from ad.train.params import Rebuild, nonfinite
from ad.models import hf, student as student_lib

STUDENT_INFO = "student.json"
STUDENT_DIR = "student"
VOCAB_COPY = "vocab.txt"  # the tokenizer's vocabulary, copied into the workdir so it travels with it


def write_student_info(workdir: str, scfg, vocab, data_cfg, teacher_dir: str, schedule: str) -> dict:
  """student.json of a distillation workdir (and a copy of the vocabulary beside it)."""
  vocab_copy = os.path.join(workdir, VOCAB_COPY)
  if not os.path.isfile(vocab_copy):
    shutil.copyfile(vocab.vocab_file, vocab_copy + ".tmp")
    os.replace(vocab_copy + ".tmp", vocab_copy)
  config = dataclasses.asdict(scfg)
  config["arch"] = scfg.arch.name
  info = dict(student_config=config, lower_case=vocab.lower_case, vocab_file=VOCAB_COPY, seq_len=data_cfg.seq_len,
              data_sources=list(data_cfg.sources), teacher_dir=teacher_dir, schedule=schedule,
              command=files.command_line())
  files.write_json(os.path.join(workdir, STUDENT_INFO), info)
  return info


def model_card(info: dict, metrics: dict | None, latency: dict | None = None) -> str:
  c = info["student_config"]
  h, bn, a, i, f = c["arch"].split("_")
  lines = [f"# MobileBERT-style student {c['arch']} (autodistill-jax)", "",
           "Distilled by autodistill-jax (AutoDistill: flash distillation and multi-objective Bayesian "
           "optimization of MobileBERT-style students). Load with `transformers`:", "",
           "```python", "from transformers import pipeline", "fill = pipeline('fill-mask', model='THIS_DIRECTORY')",
           "```", "", "## Architecture", "",
           f"- {c['num_blocks']} MobileBERT blocks: hidden {h}, bottleneck {bn}, {a} heads, intermediate {i}, "
           f"{f} FFNs per block; embedding {c['embedding_size']}, vocabulary {c['vocab_size']}, "
           f"normalization {c['norm']}, trigram input {c['trigram_input']}",
           f"- compute dtype during distillation: {c['dtype']} (parameters float32)", "",
           "## Distillation", "",
           f"- teacher: {info.get('teacher_dir', '?')}",
           f"- data: {', '.join(info.get('data_sources', []))}, sequence length {info.get('seq_len')}, "
           f"tokenizer lower_case={info.get('lower_case')}",
           f"- schedule: {info.get('schedule')}" + (f", {metrics['steps']} steps of batch {metrics['batch_size']}"
                                                    if metrics else ""),
           f"- command: `{info.get('command', '')}`", ""]
  if metrics:
    lines += ["## Held-out metrics", "",
              f"On {metrics['masked_tokens']} masked tokens in {metrics['sequences']} held-out pairs (standard "
              "errors over sequences):", "",
              "| metric | value |", "|---|---|",
              f"| MLM accuracy | {metrics['mlm_accuracy']:.4f} +- {metrics['mlm_accuracy_se']:.4f} |",
              f"| MLM cross-entropy (nats) | {metrics['mlm_cross_entropy']:.4f} +- {metrics['mlm_cross_entropy_se']:.4f} |"]
    if metrics.get("teacher_agreement") is not None:
      lines.append(f"| top-1 agreement with the teacher | {metrics['teacher_agreement']:.4f} +- "
                   f"{metrics['teacher_agreement_se']:.4f} |")
    if metrics.get("teacher_mlm_accuracy") is not None:
      lines.append(f"| teacher's MLM accuracy | {metrics['teacher_mlm_accuracy']:.4f} +- "
                   f"{metrics['teacher_mlm_accuracy_se']:.4f} |")
    lines.append("")
  if latency:
    lines += ["## Latency", "",
              f"{latency['latency_ms']:.3f} ms (median of XLA trace device times) at batch {latency.get('batch', 1)}, "
              f"seq {latency.get('seq', '?')}, {latency.get('blocks', c['num_blocks'])} blocks on "
              f"{latency.get('device', 'the measured machine')}.", ""]
  return "\n".join(lines)


def export_student(student, out_dir: str, info: dict, workdir: str, metrics: dict | None = None,
                   latency: dict | None = None) -> str:
  """A complete HF directory for `student` (see the module docstring)."""
  hf.export_mobilebert(student, out_dir)
  hf.write_tokenizer(out_dir, os.path.join(workdir, info["vocab_file"]), info["lower_case"],
                     max_length=info["student_config"]["max_positions"])
  with open(os.path.join(out_dir, "README.md"), "w") as f:
    f.write(model_card(info, metrics, latency))
  return out_dir


def load_student(workdir: str):
  """(Student, student.json, metrics.json or None) of a finished distillation workdir."""
  import jax
  import orbax.checkpoint as ocp
  info_path = os.path.join(workdir, STUDENT_INFO)
  if not os.path.isfile(info_path):
    raise FileNotFoundError(f"{workdir}: no {STUDENT_INFO}; expected a distillation workdir made by `ad distill` "
                            "or a search's final/<arch> (or a search run directory). Workdirs written before "
                            "`ad export` existed lack it; their final/<arch>/hf holds the weights and config")
  info = files.read_json(info_path, "student record")
  ckpt = os.path.join(workdir, STUDENT_DIR)
  if not os.path.isdir(ckpt):
    raise FileNotFoundError(f"{workdir}: no {STUDENT_DIR}/ checkpoint; the run has not finished (resume it with "
                            "`ad distill ... --resume`)")
  c = dict(info["student_config"])
  arch = c.pop("arch")
  scfg = student_lib.config_from_dict(arch, c)
  rebuild = Rebuild(student_lib.abstract_student(scfg))
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), rebuild.params)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      params = checkpointer.restore(os.path.abspath(ckpt), target)
  except Exception as e:  # orbax/tensorstore raise many types for a truncated or foreign checkpoint
    raise files.BadFileError(f"{ckpt}: cannot restore the student ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                             "the checkpoint is damaged or incomplete: distill it again (`ad distill ... --resume` "
                             "rewrites it from the run's last checkpoint)") from None
  bad = nonfinite(params)
  if bad:
    raise files.BadFileError(f"{ckpt}: non-finite parameters {bad[:3]}; the checkpoint is damaged: distill it again "
                             "(`ad distill ... --resume`)")
  metrics_path = os.path.join(workdir, "metrics.json")
  metrics = files.read_json(metrics_path, "metrics") if os.path.isfile(metrics_path) else None
  return rebuild(params), info, metrics


def check_out(out: str, force: bool, source: str | None = None, what: str = "--out") -> None:
  """An export's destination: never a file, never inside (or holding) its source, never a non-empty
  directory unless `force` (an export writes config.json, model.safetensors, README.md, the
  tokenizer's files: a user's own would be overwritten)."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise FileExistsError(f"{what} {out}: a file is in the way; give a directory")
  if source:
    a, b = os.path.realpath(out), os.path.realpath(source)
    if a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep):
      raise ValueError(f"{what} {out} is (or contains, or is inside) the export's source {source}; choose another "
                       "directory")
  if os.path.isdir(out) and os.listdir(out) and not force:
    raise FileExistsError(f"{what} {out} exists and is not empty; choose another or pass --force to overwrite the "
                          "files an export writes there")


def export_path(path: str, out: str, log=print, latencies: dict | None = None) -> list[str]:
  """`ad export`: a distillation workdir -> OUT; a search run directory -> OUT/<arch> per final.
  latencies: arch -> the latency record a final's model card states (card_latency of its trial;
  the caller reads them from the search's store)."""
  path = os.path.abspath(path)
  if os.path.isfile(os.path.join(path, STUDENT_INFO)):
    student, info, metrics = load_student(path)
    return [export_student(student, out, info, path, metrics)]
  finals = rundir.finals_dir(path)
  if not os.path.isdir(finals):
    raise FileNotFoundError(f"{path}: neither a distillation workdir (no {STUDENT_INFO}) nor a search run directory "
                            "(no final/)")
  latencies = latencies or {}
  done = []
  for arch in sorted(os.listdir(finals)):
    wd = os.path.join(finals, arch)
    if not os.path.isdir(os.path.join(wd, STUDENT_DIR)):
      log(f"export: {wd} has no finished student; skipped")
      continue
    student, info, metrics = load_student(wd)
    done.append(export_student(student, os.path.join(out, arch), info, wd, metrics, latencies.get(arch)))
  if not done:
    raise FileNotFoundError(f"{finals}: no finished final student to export")
  return done


def card_latency(objectives: dict | None, measurement: dict | None) -> dict | None:
  """The latency record a model card states, from a search trial's objectives and measurement
  (None if it has no latency)."""
  lat, m = (objectives or {}).get("latency_ms"), measurement or {}
  if lat is None:
    return None
  return dict(latency_ms=lat, batch=m.get("batch"), seq=m.get("seq"), blocks=m.get("num_blocks"),
              device=m.get("device_kind"))
