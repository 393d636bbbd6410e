"""What a benchmark case is built from: its dtype, its sizes and its per-length options.

``resolve_dtype`` picks the input dtype (bfloat16 on a GPU or TPU, float32 on CPU by
default); ``resolve_options`` turns a case's options into those of one sequence length (the
value ``SQRT`` becomes ``sqrt_power_of_two(seq_len)``, the usual cluster count of routing
attention); ``check_sizes`` rejects sizes that are not positive ints before anything is built.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

SQRT = "sqrt"
"""Option value resolved per sequence length to ``sqrt_power_of_two(seq_len)``."""

_ACCELERATORS = ("gpu", "tpu")


def default_dtype():
    """bfloat16 on a GPU or TPU, float32 on CPU (where bfloat16 matmuls are emulated and slow)."""
    return jnp.bfloat16 if jax.default_backend() in _ACCELERATORS else jnp.float32


def resolve_dtype(dtype):
    """``None`` (backend default), a dtype name (``"bfloat16"``) or a dtype → ``np.dtype``."""
    if dtype is None:
        return np.dtype(default_dtype())
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"dtype must be a floating dtype or its name, got {dtype!r}") from err
    if not jnp.issubdtype(resolved, jnp.floating):
        raise ValueError(f"dtype must be floating, got {resolved}")
    return resolved


def check_sizes(**sizes):
    """``ValueError`` naming the first of ``sizes`` that is not an int (not a bool) ``>= 1``."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def sqrt_power_of_two(seq_len):
    """``round(sqrt(seq_len))`` rounded to the nearest power of two that divides ``seq_len``.

    Rounding goes to the nearer power of two; if that does not divide ``seq_len`` the largest
    power of two that does is taken.

    E.g. 1024 → 32, 2048 → 32 (45 is nearer 32 than 64), 4096 → 64, 1000 → 8 (32 does not
    divide 1000; 8 is the largest power of two that does). ``sqrt(n)`` clusters is the usual
    choice for routing attention, whose cost is then ``O(n^1.5)``.
    """
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    root = max(1, round(math.sqrt(seq_len)))
    lower = 1 << (root.bit_length() - 1)
    nearest = lower if root - lower <= 2 * lower - root else 2 * lower
    return min(nearest, seq_len & -seq_len)


def resolve_options(options, seq_len):
    """Options for one sequence length.

    A value equal to ``SQRT`` (``"sqrt"``) becomes ``sqrt_power_of_two(seq_len)``; a callable
    value is called with ``seq_len``; everything else is kept.
    """
    resolved = {}
    for key, value in dict(options).items():
        if isinstance(value, str) and value == SQRT:
            value = sqrt_power_of_two(seq_len)
        elif callable(value):
            value = value(seq_len)
        resolved[key] = value
    return resolved
