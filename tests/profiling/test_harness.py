import json

import jax.numpy as jnp
import numpy as np
import pytest

from ad import cli, configs
from ad import space as space_lib
from ad.search import objectives
from profiling import harness


def test_median_ci95_brackets_the_median():
  x = np.arange(1, 101, dtype=float)
  lo, hi = harness.median_ci95(x)
  assert lo < np.median(x) < hi
  assert (lo, hi) == (41.0, 61.0)  # ranks 50 -+ 1.96*sqrt(100)/2 = 9.8, rounded outwards


def test_measure_fn_reports_flops_utilization_as_the_rate_over_the_peak(tmp_path):
  a = jnp.ones((256, 256)) * 0.01
  r = harness.measure_fn(lambda x: jnp.tanh(x @ x) @ x, (a,), name="mm", batch=1, trace_dir=str(tmp_path),
                         min_reps=10, max_reps=30)
  assert r["flops"] == pytest.approx(2 * 2 * 256 ** 3, rel=0.01)
  # the utilization is the measured rate over the device's peak (below 1 here, so not the cap)
  rate = r["flops"] / (r["latency_ms_median"] / 1e3)
  assert r["flops_utilization"] == pytest.approx(rate / r["peak_flops_per_s"], rel=1e-6)
  assert r["flops_utilization"] < 1
  assert 0 < r["bandwidth_utilization"] <= 1  # capped: XLA's bytes count cache-resident reads too
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
    (["profile", "--arch", "128_64_2_384_2", "--reference", "mobilebert"], "malformed architecture name 'mobilebert'"),
])
def test_profile_bad_arguments(capsys, argv, match):
  import re
  assert cli.main(argv) == 2
  assert re.search(match, capsys.readouterr().err)


def test_compile_only_matches_measured_flops(tmp_path):
  """The screening path (abstract parameters, compiled, never run) counts the FLOPs of the very
  program the harness measures, and both lie just above the closed-form matmul count (XLA also
  counts the softmax, norms and activations)."""
  c = harness.compile_only_arch("128_64_2_384_2", num_blocks=1, seq=32)
  m = harness.measure_arch("128_64_2_384_2", num_blocks=1, seq=32, trace_dir=str(tmp_path), min_reps=10, max_reps=10)
  assert "compiled" not in c and c["peak_bytes"] > 0
  assert c["flops"] == pytest.approx(m["flops"], rel=1e-6)
  closed_form = objectives.screening(space_lib.Arch.parse("128_64_2_384_2"), configs.load_config("quickstart", [
      "model.num_blocks=1"]).model, 32)["flops"]
  assert 1.0 < c["flops"] / closed_form < 1.5, (c["flops"], closed_form)


def _drifting_timer(speed: float, n_programs_ms: list[float], seed: int):
  """run_round for harness.interleaved_rounds on a synthetic machine: every call's time is its
  program's true latency x the machine's speed, which ramps by 2x within the process (a load
  arriving), x 3% noise; the programs are called in the harness's own order (call_order)."""
  rng = np.random.default_rng(seed)
  state = dict(call=0, turn=0)

  def run_round(k):
    out = [[] for _ in n_programs_ms]
    for _ in range(k):
      for i in harness.call_order(state["turn"], len(n_programs_ms)):
        drift = speed * (1.0 + min(state["call"] / 200.0, 1.0))
        out[i].append(n_programs_ms[i] * 1e6 * drift * rng.lognormal(0.0, 0.03))
        state["call"] += 1
      state["turn"] += 1
    return out

  return run_round


def test_paired_latency_holds_where_the_unpaired_one_drifts():
  """Three processes on a machine whose speed differs by up to 1.9x between them and ramps 2x
  within each: each alone-median claims a few percent and misses the others by far more, while
  the paired ratio to the reference (timed alternately) agrees with the truth and with itself."""
  true_ms, reference_ms = 1.3, 1.0
  alone, paired = [], []
  for seed, speed in enumerate((0.75, 1.0, 1.4)):
    times, precision = harness.interleaved_rounds(_drifting_timer(speed, [true_ms, reference_ms], seed), 2,
                                                  chunk=10, min_reps=20, max_reps=200, target_rel_ci=0.02,
                                                  reference=1)
    assert precision <= 0.02 and len(times[0]) == len(times[1]) < 200
    alone.append((np.median(times[0]) / 1e6, harness.relative_ci(times[0])))
    paired.append(harness.paired_ratio(times[0], times[1]))
  def disjoint(a, b):  # two (estimate, relative CI half-width) intervals that do not overlap
    (lo, lo_ci), (hi, hi_ci) = sorted([a, b])
    return lo * (1 + lo_ci) < hi * (1 - hi_ci)
  # alone: the slowest and the fastest process disagree far beyond what each claims
  assert disjoint(alone[0], alone[2]), alone
  # paired: every two processes agree within their intervals, and each holds the truth
  assert not any(disjoint(paired[i], paired[j]) for i in range(3) for j in range(i + 1, 3)), paired
  for ratio, ci in paired:
    assert abs(ratio / (true_ms / reference_ms) - 1) <= max(ci, 0.01), (ratio, ci)


def test_measure_fn_paired_with_a_reference_gives_the_ratio_of_the_two_programs(tmp_path):
  a = jnp.ones((192, 192)) * 0.01
  once = lambda x: jnp.tanh(x @ x)
  four_times = lambda x: jnp.tanh(jnp.tanh(jnp.tanh(jnp.tanh(x @ x) @ x) @ x) @ x)
  r = harness.measure_fn(four_times, (a,), name="four", batch=1, trace_dir=str(tmp_path), min_reps=20, max_reps=60,
                         target_rel_ci=0.05, reference=(once, (a,), "once"))
  assert r["reference"] == "once"
  assert r["latency_ratio_rel_ci95"] <= 0.05 or r["repetitions"] == 60
  # 4x the matmuls (and their launch costs); beside another test's work it read 6.07 once, so the
  # bounds tell a ratio of about 4 from 1 (no pairing) or 0.25 (the programs swapped), not 4 from 6
  assert 2.0 < r["latency_ratio"] < 8.0, r["latency_ratio"]
  assert r["reference_ms_median"] < r["latency_ms_median"]
  together = harness.measure_together([("once", once, (a,)), ("four", four_times, (a,))], reference=0,
                                      trace_dir=str(tmp_path / "together"), min_reps=20, max_reps=60,
                                      target_rel_ci=0.05)
  assert [t["name"] for t in together] == ["once", "four"] and together[0]["latency_ratio"] == 1.0
  assert 2.0 < together[1]["latency_ratio"] < 6.0
