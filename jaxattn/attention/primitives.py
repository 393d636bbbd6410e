"""The softmax-attention primitives every variant calls, and backends replace.

- ``attend``: masked dense attention over an explicit mask (the reference).
- ``attend_layout``: the reference over a static ``layout.BlockLayout``: each query block
  gathers the key blocks it visits and runs one masked softmax over them, memory
  ``O(T * visits * kv_block)``.
- ``flash_attend``: the same layout as an online softmax over key blocks (Milakov &
  Gimelshein 2018; Dao et al. 2022): a ``lax.map`` over query blocks with a ``fori_loop``
  over the visited key blocks, float32 running max and sum, and a ``custom_vjp`` whose
  backward recomputes the tiles (dQ over query blocks, dK/dV over key blocks through the
  transposed layout), so neither pass holds more than a tile of logits. This is the
  ``"xla_chunked"`` backend, the long-sequence path on CPU and the fallback everywhere.
- ``merge_partials``: merges attentions over disjoint key sets through their log-sum-exps.

Shapes follow ``jax.nn.dot_product_attention``: ``q [B, Tq, H, D]``, ``k``/``v`` ``[B, Tk, K, D]``
with ``H % K == 0`` (query head ``h`` reads kv head ``h // (H // K)``). Logits and softmax
statistics are float32 (float64 for float64 inputs); outputs have ``q``'s dtype. With
``return_lse`` the natural-log ``LSE_i = log sum_j exp(z_ij)`` over visible keys comes back
as ``[B, Tq, H]`` (``-inf`` for a query that sees nothing, whose output is 0).

The logits are ``z_ij = row_scale_i * q_i . k_j``: ``row_scale`` is the logit scale
(``1/sqrt(D)`` by default) times SSMax's ``s_h * log n_i`` where used, applied to ``q``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxattn.attention import core
from jaxattn.attention import layout as layout_lib


def _row_scale(q, scale, row_scale):
    """``[B or 1, Tq, H or 1]`` multiplier of the logits of each query row, compute dtype."""
    dtype = core.compute_dtype(q.dtype)
    base = jnp.asarray(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale, dtype)
    if row_scale is None:
        return jnp.reshape(base, (1, 1, 1))
    return base * row_scale.astype(dtype)


def _finish(out, lse, q, return_lse):
    out = out.astype(q.dtype)
    return (out, lse) if return_lse else out


def attend(q, k, v, mask, *, scale=None, row_scale=None, return_lse=False):
    """Reference masked softmax attention.

    Args:
      q: ``[B, Tq, H, D]``; k, v: ``[B, Tk, K, D]`` (GQA).
      mask: bool, broadcastable to ``[B, H, Tq, Tk]`` (leading dims may be 1): ``True`` where
        query ``i`` may see key ``j``.
      scale: logit scale, default ``1/sqrt(D)``.
      row_scale: optional ``[B or 1, Tq, H or 1]`` extra multiplier per query row (SSMax).
      return_lse: also return the log-sum-exp ``[B, Tq, H]``.

    Returns:
      ``[B, Tq, H, D]`` (and the LSE): ``out_i = sum_j softmax_j(z_ij) v_j`` over visible ``j``.
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    dtype = core.compute_dtype(q.dtype)
    rows = _row_scale(q, scale, row_scale)  # [Bs, Tq, Hs]
    qg = (q.astype(dtype) * rows[..., None]).reshape(batch, q_len, kv_heads, group, head_dim)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=dtype)
    mask = jnp.asarray(mask)
    mask = jnp.broadcast_to(mask, jnp.broadcast_shapes(mask.shape, (1, 1, q_len, k.shape[1])))
    mask = mask.reshape(mask.shape[0], mask.shape[1] // group if mask.shape[1] > 1 else 1,
                        group if mask.shape[1] > 1 else 1, q_len, k.shape[1])
    row_max, row_sum, unnorm = core.masked_softmax_stats(logits, mask)
    probs = unnorm / jnp.where(row_sum > 0, row_sum, 1.0)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v.astype(dtype))
    out = out.reshape(batch, q_len, heads, head_dim)
    lse = None
    if return_lse:
        lse = jnp.where(row_sum > 0, row_max + jnp.log(jnp.where(row_sum > 0, row_sum, 1.0)),
                        -jnp.inf)[..., 0]
        lse = jnp.transpose(lse.reshape(batch, heads, q_len), (0, 2, 1))
    return _finish(out, lse, q, return_lse)


