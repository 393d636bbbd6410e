"""Training: state, steps, optimizer, checkpoints, metrics and the loop."""

from jaxattn.training.metrics import MetricWriter, read_metrics
from jaxattn.training.trainer import NonFiniteLossError, train_and_evaluate

__all__ = ["MetricWriter", "NonFiniteLossError", "read_metrics", "train_and_evaluate"]
