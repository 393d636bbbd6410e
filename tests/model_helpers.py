"""Shared test helpers for models: parameters moved off their initial values, and a state's
round trip through an orbax checkpoint."""

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx


def perturb_params(module, seed, scale=0.1):
    """Adds ``scale * N(0, 1)`` noise to every ``nnx.Param`` of ``module`` in place; returns it.

    Output projections start at zero, so without this attention would not reach the output
    and tests of it would pass vacuously.
    """
    params = nnx.state(module, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    nnx.update(module, jax.tree.unflatten(treedef, leaves))
    return module


def orbax_round_trip(state, path):
    """Saves the pytree ``state`` to ``path`` with orbax and restores it; asserts the restored
    tree has the same structure, dtypes and values, and returns it."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    return restored
