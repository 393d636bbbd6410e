"""The trainer end to end on the embedded corpus: loss falls, metrics and checkpoints appear,
a non-finite loss stops the run with the last good checkpoint intact."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn.training import NonFiniteLossError, read_metrics, train_and_evaluate
from jaxattn.training import trainer as trainer_lib
from jaxattn.training.checkpoint import Checkpointer
from tests.training.helpers import smoke_config, train_losses


@pytest.mark.parametrize("kind", ["dense", "ssmax"])
def test_smoke_run_learns_and_writes_everything(tmp_path, kind):
    config = smoke_config(attention__kind=kind, train__steps=30, train__log_every=1,
                          train__eval_every=15)
    final = train_and_evaluate(config, str(tmp_path))
    losses = train_losses(read_metrics(str(tmp_path)))
    assert sorted(losses) == list(range(1, 31))
    assert np.mean([losses[s] for s in range(26, 31)]) < losses[1] - 1.0
    assert set(final) == {"loss", "perplexity", "bits_per_byte"}
    assert final["perplexity"] == pytest.approx(np.exp(final["loss"]))
    assert final["bits_per_byte"] == pytest.approx(final["loss"] / np.log(2))
    assert final["loss"] < np.log(260)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
    assert Checkpointer(str(tmp_path / "checkpoints"), save_every=10, keep=3).all_steps() == [
        10, 20, 30]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = trainer_lib.make_train_step

    def poisoned(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def train_step(state, batch):
            new_state, metrics = step_fn(state, batch)
            metrics["loss"] = jnp.where(state.step >= 13, jnp.nan, metrics["loss"])
            return new_state, metrics

        return train_step

    monkeypatch.setattr(trainer_lib, "make_train_step", poisoned)
    config = smoke_config(train__steps=20)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 14.*step 10\) is intact"):
        train_and_evaluate(config, str(tmp_path))
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), save_every=10, keep=3)
    assert ckpt.all_steps() == [10]
    # The kept checkpoint is usable: a clean run resumes from it and finishes.
    monkeypatch.setattr(trainer_lib, "make_train_step", real)
    train_and_evaluate(config, str(tmp_path))
    assert Checkpointer(str(tmp_path / "checkpoints"), save_every=10, keep=3).all_steps() == [
        10, 20]


def test_routing_centroids_train_and_are_checkpointed(tmp_path):
    from configs import routing
    from jaxattn.training import builders
    from jaxattn.training.checkpoint import abstract_like
    from jaxattn.training.optimizer import make_optimizer
    from jaxattn import sharding

    config = routing.get_config("smoke")
    with config.unlocked():
        config.train.steps = 10
        config.train.progress = False
        config.attention.decay = 0.5  # move visibly in a few steps
    train_and_evaluate(config, str(tmp_path))
    mesh = sharding.make_mesh(dict(config.mesh))
    _, init_state = trainer_lib.create_train_state(
        builders.model_config(config), make_optimizer(config.optim, total_steps=10), mesh,
        config.seed)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), save_every=10, keep=3)
    restored, _ = ckpt.restore(abstract_like(init_state))
    centroids = [np.asarray(x) for x in jax.tree.leaves(restored.variables)]
    initial = [np.asarray(x) for x in jax.tree.leaves(init_state.variables)]
    assert len(centroids) == config.model.num_layers
    assert all(c.shape == (2, 8, 16) for c in centroids)
    assert all(not np.allclose(c, i) for c, i in zip(centroids, initial))
    np.testing.assert_allclose(np.linalg.norm(centroids[0], axis=-1), 1.0, rtol=1e-5)