def tile_mask(rule, kv_len, rows, cols, q_seg=None, kv_seg=None):
    """Bool ``[B or 1, len(rows), len(cols)]``: the ``PositionRule`` (with keys past
    ``kv_len`` hidden) and, with segment ids (int ``[B or 1, ...]`` for those rows and
    columns), same non-zero segment."""
    diff = (rows + rule.q_offset)[:, None] - cols[None, :]
    mask = jnp.broadcast_to((cols < kv_len)[None, :], diff.shape)
    low, high = rule.difference_range()
    if low is not None:
        mask = mask & (diff >= low)
    if high is not None:
        mask = mask & (diff <= high)
    mask = mask[None]
    if q_seg is not None:
        mask = mask & (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg != 0)[:, :, None]
    return mask


def _check_layout(layout, q_len, kv_len):
    if not isinstance(layout, layout_lib.BlockLayout):
        raise ValueError(f"layout must be a BlockLayout, got {type(layout).__name__}")
    nq = layout_lib.num_blocks(q_len, layout.q_block)
    nk = layout_lib.num_blocks(kv_len, layout.kv_block)
    if (layout.num_q_blocks, layout.num_kv_blocks) != (nq, nk):
        raise ValueError(
            f"layout has {layout.num_q_blocks} x {layout.num_kv_blocks} blocks of "
            f"{layout.q_block} x {layout.kv_block}, but {q_len} queries and {kv_len} keys need "
            f"{nq} x {nk}")


def _pad_to(x, length, axis):
    extra = length - x.shape[axis]
    if extra == 0:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, extra)
    return jnp.pad(x, pad)


def _segments(segment_ids, kv_segment_ids, q_len, kv_len, q_pad, kv_pad):
    if segment_ids is None:
        return None, None
    kv_ids = segment_ids if kv_segment_ids is None else kv_segment_ids
    return (_pad_to(segment_ids.astype(jnp.int32), q_pad, 1),
            _pad_to(kv_ids.astype(jnp.int32), kv_pad, 1))


def _layout_inputs(q, k, layout, segment_ids, kv_segment_ids):
    """Checks ``layout`` against the lengths; ``(kv_len, kv_heads, group, compute dtype,
    padded q_len, padded kv_len, padded q and kv segment ids or None)``."""
    q_len, heads = q.shape[1], q.shape[2]
    kv_len, kv_heads = k.shape[1], k.shape[2]
    _check_layout(layout, q_len, kv_len)
    q_pad = layout.num_q_blocks * layout.q_block
    kv_pad = layout.num_kv_blocks * layout.kv_block
    q_seg, kv_seg = _segments(segment_ids, kv_segment_ids, q_len, kv_len, q_pad, kv_pad)
    return (kv_len, kv_heads, heads // kv_heads, core.compute_dtype(q.dtype), q_pad, kv_pad,
            q_seg, kv_seg)


