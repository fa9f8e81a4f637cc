import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ad.models import student as student_lib
from ad.models.student import StudentConfig

# 003 Table 2 (total, M) and the 24-block encoder / embedding parameter counts measured with
# transformers' MobileBertConfig for the same architectures (issue #2).
TABLE2 = {
    "512_128_4_512_4": (25.3, 20_213_760),  # MobileBERT
    "512_128_1_384_4": (22.2, 17_055_744),
    "512_128_1_640_2": (20.6, 15_458_304),
    "512_128_1_640_4": (28.5, 23_371_776),
    "512_128_2_640_2": (20.6, 15_458_304),
    "512_128_4_512_2": (19.0, 13_879_296),
    "512_128_4_640_2": (20.6, 15_458_304),
    "512_160_2_512_2": (22.8, 17_702_400),
}
HF_EMBEDDINGS = 4_368_128


@pytest.mark.parametrize("arch", sorted(TABLE2))
def test_table2_parameter_counts(arch):
  paper_m, hf_encoder = TABLE2[arch]
  counts = student_lib.param_counts(StudentConfig(arch=arch, num_blocks=24))
  assert counts["encoder"] == hf_encoder
  assert counts["embeddings"] == HF_EMBEDDINGS
  assert abs(counts["paper_total"] / 1e6 - paper_m) / paper_m < 0.015


def test_mobilebert_total_matches_hf_pretraining_count():
  # HF's MobileBertForPreTraining counts 36.9M for MobileBERT, the extra MLM decoder included.
  counts = student_lib.param_counts(StudentConfig(arch="512_128_4_512_4", num_blocks=24))
  assert counts["mlm_extra"] == 30522 * (512 - 128)
  assert round(counts["total"] / 1e6, 1) == 36.9


@pytest.mark.parametrize("arch,norm,trigram", [("512_128_4_512_4", "no_norm", True), ("128_64_1_384_6", "layer_norm", False),
                                               ("384_160_8_640_2", "no_norm", True)])
def test_closed_form_counts_equal_the_module(arch, norm, trigram):
  cfg = StudentConfig(arch=arch, num_blocks=3, norm=norm, trigram_input=trigram)
  assert student_lib.count_module_params(student_lib.abstract_student(cfg)) == student_lib.param_counts(cfg)["total"]


def test_forward_returns_per_block_targets():
  cfg = StudentConfig(arch="128_64_2_384_2", num_blocks=3, vocab_size=200, max_positions=64, embedding_size=32)
  model = student_lib.Student(cfg, nnx.Rngs(0))
  ids = jax.random.randint(jax.random.key(0), (2, 16), 0, 200)
  mask = jnp.ones((2, 16), jnp.int32).at[1, 10:].set(0)
  out = model(ids, attention_mask=mask)
  assert len(out["hidden_states"]) == 3 and len(out["attentions"]) == 3
  assert out["hidden_states"][0].shape == (2, 16, 128)
  assert out["attentions"][0].shape == (2, 2, 16, 16)
  assert out["mlm_logits"].shape == (2, 16, 200) and out["nsp_logits"].shape == (2, 2)
  np.testing.assert_allclose(np.asarray(out["attentions"][1]).sum(-1), 1.0, atol=1e-5)
  # Padded keys get no attention.
  assert float(jnp.max(out["attentions"][0][1, :, :, 10:])) == 0.0
  assert np.array_equal(np.asarray(out["sequence_output"]), np.asarray(out["hidden_states"][-1]))


def test_padding_does_not_change_unpadded_positions():
  cfg = StudentConfig(arch="128_64_2_384_2", num_blocks=2, vocab_size=100, max_positions=32, embedding_size=32,
                      trigram_input=False)
  model = student_lib.Student(cfg, nnx.Rngs(1))
  ids = jax.random.randint(jax.random.key(1), (1, 12), 1, 100)
  short = model.encode(ids[:, :8])["sequence_output"]
  mask = jnp.ones((1, 12), jnp.int32).at[:, 8:].set(0)
  padded = model.encode(ids, attention_mask=mask)["sequence_output"][:, :8]
  np.testing.assert_allclose(np.asarray(short), np.asarray(padded), atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(norm="batch_norm"), "norm='batch_norm'"),
    (dict(attention_impl="cuda"), "attention_impl='cuda'"),
    (dict(num_blocks=0), "num_blocks must be positive"),
    (dict(embedding_size=1024), "embedding_size=1024 exceeds hidden=512"),
])
def test_bad_student_config_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    StudentConfig(arch="512_128_4_512_4", **kwargs)


def test_config_from_dict_rejects_unknown_keys():
  with pytest.raises(ValueError, match=r"unknown keys \['num_layers'\]"):
    student_lib.config_from_dict("512_128_4_512_4", {"num_layers": 4})



def test_kernel_choice_follows_the_platform_compiled_for():
  cfg = StudentConfig(arch="128_64_2_256_2", num_blocks=1)  # attention_impl = ffn_impl = 'auto'
  assert student_lib.kernel_choice(cfg, "attention", "cpu")[0] == "xla"
  assert student_lib.kernel_choice(cfg, "attention", "tpu")[0] == "pallas"
  assert student_lib.kernel_choice(cfg, "ffn", "gpu")[0] == "pallas"
  gelu = StudentConfig(arch="128_64_2_256_2", num_blocks=1, hidden_act="gelu")
  impl, why = student_lib.kernel_choice(gelu, "ffn", "tpu")
  assert impl == "xla" and "relu-only" in why  # a fallback says why
  forced = StudentConfig(arch="128_64_2_256_2", num_blocks=1, attention_impl="xla")
  assert student_lib.kernel_choice(forced, "attention", "tpu")[0] == "xla"


def test_kernels_per_device_under_a_mesh_give_the_xla_paths_loss_and_gradients():
  """On 4 CPU devices (data 2 x model 2) the interpreted kernels run inside shard_map (batch over
  data, heads and positions over model): the loss and every parameter gradient equal the XLA path's."""
  mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=jax.devices()[:4])
  ids = jax.random.randint(jax.random.key(1), (4, 16), 0, 30522)
  mask = jnp.ones((4, 16), jnp.int32).at[1, 10:].set(0)

  def loss_and_grads(impl):
    cfg = StudentConfig(arch="128_64_2_256_2", num_blocks=2, attention_impl=impl, ffn_impl=impl)
    graphdef, params = nnx.split(student_lib.Student(cfg, nnx.Rngs(0)), nnx.Param)

    def loss(params):
      out = nnx.merge(graphdef, params).encode(ids, attention_mask=mask)
      return jnp.sum(out["sequence_output"] ** 2) + jnp.sum(out["attentions"][:, :, :, :, :8])
    with jax.set_mesh(mesh):
      return jax.jit(jax.value_and_grad(loss))(params)
  (l_xla, g_xla), (l_pallas, g_pallas) = loss_and_grads("xla"), loss_and_grads("pallas")
  np.testing.assert_allclose(float(l_pallas), float(l_xla), rtol=1e-5)
  scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(g_xla) if b.size)  # some are 0 up to rounding
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_pallas), jax.tree.leaves(g_xla)):
    assert not b.size or float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-5 * scale, jax.tree_util.keystr(path)
