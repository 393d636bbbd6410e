"""The trainer, unchanged, on Titans LMs (configs/titans.py): every arch learns in a few
steps, and a crashed run resumes from its checkpoint onto the uninterrupted loss curve."""

import numpy as np
import pytest

from configs import titans as titans_config
from jaxattn.training import read_metrics, train_and_evaluate
from jaxattn.training import trainer as trainer_lib
from jaxattn.training.checkpoint import Checkpointer
from tests.training.helpers import train_losses

STEPS = 10


def smoke(arch, **train):
    config = titans_config.get_config(f"arch={arch},smoke")
    with config.unlocked():
        config.train.steps = STEPS
        config.train.log_every = 1
        config.train.eval_every = STEPS
        config.train.eval_batches = 1
        config.train.progress = False
        config.checkpoint.save_every = 5
        for name, value in train.items():
            section, field = name.split("__")
            config[section][field] = value
    return config


def check_learned(workdir, final):
    losses = train_losses(read_metrics(str(workdir)))
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(np.isfinite(list(losses.values())))
    assert np.mean([losses[s] for s in (8, 9, 10)]) < losses[1] - 0.5, losses
    assert set(final) == {"loss", "perplexity", "bits_per_byte"}
    assert np.isfinite(final["loss"]) and final["loss"] < np.log(260)
    return losses


# MAC runs by default; the other architectures' trainings are slow.
@pytest.mark.parametrize("arch", ["mac", pytest.param("mal", marks=pytest.mark.slow),
                                  pytest.param("lmm", marks=pytest.mark.slow)])
def test_smoke_run_learns(tmp_path, arch):
    final = train_and_evaluate(smoke(arch), str(tmp_path))
    check_learned(tmp_path, final)
    assert Checkpointer(str(tmp_path / "checkpoints"), save_every=5, keep=3).all_steps() == [5, 10]


@pytest.mark.slow  # two trainings of a MAG model
def test_crashed_run_resumes_onto_the_same_curve(tmp_path, monkeypatch):
    """MAG: crash at step 7 (after steps 1-6 ran), resume from the step-4 checkpoint; the
    re-run steps 5 and 6 reproduce the crashed run's losses exactly, and training finishes."""
    config = smoke("mag", checkpoint__save_every=4)
    real = trainer_lib._device_batch
    calls = []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_lib, "_device_batch", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_and_evaluate(config, str(tmp_path))
    assert Checkpointer(str(tmp_path / "checkpoints"), save_every=4, keep=3).all_steps() == [4]
    before = train_losses(read_metrics(str(tmp_path)))
    assert sorted(before) == list(range(1, 7))

    monkeypatch.setattr(trainer_lib, "_device_batch", real)
    final = train_and_evaluate(config, str(tmp_path))
    after = check_learned(tmp_path, final)
    for step in (5, 6):  # replayed from the checkpoint: same params, optimizer, data, rng
        assert after[step] == before[step], (step, after[step], before[step])
    assert all(after[step] == before[step] for step in range(1, 5))  # not re-run
