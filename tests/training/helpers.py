"""Shared helpers for trainer tests: a seconds-long config and metric readers."""

import os
import subprocess
import sys

from configs import lm_tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def smoke_config(**overrides):
    """``configs/lm_tiny.py:smoke`` with dotted overrides, e.g. ``train__steps=12``."""
    config = lm_tiny.get_config("smoke")
    with config.unlocked():
        config.train.progress = False
        for dotted, value in overrides.items():
            node = config
            *parents, leaf = dotted.split("__")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


def train_losses(rows):
    """``{step: train loss}`` from metrics rows (last row wins for a repeated step)."""
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def train_command(workdir, *flags, config="configs/lm_tiny.py"):
    return [sys.executable, "-m", "experiments.train", f"--config={config}:smoke",
            f"--workdir={workdir}", "--config.train.log_every=1", "--config.train.steps=60",
            "--config.train.progress=false", *flags]


def popen_train(workdir, *flags, devices=1, config="configs/lm_tiny.py"):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(train_command(workdir, *flags, config=config), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
