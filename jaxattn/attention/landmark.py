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

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxattn.attention import checks
from jaxattn.attention import core
from jaxattn.attention import registry


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


class RetrievedBlocks(NamedTuple):
    """Cached blocks a query attends to besides its window (inference, paper §3.2).

    Each retrieved block is a group of its own, gated by its landmark logit in the query's
    outer softmax, exactly like a past block of the window.

    keys: ``[B, Tr, H, n, block_size, D]`` with RoPE applied at the block's mapped positions;
      the last key of a block is its landmark. ``Tr`` is the query length, or 1 when every
      query of the window shares one selection (``max_over_tokens``).
    values: same shape as ``keys``.
    valid: bool ``[B, Tr, H, n]``; an invalid entry (fewer cached blocks than ``n``) is ignored.
    """

    keys: jax.Array
    values: jax.Array
    valid: jax.Array


def _check_retrieved(retrieved, q, block_size):
    batch, q_len, heads, head_dim = q.shape
    if not isinstance(retrieved, RetrievedBlocks):
        raise ValueError(f"retrieved must be a RetrievedBlocks, got {type(retrieved).__name__}")
    shape = getattr(retrieved.keys, "shape", None)
    if (shape is None or len(shape) != 6 or shape[0] != batch or shape[1] not in (1, q_len)
            or shape[2] != heads or shape[4] != block_size or shape[5] != head_dim):
        raise ValueError(
            f"retrieved.keys must be [batch, q_len or 1, heads, n, block_size, head_dim] = "
            f"[{batch}, {q_len} or 1, {heads}, n, {block_size}, {head_dim}], got {shape}")
    if getattr(retrieved.values, "shape", None) != shape:
        raise ValueError(f"retrieved.values must have the shape of retrieved.keys {shape}, got "
                         f"{getattr(retrieved.values, 'shape', None)}")
    if getattr(retrieved.valid, "shape", None) != shape[:4] or retrieved.valid.dtype != jnp.bool_:
        raise ValueError(f"retrieved.valid must be bool {shape[:4]}, got "
                         f"{getattr(retrieved.valid, 'dtype', None)} "
                         f"{getattr(retrieved.valid, 'shape', None)}")


