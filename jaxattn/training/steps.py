"""Jittable train and eval steps over a ``TrainState``.

Batches are dicts of ``[batch, seq]`` arrays: ``inputs``, ``targets``, ``segment_ids``,
``positions``, ``loss_mask`` (the format of ``jaxattn.data``).
"""

import jax
import jax.numpy as jnp
import optax

from jaxattn.training.losses import masked_cross_entropy
from jaxattn.training.state import TrainState, merge_model, split_model


def _forward(graphdef, params, variables, batch, rng):
    """``(logits, variables)``: the non-parameter variables as the forward pass left them
    (stateful layers, such as online k-means centroids, update them in place)."""
    model = merge_model(graphdef, params, variables)
    logits = model(batch["inputs"], positions=batch["positions"],
                   segment_ids=batch["segment_ids"], rng=rng)
    return logits, split_model(model)[2]


def make_train_step(graphdef, optimizer: optax.GradientTransformation, *, dropout: bool):
    """``train_step(state, batch) -> (state, metrics)``; metrics are float32 scalars."""

    def loss_fn(params, variables, batch, rng):
        logits, new_variables = _forward(graphdef, params, variables, batch,
                                         rng if dropout else None)
        loss_sum, count = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
        return loss_sum / jnp.maximum(count, 1.0), (count, new_variables)

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, (count, variables)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.variables, batch, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, variables=variables,
                               opt_state=opt_state, rng=state.rng)
        metrics = {"loss": loss, "tokens": count, "grad_norm": optax.tree.norm(grads),
                   "param_norm": optax.tree.norm(params)}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef):
    """``eval_step(state, batch) -> {"loss_sum", "count"}`` summed over the batch."""

    def eval_step(state: TrainState, batch):
        logits, _ = _forward(graphdef, state.params, state.variables, batch, None)
        loss_sum, count = masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
        return {"loss_sum": loss_sum, "count": count}

    return eval_step
