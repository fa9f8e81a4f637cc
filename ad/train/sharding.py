"""Mesh and logical-axis sharding for distillation (maxtext / flax lm1b style, small).

Parameters declare logical axis names where they are made (ad/models/layers.param, and the
'layers' axis that stacking prepends); `RULES` maps logical names to mesh axes. A dimension
that its mesh axis does not divide stays replicated, so any architecture of the design space
runs on any mesh. Optimizer states follow their parameters (optax.tree_map_params).

Axis types are Auto (GSPMD propagation) on purpose: the student's einsums and the loss
reductions would need a sharding annotation on every op under Explicit axes, and the
sharding of these small models is fully decided by the parameter and batch shardings below.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

# logical name -> mesh axis (names not listed: replicated). 'heads' and 'length' name no parameter
# axis: they split the activations a fused kernel runs on per device (ad/models/student.py).
RULES = {
    "batch": "data",
    "vocab": "model",
    "mlp": "model",
    "heads": "model",
    "length": "model",
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


def training_mesh(dcfg, devices=None) -> tuple[jax.sharding.Mesh, int]:
  """(mesh, size of its data axis) for a distill section: distill.mesh_data (0: every device over
  distill.mesh_model) x distill.mesh_model, over `devices` (default jax.devices(); `ad compile`
  passes a TPU topology's compile-only devices); the batch must split evenly over the data axis."""
  devices = list(devices if devices is not None else jax.devices())
  if dcfg.mesh_model <= 0 or len(devices) % dcfg.mesh_model:
    raise ValueError(f"distill.mesh_model={dcfg.mesh_model} does not divide the {len(devices)} devices; choose a "
                     "divisor of the device count")
  mesh_data = dcfg.mesh_data or len(devices) // dcfg.mesh_model
  mesh = make_mesh(mesh_data, dcfg.mesh_model, devices)
  if dcfg.batch_size % mesh_data:
    raise ValueError(f"distill.batch_size={dcfg.batch_size} is not divisible by the mesh's data axis ({mesh_data}); "
                     f"choose a multiple of {mesh_data} or set distill.mesh_data")
  return mesh, mesh_data


def spec(axes, shape, mesh) -> P:
  """Logical axis names (None: replicated) of one array -> its PartitionSpec on `mesh`."""
  out = []
  for dim, name in zip(shape, axes):
    mesh_axis = RULES.get(name) if name else None
    if mesh_axis is not None and dim % mesh.shape[mesh_axis] != 0:
      mesh_axis = None  # not divisible: replicate this dimension
    out.append(mesh_axis)
  return P(*out)


def activation_spec(axes, shape) -> P:
  """The PartitionSpec of an activation with logical `axes` under the context mesh (jax.set_mesh),
  each split only where its mesh axis divides it; P() without a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  return P() if mesh.empty else spec(axes, shape, mesh)


def param_shardings(module: nnx.Module, mesh):
  """NamedShardings for `nnx.state(module, nnx.Param).to_pure_dict()`, from the declared axes."""
  state = nnx.state(module, nnx.Param)

  def one(v):
    axes = v.get_metadata().get("out_sharding") or (None,) * np.ndim(v.get_value())
    return NamedSharding(mesh, spec(axes, np.shape(v.get_value()), mesh))
  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable)).to_pure_dict()


def opt_shardings(tx: optax.GradientTransformation, params, param_sh, mesh):
  """Shardings of tx's state for `params`: parameter-shaped leaves follow their parameter, the
  rest (step counts) are replicated."""
  abstract = jax.eval_shape(tx.init, params)
  replicated = NamedSharding(mesh, P())
  masked = lambda x: isinstance(x, optax.MaskedNode)  # a masked transform keeps no state for that parameter
  return optax.tree_map_params(tx, lambda leaf, sh: leaf if masked(leaf) else sh, abstract, param_sh,
                               transform_non_params=lambda _: replicated, is_leaf=masked)


def replicated_like(tree, mesh):
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def abstract_batch(batch_size: int, seq_len: int, max_predictions: int, mesh) -> dict:
  """ShapeDtypeStructs of one global pre-training batch (ad/data/pretrain.py FEATURES), sharded
  like `global_batch` makes them: for compiling ahead of the data."""
  sh = batch_sharding(mesh)
  spec = dict(input_ids=((seq_len,), np.int32), token_type_ids=((seq_len,), np.int32),
              attention_mask=((seq_len,), np.int32), masked_positions=((max_predictions,), np.int32),
              masked_ids=((max_predictions,), np.int32), masked_weights=((max_predictions,), np.float32),
              nsp_label=((), np.int32))
  return {k: jax.ShapeDtypeStruct((batch_size,) + shape, dtype, sharding=sh) for k, (shape, dtype) in spec.items()}


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def global_batch(local: dict, mesh) -> dict:
  """Per-host numpy batch -> global jax arrays sharded over 'data' (multi-host aware)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return {k: jax.device_put(v, sharding) for k, v in local.items()}
  from jax.experimental import multihost_utils
  return multihost_utils.host_local_array_to_global_array(local, mesh, P("data"))


def sharded_abstract(tree, shardings):
  """Abstract values (shape, dtype, sharding) of `tree` placed by `shardings`: what a program is compiled and a
  checkpoint restored against."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
