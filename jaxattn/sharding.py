"""Meshes and logical-axis sharding rules.

Parameters and activations carry logical axis names (``batch``, ``seq``, ``embed``,
``heads``, ``kv_heads``, ``mlp``, ``vocab``); a small rules table maps each name to mesh
axes (``data``, ``fsdp``, ``tensor``, ``sequence``). A dimension whose size the mapped
mesh axes do not divide stays replicated rather than failing.
"""

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", ("sequence",)),
    ("embed", ("fsdp",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("mlp", ("tensor",)),
    ("vocab", ("tensor",)),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over ``MESH_AXES``; one axis of ``shape`` may be -1 (take the remaining devices).

    ``shape`` maps axis name to size, e.g. ``{"data": -1, "fsdp": 2}``; missing axes are 1.
    """
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes must be among {MESH_AXES}, got unknown {sorted(unknown)}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(shape)}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh axis sizes must be positive or -1, got {dict(shape)}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {dict(shape)} does not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                         f"but {len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=DEFAULT_RULES) -> P:
    """``PartitionSpec`` for an array of ``shape`` whose dimensions carry logical ``names``."""
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        axes = tuple(a for a in table.get(name, ()) if a not in used and mesh.shape[a] > 1)
        if not axes or dim % math.prod(mesh.shape[a] for a in axes):
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def state_shardings(abstract_state, mesh: Mesh, rules=DEFAULT_RULES):
    """``NamedSharding``s for an NNX state (or its abstract ``eval_shape``) from its axis names."""
    specs = nnx.get_partition_spec(abstract_state)

    def to_sharding(spec_leaf, value):
        names = tuple(spec_leaf) if spec_leaf is not None else ()
        if not names:
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, logical_to_spec(names, value.shape, mesh, rules))

    return jax.tree.map(to_sharding, specs, abstract_state,
                        is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
    """Sharding of a ``[batch, seq]`` input array: batch over data (and fsdp), seq over sequence."""
    table = dict(rules)
    batch_axes = tuple(a for a in table["batch"] if mesh.shape[a] > 1)
    seq_axes = tuple(a for a in table["seq"] if mesh.shape[a] > 1)
    return NamedSharding(mesh, P(batch_axes or None, seq_axes or None))
