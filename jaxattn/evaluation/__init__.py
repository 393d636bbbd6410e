"""Evaluations run on trained models: retrieval accuracy on long-context tasks."""

from jaxattn.evaluation.passkey import passkey_accuracy

__all__ = ["passkey_accuracy"]
