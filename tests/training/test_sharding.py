"""A train step sharded over 8 virtual CPU devices equals the single-device step."""

import jax
import numpy as np
import pytest

from jaxattn import sharding
from jaxattn.data import make_train_iterator
from jaxattn.training import builders
from jaxattn.training.optimizer import make_optimizer
from jaxattn.training.steps import make_train_step
from jaxattn.training.trainer import create_train_state
from tests.training.helpers import smoke_config


def _run_steps(config, mesh, batches):
    model_cfg = builders.model_config(config)
    optimizer = make_optimizer(config.optim, total_steps=config.train.steps)
    graphdef, state = create_train_state(model_cfg, optimizer, mesh, config.seed)
    batch_sh = sharding.batch_sharding(mesh)
    step = jax.jit(make_train_step(graphdef, optimizer, dropout=False))
    losses = []
    for batch in batches:
        batch = {k: jax.device_put(v, batch_sh) for k, v in batch.items()}
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.mark.parametrize("mesh_shape", [
    {"data": 8},
    {"data": 2, "fsdp": 2, "tensor": 2},
    {"fsdp": 4, "tensor": 2},
])
def test_sharded_step_equals_single_device(mesh_shape):
    assert jax.device_count() == 8, "tests run on 8 virtual CPU devices (see conftest.py)"
    config = smoke_config(model__num_heads=4, model__num_kv_heads=2, model__mlp_dim=128)
    data = make_train_iterator(builders.data_config(config))
    batches = [next(data) for _ in range(3)]
    single = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    multi = sharding.make_mesh(mesh_shape)
    ref_state, ref_losses = _run_steps(config, single, batches)
    state, losses = _run_steps(config, multi, batches)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        # Adam turns last-bit gradient differences on near-zero gradients into update-sized
        # ones; 1e-4 is still 30x below one update (lr 3e-3).
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
    # Parameters really are distributed: some leaf is split across devices.
    if mesh_shape.get("fsdp", 1) > 1 or mesh_shape.get("tensor", 1) > 1:
        assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state.params))


def test_make_mesh_errors():
    with pytest.raises(ValueError, match="unknown"):
        sharding.make_mesh({"model": 2})
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh({"data": -1, "fsdp": -1})
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh({"data": 16})


def test_logical_rules_fall_back_to_replicated_when_not_divisible():
    mesh = sharding.make_mesh({"data": 2, "tensor": 4})
    assert sharding.logical_to_spec(("embed", "vocab"), (64, 258), mesh) == jax.sharding.PartitionSpec(None, None)
    assert sharding.logical_to_spec(("embed", "mlp"), (64, 128), mesh) == jax.sharding.PartitionSpec(None, "tensor")