def _grouped_layout(x, num_blocks, block_size, kv_heads):
    """``[B, T, H, ...]`` -> ``[B, K, G, c, r, ...]`` (``T = c * r``, ``H = K * G``)."""
    batch, seq, heads = x.shape[:3]
    rest = x.shape[3:]
    x = x.reshape(batch, seq // block_size if seq > 1 else 1, block_size if seq > 1 else 1,
                  kv_heads, heads // kv_heads, *rest)
    return jnp.moveaxis(x, (3, 4), (1, 2))


def landmark_attention(q, k, v, *, block_size, causal=True, segment_ids=None, softmax="softmax",
                       ssmax_s=None, scale=None, retrieved=None, implementation=None):
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
        in the query's own group, i.e. the outer softmax: visible landmarks (retrieved ones
        included) plus visible own-block normal tokens.
      ssmax_s: ``[H]`` float, required with ``softmax="ssmax"``.
      scale: logit scale, default ``1/sqrt(D)``.
      retrieved: ``RetrievedBlocks`` or ``None``. At inference (§3.2) the window ``q, k, v`` is
        the current chunk and each query also sees these cached blocks, each gated by its
        landmark in the same outer softmax as the window's past blocks.
      implementation: ``None`` or ``"reference"``.

    Returns:
      ``[B, T, H, D]`` in ``q.dtype``. Logits and statistics are float32 (float64 for float64
      inputs); memory is ``O(B * H * T^2)``. A query with nothing visible (padding) gives 0.
    """
    _check_options(q, k, v, block_size=block_size, causal=causal, segment_ids=segment_ids,
                   softmax=softmax, ssmax_s=ssmax_s, scale=scale, implementation=implementation)
    if retrieved is not None:
        _check_retrieved(retrieved, q, block_size)
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
    rows = jnp.broadcast_shapes(gate_mask.shape[:-1], own_mask.shape[:-1])
    gate_mask = jnp.broadcast_to(gate_mask, (*rows, num_blocks))[:, None, None]
    own_mask = jnp.broadcast_to(own_mask, (*rows, normal))[:, None, None]
    outer = [gate, own]
    outer_masks = [gate_mask, own_mask]
    if retrieved is not None:
        # Retrieved logits [B, K, G, c, r, n, u] (c = r = 1 for a shared selection).
        eq = "bthd,bthnud->bthnu" if retrieved.keys.shape[1] == seq_len else "bthd,bxhnud->bthnu"
        mem = jnp.einsum(eq, q, retrieved.keys, preferred_element_type=dtype) * scale
        mem = _grouped_layout(mem, num_blocks, block_size, kv_heads)
        mem_gate, mem_inner = mem[..., normal], mem[..., :normal]
        mem_mask = _grouped_layout(retrieved.valid, num_blocks, block_size, kv_heads)
        mem_mask = jnp.broadcast_to(mem_mask, mem_gate.shape)
        outer = [mem_gate] + outer
        outer_masks = [mem_mask] + outer_masks

    if softmax == "ssmax":
        n_visible = sum(jnp.sum(m, axis=-1, dtype=jnp.int32) for m in outer_masks)
        log_n = jnp.log(jnp.maximum(n_visible, 1).astype(jnp.promote_types(ssmax_s.dtype,
                                                                          jnp.float32)))
        row = (ssmax_s.reshape(1, kv_heads, group, 1, 1) * log_n).astype(dtype)
        outer = [x * row[..., None] for x in outer]
        inner = inner * row[..., None, None]
        if retrieved is not None:
            mem_inner = mem_inner * row[..., None, None]

    full_shape = jnp.broadcast_shapes(*(x.shape[:-1] for x in outer))
    sizes = [x.shape[-1] for x in outer]
    logits = jnp.concatenate([jnp.broadcast_to(x, (*full_shape, n)) for x, n in zip(outer, sizes)],
                             axis=-1)
    mask_shape = jnp.broadcast_shapes(*(m.shape[:-1] for m in outer_masks))
    mask = jnp.concatenate([jnp.broadcast_to(m, (*mask_shape, n))
                            for m, n in zip(outer_masks, sizes)], axis=-1)
    # Dividing by the row sums, rather than subtracting a log-sum-exp, keeps the weights summing
    # to 1 within a few ulps however large the logits are.
    p_outer = core.masked_softmax(logits, mask)
    p_parts = jnp.split(p_outer, np.cumsum(sizes)[:-1], axis=-1)
    p_gate, p_own = p_parts[-2], p_parts[-1]
    p_inner = core.masked_softmax(inner, inner_mask[:, None, None])

    out = jnp.einsum("bkgcrnu,bnukd->bcrkgd", p_gate[..., None] * p_inner, vb)
    out = out + jnp.einsum("bkgcru,bcukd->bcrkgd", p_own, vb)
    out = out.reshape(batch, seq_len, heads, head_dim)
    if retrieved is not None:
        p_mem = p_parts[0][..., None] * jax.nn.softmax(mem_inner, axis=-1)
        p_mem = jnp.moveaxis(p_mem, (1, 2), (3, 4)).reshape(batch, seq_len, heads,
                                                              *p_mem.shape[-2:])
        mem_v = retrieved.values[..., :normal, :].astype(dtype)
        eq = "bthnu,bthnud->bthd" if mem_v.shape[1] == seq_len else "bthnu,bxhnud->bthd"
        out = out + jnp.einsum(eq, p_mem, mem_v)
    return out.astype(q.dtype)


def apply_landmark(q, k, v, *, mem_freq, causal, softmax, landmark_in_loss, segment_ids=None,
                   ssmax_s=None, implementation=None):
    """The registry's entry (kind ``"landmark"``): blocks of ``mem_freq + 1`` tokens.

    ``q``/``k``/``v`` hold the sequence with landmarks already inserted (``TransformerLM``
    inserts them); ``landmark_in_loss`` belongs to the model's loss.
    """
    del landmark_in_loss
    return landmark_attention(q, k, v, block_size=mem_freq + 1, causal=causal,
                              segment_ids=segment_ids, softmax=softmax, ssmax_s=ssmax_s,
                              implementation=implementation)


def check_mem_freq_multiple(name, length, mem_freq):
    """Raises ``ValueError`` unless ``length`` (of ``name``) is a positive multiple of
    ``mem_freq``."""
    core.check_positive_int("mem_freq", mem_freq)
    if length < 1 or length % mem_freq:
        padded = max(1, -(-length // mem_freq)) * mem_freq
        raise ValueError(
            f"{name}: length {length} is not a positive multiple of mem_freq={mem_freq} (a "
            f"landmark follows every mem_freq tokens); use or pad to {padded}")


def interleave_blocks(x, fill, mem_freq):
    """Puts ``fill[:, b]`` after block ``b`` of ``mem_freq`` entries of ``x``.

    Args:
      x: ``[B, L, ...]`` with ``L % mem_freq == 0``.
      fill: ``[B, L // mem_freq, ...]`` (same trailing shape and dtype as ``x``).
      mem_freq: entries per block.

    Returns:
      ``[B, L + L // mem_freq, ...]``: blocks of ``mem_freq + 1`` whose last entry is ``fill``.
    """
    batch, length = x.shape[:2]
    check_mem_freq_multiple("x", length, mem_freq)
    num_blocks = length // mem_freq
    if fill.shape != (batch, num_blocks, *x.shape[2:]):
        raise ValueError(f"fill must be [batch, num_blocks, ...] = "
                         f"{(batch, num_blocks, *x.shape[2:])}, got {fill.shape}")
    blocks = x.reshape(batch, num_blocks, mem_freq, *x.shape[2:])
    out = jnp.concatenate([blocks, fill[:, :, None].astype(x.dtype)], axis=2)
    return out.reshape(batch, num_blocks * (mem_freq + 1), *x.shape[2:])


def drop_landmarks(x, mem_freq):
    """Inverse of ``interleave_blocks``: ``[B, L', ...]`` -> the ``[B, L, ...]`` normal entries."""
    batch, length = x.shape[:2]
    if length % (mem_freq + 1):
        raise ValueError(f"x: length {length} is not a multiple of mem_freq + 1 = {mem_freq + 1}")
    blocks = x.reshape(batch, length // (mem_freq + 1), mem_freq + 1, *x.shape[2:])
    return blocks[:, :, :mem_freq].reshape(batch, -1, *x.shape[2:])


def landmark_layout(positions, segment_ids, mem_freq):
    """Positions and segment ids of the sequence with a landmark after every block.

    A normal token at document position ``p`` moves to ``p + p // mem_freq``; the landmark
    closing a block takes the next position and the block's segment id (that of its last
    token). With documents aligned to blocks (``p % mem_freq == 0`` at every block start) this
    is the position the token would have if the landmarks were in the data.

    Args:
      positions: int ``[B, L]``, ``L % mem_freq == 0``.
      segment_ids: int ``[B, L]`` or ``None``.

    Returns:
      ``(positions [B, L'], segment_ids [B, L'] or None)``, ``L' = L + L // mem_freq``.
    """
    batch, length = positions.shape
    check_mem_freq_multiple("positions", length, mem_freq)
    moved = positions + positions // mem_freq
    last = moved.reshape(batch, length // mem_freq, mem_freq)[:, :, -1]
    positions = interleave_blocks(moved, last + 1, mem_freq)
    if segment_ids is not None:
        last_ids = segment_ids.reshape(batch, length // mem_freq, mem_freq)[:, :, -1]
        segment_ids = interleave_blocks(segment_ids, last_ids, mem_freq)
    return positions, segment_ids


def landmark_lm_targets(targets, loss_mask, segment_ids, mem_freq, landmark_id):
    """Next-token targets of the sequence with landmarks, for ``landmark_in_loss``.

    In a block ``x_0 .. x_{m-1} L`` the last normal token predicts the landmark and the
    landmark predicts what ``x_{m-1}`` predicted before (the next block's first token), as
    when the landmarks are part of the data (the paper's ``lm_benchmark``).

    Args:
      targets, loss_mask: ``[B, L]`` next-token targets and weights of the normal tokens.
      segment_ids: ``[B, L]`` (0 = padding, whose landmark targets get weight 0) or ``None``.
      mem_freq, landmark_id: the block length and the landmark token id.

    Returns:
      ``(targets [B, L'], loss_mask [B, L'])`` aligned with ``interleave_blocks`` outputs.
    """
    batch, length = targets.shape
    check_mem_freq_multiple("targets", length, mem_freq)
    num_blocks = length // mem_freq
    blocks = targets.reshape(batch, num_blocks, mem_freq)
    mask_blocks = loss_mask.reshape(batch, num_blocks, mem_freq)
    live = (jnp.ones((batch, num_blocks), loss_mask.dtype) if segment_ids is None else
            (segment_ids.reshape(batch, num_blocks, mem_freq)[:, :, -1] != 0).astype(
                loss_mask.dtype))
    marks = jnp.full((batch, num_blocks, 1), landmark_id, targets.dtype)
    new_targets = jnp.concatenate([blocks[:, :, :-1], marks, blocks[:, :, -1:]], axis=2)
    new_mask = jnp.concatenate([mask_blocks[:, :, :-1], live[:, :, None], mask_blocks[:, :, -1:]],
                               axis=2)
    return (new_targets.reshape(batch, -1), new_mask.reshape(batch, -1))


@dataclasses.dataclass(frozen=True)
class LandmarkOptions(registry.Options):
    """Options of landmark attention (kind ``"landmark"``); see ``apply_landmark``.

    ``TransformerLM`` inserts a landmark token after every ``mem_freq`` tokens (blocks of
    ``mem_freq + 1``), so ``check_seq_len`` takes the length of the ordinary tokens. With
    ``landmark_in_loss`` the training loss also counts the landmark positions (the token
    before a landmark predicts it, the landmark predicts the next block's first token), as
    in the paper's ``lm_benchmark``; evaluation always scores the ordinary tokens only.
    """

    causal: bool = True
    mem_freq: int = 50
    softmax: str = "softmax"
    landmark_in_loss: bool = False

    def validate(self):
        core.check_causal(self.causal)
        core.check_positive_int("mem_freq", self.mem_freq)
        core.check_softmax(self.softmax)
        if not isinstance(self.landmark_in_loss, bool):
            raise ValueError(f"landmark_in_loss must be a bool, got {self.landmark_in_loss!r}")

    def check_seq_len(self, seq_len):
        super().check_seq_len(seq_len)
        check_mem_freq_multiple("seq_len", seq_len, self.mem_freq)

    @property
    def block_size(self) -> int:
        return self.mem_freq + 1


registry.register(
    "landmark",
    apply_landmark,
    LandmarkOptions,
    doc="Landmark attention: a landmark token per block gates the block (grouped softmax).",
)
