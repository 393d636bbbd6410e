"""Metrics of the tasks, as the original evaluation scripts compute them."""

import re
from collections.abc import Sequence

import numpy as np

from jaxattn.data.tasks.common import RetrievalExample

_FIRST_INTEGER = re.compile(r"\d+")


def passkey_correct(generated_text: str, answer: str | int) -> bool:
    """Landmark's passkey check: the first integer (regex \\d+) of the output equals the key.

    Compared as integers, as the original does (`int(re.search(...).group())`);
    an output without digits is wrong.
    """
    match = _FIRST_INTEGER.search(generated_text)
    return match is not None and int(match.group()) == int(answer)


def string_match_all(
    predictions: Sequence[str], references_lists: Sequence[Sequence[str] | str]
) -> float:
    """RULER's metric: mean over samples of the fraction of gold strings found, x 100.

    A gold string is found when it occurs in the prediction, case-insensitively.

    Args:
      predictions: N generated texts.
      references_lists: N lists of gold strings (a bare string counts as a list of one).

    Returns:
      A float in [0, 100] (RULER rounds it to 2 decimals for display; we do not).
    """
    if isinstance(predictions, str) or isinstance(references_lists, str):
        raise ValueError(
            "predictions and references_lists must be sequences of samples, not strings"
        )
    if len(predictions) != len(references_lists):
        raise ValueError(
            f"predictions and references_lists must have the same length, got "
            f"{len(predictions)} and {len(references_lists)}"
        )
    if not predictions:
        raise ValueError("string_match_all needs at least one sample")
    total = 0.0
    for prediction, references in zip(predictions, references_lists):
        if isinstance(references, str):
            references = [references]
        if not references:
            raise ValueError("every sample needs at least one reference string")
        lowered = prediction.lower()
        total += sum(r.lower() in lowered for r in references) / len(references)
    return 100.0 * total / len(predictions)


def babilong_correct(output: str, target: str, labels: Sequence[str] | None = None) -> bool:
    """BABILong's check: lower-case, cut at the first '.', target must be a substring.

    Args:
      output: the generated text.
      target: the gold answer, e.g. "kitchen".
      labels: optionally all answer labels of the task (e.g. the six rooms); then,
        as BABILong's `compare_answers`, the target must also be the only label
        in the cut output ("kitchen or garden" is wrong).
    """
    cut = output.lower().split(".", 1)[0]
    target = target.lower()
    if target not in cut:
        return False
    if labels is None:
        return True
    found = {label.lower() for label in labels if label.lower() in cut}
    return found == {target}


def masked_accuracy(logits_or_preds, targets, mask) -> float:
    """Argmax accuracy over the labelled positions (MQAR, selective copying).

    Args:
      logits_or_preds: [..., T, V] logits (argmax is taken over the last axis) or
        [..., T] predicted ids.
      targets: [..., T] int ids.
      mask: [..., T], nonzero where a position is labelled (e.g. loss_mask).

    Returns:
      The fraction of labelled positions predicted right, a float in [0, 1];
      NaN when no position is labelled.
    """
    predictions = np.asarray(logits_or_preds)
    targets = np.asarray(targets)
    mask = np.asarray(mask)
    if predictions.ndim == targets.ndim + 1:
        predictions = predictions.argmax(axis=-1)
    if predictions.shape != targets.shape or mask.shape != targets.shape:
        raise ValueError(
            f"expected logits [..., T, V] or predictions [..., T] matching targets and mask "
            f"[..., T]; got {np.asarray(logits_or_preds).shape}, {targets.shape} and {mask.shape}"
        )
    labelled = mask != 0
    count = int(labelled.sum())
    if count == 0:
        return float("nan")
    return float(((predictions == targets) & labelled).sum() / count)


def retrieval_correct(example: RetrievalExample, generated_text: str) -> bool:
    """Scores a generation for a retrieval example with its task's own check.

    passkey: `passkey_correct`; niah_*: the value occurs, case-insensitively
    (one sample of `string_match_all`); babilong_qa1: `babilong_correct`.
    """
    if example.task == "passkey":
        return passkey_correct(generated_text, example.answer)
    if example.task.startswith("niah_"):
        return string_match_all([generated_text], [[example.answer]]) == 100.0
    if example.task.startswith("babilong"):
        return babilong_correct(generated_text, example.answer)
    raise ValueError(f"No scoring rule for task {example.task!r}")
