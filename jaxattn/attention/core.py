"""Pieces shared by every attention variant: validation, GQA grouping, masks, masked softmax.

Conventions used throughout ``jaxattn.attention``:

- ``q``: ``[batch, q_len, heads, head_dim]``; ``k``, ``v``: ``[batch, kv_len, kv_heads,
  head_dim]`` with ``heads % kv_heads == 0`` (grouped-query attention, GQA).
- Masks are boolean, ``True`` where a query may attend a key, laid out
  ``[batch or 1, 1, q_len, kv_len]`` so they broadcast against logits
  ``[batch, heads, q_len, kv_len]``.
- Segment ids are int ``[batch, len]``; id ``0`` marks padding, which neither attends nor is
  attended.
- Query ``i`` sits at absolute position ``i + q_offset``; key ``j`` at position ``j``.
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxattn.attention import backends

SOFTMAX_KINDS = ("softmax", "ssmax")


def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_qkv(q, k, v):
    """Checks the shapes of ``q [B, Tq, H, D]``, ``k [B, Tk, K, D]``, ``v [B, Tk, K, D]``.

    Returns ``(batch, q_len, kv_len, heads, kv_heads, head_dim)``.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4:
            raise ValueError(
                f"{name} must be [batch, seq, heads, head_dim], got "
                f"{'shape ' + str(tuple(shape)) if shape is not None else type(x).__name__}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape [batch, kv_len, kv_heads, head_dim], "
            f"got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    batch, q_len, heads, head_dim = q.shape
    _, kv_len, kv_heads, kv_head_dim = k.shape
    if k.shape[0] != batch:
        raise ValueError(f"k must have the batch size of q ({batch}), got k shape {tuple(k.shape)}")
    if kv_head_dim != head_dim:
        raise ValueError(
            f"k and v must have the head_dim of q ({head_dim}), got k shape {tuple(k.shape)}"
        )
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(
            f"k/v heads must divide q heads (grouped-query attention): q has {heads} heads, "
            f"k has {kv_heads}"
        )
    if min(q_len, kv_len, heads, head_dim) == 0:
        raise ValueError(
            f"q, k and v must be non-empty, got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    return batch, q_len, kv_len, heads, kv_heads, head_dim


def check_implementation(implementation):
    """Validates ``implementation``: ``None`` or one of ``backends.BACKENDS``."""
    backends.check_implementation(implementation)


def check_causal(causal):
    if not isinstance(causal, (bool, np.bool_)):
        raise ValueError(f"causal must be a bool, got {causal!r}")


def check_softmax(softmax):
    if not isinstance(softmax, str) or softmax not in SOFTMAX_KINDS:
        raise ValueError(f"softmax must be one of {SOFTMAX_KINDS}, got {softmax!r}")


def check_window(window):
    if window is not None and (not _is_int(window) or window < 1):
        raise ValueError(f"window must be None or an int >= 1, got {window!r}")


def check_int(name, value, *, minimum):
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_positive_int(name, value):
    check_int(name, value, minimum=1)


def check_q_offset(q_offset):
    if not _is_int(q_offset) or q_offset < 0:
        raise ValueError(f"q_offset must be an int >= 0, got {q_offset!r}")


def check_scale(scale):
    """``scale`` is ``None`` (meaning ``1/sqrt(head_dim)``) or a positive number / scalar array."""
    if scale is None:
        return
    if isinstance(scale, (bool, np.bool_)):
        raise ValueError(f"scale must be None or a positive number, got {scale!r}")
    if isinstance(scale, numbers.Real):
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be None or a positive number, got {scale!r}")
        return
    if getattr(scale, "shape", None) != () or not jnp.issubdtype(scale.dtype, jnp.floating):
        raise ValueError(
            f"scale must be None or a positive number (or a float scalar array), got {scale!r}"
        )


def check_segment_ids(name, segment_ids, batch, length):
    """Checks that ``segment_ids`` is an integer array of shape ``[batch, length]``."""
    shape = getattr(segment_ids, "shape", None)
    if shape is None or tuple(shape) != (batch, length):
        got = f"shape {tuple(shape)}" if shape is not None else type(segment_ids).__name__
        raise ValueError(
            f"{name} must be an int array of shape [batch, seq] = {[batch, length]}, got {got}"
        )
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ValueError(f"{name} must have an integer dtype, got {segment_ids.dtype}")


def group_query_heads(q, kv_heads):
    """``[B, T, H, D]`` → ``[B, T, K, H//K, D]``: query head ``h`` reads kv head ``h // (H//K)``."""
    batch, length, heads, head_dim = q.shape
    return q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)


def repeat_kv(x, n_rep):
    """``[B, T, K, D]`` → ``[B, T, K * n_rep, D]``, each kv head repeated for its query group.

    Materialises the repeat; the attention functions use ``group_query_heads`` instead.
    """
    if n_rep == 1:
        return x
    return jnp.repeat(x, n_rep, axis=2)


def _positions(q_len, kv_len, q_offset):
    """Query and key positions as ``[q_len, 1]`` and ``[1, kv_len]`` iotas.

    Built in the graph rather than as NumPy constants, so XLA does not embed (and constant
    fold through) a ``[q_len, kv_len]`` literal, which makes compiling long sequences slow.
    """
    q_pos = jax.lax.broadcasted_iota(jnp.int32, (q_len, 1), 0) + q_offset
    k_pos = jax.lax.broadcasted_iota(jnp.int32, (1, kv_len), 1)
    return q_pos, k_pos


def causal_mask(q_len, kv_len, q_offset=0):
    """Bool ``[q_len, kv_len]``: key ``j`` visible to query ``i`` iff ``j <= i + q_offset``."""
    q_pos, k_pos = _positions(q_len, kv_len, q_offset)
    return k_pos <= q_pos


def window_mask(q_len, kv_len, window, q_offset=0):
    """Bool ``[q_len, kv_len]``: ``|i + q_offset - j| < window``.

    Combined with ``causal_mask`` this is the sliding window ``i - window < j <= i``.
    """
    q_pos, k_pos = _positions(q_len, kv_len, q_offset)
    return jnp.abs(q_pos - k_pos) < window


def segment_mask(q_segment_ids, kv_segment_ids):
    """Bool ``[B, q_len, kv_len]``: same segment id, and neither side is padding (id 0)."""
    q_ids = jnp.expand_dims(q_segment_ids, 2)
    kv_ids = jnp.expand_dims(kv_segment_ids, 1)
    return (q_ids == kv_ids) & (q_ids != 0)


def make_mask(q_len, kv_len, *, causal, window=None, q_segment_ids=None, kv_segment_ids=None,
              q_offset=0):
    """The full visibility mask, bool ``[B or 1, 1, q_len, kv_len]``.

    The leading dim is ``B`` when segment ids are given, else 1.
    """
    mask = jnp.ones((q_len, kv_len), dtype=bool)
    if causal:
        mask = mask & causal_mask(q_len, kv_len, q_offset)
    if window is not None:
        mask = mask & window_mask(q_len, kv_len, window, q_offset)
    mask = mask[None, None]
    if q_segment_ids is not None:
        seg = segment_mask(q_segment_ids, kv_segment_ids)
        mask = jnp.expand_dims(seg, 1) & mask
    return mask


def visible_key_count(mask):
    """Number of keys each query sees (SSMax's ``n_i``), float32.

    ``[B or 1, 1, q_len, kv_len]`` → ``[B or 1, 1, q_len]``; in general sums the last axis.
    """
    return jnp.sum(mask, axis=-1, dtype=jnp.int32).astype(jnp.float32)


def compute_dtype(dtype):
    """Float dtype for logits and softmax statistics: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def masked_softmax_stats(logits, mask):
    """Row max and row sum of ``exp(logits - max)`` over visible keys (last axis).

    Returns ``(row_max, row_sum, probs_unnormalised)``; for a fully masked row the max is 0
    (not ``-inf``) and the sum 0, so nothing downstream turns into NaN. ``row_max`` is held
    constant for differentiation: softmax does not depend on it.
    """
    masked = jnp.where(mask, logits, -jnp.inf)
    row_max = jax.lax.stop_gradient(jnp.max(masked, axis=-1, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    unnorm = jnp.exp(masked - row_max)
    row_sum = jnp.sum(unnorm, axis=-1, keepdims=True)
    return row_max, row_sum, unnorm


def masked_softmax(logits, mask):
    """Softmax over the last axis restricted to ``mask``; a fully masked row gives all zeros.

    ``logits`` should already be float32 (or float64); ``mask`` broadcasts against it.
    """
    _, row_sum, unnorm = masked_softmax_stats(logits, mask)
    return unnorm / jnp.where(row_sum > 0, row_sum, 1.0)


def masked_logsumexp(logits, mask):
    """``log sum_j exp(logits_j)`` over visible keys, ``-inf`` for a fully masked row. Keeps dims."""
    row_max, row_sum, _ = masked_softmax_stats(logits, mask)
    return jnp.where(row_sum > 0, row_max + jnp.log(jnp.where(row_sum > 0, row_sum, 1.0)), -jnp.inf)