def attend_layout(q, k, v, layout, rule, *, segment_ids=None, kv_segment_ids=None, scale=None,
                  row_scale=None, return_lse=False):
    """Reference attention over a static block layout.

    Query ``i`` sees key ``j`` when ``j``'s block is among those ``layout`` lists for ``i``'s
    block and the pair passes ``tile_mask`` (``rule``, key ``j < Tk``, same non-zero segment).

    Args:
      q, k, v, scale, row_scale, return_lse: as in ``attend``.
      layout: ``BlockLayout`` over ``Tq`` queries and ``Tk`` keys (the last blocks padded).
      rule: ``layout.PositionRule`` applied inside the tiles.
      segment_ids: int ``[B, Tq]`` (0 = padding); kv_segment_ids: ``[B, Tk]``, default
        ``segment_ids``.
    """
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads, group, dtype, q_pad, kv_pad, q_seg, kv_seg = _layout_inputs(
        q, k, layout, segment_ids, kv_segment_ids)
    bq, bk, nq, visits = layout.q_block, layout.kv_block, layout.num_q_blocks, layout.max_visits
    rows = _pad_to(_row_scale(q, scale, row_scale), q_pad, 1) if row_scale is not None else \
        _row_scale(q, scale, None)
    qp = _pad_to(q.astype(dtype), q_pad, 1) * rows[..., None]
    qb = qp.reshape(batch, nq, bq, kv_heads, group, head_dim)
    gather = layout.indices

    def gather_blocks(x):
        blocks = _pad_to(x, kv_pad, 1).reshape(x.shape[0], layout.num_kv_blocks, bk,
                                               *x.shape[2:])[:, gather]
        return blocks.reshape(x.shape[0], nq, visits * bk, *x.shape[2:])

    kb, vb = gather_blocks(k), gather_blocks(v.astype(dtype))
    logits = jnp.einsum("bnqkgd,bnskd->bnkgqs", qb, kb, preferred_element_type=dtype)
    q_rows = np.arange(q_pad).reshape(nq, bq)
    k_cols = (gather[:, :, None] * bk + np.arange(bk)).reshape(nq, visits * bk)
    in_count = np.repeat(np.arange(visits)[None, :] < layout.counts[:, None], bk, axis=1)
    masks = []
    for n in range(nq):  # static, cheap: [bq, visits * bk] per block
        masks.append(tile_mask(rule, kv_len, jnp.asarray(q_rows[n]), jnp.asarray(k_cols[n]),
                               None if q_seg is None else q_seg[:, n * bq:(n + 1) * bq],
                               None if kv_seg is None else jnp.take(kv_seg, k_cols[n], axis=1)))
    mask = jnp.stack(masks, axis=1) & in_count[None, :, None, :]  # [Bs, nq, bq, visits*bk]
    row_max, row_sum, unnorm = core.masked_softmax_stats(logits, mask[:, :, None, None])
    probs = unnorm / jnp.where(row_sum > 0, row_sum, 1.0)
    out = jnp.einsum("bnkgqs,bnskd->bnqkgd", probs, vb)
    out = out.reshape(batch, q_pad, heads, head_dim)[:, :q_len]
    lse = None
    if return_lse:
        lse = jnp.where(row_sum > 0, row_max + jnp.log(jnp.where(row_sum > 0, row_sum, 1.0)),
                        -jnp.inf)[..., 0]  # [B, nq, K, G, bq]
        lse = jnp.moveaxis(lse, 4, 2).reshape(batch, q_pad, heads)[:, :q_len]
    return _finish(out, lse, q, return_lse)


def visible_counts(layout, rule, kv_len, q_len, *, segment_ids=None, kv_segment_ids=None):
    """Keys each query sees under ``layout`` and ``rule`` (SSMax's ``n_i``), float32
    ``[B or 1, Tq]``, counted tile by tile (no ``[Tq, Tk]`` mask)."""
    bq, bk, nq = layout.q_block, layout.kv_block, layout.num_q_blocks
    q_pad, kv_pad = nq * bq, layout.num_kv_blocks * bk
    q_seg, kv_seg = _segments(segment_ids, kv_segment_ids, q_len, kv_len, q_pad, kv_pad)
    counts, indices = jnp.asarray(layout.counts), jnp.asarray(layout.indices)
    seg_batch = 1 if q_seg is None else q_seg.shape[0]

    def per_block(i):
        rows = i * bq + jnp.arange(bq, dtype=jnp.int32)
        qs = None if q_seg is None else jax.lax.dynamic_slice_in_dim(q_seg, i * bq, bq, 1)

        def body(t, total):
            j = indices[i, t]
            cols = j * bk + jnp.arange(bk, dtype=jnp.int32)
            ks = None if kv_seg is None else jax.lax.dynamic_slice_in_dim(kv_seg, j * bk, bk, 1)
            return total + jnp.sum(tile_mask(rule, kv_len, rows, cols, qs, ks), axis=-1,
                                   dtype=jnp.int32)

        return jax.lax.fori_loop(0, counts[i], body, jnp.zeros((seg_batch, bq), jnp.int32))

    per = jax.lax.map(per_block, jnp.arange(nq))  # [nq, Bs, bq]
    return jnp.moveaxis(per, 0, 1).reshape(seg_batch, q_pad)[:, :q_len].astype(jnp.float32)


def flash_attend(q, k, v, layout, rule, *, segment_ids=None, kv_segment_ids=None, scale=None,
                 row_scale=None, return_lse=False):
    """``attend_layout`` as an online softmax over key blocks, with a memory-bounded backward.

    Same arguments and result as ``attend_layout`` (equal up to float rounding); memory is
    ``O(B * H * (Tq + Tk) * D)`` plus one ``[q_block, kv_block]`` tile of logits per head,
    in the forward and in the backward. Differentiable in ``q``, ``k``, ``v`` and
    ``row_scale``.
    """
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads, group, dtype, q_pad, kv_pad, q_seg, kv_seg = _layout_inputs(
        q, k, layout, segment_ids, kv_segment_ids)
    rows = _row_scale(q, scale, row_scale)
    qs = q.astype(dtype) * rows[..., None]
    # Head-major layouts: q [B, K, G, Tq, D]; k, v [B, K, Tk, D].
    qh = jnp.transpose(_pad_to(qs, q_pad, 1).reshape(batch, q_pad, kv_heads, group, head_dim),
                       (0, 2, 3, 1, 4))
    kh = jnp.transpose(_pad_to(k, kv_pad, 1), (0, 2, 1, 3))
    vh = jnp.transpose(_pad_to(v, kv_pad, 1), (0, 2, 1, 3))
    out, lse = _flash_core(qh, kh, vh, q_seg, kv_seg, layout=layout, rule=rule, kv_len=kv_len)
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, q_pad, heads, head_dim)[:, :q_len]
    if return_lse:
        lse = jnp.transpose(lse, (0, 3, 1, 2)).reshape(batch, q_pad, heads)[:, :q_len]
    return _finish(out, lse, q, return_lse)


