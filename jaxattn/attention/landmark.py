"""Landmark attention, training form: the grouped softmax of Mohtashami & Jaggi 2023.

The sequence is cut into blocks of ``block_size = mem_freq + 1`` tokens; the last token of
every block is a landmark (positions ``t`` with ``t % block_size == block_size - 1``) and the
other ``mem_freq`` are normal tokens. With ``p_j`` the landmark of token ``j``'s block (``p_j = j``
for a landmark) and ``z_ij`` the scaled logits, the paper defines (arXiv 2305.16300, §3.1):

- eq. (1): ``sigma_G(v, g)_x = exp(v_x) / sum_{y: g_y = g_x} exp(v_y)``, a softmax inside each
  group;
- eq. (2): the groups of query ``i``: ``G_ij = p_j`` for a normal token ``j``; ``G_ij = -1``
  (ignored) for ``j = p_i``, the query's own landmark; ``G_ij = p_i`` for any other landmark;
- eq. (3): ``S_ij = GroupedSoftmax(z_i, G_i)`` over the keys visible to ``i``;
- eq. (4): ``AttW_ij = 0`` for a landmark ``j``; ``S_ij`` when ``G_ij = p_i``; otherwise
  ``S_ij * S_{i, p_j}``.

For a causal query ``i`` in block ``c`` this is (``L_b`` the landmark of block ``b``)::

    Z_i     = sum_{b < c} exp(z_{i,L_b}) + sum_{t in block c, t <= i, t normal} exp(z_it)
    w_it    = exp(z_it) / Z_i                                       t in block c
    w_it    = exp(z_{i,L_b}) / Z_i * exp(z_it) / sum_{u in block b, u normal} exp(z_iu)
                                                                    t in block b < c
    w_{i,L} = 0                                                     every landmark

so each past block's landmark logit is a gate competing with the query's own-block tokens, and
the gated mass is spread over that block's normal tokens by an inner softmax. The weights sum
to 1 and landmark values are never read. ``landmark_attention`` computes this blockwise, with
no scatter and no cap on the number of blocks: per past block an inner softmax over its normal
tokens (normaliser ``exp(LSE_in)``), an outer softmax over {past landmark logits, own-block
causal logits} (normaliser ``Z_i = exp(LSE_out)``), and the weight of a past token is the
product of its block's outer weight and its inner weight.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxattn.attention import checks
from jaxattn.attention import core
from jaxattn.attention import ssmax as ssmax_lib


def _check_block_size(block_size):
    """``block_size = mem_freq + 1`` holds at least one normal token and the landmark."""
    core.check_int("block_size", block_size, minimum=2)


def check_seq_len(seq_len, block_size):
    """Raises ``ValueError`` unless ``seq_len`` is a positive multiple of ``block_size``."""
    core.check_positive_int("seq_len", seq_len)
    _check_block_size(block_size)
    if seq_len % block_size:
        padded = -(-seq_len // block_size) * block_size
        raise ValueError(
            f"sequence length {seq_len} is not a multiple of block_size={block_size} "
            f"(mem_freq normal tokens + 1 landmark per block); pad to {padded}"
        )


def landmark_positions_mask(seq_len, block_size):
    """Bool NumPy ``[seq_len]``: ``True`` at landmarks, ``t % block_size == block_size - 1``.

    ``seq_len`` need not be a multiple of ``block_size`` (a trailing partial block has no
    landmark yet).
    """
    core.check_int("seq_len", seq_len, minimum=0)
    _check_block_size(block_size)
    return np.arange(seq_len) % block_size == block_size - 1


def insert_landmarks(tokens, mem_freq, landmark_id):
    """Inserts ``landmark_id`` after every ``mem_freq`` tokens along the last axis.

    Args:
      tokens: int ``[..., L]`` (NumPy or jax array) with ``L % mem_freq == 0``.
      mem_freq: int >= 1, normal tokens per block.
      landmark_id: int >= 0, the landmark token id.

    Returns:
      ``(tokens_with_landmarks, is_landmark)``, both ``[..., L + L // mem_freq]``: the tokens
      in blocks of ``mem_freq + 1`` whose last entry is ``landmark_id``, and the bool landmark
      mask (``landmark_positions_mask`` broadcast). Jax input gives jax arrays, anything else
      NumPy arrays.
    """
    xp = jnp if isinstance(tokens, jax.Array) else np
    if xp is np:
        tokens = np.asarray(tokens)
    if tokens.ndim < 1:
        raise ValueError(f"tokens must be an int array [..., length], got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must have an integer dtype, got {tokens.dtype}")
    core.check_positive_int("mem_freq", mem_freq)
    core.check_int("landmark_id", landmark_id, minimum=0)
    if landmark_id > np.iinfo(tokens.dtype).max:
        raise ValueError(
            f"landmark_id must fit the dtype of tokens ({tokens.dtype}), got {landmark_id}"
        )
    length = tokens.shape[-1]
    if length % mem_freq:
        padded = -(-length // mem_freq) * mem_freq
        raise ValueError(
            f"tokens: length {length} is not a multiple of mem_freq={mem_freq}; pad to {padded}"
        )
    lead = tokens.shape[:-1]
    blocks = tokens.reshape(*lead, length // mem_freq, mem_freq)
    marks = xp.full((*lead, length // mem_freq, 1), landmark_id, dtype=tokens.dtype)
    out = xp.concatenate([blocks, marks], axis=-1).reshape(*lead, length + length // mem_freq)
    is_landmark = landmark_positions_mask(out.shape[-1], mem_freq + 1)
    is_landmark = xp.asarray(np.broadcast_to(is_landmark, out.shape).copy())
    return out, is_landmark


def segments_block_aligned(segment_ids, block_size):
    """Bool ``[B]``, traceable: every block of row ``b`` lies inside one segment (or padding).

    ``segment_ids`` is int ``[B, T]`` with ``T % block_size == 0``; use it under ``jit``, where
    ``landmark_attention`` cannot check the alignment itself.
    """
    if getattr(segment_ids, "ndim", None) != 2:
        raise ValueError(
            f"segment_ids must be an int array [batch, seq], got shape "
            f"{getattr(segment_ids, 'shape', type(segment_ids).__name__)}"
        )
    batch, seq_len = segment_ids.shape
    check_seq_len(seq_len, block_size)
    blocks = segment_ids.reshape(batch, seq_len // block_size, block_size)
    return jnp.all(blocks == blocks[:, :, :1], axis=(1, 2))


def check_segment_alignment(segment_ids, block_size):
    """Raises ``ValueError`` unless every block lies inside one segment; needs concrete ids.

    Args:
      segment_ids: int ``[B, T]`` with ``T % block_size == 0`` (NumPy or a concrete jax array).
      block_size: the landmark block, ``mem_freq + 1``.
    """
    ids = np.asarray(segment_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"segment_ids must be an int array [batch, seq], got {ids.dtype} shape {ids.shape}"
        )
    check_seq_len(ids.shape[1], block_size)
    starts = np.zeros(ids.shape, dtype=bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    bad_row, bad_pos = np.nonzero(starts & (np.arange(ids.shape[1]) % block_size != 0))
    if bad_row.size:
        row, pos = int(bad_row[0]), int(bad_pos[0])
        raise ValueError(
            f"segment_ids: segment boundaries must fall on block boundaries "
            f"(block_size={block_size}; pad every document to a multiple of it); document "
            f"starting at position {pos} (batch row {row}, segment id {int(ids[row, pos])}) is "
            f"misaligned"
        )


def _concrete_or_none(x):
    """``x`` as a NumPy array, or ``None`` when it is traced (inside ``jit``, ``grad``, ...)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_options(q, k, v, *, block_size, causal, segment_ids, softmax, ssmax_s, scale,
                   implementation):
    _, q_len, _, _ = checks.check_self_attention(
        "landmark", q, k, v, causal=causal, softmax=softmax, ssmax_s=ssmax_s, scale=scale,
        segment_ids=segment_ids, implementation=implementation)
    _check_block_size(block_size)
    check_seq_len(q_len, block_size)
    if segment_ids is not None:
        concrete = _concrete_or_none(segment_ids)
        if concrete is not None:
            check_segment_alignment(concrete, block_size)


def _block_masks(segment_ids, num_blocks, block_size, causal):
    """Visibility of gates, past-block tokens and own-block tokens.

    Returns bool ``gate [S, c, r, n]``, ``inner [S, c, r, n, m]`` and ``own [S, c, r, m]`` for
    the query at offset ``r`` of block ``c``, key block ``n`` and normal offset ``u < m =
    block_size - 1``; ``S`` is ``B`` with segment ids, else 1.
    """
    normal = block_size - 1
    blocks = np.arange(num_blocks)
    other = blocks[None, :] < blocks[:, None] if causal else blocks[None, :] != blocks[:, None]
    offsets = np.arange(block_size)
    own = (offsets[None, :normal] <= offsets[:, None]) if causal else np.ones((block_size, normal), bool)
    gate = jnp.asarray(other)[None, :, None, :]
    inner = gate[..., None]
    own = jnp.asarray(own)[None, None]
    if segment_ids is None:
        return gate, inner, own
    batch = segment_ids.shape[0]
    ids = segment_ids.reshape(batch, num_blocks, block_size)
    q_ids = ids[:, :, :, None]
    live = q_ids != 0
    inner = inner & ((q_ids[..., None] == ids[:, None, None, :, :normal]) & live[..., None])
    # A block gates only if its landmark and some normal token share the query's segment; with
    # block-aligned segments these are the same condition.
    gate = gate & (q_ids == ids[:, None, None, :, normal]) & live & jnp.any(inner, axis=-1)
    own = own & (q_ids == ids[:, :, None, :normal]) & live
    return gate, inner, own


def landmark_attention(q, k, v, *, block_size, causal=True, segment_ids=None, softmax="softmax",
                       ssmax_s=None, scale=None, implementation=None):
    """Landmark attention with the grouped softmax (paper eqs. 1-4), blockwise.

    Args:
      q: ``[B, T, H, D]``; k, v: ``[B, T, K, D]`` with ``H % K == 0`` (GQA).
      block_size: int >= 2, ``mem_freq + 1``; ``T`` must be a multiple of it, and the last token
        of every block is taken to be a landmark (``insert_landmarks`` builds such inputs).
      causal: query ``i`` in block ``c`` sees the landmark gates of blocks ``b < c`` and the
        normal tokens ``t <= i`` of block ``c``. With ``False`` (eqs. 1-4 with no causal mask):
        every normal token of its own block, and every other block, earlier or later, gated by
        its landmark. Either way the own block's landmark is masked, also for the landmark's
        own query.
      segment_ids: int ``[B, T]``, packed documents, 0 = padding. Every block must lie inside
        one segment (documents padded to multiples of ``block_size``); this raises
        ``ValueError`` when ``segment_ids`` is concrete. Under ``jit`` the ids are traced and
        the check is the caller's (``check_segment_alignment`` on the host data, or the
        traceable ``segments_block_aligned``); misaligned ids then still never mix documents:
        each token is masked by its own id and a block gates only when its landmark is in the
        query's segment. Only blocks of the query's segment count; padding outputs 0.
      softmax: ``"softmax"`` or ``"ssmax"``. SSMax multiplies every logit of query ``i`` (gates,
        past-block and own-block tokens) by ``s_h * log(n_i)``, with ``n_i`` the number of keys
        in the query's own group, i.e. the outer softmax: visible past landmarks plus visible
        own-block normal tokens.
      ssmax_s: ``[H]`` float, required with ``softmax="ssmax"``.
      scale: logit scale, default ``1/sqrt(D)``.
      implementation: ``None`` or ``"reference"``.

    Returns:
      ``[B, T, H, D]`` in ``q.dtype``. Logits and statistics are float32 (float64 for float64
      inputs); memory is ``O(B * H * T^2)``. A query with nothing visible (padding) gives 0.
    """
    _check_options(q, k, v, block_size=block_size, causal=causal, segment_ids=segment_ids,
                   softmax=softmax, ssmax_s=ssmax_s, scale=scale, implementation=implementation)
    batch, seq_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    num_blocks = seq_len // block_size
    normal = block_size - 1
    dtype = core.compute_dtype(q.dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    scale = jnp.asarray(scale, dtype)

    qb = core.group_query_heads(q, kv_heads)
    qb = qb.reshape(batch, num_blocks, block_size, kv_heads, group, head_dim)
    kb = k.reshape(batch, num_blocks, block_size, kv_heads, head_dim)
    vb = v.reshape(batch, num_blocks, block_size, kv_heads, head_dim)[:, :, :normal].astype(dtype)

    # Logits laid out [B, K, G, c, r, n, u]: query offset r of block c, key offset u of block n.
    cross = jnp.einsum("bcrkgd,bnukd->bkgcrnu", qb, kb, preferred_element_type=dtype) * scale
    own = jnp.einsum("bcrkgd,bcukd->bkgcru", qb, kb[:, :, :normal], preferred_element_type=dtype)
    own = own * scale
    gate, inner = cross[..., normal], cross[..., :normal]

    gate_mask, inner_mask, own_mask = _block_masks(segment_ids, num_blocks, block_size, causal)
    if softmax == "ssmax":
        n_visible = (jnp.sum(gate_mask, axis=-1, dtype=jnp.int32)
                     + jnp.sum(own_mask, axis=-1, dtype=jnp.int32))
        n_visible = n_visible.reshape(n_visible.shape[0], 1, seq_len).astype(jnp.float32)
        row = ssmax_lib.ssmax_logit_scale(ssmax_s, n_visible).astype(dtype)
        row = row.reshape(row.shape[0], kv_heads, group, num_blocks, block_size)
        gate = gate * row[..., None]
        inner = inner * row[..., None, None]
        own = own * row[..., None]

    rows = jnp.broadcast_shapes(gate_mask.shape[:-1], own_mask.shape[:-1])
    outer_mask = jnp.concatenate([jnp.broadcast_to(gate_mask, (*rows, num_blocks)),
                                  jnp.broadcast_to(own_mask, (*rows, normal))], axis=-1)
    # Dividing by the row sums, rather than subtracting a log-sum-exp, keeps the weights summing
    # to 1 within a few ulps however large the logits are.
    p_outer = core.masked_softmax(jnp.concatenate([gate, own], axis=-1), outer_mask[:, None, None])
    p_gate, p_own = p_outer[..., :num_blocks], p_outer[..., num_blocks:]
    p_inner = core.masked_softmax(inner, inner_mask[:, None, None])

    out = jnp.einsum("bkgcrnu,bnukd->bcrkgd", p_gate[..., None] * p_inner, vb)
    out = out + jnp.einsum("bkgcru,bcukd->bcrkgd", p_own, vb)
    return out.reshape(batch, seq_len, heads, head_dim).astype(q.dtype)
