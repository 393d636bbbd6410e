"""Independent naive attention references for the tests (no jaxattn code).

``naive_attention`` loops over batch, query and head in float64 NumPy: for each query it lists
the keys it may see, then takes a softmax (or SSMax, ``z * s_h * log n_i``) over just those.
``naive_mask`` is the same visibility rule as an explicit ``[B, Tq, Tk]`` array, and
``naive_masked_attention_jnp`` a direct jnp formula over such a mask, for autodiff.
"""

import jax.numpy as jnp
import numpy as np


def visible_keys(i, kv_len, *, causal=True, window=None, q_segment_ids=None, kv_segment_ids=None,
                 q_offset=0, block_size=None):
    """Keys query ``i`` (of one batch element) may see, as a list of indices.

    ``block_size`` selects block-local attention: key block in ``{b-1, b}`` (causal) or
    ``{b-1, b, b+1}`` (bidirectional), ``b`` the query's block.
    """
    pos = i + q_offset
    keys = []
    for j in range(kv_len):
        if causal and j > pos:
            continue
        if window is not None:
            inside = pos - window < j <= pos if causal else abs(pos - j) < window
            if not inside:
                continue
        if block_size is not None:
            query_block, key_block = pos // block_size, j // block_size
            lowest, highest = query_block - 1, (query_block if causal else query_block + 1)
            if not lowest <= key_block <= highest:
                continue
        if q_segment_ids is not None:
            if q_segment_ids[i] == 0 or kv_segment_ids[j] != q_segment_ids[i]:
                continue
        keys.append(j)
    return keys


def _segments(segment_ids, kv_segment_ids, b):
    if segment_ids is None:
        return None, None
    q_ids = np.asarray(segment_ids)[b]
    kv_ids = q_ids if kv_segment_ids is None else np.asarray(kv_segment_ids)[b]
    return q_ids, kv_ids


def naive_mask(batch, q_len, kv_len, *, segment_ids=None, kv_segment_ids=None, **rule):
    """Bool ``[batch, q_len, kv_len]`` built query by query from ``visible_keys``."""
    mask = np.zeros((batch, q_len, kv_len), dtype=bool)
    for b in range(batch):
        q_ids, kv_ids = _segments(segment_ids, kv_segment_ids, b)
        for i in range(q_len):
            mask[b, i, visible_keys(i, kv_len, q_segment_ids=q_ids, kv_segment_ids=kv_ids, **rule)] = True
    return mask


def naive_attention(q, k, v, *, causal=True, window=None, segment_ids=None, kv_segment_ids=None,
                    softmax="softmax", ssmax_s=None, scale=None, q_offset=0, block_size=None):
    """Float64 ``[B, Tq, H, D]`` attention; a query with no visible key outputs zeros."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    scale = 1.0 / np.sqrt(head_dim) if scale is None else float(scale)
    out = np.zeros_like(q)
    for b in range(batch):
        q_ids, kv_ids = _segments(segment_ids, kv_segment_ids, b)
        for i in range(q_len):
            keys = visible_keys(i, kv_len, causal=causal, window=window, q_segment_ids=q_ids,
                                kv_segment_ids=kv_ids, q_offset=q_offset, block_size=block_size)
            if not keys:
                continue
            for h in range(heads):
                kv_head = h // group
                out[b, i, h] = attend_row(q[b, i, h], k[b, keys, kv_head], v[b, keys, kv_head],
                                          scale=scale, softmax=softmax, ssmax_s=ssmax_s, head=h)
    return out


def attend_row(q_row, keys, values, *, scale, softmax, ssmax_s, head):
    """Softmax (or SSMax with ``n`` = the number of ``keys``) of one query over its keys.

    ``q_row [D]``, ``keys``/``values [n, D]`` float64 -> ``[D]``.
    """
    z = keys @ q_row * scale
    if softmax == "ssmax":
        z = z * float(np.asarray(ssmax_s, dtype=np.float64)[head]) * np.log(len(keys))
    p = np.exp(z - z.max())
    p /= p.sum()
    return p @ values


def naive_masked_attention_jnp(q, k, v, mask, *, ssmax_s=None, scale=None):
    """Attention over an explicit bool ``mask``, ``[B, Tq, Tk]`` (all heads) or per head
    ``[B, H, Tq, Tk]``, with repeated kv heads, in jnp.

    ``ssmax_s`` ``[H]`` turns on SSMax with ``n_i`` the row count of ``mask``. Rows with no
    visible key output zeros.
    """
    heads, head_dim = q.shape[2], q.shape[3]
    group = heads // k.shape[2]
    k = jnp.repeat(k, group, axis=2)
    v = jnp.repeat(v, group, axis=2)
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    mask = jnp.asarray(mask)
    if mask.ndim == 3:
        mask = mask[:, None, :, :]
    z = jnp.einsum("bihd,bjhd->bhij", q, k) * scale
    if ssmax_s is not None:
        n = jnp.sum(mask, axis=-1, keepdims=True).astype(z.dtype)
        z = z * ssmax_s[None, :, None, None] * jnp.log(jnp.maximum(n, 1.0))
    z = jnp.where(mask, z, -1e30)
    z = z - jnp.max(z, axis=-1, keepdims=True)
    e = jnp.where(mask, jnp.exp(z), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    p = e / jnp.where(total > 0, total, 1.0)
    return jnp.einsum("bhij,bjhd->bihd", p, v)
