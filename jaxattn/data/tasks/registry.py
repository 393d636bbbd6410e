"""Task registry: generators by name, their minimum lengths, and batches."""

import functools
import inspect
from collections.abc import Callable, Sequence

import numpy as np

from jaxattn.data.tasks.babilong import babilong_min_length, make_babilong_qa1
from jaxattn.data.tasks.common import RetrievalExample, training_window
from jaxattn.data.tasks.mqar import make_mqar, mqar_min_length
from jaxattn.data.tasks.niah import (
    make_niah_single_1,
    make_niah_single_2,
    make_niah_single_3,
    niah_min_length,
)
from jaxattn.data.tasks.passkey import make_passkey, passkey_min_length
from jaxattn.data.tasks.selective_copy import make_selective_copy, selective_copy_min_length

# name -> generator(seed, length, **options)
TASKS: dict[str, Callable] = {
    "passkey": make_passkey,
    "niah_single_1": make_niah_single_1,
    "niah_single_2": make_niah_single_2,
    "niah_single_3": make_niah_single_3,
    "babilong_qa1": make_babilong_qa1,
    "mqar": make_mqar,
    "selective_copy": make_selective_copy,
}
# Tasks whose generator returns a RetrievalExample; the others return a dict of [T] arrays.
RETRIEVAL_TASKS = ("passkey", "niah_single_1", "niah_single_2", "niah_single_3", "babilong_qa1")
SEQUENCE_TASKS = ("mqar", "selective_copy")

_MIN_LENGTHS: dict[str, Callable[..., int]] = {
    "passkey": passkey_min_length,
    "niah_single_1": functools.partial(niah_min_length, "niah_single_1"),
    "niah_single_2": functools.partial(niah_min_length, "niah_single_2"),
    "niah_single_3": functools.partial(niah_min_length, "niah_single_3"),
    "babilong_qa1": babilong_min_length,
    "mqar": mqar_min_length,
    "selective_copy": selective_copy_min_length,
}


def _generator(task: str) -> Callable:
    try:
        return TASKS[task]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown task {task!r}; valid names: {sorted(TASKS)}") from None


def _options(generator: Callable) -> set[str]:
    return {
        name for name, p in inspect.signature(generator).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _check_options(task: str, generator: Callable, options: dict) -> None:
    valid = _options(generator)
    unknown = set(options) - valid
    if unknown:
        raise ValueError(
            f"Unknown option(s) {sorted(unknown)} for task {task!r}; valid: {sorted(valid)}"
        )


def make_example(task: str, seed: int, length: int, **options):
    """One example of a registered task: `TASKS[task](seed, length, **options)`.

    Returns a RetrievalExample for RETRIEVAL_TASKS, a dict of [length] arrays
    (inputs, targets, loss_mask, segment_ids, positions) for SEQUENCE_TASKS.
    Raises ValueError for an unknown task or option, or a too-short length.
    """
    generator = _generator(task)
    _check_options(task, generator, options)
    return generator(seed, length, **options)


def min_length(task: str, **options) -> int:
    """Smallest valid `length` of a task with these options (options that do not
    affect it, such as depth, are accepted and ignored)."""
    generator = _generator(task)
    _check_options(task, generator, options)
    function = _MIN_LENGTHS[task]
    accepted = inspect.signature(function).parameters
    return function(**{k: v for k, v in options.items() if k in accepted})


def make_batch(
    task: str,
    seeds: Sequence[int],
    length: int,
    *,
    seq_len: int | None = None,
    loss_on_prompt: bool = False,
    **options,
) -> dict[str, np.ndarray]:
    """Stacked training windows, one per seed: dict of [len(seeds), T] arrays.

    Retrieval tasks go through `training_window` (prompt + answer + EOS, padded
    to `seq_len`, which defaults to the longest window of the batch); sequence
    tasks are already windows of T = length (`seq_len` must then be None or equal
    `length`, and `loss_on_prompt` is not available).
    """
    if len(seeds) == 0:
        raise ValueError("seeds must hold at least one seed")
    examples = [make_example(task, seed, length, **options) for seed in seeds]
    if task in SEQUENCE_TASKS:
        if seq_len not in (None, length) or loss_on_prompt:
            raise ValueError(
                f"{task} examples are windows of exactly length={length}; pass seq_len=None "
                "and loss_on_prompt=False"
            )
        rows = examples
    else:
        assert all(isinstance(e, RetrievalExample) for e in examples)
        if seq_len is None:
            seq_len = max(e.length + e.answer_ids.shape[0] for e in examples)
        rows = [training_window(e, seq_len, loss_on_prompt=loss_on_prompt) for e in examples]
    return {key: np.stack([row[key] for row in rows]) for key in rows[0]}
