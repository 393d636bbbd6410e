"""Multi-host start-up: one call before any other JAX work in each process."""

import jax


def initialize(*, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to a multi-process JAX run (``jax.distributed.initialize``).

    With no arguments JAX detects the cluster (TPU pods, SLURM, Open MPI); give all three to
    run by hand, e.g. two CPU processes on one machine. CPU collectives use gloo.
    """
    given = [a is not None for a in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("coordinator_address, num_processes and process_id go together: "
                         "give all three, or none to let JAX detect the cluster")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, num_processes={num_processes}), "
                         f"got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
