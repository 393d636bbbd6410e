"""Static block layouts: which key blocks each query block visits.

A layout cuts the queries into blocks of ``q_block`` rows and the keys into blocks of
``kv_block`` columns. Query block ``i`` visits ``counts[i]`` key blocks, ``indices[i, :counts[i]]``
(ascending); ``full[i, t]`` says whether every (query, key) pair of that tile is visible under
the position rule, so a kernel may skip the in-tile mask there (segment ids and padded keys
still make a "full" tile partial at run time). ``transposed()`` lists, for every key block,
the query blocks that visit it: the schedule of a dK/dV backward pass. Entries past
``counts[i]`` repeat the last visited block (or 0), so they are always in range.

This is the form of TPU Splash's ``MaskInfo`` and of FlexAttention's ``BlockMask``; the
local and LSG schedules (``local.local_block_schedule``, ``lsg.lsg_key_schedule``) are
layouts with blocks of ``block_size``.

Position rules (``PositionRule``): query row ``r`` sits at position ``r + q_offset``, key
column ``c`` at ``c``; a pair is visible when ``c < kv_len`` and

- ``causal``: ``c <= r + q_offset``;
- ``window = w``: ``r + q_offset - w < c`` (causal) or ``|r + q_offset - c| < w``.

All three constrain only ``d = r + q_offset - c``, so the pairs of a tile cover an interval
of ``d`` and a tile's visibility is exact from its corners.
"""

import dataclasses
from typing import NamedTuple

import numpy as np

from jaxattn.attention import core


@dataclasses.dataclass(frozen=True)
class PositionRule:
    """The position part of a visibility rule (see the module doc); hashable, static."""

    causal: bool = True
    window: int | None = None
    q_offset: int = 0

    def __post_init__(self):
        core.check_causal(self.causal)
        core.check_window(self.window)
        core.check_q_offset(self.q_offset)

    def difference_range(self):
        """``(low, high)`` bounds on ``d = query position - key position`` (inclusive;
        ``None`` for unbounded)."""
        low = 0 if self.causal else None
        high = None
        if self.window is not None:
            high = self.window - 1
            if not self.causal:
                low = -(self.window - 1)
        return low, high


class BlockLayout(NamedTuple):
    """Per query block: ``counts [nq]`` int32, ``indices [nq, max_visits]`` int32 and
    ``full [nq, max_visits]`` bool (see the module doc); ``q_block``/``kv_block`` rows and
    columns per block; ``num_kv_blocks`` the key blocks in all."""

    q_block: int
    kv_block: int
    num_kv_blocks: int
    counts: np.ndarray
    indices: np.ndarray
    full: np.ndarray

    @property
    def num_q_blocks(self) -> int:
        return self.counts.shape[0]

    @property
    def max_visits(self) -> int:
        return self.indices.shape[1]

    def block_mask(self) -> np.ndarray:
        """Bool ``[nq, nk]``: key block ``j`` is visited by query block ``i``."""
        grid = np.zeros((self.num_q_blocks, self.num_kv_blocks), bool)
        for i in range(self.num_q_blocks):
            grid[i, self.indices[i, :self.counts[i]]] = True
        return grid

    def transposed(self) -> "BlockLayout":
        """The layout seen from the keys: per key block, the query blocks visiting it
        (``q_block`` and ``kv_block`` swapped)."""
        visited = self.block_mask()
        full = np.zeros_like(visited)
        for i in range(self.num_q_blocks):
            count = self.counts[i]
            full[i, self.indices[i, :count]] = self.full[i, :count]
        return from_block_mask(visited.T, full.T, q_block=self.kv_block, kv_block=self.q_block)


def from_block_mask(visible, full=None, *, q_block, kv_block) -> BlockLayout:
    """A ``BlockLayout`` from a bool ``[nq, nk]`` grid of visited tiles (``full`` marks the
    tiles with every pair visible; default none)."""
    visible = np.asarray(visible, bool)
    if visible.ndim != 2:
        raise ValueError(f"visible must be a bool [num_q_blocks, num_kv_blocks] grid, got shape "
                         f"{visible.shape}")
    full = np.zeros_like(visible) if full is None else np.asarray(full, bool) & visible
    core.check_positive_int("q_block", q_block)
    core.check_positive_int("kv_block", kv_block)
    counts = visible.sum(axis=1).astype(np.int32)
    width = max(int(counts.max(initial=0)), 1)
    indices = np.zeros((visible.shape[0], width), np.int32)
    flags = np.zeros((visible.shape[0], width), bool)
    for i, row in enumerate(visible):
        cols = np.flatnonzero(row)
        if cols.size:
            indices[i, :cols.size] = cols
            indices[i, cols.size:] = cols[-1]
            flags[i, :cols.size] = full[i, cols]
    return BlockLayout(q_block=q_block, kv_block=kv_block, num_kv_blocks=visible.shape[1],
                       counts=counts, indices=indices, full=flags)


def num_blocks(length: int, block: int) -> int:
    """Blocks of ``block`` covering ``length`` (the last one padded)."""
    return -(-length // block)


def position_layout(q_len, kv_len, rule: PositionRule, *, q_block, kv_block) -> BlockLayout:
    """The layout of a ``PositionRule`` over ``q_len`` queries and ``kv_len`` keys: a tile
    is visited iff some pair in it is visible, full iff every pair is (padded query rows
    count as visible, padded key columns as not)."""
    core.check_positive_int("q_len", q_len)
    core.check_positive_int("kv_len", kv_len)
    nq, nk = num_blocks(q_len, q_block), num_blocks(kv_len, kv_block)
    q_lo = np.arange(nq)[:, None] * q_block + rule.q_offset
    q_hi = q_lo + q_block - 1
    k_lo = np.arange(nk)[None, :] * kv_block
    k_hi_real = np.minimum(k_lo + kv_block, kv_len) - 1
    d_min, d_max = q_lo - k_hi_real, q_hi - k_lo  # the d values a tile covers
    low, high = rule.difference_range()
    visible = np.ones((nq, nk), bool)
    full = np.broadcast_to((k_lo + kv_block <= kv_len), (nq, nk)).copy()
    if low is not None:
        visible &= d_max >= low
        full &= d_min >= low
    if high is not None:
        visible &= d_min <= high
        full &= d_max <= high
    return from_block_mask(visible, full, q_block=q_block, kv_block=kv_block)


def schedule_layout(schedule, *, block_size, causal) -> BlockLayout:
    """The layout of a ``local.local_block_schedule``-style table (``[nq, visits]`` key block
    ids, -1 for none) with square blocks of ``block_size``; a causal rule makes the diagonal
    tiles partial."""
    schedule = np.asarray(schedule)
    nq = schedule.shape[0]
    visible = np.zeros((nq, nq), bool)
    for i, row in enumerate(schedule):
        visible[i, row[row >= 0]] = True
    full = visible.copy()
    if causal:
        full &= ~np.eye(nq, dtype=bool)
    return from_block_mask(visible, full, q_block=block_size, kv_block=block_size)
