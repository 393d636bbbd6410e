"""Landmark attention at inference: top-k retrieval of cached blocks (Mohtashami & Jaggi 2023,
§3.2), pure JAX.

The input is processed in windows (chunks) of whole blocks. Completed blocks go to a cache
that holds, per layer, the keys (before RoPE) and values of every block; the landmark keys
(the last key of each block) are what a query scores. For a window following ``N`` cached
blocks and retrieval of ``k`` blocks:

- the window starts at position ``S = min(N, k + 1) * block_size`` (the paper reserves ``k + 1``
  blocks of positions for retrieved memory);
- *scoring* ("stingy" position mapping): the last ``min(N, k + 1)`` cached landmarks keep their
  relative slots ``0 .. S/block_size - 1`` before the window and every older landmark is put on
  slot 0; each query scores the landmarks with ``softmax(q . k_L / sqrt(d))`` and keeps the
  ``k`` best blocks, per head and token (``per_token_and_head``, the paper's default), per head
  for the whole window (``max_over_tokens``: the max over the window's tokens, used with a
  host-resident cache) or per token for all heads (``max_over_heads``);
- *attention*: the selected blocks, in chronological order, take slots ``j`` (the ``j``-th
  selected) in the reserved prefix, shifted one slot right when the block is one of the last
  ``k`` cached and ``N > k``, so the most recent blocks sit where they were scored. When every
  cached block fits (``N <= k + 1`` and all selected) these are the blocks' true positions, so
  retrieving everything reproduces the full-context forward exactly.

``landmark.landmark_attention(..., retrieved=RetrievedBlocks(...))`` then gates every retrieved
block by its landmark in the same grouped softmax as the window's own past blocks.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxattn.attention import core
from jaxattn.attention import rope

SELECTION_METHODS = ("per_token_and_head", "max_over_tokens", "max_over_heads")


def check_selection(method):
    if method not in SELECTION_METHODS:
        raise ValueError(f"selection must be one of {', '.join(SELECTION_METHODS)}, got "
                         f"{method!r}")


def window_start(num_cached, top_k, block_size):
    """``S = min(N, k + 1) * block_size``: the position of the window's first token."""
    return jnp.minimum(num_cached, top_k + 1) * block_size


def scoring_positions(num_cached, capacity, top_k, block_size):
    """Int ``[capacity]``: the RoPE position of each cache slot's landmark for scoring.

    Slot ``i`` (chronological) of ``N`` filled slots maps to block slot
    ``max(i - (N - min(N, k + 1)), 0)``, landmark offset ``block_size - 1``.
    """
    slots = jnp.arange(capacity)
    shift = num_cached - jnp.minimum(num_cached, top_k + 1)
    return jnp.maximum(slots - shift, 0) * block_size + block_size - 1


def retrieved_positions(indices, num_cached, top_k, block_size):
    """Int ``[..., n, block_size]``: positions of the selected blocks' tokens.

    ``indices [..., n]`` are cache slots sorted chronologically; the ``j``-th goes to slot
    ``j + 1`` if ``N > k`` and it is among the last ``k`` cached blocks, else to slot ``j``.
    """
    rank = jnp.broadcast_to(jnp.arange(indices.shape[-1], dtype=jnp.int32), indices.shape)
    recent = (num_cached > top_k) & (indices >= num_cached - top_k)
    slots = rank + recent.astype(jnp.int32)
    offsets = jnp.arange(block_size, dtype=jnp.int32).reshape((1,) * indices.ndim + (-1,))
    return slots[..., None] * block_size + offsets


