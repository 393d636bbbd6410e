"""``train_and_evaluate(config, workdir)``: the training loop behind ``experiments/train.py``.

One jitted step over a mesh built from ``config.mesh``; state is created already sharded;
periodic evaluation (loss, perplexity, bits per byte); TensorBoard + JSONL metrics; orbax
checkpoints holding state and data position, resumed automatically from ``workdir``;
SIGTERM/Ctrl-C save before exiting; a non-finite loss stops the run without saving.
"""

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from jaxattn import sharding
from jaxattn.attention.landmark import check_segment_alignment
from jaxattn.data import (get_iterator_state, make_eval_batches, make_train_iterator,
                          set_iterator_state)
from jaxattn.nn.transformer import TransformerLM
from jaxattn.training import builders
from jaxattn.training.checkpoint import Checkpointer, abstract_like
from jaxattn.training.losses import summarize
from jaxattn.training.metrics import MetricWriter
from jaxattn.training.optimizer import make_optimizer
from jaxattn.training.preemption import StopRequest
from jaxattn.training.state import TrainState, merge_model, split_model
from jaxattn.training.steps import make_eval_step, make_train_step


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


def create_train_state(model_cfg, optimizer, mesh, seed: int):
    """``(graphdef, state)``: a fresh ``TrainState`` created directly with its shardings.

    Parameters follow their logical axis names; optimizer moments follow their parameters;
    everything else (step, counts, RNG) is replicated.
    """
    abstract = nnx.eval_shape(lambda: TransformerLM(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params, abstract_vars = nnx.split(abstract, nnx.Param, ...)
    param_sh, var_sh = (nnx.to_pure_dict(sharding.state_shardings(s, mesh))
                        for s in (abstract_params, abstract_vars))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract_opt = jax.eval_shape(optimizer.init, nnx.to_pure_dict(abstract_params))
    opt_sh = optax.tree_map_params(optimizer, lambda _, sh: sh, abstract_opt, param_sh,
                                   transform_non_params=lambda _: replicated)
    state_sh = TrainState(step=replicated, params=param_sh, variables=var_sh, opt_state=opt_sh,
                          rng=replicated)

    @functools.partial(jax.jit, out_shardings=state_sh)
    def init(key):
        params_key, rng = jax.random.split(key)
        _, params, variables = split_model(TransformerLM(model_cfg, rngs=nnx.Rngs(params_key)))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, variables=variables,
                          opt_state=optimizer.init(params), rng=rng)

    return graphdef, init(jax.random.PRNGKey(seed))


def _device_batch(batch: dict, batch_sharding, model_cfg=None) -> dict:
    """The host batch as global arrays; a landmark model's batch is first checked (on the
    host, where it is cheap) to keep every document aligned to its blocks, since inside the
    jitted step a misaligned batch could only be masked, not reported."""
    landmark = None if model_cfg is None else model_cfg.landmark
    if landmark is not None and landmark.mem_freq > 1:  # blocks of 1 token always align
        try:
            check_segment_alignment(np.asarray(batch["segment_ids"]), landmark.mem_freq)
        except ValueError as e:
            raise ValueError(f"a data batch does not fit landmark blocks of mem_freq="
                             f"{landmark.mem_freq} tokens (build the data with "
                             f"DataConfig.align={landmark.mem_freq}): {e}") from e
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in batch.items()}


