r"""Trains a language model from a config file.

  python -m experiments.train --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny \
      [--config.attention.kind=ssmax] [--config.train.steps=1000]

Re-running with the same ``--workdir`` resumes from its latest checkpoint.
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from jaxattn.training.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_library_info(record) -> bool:
    """Keeps orbax's per-save INFO chatter out of the console; warnings still show."""
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for handler in std_logging.getLogger().handlers:
        handler.addFilter(_quiet_library_info)
    logging.info("config:\n%s", _CONFIG.value)
    metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    logging.info("final eval: %s", metrics)


if __name__ == "__main__":
    app.run(main)
