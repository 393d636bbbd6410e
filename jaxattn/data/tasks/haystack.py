"""Haystacks: KJV sentences or repeated noise, fitted to an exact character budget."""

import functools
import itertools
import re
from collections.abc import Iterator, Sequence

import numpy as np

from jaxattn.data.builtin_corpora import builtin_corpus
from jaxattn.data.tasks.common import FILLER, repeated_filler

# A sentence ends at ., ! or ? followed by whitespace (the offline stand-in for
# nltk's punkt, as the note on RULER / BABILong suggests).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@functools.lru_cache(maxsize=None)
def kjv_sentences() -> tuple[str, ...]:
    """Sentences of the builtin KJV, in order (about 29.7k, all ASCII).

    Verse lines are joined with spaces and the books concatenated before the
    regex split, so sentences running over several verses stay whole.
    """
    text = " ".join(" ".join(book.split()) for book in builtin_corpus("kjv"))
    return tuple(s for s in _SENTENCE_END.split(text) if s)


def cycle_from(units: Sequence[str], start: int) -> Iterator[str]:
    """units[start], units[start + 1], ... wrapping around forever."""
    n = len(units)
    return (units[(start + i) % n] for i in itertools.count())


def noise_units() -> Iterator[str]:
    """RULER's "noise" haystack: the filler sentence, forever."""
    return itertools.repeat(FILLER)


def take_units(units: Iterator[str], budget: int, used: int, sep: str = " ") -> list[str]:
    """Greedily takes whole units while `used` plus each (sep + unit) fits `budget`.

    Stops at the first unit that does not fit (so the haystack stays contiguous).
    """
    taken = []
    for unit in units:
        cost = len(sep) + len(unit)
        if used + cost > budget:
            break
        taken.append(unit)
        used += cost
    return taken


def boundary_offsets(units: Sequence[str], sep: str = " ") -> np.ndarray:
    """[n + 1] character offset of each boundary k (before units[k]) in sep.join(units)."""
    lengths = np.array([len(u) + len(sep) for u in units], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths)])


def nearest_boundary(units: Sequence[str], depth: float, total_chars: int, sep: str = " ") -> int:
    """The boundary k in [0, len(units)] whose offset is nearest to depth * total_chars."""
    offsets = boundary_offsets(units, sep)
    return int(np.argmin(np.abs(offsets - depth * total_chars)))


def assemble_context(
    units: Sequence[str],
    inserts: Sequence[tuple[int, str]],
    budget: int,
    sep: str = " ",
) -> tuple[list[str], list[int]]:
    """Pieces of a context of exactly `budget` characters.

    Args:
      units: the haystack units, in order.
      inserts: (boundary, text) pairs, boundaries sorted in [0, len(units)];
        inserts at the same boundary keep their order.
      budget: the exact number of characters of the context.
      sep: the one-character separator between pieces.

    Returns:
      (pieces, insert_indices): "".join(pieces) is the context: units and
      inserts joined by `sep`, then `sep` plus a character slice of the
      repeated filler as padding up to `budget`; insert_indices[i] is the index
      of inserts[i] in `pieces`.
    """
    if len(sep) != 1:
        raise ValueError(f"sep must be one character, got {sep!r}")
    ordered: list[str] = []
    insert_indices: list[int] = []
    pending = list(inserts)
    for k in range(len(units) + 1):
        while pending and pending[0][0] == k:
            insert_indices.append(len(ordered))
            ordered.append(pending.pop(0)[1])
        if k < len(units):
            ordered.append(units[k])
    if pending:
        raise ValueError(f"insert boundaries must be sorted in [0, {len(units)}]")
    pieces: list[str] = []
    for i, piece in enumerate(ordered):
        if i:
            pieces.append(sep)
        pieces.append(piece)
    insert_indices = [2 * i for i in insert_indices]
    used = sum(len(p) for p in pieces)
    remaining = budget - used
    if remaining < 0:
        raise ValueError(f"context pieces take {used} characters, over the budget {budget}")
    if remaining > 0:
        pieces.append(sep + repeated_filler(remaining - 1))
    return pieces, insert_indices
