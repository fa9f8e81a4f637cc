"""TPU facts and programs compiled here for TPU chips: the chip table, topologies, XLA's cost
model with its -1 sentinels, per-device memory (profiling/peaks.py, profiling/tpu.py)."""

import jax
import jax.experimental.pallas.tpu as pltpu
import pytest

from profiling import harness, peaks, tpu

PLTPU_CHIP = {"v4": "TPU_V4", "v5e": "TPU_V5E", "v5p": "TPU_V5P", "v6e": "TPU_V6E"}


@pytest.mark.parametrize("chip", sorted(peaks.TPU_CHIPS))
def test_chip_table_agrees_with_the_per_core_figures_jax_ships(chip):
  facts = peaks.TPU_CHIPS[chip]
  info = pltpu.get_tpu_info_for_chip(getattr(pltpu.ChipVersion, PLTPU_CHIP[chip]), 1)  # one TensorCore
  cores = facts.tensorcores
  assert facts.bf16_flops_per_s == pytest.approx(info.bf16_ops_per_second * cores, rel=0.01)
  assert facts.hbm_bytes == pytest.approx(info.hbm_capacity_bytes * cores, rel=0.01)
  # v5p's bandwidth is the one documented exception (peaks.py): 2,765 GB/s against 2 x 1,230
  bandwidth_tol = 0.15 if chip == "v5p" else 0.01
  assert facts.hbm_bytes_per_s == pytest.approx(info.mem_bw_bytes_per_second * cores, rel=bandwidth_tol)


def test_a_device_gets_its_share_of_the_chip():
  whole = peaks.tpu_device_facts("TPU v4", cores_per_device=2)  # megacore: both TensorCores
  half = peaks.tpu_device_facts("TPU v4", cores_per_device=1)
  assert whole.hbm_bytes == peaks.TPU_CHIPS["v4"].hbm_bytes and half.hbm_bytes == whole.hbm_bytes / 2
  assert half.bf16_flops_per_s == whole.bf16_flops_per_s / 2
  assert peaks.tpu_device_facts("TPU v5 lite").bf16_flops_per_s == 197e12  # one TensorCore per chip
  with pytest.raises(ValueError, match="not in profiling/peaks.py TPU_KINDS"):
    peaks.tpu_device_facts("TPU v99")


def test_topologies_single_and_multi_host_and_bad_names():
  v4 = tpu.topology_devices("v4:2x2x2")  # 8 chips, megacore: one device per chip, two hosts
  assert len(v4) == 8 and tpu.hosts(v4) == 2 and v4[0].num_cores == 2
  assert len(tpu.topology_devices("v5e:4x4")) == 16 and tpu.hosts(tpu.topology_devices("v5e:4x4")) == 4
  assert tpu.parse_topology("tpu:v6e") == ("v6e", None)
  with pytest.raises(tpu.TopologyError, match="unknown TPU topology 'v9:2x2'"):
    tpu.topology_devices("v9:2x2")
  with pytest.raises(tpu.TopologyError, match="a v4 slice has 3 dimensions"):
    tpu.topology_devices("v4:2x2")
  with pytest.raises(tpu.TopologyError, match="libtpu cannot describe TPU topology 'v5e:3x3'"):
    tpu.topology_devices("v5e:3x3")


@pytest.fixture(scope="module")
def mobilebert_two_blocks_on_v5e():
  """MobileBERT's block x 2, bf16, batch 1, seq 128, compiled for one v5e chip (the XLA path): v5e
  stages its f32 pooler weight through a ConcatBitcast, whose cost is XLA's -1 sentinel."""
  device = tpu.topology_devices("v5e")[0]
  mesh = jax.sharding.Mesh([device], ("data",))
  fn, args, _ = harness.inference_program("512_128_4_512_4", dict(attention_impl="xla", ffn_impl="xla"), mesh=mesh,
                                          num_blocks=2, batch=1, seq=128, dtype="bfloat16")
  with jax.set_mesh(mesh), tpu.persistent_cache_off():
    return jax.jit(fn).lower(*args).compile(), device


def test_the_cost_models_sentinels_are_removed_and_the_estimate_is_positive(mobilebert_two_blocks_on_v5e):
  compiled, device = mobilebert_two_blocks_on_v5e
  raw = compiled.cost_analysis()["optimal_seconds"]
  est = tpu.estimate(compiled, device)
  assert -1 < raw < 0 and len(est["sentinel_ops"]) == 1  # one ConcatBitcast: -1 s plus the real time
  assert est["estimated_s"] == pytest.approx(raw + 1 + est["sentinel_own_s"])
  # what remains is a time of the order of the program's own roofline (FLOPs and bytes at the peaks)
  assert 0.5 * est["roofline_s"] < est["estimated_s"] < 3 * est["roofline_s"]


def test_an_estimate_with_an_unknown_sentinel_is_refused(mobilebert_two_blocks_on_v5e, monkeypatch):
  compiled, device = mobilebert_two_blocks_on_v5e
  monkeypatch.setattr(tpu, "SENTINEL_TARGETS", ())  # as if the sentinel's instruction were not known
  with pytest.raises(tpu.EstimateError, match="refusing to estimate"):
    tpu.estimate(compiled, device, what="mobilebert")


def test_memory_against_hbm(mobilebert_two_blocks_on_v5e):
  compiled, device = mobilebert_two_blocks_on_v5e
  m = tpu.memory(compiled, device)
  assert m["hbm_bytes"] == int(peaks.TPU_CHIPS["v5e"].hbm_bytes) and m["fits"] and m["over_bytes"] == 0
  # the arguments hold at least the f32 parameters of a 2-block MobileBERT-shaped student (25M of
  # 24 blocks' encoder is in the blocks; 2 blocks and the embeddings are above 4M parameters)
  assert m["argument_bytes"] > 4e6 * 4
  assert m["total_bytes"] >= m["argument_bytes"] + m["temp_bytes"]
