"""Scalable-Softmax (SSMax; Nakanishi 2025, arXiv 2501.19399).

SSMax over the ``n`` logits of one query: ``SSMax(z)_j = n^(s z_j) / sum_l n^(s z_l)
= softmax((s log n) z)_j``. In attention ``z`` are the scaled logits ``q·k / sqrt(d)``, ``s``
is a learnable scalar per head and ``n = n_i`` is the number of keys query ``i`` actually
sees under the full mask. The scale depends only on the (head, query) row, so every
softmax-based variant applies it as a row multiplier on its logits.
"""

import math

import jax.numpy as jnp

from jaxattn.attention import core


def check_ssmax_s(ssmax_s, softmax, num_heads):
    """``ssmax_s`` must be a float array ``[heads]`` with ``softmax="ssmax"`` and ``None`` otherwise."""
    if softmax != "ssmax":
        if ssmax_s is not None:
            raise ValueError(
                f"ssmax_s is only used with softmax='ssmax', got softmax={softmax!r} and an ssmax_s"
            )
        return
    if ssmax_s is None:
        raise ValueError(
            f"ssmax_s is required with softmax='ssmax': a float array of shape [heads] = [{num_heads}]"
        )
    shape = getattr(ssmax_s, "shape", None)
    if shape is None or tuple(shape) != (num_heads,):
        got = f"shape {tuple(shape)}" if shape is not None else type(ssmax_s).__name__
        raise ValueError(f"ssmax_s must be a float array of shape [heads] = [{num_heads}], got {got}")
    if not jnp.issubdtype(ssmax_s.dtype, jnp.floating):
        raise ValueError(f"ssmax_s must have a floating dtype, got {ssmax_s.dtype}")


def ssmax_logit_scale(ssmax_s, n_visible):
    """The SSMax row multiplier ``s_h * log(n_i)``.

    Args:
      ssmax_s: ``[heads]`` per-head ``s``.
      n_visible: ``[batch or 1, 1, q_len]`` visible-key counts (``core.visible_key_count``).

    Returns:
      ``[batch or 1, heads, q_len, 1]``, broadcastable to logits ``[batch, heads, q_len,
      kv_len]``; float32 (float64 when ``ssmax_s`` is float64). A row with no visible key
      (``n_i = 0``) gets multiplier 0; its softmax is all zeros anyway.
    """
    if getattr(ssmax_s, "ndim", None) != 1:
        raise ValueError(f"ssmax_s must be [heads], got shape {getattr(ssmax_s, 'shape', None)}")
    if getattr(n_visible, "ndim", None) != 3 or n_visible.shape[1] != 1:
        raise ValueError(
            f"n_visible must be [batch or 1, 1, q_len], got shape {getattr(n_visible, 'shape', None)}"
        )
    dtype = jnp.promote_types(ssmax_s.dtype, jnp.float32)
    log_n = jnp.log(jnp.maximum(n_visible.astype(dtype), 1.0))
    s = ssmax_s.astype(dtype)
    return s[None, :, None, None] * log_n[:, :, :, None]


def ssmax_row_scale(ssmax_s, n_visible):
    """The SSMax row multiplier ``s_h * log(n_i)`` in the primitives' layout.

    Args:
      ssmax_s: ``[heads]`` per-head ``s``.
      n_visible: ``[batch or 1, q_len]`` visible-key counts.

    Returns:
      ``[batch or 1, q_len, heads]``, float32 (float64 for a float64 ``ssmax_s``); a row with
      no visible key gets 0.
    """
    dtype = jnp.promote_types(ssmax_s.dtype, jnp.float32)
    log_n = jnp.log(jnp.maximum(n_visible.astype(dtype), 1.0))
    return log_n[:, :, None] * ssmax_s.astype(dtype)[None, None, :]


def ssmax_init_value(train_len):
    """``1 / log(train_len)``: with this ``s``, SSMax is softmax for a query seeing ``train_len`` keys."""
    core.check_int("train_len", train_len, minimum=2)
    return 1.0 / math.log(train_len)
