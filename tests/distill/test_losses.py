import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ad.distill import losses
from ad.models import student as student_lib


def _probs(key, b, a, t):
  return jax.nn.softmax(jax.random.normal(key, (b, a, t, t)) * 2, -1)


def test_attention_kl_is_zero_for_equal_maps_and_positive_otherwise():
  mask = jnp.ones((2, 6))
  p = _probs(jax.random.key(0), 2, 4, 6)
  q = _probs(jax.random.key(1), 2, 4, 6)
  assert float(losses.attention_kl(p, p, mask)) == pytest.approx(0.0, abs=1e-6)
  kl = float(losses.attention_kl(p, q, mask))
  ref = float((p * (jnp.log(p) - jnp.log(q))).sum(-1).mean())  # eq. 1 averaged over S and H
  assert kl == pytest.approx(ref, rel=1e-5) and kl > 0


def test_attention_kl_head_mapping():
  t = _probs(jax.random.key(2), 1, 12, 5)
  mask = jnp.ones((1, 5))
  # 12 teacher heads -> 4 student heads: groups of 3 teacher heads averaged.
  s_matched = t.reshape(1, 4, 3, 5, 5).mean(2)
  assert float(losses.attention_kl(t, s_matched, mask)) == pytest.approx(0.0, abs=1e-6)
  # 12 -> 8 does not divide: both sides averaged over all heads.
  s8 = jnp.broadcast_to(t.mean(1, keepdims=True), (1, 8, 5, 5))
  assert float(losses.attention_kl(t, s8, mask)) == pytest.approx(0.0, abs=1e-6)


def test_attention_kl_ignores_padded_queries():
  p, q = _probs(jax.random.key(3), 1, 2, 6), _probs(jax.random.key(4), 1, 2, 6)
  q2 = q.at[:, :, 4:].set(p[:, :, 4:] * 0 + 1 / 6)  # change only padded query rows
  mask = jnp.array([[1, 1, 1, 1, 0, 0]])
  assert float(losses.attention_kl(p, q, mask)) == pytest.approx(float(losses.attention_kl(p, q2, mask)), rel=1e-6)


def test_feature_mse_and_adapter():
  t = jax.random.normal(jax.random.key(0), (2, 4, 8))
  mask = jnp.ones((2, 4))
  assert float(losses.feature_mse(t, t, mask)) == 0.0
  assert float(losses.feature_mse(t, t + 1.0, mask)) == pytest.approx(1.0)
  a = losses.Adapters(3, 6, 8, nnx.Rngs(0))
  assert a(1, jnp.ones((2, 4, 6))).shape == (2, 4, 8)
  assert losses.Adapters(3, 8, 8, nnx.Rngs(0)).identity


def test_pretraining_loss_is_eq3():
  k = jax.random.split(jax.random.key(0), 3)
  s, t = jax.random.normal(k[0], (2, 3, 11)), jax.random.normal(k[1], (2, 3, 11))
  nsp = jax.random.normal(k[2], (2, 2))
  b = dict(masked_ids=jnp.array([[1, 2, 0], [3, 4, 5]]), masked_weights=jnp.array([[1.0, 1, 0], [1, 1, 1]]),
           nsp_label=jnp.array([0, 1]))
  total, terms = losses.pretraining_loss(s, t, nsp, b, alpha=0.3, temperature=2.0)
  assert float(total) == pytest.approx(float(0.3 * terms["mlm"] + 0.7 * terms["mlm_kd"] + terms["nsp"]), rel=1e-6)
  # KD to oneself is the entropy (x T^2), the minimum over student logits.
  _, self_terms = losses.pretraining_loss(t, t, nsp, b, alpha=0.0, temperature=2.0)
  assert float(self_terms["mlm_kd"]) < float(terms["mlm_kd"])


def test_block_mapping_uniform_and_errors():
  assert losses.block_mapping(2, 6) == [2, 5]
  assert losses.block_mapping(6, 6) == list(range(6))
  assert losses.block_mapping(24, 24)[-1] == 23 and losses.block_mapping(4, 12) == [2, 5, 8, 11]
  with pytest.raises(ValueError, match="positive counts"):
    losses.block_mapping(0, 6)


@pytest.mark.parametrize("K,L", [(24, 6), (8, 6), (7, 3), (6, 6)])
def test_students_deeper_than_the_teacher_map_contiguous_groups(K, L):
  m = losses.block_mapping(K, L)
  assert m[-1] == L - 1 and m == sorted(m) and set(m) == set(range(L))  # monotone, every layer used
  sizes = [m.count(j) for j in range(L)]
  assert max(sizes) - min(sizes) <= 1 and sum(sizes) == K  # groups of floor(K/L) or ceil(K/L) blocks
  if K == 24:
    assert m == [j for j in range(6) for _ in range(4)]


def test_resample_identity_and_linear_ramp():
  x = jax.random.normal(jax.random.key(0), (5, 16))
  np.testing.assert_array_equal(np.asarray(losses.resample(x, 16)), np.asarray(x))
  ramp = jnp.tile(jnp.arange(7.0)[None], (3, 1))  # 0..6
  np.testing.assert_allclose(np.asarray(losses.resample(ramp, 4)), np.tile([0.0, 2.0, 4.0, 6.0], (3, 1)), atol=1e-6)
  np.testing.assert_allclose(np.asarray(losses.resample(ramp, 13)), np.tile(np.arange(13) / 2, (3, 1)), atol=1e-6)


def test_student_embeddings_start_from_the_teachers():
  from ad.models import teacher as teacher_lib
  t = teacher_lib.Bert(teacher_lib.BertConfig(vocab_size=50, hidden_size=24, num_layers=1, num_heads=2,
                                              intermediate_size=32, max_positions=40), nnx.Rngs(0))
  s = student_lib.Student(student_lib.StudentConfig(arch="128_64_2_384_2", num_blocks=1, vocab_size=50,
                                                    embedding_size=16, max_positions=64), nnx.Rngs(1))
  losses.init_embeddings_from_teacher(s, t)
  np.testing.assert_allclose(np.asarray(s.embeddings.word[...]), np.asarray(losses.resample(t.word[...], 16)))
  np.testing.assert_allclose(np.asarray(s.embeddings.position[...][:40]),
                             np.asarray(losses.resample(t.position[...], 128)))
  # Positions the teacher lacks keep their initialization (not zeros).
  assert float(jnp.abs(s.embeddings.position[...][40:]).sum()) > 0
