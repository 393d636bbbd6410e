"""Save, kill, resume: the resumed loss curve equals the uninterrupted one exactly.

Runs the real command-line trainer in subprocesses and interrupts it with SIGTERM (graceful:
saves where it stands) and SIGKILL (abrupt: resumes from the last periodic checkpoint).
"""

import signal
import time

import pytest

from jaxattn.training import read_metrics
from tests.training.helpers import popen_train, train_losses


def _wait_for_step(proc, workdir, step, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if max(train_losses(read_metrics(str(workdir))) or [0]) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early:\n{proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"trainer did not reach step {step} in {timeout}s")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``{config: {step: loss}}`` of uninterrupted runs, computed once per config."""
    curves = {}

    def get(config):
        if config not in curves:
            workdir = tmp_path_factory.mktemp("uninterrupted")
            proc = popen_train(workdir, config=config)
            out, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, out
            curves[config] = train_losses(read_metrics(str(workdir)))
            assert sorted(curves[config]) == list(range(1, 61))
        return curves[config]

    return get


@pytest.mark.parametrize("config,sig", [
    ("configs/lm_tiny.py", signal.SIGTERM),
    # Slow: more command-line trainings of the dense smoke model; SIGTERM above runs by default.
    pytest.param("configs/lm_tiny.py", signal.SIGINT, marks=pytest.mark.slow),
    pytest.param("configs/lm_tiny.py", signal.SIGKILL, marks=pytest.mark.slow),
    # Routing carries k-means centroids: state outside the optimizer that must resume too.
    # Slow: two command-line trainings; tests/training/test_train.py trains routing by default.
    pytest.param("configs/routing.py", signal.SIGKILL, marks=pytest.mark.slow),
], ids=lambda x: x.name if isinstance(x, signal.Signals) else x.split("/")[-1][:-3])
def test_kill_and_resume_reproduces_loss_curve(tmp_path, uninterrupted, config, sig):
    reference = uninterrupted(config)
    proc = popen_train(tmp_path, config=config)
    _wait_for_step(proc, tmp_path, 13)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 0, out
        assert "saved checkpoint at step" in out
    interrupted_at = max(train_losses(read_metrics(str(tmp_path))))
    assert interrupted_at < 60, "the run finished before the signal arrived"

    proc = popen_train(tmp_path, config=config)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    rows = read_metrics(str(tmp_path))
    # Every logged step, including the ones a SIGKILL made the run repeat, equals the
    # uninterrupted run bit for bit.
    for row in rows:
        if "train/loss" in row:
            assert row["train/loss"] == reference[row["step"]], row["step"]
    assert sorted(train_losses(rows)) == list(range(1, 61))
