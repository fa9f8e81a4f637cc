"""TPU programs compiled on a machine without a TPU: topologies, per-device memory, estimated time.

libtpu (installed by `jax[tpu]`) compiles for any TPU topology from a CPU-only process:
`jax.experimental.topologies.get_topology_desc` gives compile-only devices, a mesh over them and
`jax.jit(f).lower(abstract sharded args).compile()` give the real TPU program, and the compiled
program reports its per-device memory (`memory_analysis()`) and XLA's TPU cost model
(`cost_analysis()`: FLOPs, bytes accessed and `optimal_seconds`, the model's time for one run on
one device). That time is an estimate by XLA's cost model, never a measurement.

Two things in XLA's numbers need care, both found by probing libtpu 0.0.42.1:
- a while loop's body is counted once whatever its trip count, so programs are costed with their
  block loops unrolled (ad/aot.py compiles a costing variant beside the real program);
- some instructions carry a cost of -1, a sentinel, instead of one. On v5e and v4 the compiler
  turns an f32 weight it stages into on-chip memory in slices back into one array with a
  `ConcatBitcast` custom call (seen in 4 of 6 24-block inference programs of Table 1 students, never
  on v6e), and each such call contributes exactly -1 s to `optimal_seconds` (its sum then lies in
  (-1, 0) for one call). `estimate` finds them in the compiled HLO, removes the sentinel and adds
  their own roofline time (bytes moved / HBM bandwidth: a bitcast moves nothing, so this bounds it
  from above); a figure that stays non-positive is refused, never used.

A Pallas kernel's share of the estimate is its own `pl.CostEstimate` (kernels/*.py), not XLA's
model of the kernel body.
"""

from __future__ import annotations

import contextlib
import functools
import re

from profiling import peaks
from ad import startup

TOPOLOGY_FORMS = ("v4:AxBxC or v5p:AxBxC (chips along each dimension, e.g. v4:2x2x1, v5p:4x4x4), "
                  "v5e:AxB or v6e:AxB (e.g. v5e:4x4, v5e:16x16), or a chip alone (v4, v5e, v5p, v6e) for one chip")
# The smallest slice libtpu describes for each chip (a one-chip program uses its first device).
SMALLEST = {"v4": "2x2x1", "v5p": "2x2x1", "v5e": "2x2", "v6e": "2x2"}
DIMS = {"v4": 3, "v5p": 3, "v5e": 2, "v6e": 2}
# The -1 sentinels of XLA's TPU cost model (module docstring): custom calls with these targets.
SENTINEL_TARGETS = ("ConcatBitcast",)
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1, "s64": 8, "f64": 8}


class TopologyError(ValueError):
  """A topology name libtpu cannot describe, or one of the wrong form."""


class EstimateError(ValueError):
  """XLA's cost model gave no usable time for a program."""


def parse_topology(name: str) -> tuple[str, str | None]:
  """'v5e:4x4' -> ('v5e', '4x4'); 'v5e' or 'tpu:v5e' -> ('v5e', None): one chip."""
  text = str(name).strip()
  text = text[len("tpu:"):] if text.startswith("tpu:") else text
  m = re.fullmatch(r"(v\w+?)(?::(\d+(?:x\d+)*))?", text)
  if not m or m.group(1) not in peaks.TPU_CHIPS:
    raise TopologyError(f"unknown TPU topology {name!r}: expected {TOPOLOGY_FORMS}; known chips: "
                        f"{sorted(peaks.TPU_CHIPS)}")
  chip, shape = m.group(1), m.group(2)
  if shape is not None and shape.count("x") + 1 != DIMS[chip]:
    raise TopologyError(f"TPU topology {name!r}: a {chip} slice has {DIMS[chip]} dimensions "
                        f"(e.g. {chip}:{SMALLEST[chip]}), got {shape!r}")
  return chip, shape


@functools.lru_cache(maxsize=None)
def topology_devices(name: str) -> tuple:
  """The compile-only devices of a TPU topology (parse_topology's forms; a chip alone gives its
  smallest slice). v4 and v5p are described as megacore chips (one device per chip), as their VMs
  run them."""
  startup.configure()  # libtpu's environment placeholders off a TPU VM (quiet topology creation)
  import jax
  from jax.experimental import topologies
  chip, shape = parse_topology(name)
  try:
    topo = topologies.get_topology_desc(topology_name=f"{chip}:{shape or SMALLEST[chip]}", platform="tpu",
                                        chip_config_name="megacore" if peaks.TPU_CHIPS[chip].megacore else "default")
  except (jax.errors.JaxRuntimeError, RuntimeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise TopologyError(f"libtpu cannot describe TPU topology {name!r}: {first} (expected {TOPOLOGY_FORMS})") from None
  return tuple(topo.devices)


@contextlib.contextmanager
def persistent_cache_off():
  """Compiles inside do not use JAX's persistent compilation cache: an executable compiled for
  compile-only TPU devices cannot be read back from it (libtpu: "PjRtCompiler must be constructed
  with a Client"), so caching one only fills the disk and warns on the next compile."""
  import jax
  old = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", old)


def compile_on_device(fn, args, device):
  """fn compiled for one (compile-only or real) `device` on abstract `args` (ShapeDtypeStructs), under a
  one-device mesh so that the kernels follow the device compiled for (kernels/devices.py)."""
  import jax
  sharding = jax.sharding.SingleDeviceSharding(device)
  args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), args)
  with jax.set_mesh(jax.sharding.Mesh([device], ("data",))), persistent_cache_off():
    return jax.jit(fn).lower(*args).compile()


