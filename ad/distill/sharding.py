"""Mesh and logical-axis sharding for distillation (maxtext / flax lm1b style, small).

Every parameter gets logical axis names from its path and shape; a short rule table maps
logical names to mesh axes. A dimension that the mesh axis does not divide stays replicated,
so any architecture of the design space runs on any mesh.

Axis types are Auto (GSPMD propagation) on purpose: the student's einsums and the loss
reductions would need a sharding annotation on every op under Explicit axes, and the
sharding of these small models is fully decided by the parameter and batch shardings below.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

# logical name -> mesh axis
RULES = {
    "batch": "data",
    "vocab": "model",
    "mlp": "model",
    "heads": None,
    "embed": None,
    "intra": None,
    "length": None,
}


def maybe_initialize_distributed() -> None:
  """Multi-controller runs (TPU pods, GPU clusters): `jax.distributed.initialize` from
  AD_COORDINATOR (host:port), AD_NUM_PROCESSES and AD_PROCESS_ID when AD_COORDINATOR is set.
  Cloud TPU VMs can set AD_COORDINATOR=auto to let JAX discover the pod itself."""
  import os
  coord = os.environ.get("AD_COORDINATOR")
  if not coord or jax.distributed.is_initialized():
    return
  if coord == "auto":
    jax.distributed.initialize()
    return
  try:
    n, i = int(os.environ["AD_NUM_PROCESSES"]), int(os.environ["AD_PROCESS_ID"])
  except (KeyError, ValueError):
    raise ValueError("AD_COORDINATOR is set: AD_NUM_PROCESSES and AD_PROCESS_ID must be integers too") from None
  jax.distributed.initialize(coordinator_address=coord, num_processes=n, process_id=i)


def make_mesh(data: int, model: int, devices=None) -> jax.sharding.Mesh:
  """A (data, model) mesh over the first data * model devices."""
  devices = list(devices if devices is not None else jax.devices())
  if data <= 0 or model <= 0 or data * model > len(devices):
    raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices, but {len(devices)} are "
                     "available; set distill.mesh_data / distill.mesh_model accordingly")
  devices = devices[:data * model]
  types = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((data, model), ("data", "model"), axis_types=types, devices=devices)


def logical_axes(path: tuple, shape: tuple) -> tuple:
  """Logical axis names of one parameter, from its name (student, teacher or adapter)."""
  name = "/".join(str(p) for p in path)
  leaf = str(path[-1])
  if leaf in ("word",):  # [V, E]
    return ("vocab", "embed")
  if leaf in ("mlm_extra",):  # [H - E, V]
    return ("embed", "vocab")
  if leaf == "mlm_bias":
    return ("vocab",)
  if "ffn" in name and leaf in ("w_in",):  # [F, Bn, I]
    return (None, "intra", "mlp")
  if "ffn" in name and leaf in ("b_in",):  # [F, I]
    return (None, "mlp")
  if "ffn" in name and leaf in ("w_out",):  # [F, I, Bn]
    return (None, "mlp", "intra")
  if "intermediate" in name and leaf == "kernel":  # teacher [H, I]
    return ("embed", "mlp")
  if "intermediate" in name and leaf == "bias":
    return ("mlp",)
  if path[-2:] and len(path) >= 2 and str(path[-2]) == "output" and leaf == "kernel":  # teacher [I, H]
    return ("mlp", "embed")
  return (None,) * len(shape)


def spec_for(path: tuple, shape: tuple, mesh) -> P:
  axes = []
  for dim, name in zip(shape, logical_axes(path, shape)):
    mesh_axis = RULES.get(name) if name else None
    if mesh_axis is not None and dim % mesh.shape[mesh_axis] != 0:
      mesh_axis = None  # not divisible: replicate this dimension
    axes.append(mesh_axis)
  return P(*axes)


def state_shardings(state, mesh):
  """A pytree of NamedShardings matching an NNX state (or any pytree of arrays with paths)."""
  def one(path, x):
    keys = tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    keys = tuple(k for k in keys if k != "value")
    return NamedSharding(mesh, spec_for(keys, np.shape(x), mesh))
  return jax.tree_util.tree_map_with_path(one, state)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def global_batch(local: dict, mesh) -> dict:
  """Per-host numpy batch -> global jax arrays sharded over 'data' (multi-host aware)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return {k: jax.device_put(v, sharding) for k, v in local.items()}
  from jax.experimental import multihost_utils
  return multihost_utils.host_local_array_to_global_array(local, mesh, P("data"))