def _flash_core(q, k, v, q_seg, kv_seg, *, layout, rule, kv_len):
    """Online-softmax attention of head-major, padded, pre-scaled ``q [B, K, G, Tq, D]`` over
    ``k``, ``v`` ``[B, K, Tk, D]``: ``(out [B, K, G, Tq, D], lse [B, K, G, Tq])``."""
    bq, bk = layout.q_block, layout.kv_block
    dtype = q.dtype
    transposed = layout.transposed()

    def table(which):
        # Built inside each traced function: a closed-over array would leak between traces.
        return jnp.asarray(which.counts), jnp.asarray(which.indices)

    def q_tile(x, i):
        return jax.lax.dynamic_slice_in_dim(x, i * bq, bq, axis=3)

    def kv_tile(x, j):
        return jax.lax.dynamic_slice_in_dim(x, j * bk, bk, axis=2)

    def seg_tile(seg, start, size):
        return None if seg is None else jax.lax.dynamic_slice_in_dim(seg, start, size, 1)

    def logits_and_mask(q_i, k_j, i, j, qs, ks):
        s = jnp.einsum("bkgqd,bkcd->bkgqc", q_i, k_j, preferred_element_type=dtype)
        rows = i * bq + jnp.arange(bq, dtype=jnp.int32)
        cols = j * bk + jnp.arange(bk, dtype=jnp.int32)
        mask = tile_mask(rule, kv_len, rows, cols, qs, ks)[:, None, None]
        return jnp.where(mask, s, -jnp.inf)

    def forward(q, k, v, q_seg, kv_seg):
        counts, indices = table(layout)
        batch, kv_heads, group = q.shape[:3]

        def per_block(i):
            q_i = q_tile(q, i)
            qs = seg_tile(q_seg, i * bq, bq)

            def body(t, carry):
                m, l, acc = carry
                j = indices[i, t]
                s = logits_and_mask(q_i, kv_tile(k, j), i, j, qs, seg_tile(kv_seg, j * bk, bk))
                m_new = jnp.maximum(m, jnp.max(s, axis=-1))
                m_use = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
                p = jnp.exp(s - m_use[..., None])
                correction = jnp.exp(m - m_use)
                l = l * correction + jnp.sum(p, axis=-1)
                acc = acc * correction[..., None] + jnp.einsum(
                    "bkgqc,bkcd->bkgqd", p, kv_tile(v, j).astype(dtype))
                return m_new, l, acc

            init = (jnp.full((batch, kv_heads, group, bq), -jnp.inf, dtype),
                    jnp.zeros((batch, kv_heads, group, bq), dtype),
                    jnp.zeros((batch, kv_heads, group, bq, q.shape[-1]), dtype))
            m, l, acc = jax.lax.fori_loop(0, counts[i], body, init)
            seen = l > 0
            out = acc / jnp.where(seen, l, 1.0)[..., None]
            lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
            return out, lse

        out, lse = jax.lax.map(per_block, jnp.arange(layout.num_q_blocks))
        # [nq, B, K, G, bq, ...] -> [B, K, G, nq * bq, ...]
        out = jnp.moveaxis(out, 0, 3).reshape(*q.shape)
        lse = jnp.moveaxis(lse, 0, 3).reshape(*q.shape[:4])
        return out, lse

    def probabilities(q_i, k_j, i, j, qs, ks, lse_i):
        s = logits_and_mask(q_i, k_j, i, j, qs, ks)
        return jnp.exp(s - jnp.where(jnp.isfinite(lse_i), lse_i, 0.0)[..., None])

    def backward(residuals, cotangents):
        q, k, v, q_seg, kv_seg, out, lse = residuals
        d_out, d_lse = cotangents
        d_out = d_out.astype(dtype)
        # dS = P * (dP - rowsum(dO * O)) + P * dLSE, since dLSE_i / dz_ij = P_ij.
        delta = jnp.sum(d_out * out, axis=-1) - d_lse.astype(dtype)  # [B, K, G, Tq]
        counts, indices = table(layout)

        def dq_block(i):
            q_i, do_i = q_tile(q, i), q_tile(d_out, i)
            lse_i = jax.lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=3)
            delta_i = jax.lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=3)
            qs = seg_tile(q_seg, i * bq, bq)

            def body(t, dq):
                j = indices[i, t]
                k_j = kv_tile(k, j)
                p = probabilities(q_i, k_j, i, j, qs, seg_tile(kv_seg, j * bk, bk), lse_i)
                dp = jnp.einsum("bkgqd,bkcd->bkgqc", do_i, kv_tile(v, j).astype(dtype))
                ds = p * (dp - delta_i[..., None])
                return dq + jnp.einsum("bkgqc,bkcd->bkgqd", ds, k_j.astype(dtype))

            return jax.lax.fori_loop(0, counts[i], body, jnp.zeros_like(q_i))

        t_counts, t_indices = table(transposed)

        def dkv_block(j):
            k_j, v_j = kv_tile(k, j), kv_tile(v, j).astype(dtype)
            ks = seg_tile(kv_seg, j * bk, bk)

            def body(t, carry):
                dk, dv = carry
                i = t_indices[j, t]
                q_i, do_i = q_tile(q, i), q_tile(d_out, i)
                lse_i = jax.lax.dynamic_slice_in_dim(lse, i * bq, bq, axis=3)
                delta_i = jax.lax.dynamic_slice_in_dim(delta, i * bq, bq, axis=3)
                p = probabilities(q_i, k_j, i, j, seg_tile(q_seg, i * bq, bq), ks, lse_i)
                dv = dv + jnp.einsum("bkgqc,bkgqd->bkcd", p, do_i)
                dp = jnp.einsum("bkgqd,bkcd->bkgqc", do_i, v_j)
                ds = p * (dp - delta_i[..., None])
                dk = dk + jnp.einsum("bkgqc,bkgqd->bkcd", ds, q_i)
                return dk, dv

            zeros = jnp.zeros(k_j.shape, dtype)
            return jax.lax.fori_loop(0, t_counts[j], body, (zeros, zeros))

        dq = jax.lax.map(dq_block, jnp.arange(layout.num_q_blocks))
        dq = jnp.moveaxis(dq, 0, 3).reshape(*q.shape)
        dk, dv = jax.lax.map(dkv_block, jnp.arange(layout.num_kv_blocks))
        dk = jnp.moveaxis(dk, 0, 2).reshape(*k.shape).astype(k.dtype)
        dv = jnp.moveaxis(dv, 0, 2).reshape(*v.shape).astype(v.dtype)
        return dq.astype(q.dtype), dk, dv, None, None

    @jax.custom_vjp
    def run(q, k, v, q_seg, kv_seg):
        return forward(q, k, v, q_seg, kv_seg)

    def run_forward(q, k, v, q_seg, kv_seg):
        out, lse = forward(q, k, v, q_seg, kv_seg)
        return (out, lse), (q, k, v, q_seg, kv_seg, out, lse)

    run.defvjp(run_forward, backward)
    return run(q, k, v, q_seg, kv_seg)


def merge_partials(outputs, lses):
    """One attention from attentions over disjoint key sets.

    Args:
      outputs: sequence of ``[B, Tq, H, D]``; lses: their log-sum-exps ``[B, Tq, H]``.

    Returns:
      ``(out, lse)``: ``out = sum_p exp(lse_p - lse) out_p`` with ``lse = log sum_p
      exp(lse_p)``; a query no part saw gives 0 and ``-inf``.
    """
    if len(outputs) != len(lses) or not outputs:
        raise ValueError(f"outputs and lses must be non-empty and of one length, got "
                         f"{len(outputs)} and {len(lses)}")
    dtype = core.compute_dtype(outputs[0].dtype)
    stacked = jnp.stack([l.astype(dtype) for l in lses])
    top = jnp.max(stacked, axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weights = jnp.exp(stacked - top[None])
    total = jnp.sum(weights, axis=0)
    seen = total > 0
    lse = jnp.where(seen, top + jnp.log(jnp.where(seen, total, 1.0)), -jnp.inf)
    norm = weights / jnp.where(seen, total, 1.0)[None]
    out = sum(w[..., None] * o.astype(dtype) for w, o in zip(norm, outputs))
    return out.astype(outputs[0].dtype), lse
