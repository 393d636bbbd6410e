"""Jittable train and eval steps over a ``TrainState``.

Batches are dicts of ``[batch, seq]`` arrays: ``inputs``, ``targets``, ``segment_ids``,
``positions``, ``loss_mask`` (the format of ``jaxattn.data``).
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxattn.attention.landmark import landmark_lm_targets
from jaxattn.training.losses import masked_cross_entropy
from jaxattn.training.state import TrainState, merge_model, split_model


def _forward(graphdef, params, variables, batch, rng, *, train):
    """``(loss_sum, count, aux_loss, variables)``: the masked cross-entropy, the summed
    auxiliary losses the layers sowed and the non-parameter variables as the forward pass left
    them (stateful layers, such as online k-means centroids, update them in place when
    ``train``). Training of a landmark model with ``landmark_in_loss`` also scores the
    landmark positions; evaluation scores the ordinary tokens only."""
    model = merge_model(graphdef, params, variables)
    landmark = model.cfg.landmark
    with_landmarks = train and landmark is not None and landmark.landmark_in_loss
    logits, sown = nnx.capture(model, nnx.Intermediate)(
        batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"],
        rng=rng, train=train, keep_landmarks=with_landmarks)
    targets, loss_mask = batch["targets"], batch["loss_mask"]
    if with_landmarks:
        targets, loss_mask = landmark_lm_targets(targets, loss_mask, batch["segment_ids"],
                                                 landmark.mem_freq, model.cfg.landmark_id)
    loss_sum, count = masked_cross_entropy(logits, targets, loss_mask)
    aux_loss = sum(jax.tree.leaves(sown), jnp.zeros((), jnp.float32))
    return loss_sum, count, aux_loss, split_model(model)[2]


def make_train_step(graphdef, optimizer: optax.GradientTransformation, *, dropout: bool):
    """``train_step(state, batch) -> (state, metrics)``; metrics are float32 scalars.

    The optimised objective is the mean token cross-entropy plus the layers' auxiliary
    losses; ``metrics["loss"]`` is the cross-entropy alone.
    """

    def loss_fn(params, variables, batch, rng):
        loss_sum, count, aux_loss, new_variables = _forward(
            graphdef, params, variables, batch, rng if dropout else None, train=True)
        loss = loss_sum / jnp.maximum(count, 1.0)
        return loss + aux_loss, (loss, aux_loss, count, new_variables)

    def train_step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (_, (loss, aux_loss, count, variables)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params, state.variables, batch, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, variables=variables,
                               opt_state=opt_state, rng=state.rng)
        metrics = {"loss": loss, "aux_loss": aux_loss, "tokens": count,
                   "grad_norm": optax.tree.norm(grads),
                   "param_norm": optax.tree.norm(params)}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef):
    """``eval_step(state, batch) -> {"loss_sum", "count"}`` summed over the batch."""

    def eval_step(state: TrainState, batch):
        loss_sum, count, _, _ = _forward(graphdef, state.params, state.variables, batch, None,
                                         train=False)
        return {"loss_sum": loss_sum, "count": count}

    return eval_step
