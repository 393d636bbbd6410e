r"""Trains a language model from a config file.

  python -m experiments.train --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny \
      [--config.attention.kind=ssmax] [--config.train.steps=1000]

Re-running with the same ``--workdir`` resumes from its latest checkpoint. Multi-host: run the
same command in every process with ``--distributed`` (and, outside a detected cluster,
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``).
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from jaxattn import distributed
from jaxattn.training.trainer import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host run: call jax.distributed.initialize first (the cluster "
    "is detected unless --coordinator_address/--num_processes/--process_id are given).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_library_info(record) -> bool:
    """Keeps orbax's per-save INFO chatter out of the console; warnings still show."""
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for handler in std_logging.getLogger().handlers:
        handler.addFilter(_quiet_library_info)
    if _DISTRIBUTED.value:
        distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
    logging.info("config:\n%s", _CONFIG.value)
    metrics = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    logging.info("final eval: %s", metrics)


if __name__ == "__main__":
    app.run(main)
