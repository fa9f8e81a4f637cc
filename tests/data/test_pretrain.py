"""The seqio pre-training task: masking, NSP, determinism, sharding, offline, bad input."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from ad.data import pretrain, settings as data_settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = pretrain.DataConfig(seq_len=64, max_predictions=20, validation_percent=2.0)


@pytest.fixture(scope="module")
def vocab():
  return pretrain.load_vocab(CFG)


@pytest.fixture(scope="module")
def task(vocab):
  return pretrain.make_task(CFG, vocab, max_positions=512, model_vocab_size=30522)


@pytest.fixture(scope="module")
def val_examples(task):
  """The whole validation split (one fixed pass), as a list of batches of 16."""
  return list(pretrain.batches(task, CFG, "validation", 16))


def _stack(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_batches_have_bert_layout(val_examples, vocab):
  b = val_examples[0]
  assert b["input_ids"].shape == (16, 64) and b["masked_positions"].shape == (16, 20) and b["nsp_label"].shape == (16,)
  assert (b["input_ids"][:, 0] == vocab.cls_id).all()
  for row, types, attn in zip(b["input_ids"], b["token_type_ids"], b["attention_mask"]):
    n = attn.sum()
    seps = np.flatnonzero(row[:n] == vocab.sep_id)
    assert seps[-1] == n - 1 and (row[n:] == vocab.pad_id).all()
    assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:n] == 1).all() and (types[n:] == 0).all()


def test_masking_statistics(val_examples, vocab):
  ex = _stack(val_examples)
  assert len(ex["input_ids"]) > 300
  specials = set(vocab.special_ids)
  n_masked = n_cand = n_mask_tok = n_kept = n_random = 0
  for ids, pos, orig, w, attn in zip(ex["input_ids"], ex["masked_positions"], ex["masked_ids"], ex["masked_weights"],
                                     ex["attention_mask"]):
    k = int(w.sum())
    pos, orig = pos[:k], orig[:k]
    assert not specials & set(orig.tolist()), "a special token was masked"
    assert len(set(pos.tolist())) == k and (pos < attn.sum()).all()
    unmasked = ids.copy()
    unmasked[pos] = orig
    cand = int(sum(t not in specials for t in unmasked[:attn.sum()]))
    assert k == min(CFG.max_predictions, max(1, round(cand * CFG.mask_rate)))
    n_masked += k
    n_cand += cand
    n_mask_tok += int((ids[pos] == vocab.mask_id).sum())
    n_kept += int((ids[pos] == orig).sum())
    n_random += int(((ids[pos] != orig) & (ids[pos] != vocab.mask_id)).sum())
    assert not specials & set(ids[pos][ids[pos] != vocab.mask_id].tolist())
  assert abs(n_masked / n_cand - 0.15) < 0.01
  assert abs(n_mask_tok / n_masked - 0.8) < 0.03
  # "unchanged" is 10%, plus random draws that happen to hit the original token (rare).
  assert abs(n_kept / n_masked - 0.1) < 0.025 and abs(n_random / n_masked - 0.1) < 0.025


def test_nsp_labels_are_balanced(task):
  labels = np.concatenate([b["nsp_label"] for b in itertools.islice(pretrain.batches(task, CFG, "train", 64), 40)])
  assert set(labels.tolist()) == {0, 1}
  assert abs(labels.mean() - 0.5) < 0.04


def test_deterministic_for_a_seed_and_different_across_seeds(task):
  a = next(pretrain.batches(task, CFG, "train", 8, seed=3))
  b = next(pretrain.batches(task, CFG, "train", 8, seed=3))
  c = next(pretrain.batches(task, CFG, "train", 8, seed=4))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["input_ids"], c["input_ids"])


def test_a_stream_started_at_batch_n_is_the_full_streams_batches_from_n(task):
  """What a resumed run reads: on each of 2 hosts, the stream from batch 3 is batches 3.. of the
  full stream, bit for bit."""
  for host in range(2):
    full = list(itertools.islice(pretrain.batches(task, CFG, "train", 4, host, 2), 6))
    later = list(itertools.islice(pretrain.batches(task, CFG, "train", 4, host, 2, start_batch=3), 3))
    for a, b in zip(full[3:], later, strict=True):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_starting_late_in_the_stream_reads_nothing_before_the_start(task, monkeypatch):
  """A source started just before an epoch boundary gives the full stream's pairs across it; a
  stream started at batch 1000 (example 8,000 over 2 hosts) never produces an example before it."""
  epoch0 = pretrain._epoch_length(CFG, pretrain._documents(CFG.sources, "train", CFG.validation_percent), CFG.seed,
                                  "train", 0)
  start = epoch0 - 2  # the first pairs straddle epochs 0 and 1
  full = list(itertools.islice(pretrain.pair_examples(CFG, "train"), start, start + 4))
  assert [e["example_id"] for e in full] == list(range(start, start + 4))
  later = list(itertools.islice(pretrain.pair_examples(CFG, f"train[{start}:]"), 4))
  assert [(e["text_a"], e["text_b"], e["example_id"]) for e in later] == [(e["text_a"], e["text_b"], e["example_id"])
                                                                          for e in full]
  produced = []
  real = pretrain.pair_examples

  def counting(cfg, split, seed=None):
    for e in real(cfg, split, seed):
      produced.append(int(e["example_id"]))
      yield e

  monkeypatch.setattr(pretrain, "pair_examples", counting)
  next(pretrain.batches(task, CFG, "train", 4, 0, 2, start_batch=1000))
  assert produced and min(produced) == 8000


def test_a_checkpoints_epoch_lengths_let_a_resume_skip_without_counting_epochs(monkeypatch):
  """Epoch lengths are learnt as epochs are read (and kept in checkpoints); given them, starting 3
  epochs in touches only the epoch it starts in (counted, then paired), whatever the position."""
  cfg = pretrain.DataConfig(**{**CFG.__dict__, "seed": 7})  # a stream no other test reads
  docs = pretrain._documents(cfg.sources, "train", cfg.validation_percent)
  lengths = [sum(1 for _ in pretrain._epoch_pairs(cfg, docs, 7, "train", e)) for e in range(3)]
  stream = pretrain.pair_examples(cfg, "train")
  for _ in range(sum(lengths) + 1):  # read epochs 0-2 to their end
    next(stream)
  assert pretrain.epoch_lengths(cfg)[:3] == lengths
  for e in range(3):
    del pretrain._EPOCH_LENGTHS[pretrain._length_key(cfg, 7, "train", e)]  # a new process...
  pretrain.remember_epoch_lengths(cfg, lengths)  # ...given the checkpoint's lengths
  calls = []
  real = pretrain.sentence_pairs
  monkeypatch.setattr(pretrain, "sentence_pairs", lambda *a: (calls.append(1), real(*a))[1])
  first = next(pretrain.pair_examples(cfg, f"train[{sum(lengths) + 5}:]"))
  assert first["example_id"] == sum(lengths) + 5 and len(calls) == 2  # epoch 3 alone: counted, then paired


def test_a_bad_split_is_named():
  for bad in ("train[5]", "test", "validation[3:]"):
    with pytest.raises(ValueError, match=r"split .*train\[N:\]"):
      pretrain.parse_split(bad)


def test_host_shards_are_disjoint_and_cover_the_split(task):
  full = {row.tobytes() for b in pretrain.batches(task, CFG, "validation", 1) for row in b["input_ids"]}
  shards = [{row.tobytes() for b in pretrain.batches(task, CFG, "validation", 1, shard_index=i, num_shards=2)
             for row in b["input_ids"]} for i in range(2)]
  assert shards[0].isdisjoint(shards[1])
  assert shards[0] | shards[1] == full


def test_validation_documents_never_reach_training():
  val = pretrain._documents(CFG.sources, "validation", CFG.validation_percent)
  train = pretrain._documents(CFG.sources, "train", CFG.validation_percent)
  assert set(val).isdisjoint(set(train)) and len(val) > 50


def test_pipeline_never_touches_the_network(tmp_path):
  code = (
      "import socket\n"
      "def blocked(*a, **k): raise OSError('network access attempted')\n"
      "socket.socket.connect = blocked\nsocket.socket.connect_ex = blocked\nsocket.create_connection = blocked\n"
      "from ad.data import pretrain\n"
      "cfg = pretrain.DataConfig(seq_len=32)\n"
      "task = pretrain.make_task(cfg, pretrain.load_vocab(cfg))\n"
      "b = next(pretrain.batches(task, cfg, 'validation', 4))\n"
      "print('ok', b['input_ids'].shape)\n")
  # an empty cache: the corpus is read and cleaned from its package files too, not from the cache
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "ok (4, 32)" in proc.stdout and list(tmp_path.rglob("wiki_*.json"))


def test_bad_config_and_model_mismatch(vocab):
  with pytest.raises(ValueError, match="data.seq_len=600 exceeds the model's 512 position embeddings"):
    pretrain.make_task(pretrain.DataConfig(seq_len=600), vocab, max_positions=512)
  with pytest.raises(ValueError, match="has 30522 tokens but the model's embedding has 1000 rows"):
    pretrain.make_task(CFG, vocab, model_vocab_size=1000)
  with pytest.raises(ValueError, match="data.mask_rate=1.5"):
    pretrain.DataConfig(mask_rate=1.5)
  with pytest.raises(ValueError, match=r"unknown keys \['seqlen'\]"):
    data_settings.config_from_dict({"seqlen": 3})


def test_missing_source_file_is_named(tmp_path, vocab):
  cfg = pretrain.DataConfig(seq_len=32, sources=(str(tmp_path / "missing.txt"),))
  task = pretrain.make_task(cfg, vocab)
  with pytest.raises(Exception, match="missing.txt: no such file"):
    next(pretrain.batches(task, cfg, "train", 2))
