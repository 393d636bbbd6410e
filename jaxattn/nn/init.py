"""Parameters annotated with logical axis names.

``jaxattn.sharding`` maps the names to mesh axes when state is created under ``jax.jit``
with ``out_shardings``; creation itself never needs a mesh (``eager_sharding=False``), so
modules build the same way in a notebook, a test or a sharded trainer.
"""

from flax import nnx


def partitioned(names: tuple, init=None):
    """``init`` (default LeCun normal) annotated with logical axis ``names``."""
    return nnx.with_partitioning(init or nnx.initializers.lecun_normal(), names,
                                 eager_sharding=False)


def zeros_init():
    return nnx.initializers.zeros_init()


def logical_param(value, names: tuple) -> nnx.Param:
    """An ``nnx.Param`` holding ``value`` with logical axis ``names``."""
    return nnx.Param(value, out_sharding=names, eager_sharding=False)
