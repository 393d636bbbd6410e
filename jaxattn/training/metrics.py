"""Metric sinks: TensorBoard event files and a JSON-lines log in the workdir.

Only process 0 writes; other processes get a writer that does nothing.
"""

import json
import os

import jax


class MetricWriter:
    """Writes scalars to ``workdir/tb`` (TensorBoard) and ``workdir/metrics.jsonl``."""

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
            os.makedirs(workdir, exist_ok=True)
            self._tb = SummaryWriter(os.path.join(workdir, "tb"))
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

    def write(self, step: int, scalars: dict, *, prefix: str = "") -> None:
        if not self.enabled:
            return
        row = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
        for name, value in row.items():
            self._tb.add_scalar(name, value, step)
        self._jsonl.write(json.dumps({"step": int(step), **row}) + "\n")
        self._jsonl.flush()

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def read_metrics(workdir: str) -> list[dict]:
    """The rows of ``workdir/metrics.jsonl``, in order."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
