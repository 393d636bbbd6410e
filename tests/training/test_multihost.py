"""Two CPU processes joined by ``jax.distributed`` train like one process with all devices."""

import socket

import pytest

from jaxattn.training import read_metrics
from tests.training.helpers import popen_train, train_losses


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # three command-line trainings of the dense smoke model
def test_two_processes_match_one_process(tmp_path):
    common = ("--config.train.steps=12", "--config.checkpoint.save_every=6")
    single = popen_train(tmp_path / "single", *common, devices=4)
    out, _ = single.communicate(timeout=600)
    assert single.returncode == 0, out

    port = _free_port()
    procs = [popen_train(tmp_path / "multi", *common, "--distributed",
                         f"--coordinator_address=localhost:{port}", "--num_processes=2",
                         f"--process_id={i}", devices=2) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    ref = train_losses(read_metrics(str(tmp_path / "single")))
    got = train_losses(read_metrics(str(tmp_path / "multi")))
    assert sorted(got) == sorted(ref) == list(range(1, 13))
    for step in ref:
        assert abs(got[step] - ref[step]) <= 1e-5 * abs(ref[step]), step
    assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["12", "6"]
