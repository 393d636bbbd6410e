"""Shared test helper for models: parameters moved off their initial values."""

import jax
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
