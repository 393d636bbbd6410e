"""Scaling exponents of benchmark times: the ``p`` in ``time ~ seq_len^p``, fitted per label."""

import numpy as np


def fit_exponent(seq_lens, times):
    """Least-squares slope of ``log(time)`` against ``log(seq_len)``.

    About 2 for dense attention, 1.5 for routing with ``sqrt(n)`` clusters, 1 for local
    attention (at sizes large enough that fixed costs do not dominate).
    """
    n = np.asarray(seq_lens, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if n.ndim != 1 or n.shape != t.shape:
        raise ValueError(f"seq_lens and times must be 1-D of the same length, got {n.shape} "
                         f"and {t.shape}")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(t)) and np.all(n > 0) and np.all(t > 0)):
        raise ValueError("seq_lens and times must be finite and positive")
    if np.unique(n).size < 2:
        raise ValueError(f"need at least two distinct sequence lengths, got "
                         f"{sorted(set(n.tolist()))}")
    slope, _ = np.polyfit(np.log(n), np.log(t), 1)
    return float(slope)


def fit_exponents(rows, key="median_ms"):
    """``{label: fit_exponent of row[key] over its successful rows}``; ``None`` with fewer than
    two lengths (rows without ``key``, as in a memory-only sweep, do not count)."""
    exponents = {}
    for label in dict.fromkeys(row["label"] for row in rows):
        points = [(row["seq_len"], row[key]) for row in rows
                  if row["label"] == label and row["error"] is None
                  and row.get(key) is not None]
        if len({seq_len for seq_len, _ in points}) < 2:
            exponents[label] = None
        else:
            exponents[label] = fit_exponent(*zip(*points))
    return exponents