def evaluate(eval_step, state, data_cfg, batch_sharding, *, max_batches: int,
             model_cfg=None) -> dict:
    """Loss, perplexity and bits per byte over the first ``max_batches`` validation batches.

    ``model_cfg`` (optional) enables the host-side batch checks of ``_device_batch``."""
    loss_sum, count = 0.0, 0.0
    batches = make_eval_batches(data_cfg, max_batches=max_batches,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
    for batch in batches:
        out = eval_step(state, _device_batch(batch, batch_sharding, model_cfg))
        loss_sum += float(out["loss_sum"])
        count += float(out["count"])
    # The byte tokenizer spends one token per byte and targets never include specials
    # (loss_mask drops document boundaries), so bytes == counted tokens.
    return summarize(loss_sum, count)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint); returns the last
    evaluation metrics."""
    os.makedirs(workdir, exist_ok=True)
    model_cfg = builders.model_config(config)
    data_cfg = builders.data_config(config)
    total_steps = config.train.steps
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"train.steps must be a positive int, got {total_steps!r}")
    optimizer = make_optimizer(config.optim, total_steps=total_steps)
    mesh = sharding.make_mesh(dict(config.mesh))
    batch_sharding = sharding.batch_sharding(mesh)
    logging.info("devices: %s; mesh %s", jax.devices(), dict(mesh.shape))

    graphdef, state = create_train_state(model_cfg, optimizer, mesh, config.seed)
    data_iter = make_train_iterator(data_cfg, process_index=jax.process_index(),
                                    process_count=jax.process_count())
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                save_every=config.checkpoint.save_every,
                                keep=config.checkpoint.keep)
    restored = checkpointer.restore(abstract_like(state))
    if restored is not None:
        state, data_state = restored
        set_iterator_state(data_iter, data_state)
        logging.info("resumed from step %d", int(state.step))

    state_sharding = jax.tree.map(lambda x: x.sharding, state)
    train_step = jax.jit(make_train_step(graphdef, optimizer, dropout=model_cfg.dropout_rate > 0),
                         in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, None), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(graphdef), in_shardings=(state_sharding, batch_sharding))
    writer = MetricWriter(workdir)

    step = int(state.step)
    eval_metrics = {}
    bar = tqdm.tqdm(total=total_steps, initial=step, desc="train", unit="step",
                    disable=not config.train.progress or jax.process_index() != 0)
    try:
        with StopRequest() as stop:
            while step < total_steps:
                batch = _device_batch(next(data_iter), batch_sharding, model_cfg)
                new_state, metrics = train_step(state, batch)
                loss = float(metrics["loss"])
                if not np.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss is {loss} at step {step + 1}; stopping without saving. The last "
                        f"good checkpoint (step {checkpointer.latest_step()}) is intact in "
                        f"{checkpointer.directory}")
                state, step = new_state, step + 1
                bar.update(1)
                if step % config.train.log_every == 0 or step == total_steps:
                    scalars = {k: float(v) for k, v in metrics.items()}
                    writer.write(step, scalars, prefix="train/")
                    bar.set_postfix(loss=f"{loss:.3f}")
                if step % config.train.eval_every == 0 or step == total_steps:
                    eval_metrics = evaluate(eval_step, state, data_cfg, batch_sharding,
                                            max_batches=config.train.eval_batches,
                                            model_cfg=model_cfg)
                    writer.write(step, eval_metrics, prefix="eval/")
                    bar.write(f"step {step}: " + ", ".join(
                        f"eval {k} {v:.4f}" for k, v in eval_metrics.items()))
                if checkpointer.should_save(step) or step == total_steps or stop.requested:
                    checkpointer.save(step, state, get_iterator_state(data_iter), force=True)
                if stop.requested:
                    bar.write(f"{stop.signal_name}: saved checkpoint at step {step}; exiting")
                    break
    finally:
        bar.close()
        writer.close()
        checkpointer.close()
    return eval_metrics


def load_checkpoint(config, workdir):
    """``(model_cfg, state, mesh)``: the latest checkpoint of the run of ``config`` in
    ``workdir``; ``FileNotFoundError`` when it has none."""
    model_cfg = builders.model_config(config)
    mesh = sharding.make_mesh(dict(config.mesh))
    optimizer = make_optimizer(config.optim, total_steps=config.train.steps)
    _, fresh = create_train_state(model_cfg, optimizer, mesh, config.seed)
    directory = os.path.join(workdir, "checkpoints")
    restored = Checkpointer(directory, save_every=1, keep=1).restore(abstract_like(fresh))
    if restored is None:
        raise FileNotFoundError(f"no checkpoint under {directory}; train the model first")
    return model_cfg, restored[0], mesh


def model_from_state(model_cfg, state) -> TransformerLM:
    """The ``TransformerLM`` holding a train state's parameters and variables."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: TransformerLM(model_cfg, rngs=nnx.Rngs(0))))
    return merge_model(graphdef, state.params, state.variables)
