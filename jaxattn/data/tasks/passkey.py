"""Passkey retrieval (Landmark Attention, Mohtashami & Jaggi 2023), in tokens.

The prompt is exactly the one of `epfml/landmark-attention: llama/run_test.py`:

    "\n".join([TASK, prefix, info, suffix, QUESTION])

with info = f"The pass key is {key}. Remember it. {key} is the pass key." and
prefix / suffix character slices of " ".join([FILLER] * many) (both start at the
beginning of that string, as in the original). Only the garbage size differs:
the original counts `n_garbage` in characters from a grid; here it is whatever
makes the prompt, BOS included, exactly `length` byte tokens. The needle (the
info line) sits after n_pre garbage characters, drawn from [0, n_garbage] as the
original's randint(0, n_garbage), or round(depth * n_garbage) for a depth grid.
"""

import math

from jaxattn.data.tasks.common import (
    RetrievalExample,
    build_retrieval_example,
    check_depth,
    check_int,
    check_seed_length,
    is_int,
    make_rng,
    realised_depth,
    repeated_filler,
)

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and "
    "memorize them. I will quiz you about the important information there."
)
QUESTION = "What is the pass key? The pass key is"
DEFAULT_KEY_RANGE = (1, 50000)


def info_line(key: int) -> str:
    """The needle: f"The pass key is {key}. Remember it. {key} is the pass key."."""
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def _key_range(key_range, key_digits) -> tuple[int, int]:
    if key_range is not None and key_digits is not None:
        raise ValueError("pass either key_range or key_digits, not both")
    if key_digits is not None:
        digits = check_int("key_digits", key_digits, minimum=1, maximum=18)
        return 10 ** (digits - 1), 10**digits - 1
    if key_range is None:
        return DEFAULT_KEY_RANGE
    if (
        not isinstance(key_range, (tuple, list))
        or len(key_range) != 2
        or not all(is_int(k) for k in key_range)
        or not 0 <= key_range[0] <= key_range[1] < 2**63
    ):
        raise ValueError(
            f"key_range must be a pair (low, high) of integers with 0 <= low <= high "
            f"(inclusive), got {key_range!r}"
        )
    return int(key_range[0]), int(key_range[1])


def _fixed_chars(key: int) -> int:
    """Characters of the prompt that are not garbage: three lines and four newlines."""
    return len(TASK) + len(info_line(key)) + len(QUESTION) + 4


def passkey_min_length(*, key_range=None, key_digits=None) -> int:
    """Smallest `length` (tokens, BOS included) that holds the prompt with the longest key."""
    _, high = _key_range(key_range, key_digits)
    return 1 + _fixed_chars(high)


def make_passkey(
    seed: int,
    length: int,
    *,
    depth: float | None = None,
    key_range: tuple[int, int] | None = None,
    key_digits: int | None = None,
) -> RetrievalExample:
    """A passkey prompt of exactly `length` tokens.

    Args:
      seed: non-negative int; with `length` (and the key options) it fixes the key
        and, when `depth` is None, the needle position. The key is drawn before
        the position, so a depth grid at one seed keeps the same key.
      length: tokens of the prompt, BOS included; at least
        `passkey_min_length(...)` (about 260 with the default keys).
      depth: None for a uniformly random position (the paper), else the relative
        position in [0, 1]: n_pre = round(depth * n_garbage).
      key_range: inclusive (low, high) of the key; default the paper's (1, 50000).
      key_digits: instead of key_range, draw a key with exactly this many digits.

    Returns:
      A RetrievalExample with task "passkey", answer str(key) and needle_span the
      info line.
    """
    low, high = _key_range(key_range, key_digits)
    seed, length = check_seed_length(
        seed, length, passkey_min_length(key_range=key_range, key_digits=key_digits),
        "the passkey task (task sentence + info line + question)",
    )
    depth = check_depth(depth)
    rng = make_rng("passkey", seed, length)
    key = int(rng.integers(low, high, endpoint=True))
    n_garbage = length - 1 - _fixed_chars(key)
    if depth is None:
        n_pre = int(rng.integers(0, n_garbage, endpoint=True))
    else:
        n_pre = int(math.floor(depth * n_garbage + 0.5))
    garbage = repeated_filler(n_garbage)
    prefix, suffix = garbage[:n_pre], garbage[: n_garbage - n_pre]
    parts = [TASK + "\n" + prefix + "\n", info_line(key), "\n" + suffix + "\n" + QUESTION]
    return build_retrieval_example(
        "passkey", parts, 1, str(key), realised_depth(n_pre, n_garbage - n_pre), length
    )