def select_blocks(q, landmark_keys, num_cached, *, top_k, block_size, selection,
                  num_queries=None, rope_base=10_000.0, scale=None):
    """The ``top_k`` cached blocks each query retrieves, by landmark score.

    Args:
      q: ``[B, T, H, D]`` window queries, RoPE applied at their positions.
      landmark_keys: ``[B, C, K, D]`` cached landmark keys before RoPE (``H % K == 0``); slots
        ``>= num_cached`` are empty.
      num_cached: int scalar (may be traced), ``N``: filled slots.
      top_k: static int >= 1, ``<= C``.
      block_size: ``mem_freq + 1``.
      selection: one of ``SELECTION_METHODS``.
      num_queries: unused since ``max_over_tokens`` became a running max (kept for callers);
        padding queries after the real ones cannot influence real ones.
      rope_base, scale: RoPE base and logit scale (default ``1/sqrt(D)``).

    Returns:
      ``(indices, valid)``: int32 and bool ``[B, T, H, top_k]``; indices sorted ascending
      (chronological), ``valid`` false for picks past ``num_cached`` (fewer than ``top_k``
      blocks cached).
    """
    check_selection(selection)
    batch, q_len, heads, head_dim = q.shape
    capacity, kv_heads = landmark_keys.shape[1], landmark_keys.shape[2]
    if not 1 <= top_k <= capacity:
        raise ValueError(f"top_k must be in [1, cache capacity {capacity}], got {top_k}")
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    dtype = core.compute_dtype(q.dtype)
    positions = scoring_positions(num_cached, capacity, top_k, block_size)
    keys = rope.rotate(landmark_keys, positions[None, :, None], rope_base)
    qg = core.group_query_heads(q, kv_heads)
    logits = jnp.einsum("btkgd,bckd->btkgc", qg, keys, preferred_element_type=dtype) * scale
    logits = logits.reshape(batch, q_len, heads, capacity)
    filled = (jnp.arange(capacity) < num_cached)[None, None, None, :]
    probs = core.masked_softmax(logits, filled)
    del num_queries
    if selection == "max_over_tokens":
        probs = jax.lax.cummax(probs, axis=1)
    elif selection == "max_over_heads":
        probs = jnp.broadcast_to(jnp.max(probs, axis=2, keepdims=True), probs.shape)
    # Filled slots (p >= 0) always outrank empty ones (-1), even when p underflows to 0.
    _, indices = jax.lax.top_k(jnp.where(filled, probs, -1.0), top_k)
    indices = jnp.sort(indices.astype(jnp.int32), axis=-1)
    return indices, indices < num_cached


def _head_to_kv(heads, kv_heads):
    return np.arange(heads) // (heads // kv_heads)


def gather_blocks(cache, indices, *, heads):
    """Blocks ``cache[b, indices[b, t, h, j], :, kv(h)]``, on device.

    Args:
      cache: ``[B, C, block_size, K, D]`` keys or values.
      indices: int ``[B, Tr, H, n]``.
      heads: ``H``; query head ``h`` reads kv head ``h // (H / K)``.

    Returns:
      ``[B, Tr, H, n, block_size, D]``.
    """
    per_head = jnp.moveaxis(cache[:, :, :, _head_to_kv(heads, cache.shape[3])], 3, 1)
    b = jnp.arange(cache.shape[0])[:, None, None, None]
    h = jnp.arange(heads)[None, None, :, None]
    return per_head[b, h, indices]


def gather_blocks_host(cache, indices, *, heads):
    """``gather_blocks`` on a host (NumPy) cache: only the selected blocks leave host memory."""
    indices = np.asarray(indices)
    kv = _head_to_kv(heads, cache.shape[3])
    b = np.arange(cache.shape[0])[:, None, None, None]
    h = kv[None, None, :, None]
    # The advanced indices are split by a slice, so NumPy puts their broadcast shape first:
    # [B, Tr, H, n] + [block, D].
    return cache[b, indices, :, h]


def rotate_retrieved(keys, indices, num_cached, *, top_k, block_size, rope_base=10_000.0):
    """RoPE on gathered keys ``[B, Tr, H, n, block, D]`` at ``retrieved_positions``."""
    positions = retrieved_positions(indices, num_cached, top_k, block_size)
    return rope.rotate(keys, positions, rope_base)