def mosaic_calls(hlo: str, name: str) -> int:
  """How many Mosaic (TPU Pallas) custom calls named `name` a compiled program's HLO text holds."""
  return sum(1 for line in hlo.splitlines() if "tpu_custom_call" in line and name in line)


def device_facts(device) -> peaks.DeviceFacts:
  """HBM, bf16 peak and HBM bandwidth of one (compile-only or real) TPU device."""
  return peaks.tpu_device_facts(device.device_kind, getattr(device, "num_cores", 1) or 1)


def hosts(devices) -> int:
  return len({d.process_index for d in devices})


def _first(cost):
  if isinstance(cost, (list, tuple)):
    return cost[0] if cost else {}
  return cost or {}


def _shape_bytes(shape: str) -> int:
  """'f32[512,512]{1,0:T(8,128)}' -> 1048576 (tuples: the sum of their parts)."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n * _DTYPE_BYTES.get(dtype, 4)
  return total


def sentinel_ops(hlo_text: str) -> list[dict]:
  """The instructions of a compiled TPU program whose cost is XLA's -1 sentinel (SENTINEL_TARGETS),
  with the bytes of their result."""
  out = []
  for line in hlo_text.splitlines():
    m = re.search(r'custom_call_target="([^"]+)"', line)
    if m and m.group(1) in SENTINEL_TARGETS:
      head = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+custom-call\(", line)
      if head:
        out.append(dict(name=head.group(1), target=m.group(1), bytes=_shape_bytes(head.group(2))))
  return out


def estimate(compiled, device, what: str = "program") -> dict:
  """XLA's cost model on one device of a compiled TPU program: FLOPs, bytes accessed, the estimated
  time with the -1 sentinels removed and replaced by their roofline time (module docstring), and the
  plain roofline of the program's own FLOPs and bytes (max of FLOPs / bf16 peak, bytes / HBM
  bandwidth) beside it. Raises EstimateError when no positive estimate remains."""
  facts = device_facts(device)
  cost = _first(compiled.cost_analysis())
  if "optimal_seconds" not in cost:
    raise EstimateError(f"{what}: XLA's cost analysis has no 'optimal_seconds' (keys: {sorted(cost)[:8]}); no "
                        "estimate")
  raw = float(cost["optimal_seconds"])
  flops, bytes_accessed = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  sentinels = sentinel_ops(compiled.as_text() or "")
  own_s = sum(2 * op["bytes"] / facts.hbm_bytes_per_s for op in sentinels)  # read + write, at most
  estimated = raw + len(sentinels) + own_s
  if estimated <= 0:
    raise EstimateError(f"{what}: XLA's TPU cost model gave {raw:.6g} s with {len(sentinels)} known -1 sentinel(s) "
                        f"({', '.join(SENTINEL_TARGETS)}); {estimated:.6g} s remains after removing them, so another "
                        "instruction carries a sentinel: refusing to estimate")
  roofline = max(flops / facts.bf16_flops_per_s, bytes_accessed / facts.hbm_bytes_per_s)
  return dict(estimated_s=estimated, xla_optimal_seconds=raw, sentinel_ops=[op["name"] for op in sentinels],
              sentinel_own_s=own_s, flops=flops, bytes_accessed=bytes_accessed,
              transcendentals=float(cost.get("transcendentals", 0.0)), roofline_s=roofline,
              source="XLA TPU cost model (estimate, not a measurement)")


def memory(compiled, device) -> dict:
  """Per-device memory of a compiled program against the device's HBM: arguments, outputs,
  temporaries, generated code (aliased bytes counted once), and whether it fits."""
  facts = device_facts(device)
  m = compiled.memory_analysis()
  parts = dict(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
               temp_bytes=int(m.temp_size_in_bytes), code_bytes=int(m.generated_code_size_in_bytes),
               alias_bytes=int(getattr(m, "alias_size_in_bytes", 0)))
  total = (parts["argument_bytes"] + parts["output_bytes"] + parts["temp_bytes"] + parts["code_bytes"]
           - parts["alias_bytes"])
  hbm = int(facts.hbm_bytes)
  return dict(parts, total_bytes=total, hbm_bytes=hbm, fits=total <= hbm, over_bytes=max(total - hbm, 0),
              share_of_hbm=total / hbm)
