"""Evaluations run on trained models: retrieval accuracy on long-context tasks, perplexity
against length with the loss per position bucket, forward cost against length, and reports."""

from jaxattn.evaluation.passkey import passkey_accuracy
from jaxattn.evaluation.perplexity import (
    bucket_edges,
    forward_efficiency,
    perplexity_by_length,
    summarize_losses,
    token_nll,
)
from jaxattn.evaluation.report import write_report
from jaxattn.evaluation.retrieval import greedy_decoder, retrieval_grid

__all__ = [
    "bucket_edges",
    "forward_efficiency",
    "greedy_decoder",
    "passkey_accuracy",
    "perplexity_by_length",
    "retrieval_grid",
    "summarize_losses",
    "token_nll",
    "write_report",
]
