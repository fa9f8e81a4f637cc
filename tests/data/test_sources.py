import bz2
import json

import pytest

from ad.data import sources
from ad.data.sources import DataError


def test_text_blocks_and_per_file(tmp_path):
  (tmp_path / "a.txt").write_text("First doc. Two sentences.\n\nSecond doc here.\n")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.txt").write_text("Third.")
  blocks = list(sources.read_text(str(tmp_path)))
  assert [t.strip() for _, t in blocks] == ["First doc. Two sentences.", "Second doc here.", "Third."]
  files = list(sources.read_text(str(tmp_path), per_file=True))
  assert [d for d, _ in files] == ["a.txt", "sub/b.txt"]


def test_json_jsonl_and_object_of_objects(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
  assert [t for _, t in sources.read_json(str(tmp_path / "a.jsonl"))] == ["one", "two"]
  (tmp_path / "b.json").write_text(json.dumps({"X": {"extract": "x text"}, "Y": {"extract": "y text"}}))
  assert list(sources.read_json(str(tmp_path / "b.json"), "extract")) == [("X", "x text"), ("Y", "y text")]


def test_wiki_dump_is_cleaned_prose():
  docs = list(sources.read_wiki_dump(sources.gensim_dump_path()))
  assert len(docs) > 90
  doc_id, text = docs[0]
  assert doc_id.startswith("wiki:") and "[[" not in text and "{{" not in text and "'''" not in text


def _one_article_dump(path, text):
  xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>Tiny</title><ns>0</ns><id>7</id>'
         f'<revision><id>1</id><text>{text}</text></revision></page></mediawiki>')
  path.write_bytes(bz2.compress(xml.encode()))


def test_a_dump_is_parsed_once_then_read_from_the_cache_by_its_content(tmp_path, monkeypatch):
  """The cleaned articles are cached under the dump's content: read again without parsing, parsed
  again when the cache is damaged, and a different dump at the same path is never served the old
  articles."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  parsed = []
  real = sources._parse_wiki_dump
  monkeypatch.setattr(sources, "_parse_wiki_dump", lambda path, min_chars: parsed.append(path) or real(path, min_chars))
  dump = tmp_path / "dump.xml.bz2"
  _one_article_dump(dump, "The first tiny article. " * 20)
  first = list(sources.read_wiki_dump(str(dump)))
  assert list(sources.read_wiki_dump(str(dump))) == first and len(parsed) == 1
  (cached,) = (tmp_path / "cache").rglob("wiki_*.json")
  cached.write_text("{damaged")
  assert list(sources.read_wiki_dump(str(dump))) == first and len(parsed) == 2
  _one_article_dump(dump, "Another article altogether. " * 20)
  other = list(sources.read_wiki_dump(str(dump)))
  assert len(parsed) == 3 and other[0][1].startswith("Another") and first[0][1].startswith("The first")


@pytest.mark.parametrize("make,match", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_text(""), "empty file"),
    (lambda p: p.write_bytes(b"caf\xe9 \xff\xfe bad"), "not valid UTF-8"),
])
def test_bad_text_files_are_named(tmp_path, make, match):
  path = tmp_path / "doc.txt"
  make(path)
  with pytest.raises(DataError, match=rf"{path}: {match}"):
    list(sources.read_source(str(path)))


def test_bad_json_and_dump(tmp_path):
  p = tmp_path / "x.jsonl"
  p.write_text('{"body": "no text field"}\n')
  with pytest.raises(DataError, match=r"x.jsonl: record 1 has no field 'text'"):
    list(sources.read_json(str(p)))
  p = tmp_path / "broken.xml.bz2"
  p.write_bytes(b"not bz2 at all")
  with pytest.raises(DataError, match="broken.xml.bz2: not a readable"):
    list(sources.read_wiki_dump(str(p)))
  with pytest.raises(DataError, match="unknown source type"):
    (tmp_path / "x.csv").write_text("a,b")
    list(sources.read_source(str(tmp_path / "x.csv")))


def test_validation_split_is_by_document_and_stable():
  docs = [(f"doc{i}", f"Text {i}. More.") for i in range(2000)]
  val = sources.split_documents(docs, "validation", 5.0)
  train = sources.split_documents(docs, "train", 5.0)
  assert {d for d, _ in val}.isdisjoint({d for d, _ in train}) and len(val) + len(train) == 2000
  assert 60 < len(val) < 140  # ~5%
  assert sources.split_documents(docs, "validation", 5.0) == val


def test_sentences():
  assert sources.sentences("It rained! Did it? 3 cats sat (twice). \"Quoted.\" Done.\n\nNew para.") == [
      "It rained!", "Did it?", "3 cats sat (twice).", "\"Quoted.\"", "Done.", "New para."]
