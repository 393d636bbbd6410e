"""``experiments/sample.py`` on a checkpoint of lm_tiny trained for a few steps: the command
line prints the samples; errors come before anything is loaded."""

import os
import subprocess
import sys

import pytest

from experiments import sample as sample_cli
from tests.evaluation.test_eval_cli import train
from tests.training.helpers import REPO, smoke_config

PROMPT = "In the beginning"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm_tiny")
    train(smoke_config(), path)
    return path


def test_errors_before_anything_is_loaded(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(FileNotFoundError, match=f"no checkpoint under {missing}/checkpoints"):
        sample_cli.sample(smoke_config(), str(missing), PROMPT)
    assert not missing.exists()
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        sample_cli.sample(smoke_config(), str(missing), PROMPT, temperature=-0.5)
    with pytest.raises(ValueError, match="top_k must be None or an int >= 1"):
        sample_cli.sample(smoke_config(), str(missing), PROMPT, top_k=0)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        sample_cli.sample(smoke_config(), str(missing), PROMPT, num_samples=0)
    with pytest.raises(ValueError, match="prompt must be non-empty"):
        sample_cli.sample(smoke_config(), str(missing), "")
    with pytest.raises(FileNotFoundError, match="prompt_file"):
        sample_cli.read_prompt(PROMPT, str(tmp_path / "no_prompt.txt"))
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Let there be light")
    assert sample_cli.read_prompt(PROMPT, str(prompt_file)) == "Let there be light"


@pytest.mark.slow  # a dense training (the fixture), then the command line
def test_command_line_prints_the_samples(workdir, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(PROMPT)
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    result = subprocess.run(
        [sys.executable, "-m", "experiments.sample", "--config=configs/lm_tiny.py:smoke",
         f"--workdir={workdir}", f"--prompt_file={prompt_file}", "--max_new_tokens=30",
         "--temperature=0.8", "--top_k=40", "--seed=1", "--num_samples=2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    head, second = result.stdout.split("--- sample 2 of 2 ---\n")
    first = head.split("--- sample 1 of 2 ---\n")[1]
    for text in (first, second):
        assert text.startswith(PROMPT) and len(text.rstrip("\n")) > len(PROMPT)
    assert first != second  # the rows draw independently
