import json

import jax.numpy as jnp
import numpy as np
import pytest

from ad import cli
from profiling import harness


def test_median_ci95_brackets_the_median():
  x = np.arange(1, 101, dtype=float)
  lo, hi = harness.median_ci95(x)
  assert lo < np.median(x) < hi
  assert (lo, hi) == (41.0, 61.0)  # ranks 50 -+ 1.96*sqrt(100)/2 = 9.8, rounded outwards


def test_measure_fn_utilizations_in_unit_interval(tmp_path):
  a = jnp.ones((256, 256)) * 0.01
  r = harness.measure_fn(lambda x: jnp.tanh(x @ x) @ x, (a,), name="mm", batch=1, trace_dir=str(tmp_path),
                         min_reps=10, max_reps=30)
  assert r["flops"] == pytest.approx(2 * 2 * 256 ** 3, rel=0.01)
  assert 0 < r["flops_utilization"] <= 1
  assert 0 < r["bandwidth_utilization"] <= 1
  assert 10 <= r["repetitions"] <= 30 and r["repetitions"] % 10 == 0
  assert r["latency_ms_median"] <= r["latency_ms_p90"]
  assert r["wall_ms_median"] >= r["latency_ms_median"]
  assert r["peak_source"].startswith("cpu_calibration")
  assert list((tmp_path / "round_000").rglob("*.xplane.pb")), "the trace must be kept for TensorBoard"


def _slices_of_block_parameters(hlo: str) -> int:
  """Slices of the blocks' entry parameters in the optimized HLO (directly, or of a fusion operand
  that is one): on XLA:CPU a slice of a stacked weight is a copy of it on every call."""
  import re
  bodies = dict(re.findall(r"^(%\S+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M))
  entry = hlo[hlo.index("ENTRY"):]
  params = {p for p in re.findall(r"(%\S+) = \S+ parameter\(", entry) if "blocks" in p}
  count = 0
  for line in entry.splitlines():
    m = re.match(r"\s*(?:ROOT )?\S+ = \S+ (\w[\w-]*)\(([^)]*)\)(.*)", line)
    if not m:
      continue
    op, operands = m.group(1), [o.strip() for o in re.sub(r"/\*.*?\*/", "", m.group(2)).split(",")]
    if op in ("slice", "dynamic-slice") and operands[0] in params:
      count += 1
    callee = re.search(r"calls=(%[^,\s]+)", m.group(3))
    if op == "fusion" and callee:
      body = bodies.get(callee.group(1), "")
      index = {name: int(k) for name, k in re.findall(r"(%\S+) = \S+ parameter\((\d+)\)", body)}
      for sliced in re.findall(r"= \S+ (?:dynamic-)?slice\((%[^,)\s]+)", body):
        if sliced in index and operands[index[sliced]] in params:
          count += 1
  return count


def test_inference_forward_never_copies_stacked_weights():
  """The stacked [K, F, ...] parameters reach the inference program as per-layer arrays
  (ad/models/stack.py), so no call slices (copies) weights; the outputs equal the model's."""
  import jax
  from flax import nnx
  from ad.models import student as student_lib
  fn, (params, ids), cfg = harness.student_forward("128_64_2_128_2", num_blocks=3, dtype="float32")
  options = harness.inference_compiler_options("float32")
  fast = jax.jit(fn).lower(params, ids).compile(options or None)
  graphdef, state = nnx.split(student_lib.Student(cfg, nnx.Rngs(0)))  # the same parameters, stacked
  stacked = lambda state, ids: nnx.merge(graphdef, state).encode(ids, unroll=True)["sequence_output"]
  slow = jax.jit(stacked).lower(state, ids).compile(options or None)
  assert _slices_of_block_parameters(slow.as_text()) >= 3 * 6  # the detector sees the stacked program's copies
  assert _slices_of_block_parameters(fast.as_text()) == 0
  np.testing.assert_array_equal(np.asarray(fast(params, ids)[0]), np.asarray(slow(state, ids)))


def test_profile_json_has_every_field(capsys, tmp_path):
  assert cli.main(["profile", "--arch", "128_64_2_384_2", "--blocks", "1", "--seq", "32", "--max-reps", "20",
                   "--trace-dir", str(tmp_path), "--json"]) == 0
  r = json.loads(capsys.readouterr().out)
  missing = [f for f in harness.RESULT_FIELDS if f not in r]
  assert not missing, missing
  assert r["arch"] == "128_64_2_384_2" and r["batch"] == 1 and r["seq"] == 32
  assert r["trace_source"] == "cpu_host_ops" and r["top_ops"] and r["top_ops"][0]["count"] == r["repetitions"]
  assert r["tokens_per_s"] == pytest.approx(32 * r["throughput_per_s"])
  assert 0 < r["matmul_share"] < 1 and 0 < r["matmul_ms_median"] < r["latency_ms_median"]
  # The quickstart's students compute in bf16; the options chosen for that dtype are recorded.
  assert r["dtype"] == "bfloat16" and r["compiler_options"] == harness.inference_compiler_options("bfloat16")
  assert r["fused_ffn_ran"] == []  # model.ffn_impl is xla: no fused kernel was traced
  assert harness.inference_compiler_options("float32") == {"xla_cpu_experimental_ynn_fusion_type": ""}
  assert harness.inference_compiler_options("float32", backend="gpu") == {}


@pytest.mark.parametrize("argv,match", [
    (["profile", "--arch", "512_128_4_512_8"], "num_ffn=8 is outside the design space"),
    (["profile", "--arch", "foo"], "malformed architecture name"),
    (["profile", "--arch", "128_64_2_384_2", "--batch", "0"], r"--batch: 0: expected an integer >= 1"),
    (["profile", "--arch", "128_64_2_384_2", "--seq", "513"], r"seq 513 is outside \(0, 512\]"),
])
def test_profile_bad_arguments(capsys, argv, match):
  import re
  assert cli.main(argv) == 2
  assert re.search(match, capsys.readouterr().err)


def test_compile_only_matches_measured_flops():
  c = harness.compile_only_arch("128_64_2_384_2", num_blocks=1, seq=32)
  assert c["flops"] > 0 and c["peak_bytes"] > 0 and "compiled" not in c
