"""Which devices a kernel call is compiled for, and running a kernel per shard under a mesh.

A program compiled ahead of time for TPU devices from a CPU process (`ad compile`) is traced while
JAX's default backend is still 'cpu': what decides a Pallas call's lowering (Mosaic, Triton or the
interpreter) is the devices the program is compiled for. Callers name them by setting the mesh
(`with jax.set_mesh(mesh):` around lowering), and the abstract mesh seen while tracing carries its
devices' platform. Without a mesh, the default backend's devices are the target.

A compiled Pallas call is one custom call per device: XLA's SPMD partitioner cannot split it, so on
a mesh of several devices it must run inside `jax.shard_map`, each device on its own shard.
"""

from __future__ import annotations

from typing import Callable

import jax

COMPILED_PLATFORMS = ("tpu", "gpu")  # where Pallas kernels lower to real code (Mosaic, Triton)


def target_platform() -> str:
  """'tpu', 'gpu' or 'cpu': the platform of the context mesh's devices, else JAX's default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def context_mesh():
  """The mesh set by `jax.set_mesh` (an AbstractMesh while tracing), or None without one."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def per_shard(fn: Callable, in_specs, out_specs) -> Callable:
  """fn run on each device's shard of its arguments under the context mesh (jax.shard_map with the
  given PartitionSpecs), or fn itself when there is no mesh of more than one device, or when the
  caller is already inside a shard_map (every mesh axis manual).

  Arguments replicated over an axis (not named in their spec) get the cotangent summed over it by
  shard_map's transpose, so weight gradients of a kernel are complete."""
  mesh = context_mesh()
  if mesh is None or mesh.size == 1 or mesh.are_all_axes_manual:
    return fn
  # check_vma=False: a pallas_call's outputs carry no varying-axes annotation.
  return jax.shard_map(fn, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def mesh_axis(name: str, size: int) -> str | None:
  """The context mesh's axis `name` if it exists and divides `size` (a dimension to split), else None."""
  mesh = context_mesh()
  if mesh is None or name not in mesh.axis_names or size % mesh.shape[name]:
    return None
  return name
