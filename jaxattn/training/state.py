"""Train state: the model's parameters and its other variables as pure dicts, plus the
optimizer state, step and RNG. Everything a resumed run needs besides the data position."""

import dataclasses
from typing import Any

import jax
from flax import nnx


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array       # int32 scalar: optimizer updates applied so far
    params: Any           # pure dict of nnx.Param values
    variables: Any        # pure dict of every other nnx.Variable (e.g. routing centroids)
    opt_state: Any
    rng: jax.Array        # typed PRNG key; the key of step s is fold_in(rng, s)


def split_model(model: nnx.Module):
    """``(graphdef, params, variables)``: the static graph and two pure-dict trees."""
    graphdef, params, variables = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(variables)


def merge_model(graphdef, params, variables) -> nnx.Module:
    return nnx.merge(graphdef, params, variables)
