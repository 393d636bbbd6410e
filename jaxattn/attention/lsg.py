"""LSG attention: Local, Sparse and Global keys (Condevaux & Harispe 2022, arXiv 2210.15497).

The sequence ``[B, T, ...]`` is ``G = num_global_tokens`` global tokens (learned embeddings
the model prepends) followed by ``N = T - G`` ordinary tokens. Ordinary tokens are cut into
query blocks of ``B_l = block_size``; ordinary query block ``b`` runs ONE softmax over

- the ``G`` global keys;
- local keys: ordinary blocks ``b-1, b, b+1`` (bidirectional) or ``b-1, b`` with ``j <= i``
  (causal);
- sparse keys: the ordinary sequence compressed by ``f = sparsity_factor`` to ``M = N / f``
  tokens (``sparsity_type`` says how), of which the ``S = sparse_block_size`` compressed tokens
  just left of the local window (compressed indices ``[(b-1)B_l/f - S, (b-1)B_l/f)``) and,
  when bidirectional, the ``S`` just right of it (``[(b+2)B_l/f, (b+2)B_l/f + S)``).
  Out-of-range compressed indices are masked.

So a query block holds ``G + 2S + 3B_l`` keys (bidirectional) or ``G + S + 2B_l`` (causal),
and memory is ``O(T * (G + 2S + 3B_l))``. Global queries do dense attention (``G x T``). When
``N <= 2 * B_l`` every query block would already see every key, and the whole sequence is
computed as dense attention under the same rules.

Visibility rules (``segment_ids`` int ``[B, T]``, id 0 = padding):

- ``segment_ids[:, :G]`` are ignored: global tokens belong to every segment. A global key is
  visible to every global query and to every non-padding ordinary query.
- Bidirectional: a global query sees every global key and every non-padding ordinary key
  (of any segment). Causal: global query ``i`` sees the global keys ``j <= i`` only (the
  globals come before the sequence, so no ordinary key is in its past).
- An ordinary query sees ordinary keys of its own (non-zero) segment; a padding query sees
  nothing and outputs 0.
- A compressed token carries the segment id of the non-padding tokens it summarises when they
  all share one id; a compressed token summarising no non-padding token, or tokens of two
  segments, is masked for everyone. Padding tokens never enter a compressed token.

Sparsity types. Each compresses ordinary windows of ``W`` consecutive tokens into ``W / f``
compressed tokens, per head (k/v are repeated to the ``H`` query heads first):

- ``none``: no sparse keys (as ``S = 0``).
- ``pooling`` (``W = f``): mean of k (and v) over the window's non-padding tokens.
- ``stride`` (``W = f``): head ``h`` keeps token ``i*f + (h mod f)``.
- ``block_stride`` (``W = B_l``): head ``h`` keeps, in each block, the ``B_l/f`` consecutive
  tokens starting at offset ``(h * B_l/f) mod B_l``.
- ``norm`` (``W = f*c``): per head, the ``c`` tokens of largest key L2 norm (non-padding
  first, ties to the earlier token), kept in sequence order; the choice is not differentiated.
  Norms are compared at ``NORM_BITS`` significant bits (``rounded_norm``), so keys whose norms
  are equal in exact arithmetic (a repeated token) tie however the last bits were rounded
  (batch size, ``jit``, the KV-cache path), and the tie goes to the earlier token.
- ``bos_pooling`` (``W = f``): weights ``softmax_j(scale * q_bos · k_j)`` over the window's
  non-padding tokens, k and v the weighted means; ``q_bos`` is the query of the first ordinary
  token (position ``G``), or zero (plain mean pooling) when that token is padding.
- ``lsh`` (``W = f*c``): per head, ``R = jax.random.normal(PRNGKey(lsh_seed), (H, D,
  ceil(c/2)), float32)``; token ``j`` goes to bucket ``argmax(concat([k_j R_h, -k_j R_h])[:c])``
  (not differentiated), and compressed token ``u`` of the window is the mean of k (and v)
  over the window's non-padding tokens in bucket ``u``; an empty bucket is masked.

with ``c = gcd(B_l/f, max(1, min(B_l, S) // f))`` for ``norm`` and ``lsh`` (the authors' chunks
of ``min(B_l, S)`` tokens, shrunk so that windows tile the query blocks). Since ``W`` divides
``B_l`` and the left sparse keys end at the start of block ``b-1``, every compressed token a
causal query block reads summarises only tokens before block ``b-1`` (asserted statically).

``softmax="ssmax"`` multiplies the logits of query ``i`` by ``s_h * log(n_i)``, ``n_i`` the
keys (global + local + sparse) it sees under the mask, for head ``h``.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxattn.attention import checks
from jaxattn.attention import backends
from jaxattn.attention import core
from jaxattn.attention import local as local_lib
from jaxattn.attention import primitives
from jaxattn.attention import ssmax as ssmax_lib
from jaxattn.attention import registry

SPARSITY_TYPES = ("none", "pooling", "stride", "block_stride", "norm", "bos_pooling", "lsh")


class LSGSchedule(NamedTuple):
    """Static key layout of the ordinary query blocks.

    ``local_blocks``: int32 ``[num_blocks, 2 or 3]``, ordinary key blocks ``b-1, b(, b+1)``,
    -1 when out of range. ``sparse_index``: int32 ``[num_blocks, S or 2S]``, compressed
    indices (left range, then right range when bidirectional), -1 when out of range.
    """

    local_blocks: np.ndarray
    sparse_index: np.ndarray


def lsg_key_schedule(num_blocks, *, block_size, sparsity_factor, sparse_block_size, causal):
    """Which local blocks and compressed tokens each ordinary query block sees (see module doc)."""
    core.check_positive_int("num_blocks", num_blocks)
    check_geometry(block_size, sparsity_factor, sparse_block_size)
    core.check_causal(causal)
    local_blocks = local_lib.local_block_schedule(num_blocks, causal=causal)
    step = block_size // sparsity_factor
    num_compressed = num_blocks * step
    blocks = np.arange(num_blocks)[:, None]
    offsets = np.arange(sparse_block_size)[None, :]
    ranges = [(blocks - 1) * step - sparse_block_size + offsets]
    if not causal:
        ranges.append((blocks + 2) * step + offsets)
    index = np.concatenate(ranges, axis=1)
    index = np.where((index >= 0) & (index < num_compressed), index, -1).astype(np.int32)
    return LSGSchedule(local_blocks=local_blocks, sparse_index=index)


def lsg_compression_window(sparsity_type, *, block_size, sparsity_factor, sparse_block_size):
    """``(W, W // f)``: each window of ``W`` ordinary tokens becomes ``W // f`` compressed tokens."""
    check_sparsity_type(sparsity_type)
    check_geometry(block_size, sparsity_factor, sparse_block_size)
    f = sparsity_factor
    if sparsity_type == "block_stride":
        return block_size, block_size // f
    if sparsity_type in ("norm", "lsh"):
        chunk = math.gcd(block_size // f, max(1, min(block_size, sparse_block_size) // f))
        return f * chunk, chunk
    return f, 1


def check_sparsity_type(sparsity_type):
    if not isinstance(sparsity_type, str) or sparsity_type not in SPARSITY_TYPES:
        raise ValueError(f"sparsity_type must be one of {SPARSITY_TYPES}, got {sparsity_type!r}")


def check_geometry(block_size, sparsity_factor, sparse_block_size):
    core.check_positive_int("block_size", block_size)
    core.check_positive_int("sparsity_factor", sparsity_factor)
    core.check_int("sparse_block_size", sparse_block_size, minimum=0)
    if block_size % sparsity_factor:
        raise ValueError(
            f"sparsity_factor must divide block_size, got sparsity_factor={sparsity_factor} "
            f"and block_size={block_size}"
        )


def check_seq_len(seq_len, *, block_size, num_global_tokens):
    """Raises ``ValueError`` unless ``seq_len - num_global_tokens`` is a positive multiple of block_size."""
    core.check_positive_int("seq_len", seq_len)
    core.check_positive_int("block_size", block_size)
    core.check_int("num_global_tokens", num_global_tokens, minimum=0)
    if num_global_tokens >= seq_len:
        raise ValueError(
            f"num_global_tokens must be < the sequence length {seq_len}, got {num_global_tokens}"
        )
    ordinary = seq_len - num_global_tokens
    if ordinary % block_size:
        padded = -(-ordinary // block_size) * block_size
        raise ValueError(
            f"the {ordinary} ordinary tokens (sequence length {seq_len} minus "
            f"num_global_tokens={num_global_tokens}) are not a multiple of "
            f"block_size={block_size}; pad the sequence to {padded + num_global_tokens} tokens "
            f"(padding with segment id 0)"
        )


def _check_options(q, k, v, *, block_size, sparse_block_size, sparsity_factor, sparsity_type,
                   num_global_tokens, causal, segment_ids, softmax, ssmax_s, scale, lsh_seed,
                   implementation):
    _, q_len, _, _ = checks.check_self_attention(
        "LSG", q, k, v, causal=causal, softmax=softmax, ssmax_s=ssmax_s, scale=scale,
        segment_ids=segment_ids, implementation=implementation, table=BACKEND_TABLE)
    check_sparsity_type(sparsity_type)
    check_geometry(block_size, sparsity_factor, sparse_block_size)
    core.check_int("lsh_seed", lsh_seed, minimum=0)
    check_seq_len(q_len, block_size=block_size, num_global_tokens=num_global_tokens)


# Significant bits at which LSG's "norm" selection compares key norms.
NORM_BITS = 12


def rounded_norm(norms):
    """``norms`` rounded to ``NORM_BITS`` significant bits (``frexp`` mantissa, half to even)."""
    mantissa, exponent = jnp.frexp(norms)
    return jnp.ldexp(jnp.round(mantissa * 2.0**NORM_BITS), exponent - NORM_BITS)


def _common_segment(ids, members, axis):
    """The id shared by all ``members`` along ``axis``, or 0 when there are none or they differ."""
    info = jnp.iinfo(jnp.int32)
    low = jnp.min(jnp.where(members, ids, info.max), axis=axis)
    high = jnp.max(jnp.where(members, ids, info.min), axis=axis)
    return jnp.where(jnp.any(members, axis=axis) & (low == high), high, 0)


def compress(sparsity_type, k, v, seg, q_bos, *, window, per_window, scale, lsh_seed):
    """LSG's sparse keys: compressed ``(k, v, segment)``, ``[B, M, H, D]`` twice and int32
    ``[B, M, H]`` (0 = masked), ``M = (N / window) * per_window``.

    ``k``, ``v``: ordinary tokens ``[B, N, H, D]``, ``N`` a multiple of ``window``; ``seg``:
    int32 ``[B, N]`` (0 = padding); ``q_bos``: ``[B, H, D]`` (``bos_pooling`` only).
    ``(window, per_window)`` come from ``lsg_compression_window``. Each window of ``window``
    tokens becomes ``per_window`` compressed tokens that depend on that window alone, so the
    KV cache may compress any window-aligned slice of the keys.
    """
    batch, length, heads, head_dim = k.shape
    num_windows = length // window
    num_compressed = num_windows * per_window
    kw = k.reshape(batch, num_windows, window, heads, head_dim)
    vw = v.reshape(batch, num_windows, window, heads, head_dim)
    segw = seg.reshape(batch, num_windows, window)
    real = segw != 0
    head_index = np.arange(heads)

    def flat(x):
        return x.reshape(batch, num_compressed, *x.shape[3:])

    if sparsity_type in ("pooling", "bos_pooling"):
        if sparsity_type == "pooling":
            count = jnp.sum(real, axis=2, keepdims=True).astype(k.dtype)
            weights = real.astype(k.dtype) / jnp.maximum(count, 1.0)
            weights = jnp.broadcast_to(weights[:, :, None, :], (batch, num_windows, heads, window))
        else:
            logits = jnp.einsum("bnwhd,bhd->bnhw", kw, q_bos) * jnp.asarray(scale, k.dtype)
            weights = core.masked_softmax(logits, real[:, :, None, :])
        ck = jnp.einsum("bnhw,bnwhd->bnhd", weights, kw)
        cv = jnp.einsum("bnhw,bnwhd->bnhd", weights, vw)
        cseg = _common_segment(segw, real, axis=2)
        return ck, cv, jnp.broadcast_to(cseg[:, :, None], (batch, num_windows, heads))

    if sparsity_type in ("stride", "block_stride"):
        # Token offsets inside the window, [per_window, H].
        start = head_index % window if sparsity_type == "stride" else (head_index * per_window) % window
        picked = start[None, :] + np.arange(per_window)[:, None]
        ck = kw[:, :, picked, head_index[None, :]]
        cv = vw[:, :, picked, head_index[None, :]]
        return flat(ck), flat(cv), flat(segw[:, :, picked])

    if sparsity_type == "norm":
        norms = rounded_norm(jax.lax.stop_gradient(jnp.sqrt(jnp.sum(jnp.square(kw), axis=-1))))
        order_key = jnp.where(real[..., None], -norms, jnp.inf)
        chosen = jnp.argsort(order_key, axis=2, stable=True)[:, :, :per_window]
        chosen = jnp.sort(chosen, axis=2)
        ck = jnp.take_along_axis(kw, chosen[..., None], axis=2)
        cv = jnp.take_along_axis(vw, chosen[..., None], axis=2)
        segh = jnp.broadcast_to(segw[..., None], (batch, num_windows, window, heads))
        return flat(ck), flat(cv), flat(jnp.take_along_axis(segh, chosen, axis=2))

    if sparsity_type == "lsh":
        num_proj = -(-per_window // 2)
        rotations = jax.random.normal(jax.random.PRNGKey(lsh_seed), (heads, head_dim, num_proj),
                                      jnp.float32).astype(k.dtype)
        proj = jnp.einsum("bnwhd,hdp->bnwhp", jax.lax.stop_gradient(kw), rotations)
        bucket = jnp.argmax(jnp.concatenate([proj, -proj], axis=-1)[..., :per_window], axis=-1)
        members = (bucket[..., None] == np.arange(per_window).reshape(1, 1, 1, 1, -1)) & real[:, :, :, None, None]
        count = jnp.sum(members, axis=2, keepdims=True).astype(k.dtype)
        weights = members.astype(k.dtype) / jnp.maximum(count, 1.0)
        ck = jnp.einsum("bnwhu,bnwhd->bnuhd", weights, kw)
        cv = jnp.einsum("bnwhu,bnwhd->bnuhd", weights, vw)
        ids = jnp.broadcast_to(segw[:, :, :, None, None], members.shape)
        cseg = jnp.transpose(_common_segment(ids, members, axis=2), (0, 1, 3, 2))
        return flat(ck), flat(cv), flat(cseg)

    raise NotImplementedError(f"sparsity_type={sparsity_type!r} is not implemented")


def _dense_rows(q_rows, k, v, seg, *, num_global, causal, scale, ssmax_s):
    """Dense attention of the first ``R`` queries ``q_rows [B, R, H, D]`` over all ``T`` keys.

    Used for the global queries (``R = G``) and for short sequences (``R = T``).
    """
    num_rows, length = q_rows.shape[1], k.shape[1]
    row = np.arange(num_rows)[None, :, None]
    col = np.arange(length)[None, None, :]
    q_global = row < num_global
    k_global = col < num_global
    q_ids = seg[:, :num_rows, None]
    k_ids = seg[:, None, :]
    sees_global = k_global & (q_global | (q_ids != 0))
    sees_ordinary = ~k_global & (k_ids != 0) & (q_global | (q_ids == k_ids))
    mask = sees_global | sees_ordinary
    if causal:
        mask = mask & (col <= row)
    rows = None
    if ssmax_s is not None:
        rows = ssmax_lib.ssmax_row_scale(ssmax_s, jnp.sum(mask, axis=-1, dtype=jnp.int32))
    return primitives.attend(q_rows, k, v, mask[:, None], scale=scale, row_scale=rows)


BACKEND_TABLE = {"reference": backends.always, "xla_chunked": backends.always}

# Query rows per chunk of the "xla_chunked" path: a chunk's gathered keys and logits are
# the only O(rows * keys) tensors alive at once, in the forward and (rematerialised) backward.
CHUNK_ROWS = 512


def _blocks_per_chunk(num_blocks, block_size):
    """The largest divisor of ``num_blocks`` with at most ``CHUNK_ROWS`` query rows (>= 1)."""
    target = max(1, CHUNK_ROWS // block_size)
    return max(d for d in range(1, min(target, num_blocks) + 1) if num_blocks % d == 0)


def _ordinary_blocks(blocks, q, k, v, seg, compressed, schedule, *, num_global, block_size,
                     causal, scale, ssmax_s):
    """Outputs ``[B, n, B_l, H, D]`` of the ordinary query blocks ``blocks`` (int ``[n]``,
    NumPy or traced): one ``primitives.attend`` per block over its global, sparse and local
    keys (see the module doc). ``q``/``k``/``v`` ``[B, T, H, D]`` with the globals first;
    ``compressed`` is ``compress``'s ``(k, v, segment)`` or ``None``."""
    batch, _, heads, head_dim = q.shape
    count = blocks.shape[0]
    ordinary_blocks = (q.shape[1] - num_global) // block_size

    def by_block(x):
        return x[:, num_global:].reshape(batch, ordinary_blocks, block_size, *x.shape[2:])

    qo, q_ids = by_block(q)[:, blocks], by_block(seg)[:, blocks]  # [B, n, B_l, ...]
    q_real = (q_ids != 0)[:, :, None, :, None]  # [B, n, 1, B_l, 1]
    keys = [jnp.broadcast_to(k[:, None, :num_global], (batch, count, num_global, heads, head_dim))]
    values = [jnp.broadcast_to(v[:, None, :num_global], keys[0].shape)]
    masks = [jnp.broadcast_to(q_real, (batch, count, 1, block_size, num_global))]

    if compressed is not None:
        ck, cv, cseg = compressed
        sparse_index = jnp.asarray(schedule.sparse_index)[blocks]  # [n, S']
        index = jnp.maximum(sparse_index, 0)
        keys.append(ck[:, index])
        values.append(cv[:, index])
        same = jnp.transpose(cseg[:, index], (0, 1, 3, 2))[:, :, :, None, :] == \
            q_ids[:, :, None, :, None]
        masks.append(same & q_real & (sparse_index >= 0)[None, :, None, None, :])

    local_blocks = jnp.asarray(schedule.local_blocks)[blocks]  # [n, visits]
    visits = local_blocks.shape[1]
    gather = jnp.maximum(local_blocks, 0)

    def gather_blocks(x):
        return by_block(x)[:, gather].reshape(batch, count, visits * block_size, *x.shape[2:])

    keys.append(gather_blocks(k))
    values.append(gather_blocks(v))
    offsets = jnp.arange(block_size)
    q_pos = (blocks[:, None] * block_size + offsets[None, :])[:, :, None]
    k_pos = (gather[:, :, None] * block_size + offsets[None, None, :]).reshape(
        count, 1, visits * block_size)
    static = jnp.repeat(local_blocks >= 0, block_size, axis=1)[:, None, :]
    if causal:
        static = static & (k_pos <= q_pos)
    same = q_ids[:, :, :, None] == gather_blocks(seg)[:, :, None, :]
    masks.append((same & static[None])[:, :, None] & q_real)

    mask = jnp.concatenate([jnp.broadcast_to(m, m.shape[:2] + (heads,) + m.shape[3:])
                            for m in masks], axis=-1)  # [B, n, H, B_l, keys]
    flat = lambda x: x.reshape(batch * count, *x.shape[2:])
    rows = None
    if ssmax_s is not None:
        visible = jnp.sum(mask, axis=-1, dtype=jnp.int32)  # [B, n, H, B_l]
        rows = ssmax_s.astype(q.dtype)[None, None, :] * jnp.log(
            jnp.maximum(flat(jnp.swapaxes(visible, 2, 3)), 1).astype(q.dtype))  # [Bn, B_l, H]
    out = primitives.attend(flat(qo), flat(jnp.concatenate(keys, axis=2)),
                            flat(jnp.concatenate(values, axis=2)), flat(mask), scale=scale,
                            row_scale=rows)
    return out.reshape(batch, count, block_size, heads, head_dim)


def lsg_attention(q, k, v, *, block_size=128, sparse_block_size=128, sparsity_factor=2,
                  sparsity_type="norm", num_global_tokens=1, causal=True, segment_ids=None,
                  softmax="softmax", ssmax_s=None, scale=None, lsh_seed=0, implementation=None):
    """LSG attention (local + sparse + global keys, one softmax per query); see the module doc.

    Args:
      q: ``[B, T, H, D]``; k, v: ``[B, T, K, D]`` with ``H % K == 0`` (GQA). The first
        ``num_global_tokens`` positions are the global tokens.
      block_size: ``B_l``, the query/local block; ``T - num_global_tokens`` must be a multiple.
      sparse_block_size: ``S >= 0``, compressed keys per side.
      sparsity_factor: ``f >= 1`` dividing ``block_size``.
      sparsity_type: one of ``SPARSITY_TYPES``.
      num_global_tokens: ``G``, ``0 <= G < T``.
      causal: local blocks ``b-1, b`` with ``j <= i`` and left sparse keys only; global queries
        see earlier global keys only.
      segment_ids: int ``[B, T]``, 0 = padding; the entries of the global positions are ignored.
      softmax, ssmax_s, scale: as in ``dense_attention``.
      lsh_seed: int ``>= 0``, seed of the ``lsh`` projections.
      implementation: ``None`` (``backends.resolve``), ``"reference"`` (every query block
        at once) or ``"xla_chunked"`` (query blocks streamed in chunks of ``CHUNK_ROWS``
        rows, each rematerialised in the backward, so memory holds one chunk's logits).

    Returns:
      ``[B, T, H, D]`` in ``q.dtype``; statistics in float32 (float64 for float64 inputs).
    """
    _check_options(q, k, v, block_size=block_size, sparse_block_size=sparse_block_size,
                   sparsity_factor=sparsity_factor, sparsity_type=sparsity_type,
                   num_global_tokens=num_global_tokens, causal=causal, segment_ids=segment_ids,
                   softmax=softmax, ssmax_s=ssmax_s, scale=scale, lsh_seed=lsh_seed,
                   implementation=implementation)
    batch, length, heads, head_dim = q.shape
    out_dtype = q.dtype
    dtype = core.compute_dtype(q.dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    num_global = num_global_tokens
    ordinary = length - num_global
    num_blocks = ordinary // block_size
    group = heads // k.shape[2]
    q = q.astype(dtype)
    k = core.repeat_kv(k, group).astype(dtype)
    v = core.repeat_kv(v, group).astype(dtype)
    if segment_ids is None:
        seg = jnp.ones((batch, length), jnp.int32)
    else:
        seg = segment_ids.astype(jnp.int32)
    s = None if softmax == "softmax" else ssmax_s
    name = backends.resolve(
        implementation, kind="lsg", table=BACKEND_TABLE,
        pattern=checks.self_attention_pattern(q, k, causal=causal, softmax=softmax,
                                              segment_ids=segment_ids),
        one_block=num_blocks <= _blocks_per_chunk(num_blocks, block_size))

    if ordinary <= 2 * block_size:
        out = _dense_rows(q, k, v, seg, num_global=num_global, causal=causal, scale=scale, ssmax_s=s)
        return out.astype(out_dtype)

    sparse = 0 if sparsity_type == "none" else sparse_block_size
    schedule = lsg_key_schedule(num_blocks, block_size=block_size, sparsity_factor=sparsity_factor,
                                sparse_block_size=sparse, causal=causal)
    window, per_window = lsg_compression_window(
        sparsity_type, block_size=block_size, sparsity_factor=sparsity_factor,
        sparse_block_size=sparse_block_size)
    if causal:
        # Compressed token c summarises tokens before (c // per_window + 1) * window only.
        ends = np.where(schedule.sparse_index >= 0, (schedule.sparse_index // per_window + 1) * window, 0)
        starts = (np.arange(num_blocks)[:, None] - 1) * block_size
        assert np.all(ends <= np.maximum(starts, 0)), "causal sparse keys reach into the future"

    ko, vo, sego = k[:, num_global:], v[:, num_global:], seg[:, num_global:]
    compressed = None
    if sparse:
        q_bos = None
        if sparsity_type == "bos_pooling":
            q_bos = jnp.where((sego[:, 0] != 0)[:, None, None], q[:, num_global], 0.0)
        compressed = compress(sparsity_type, ko, vo, sego, q_bos, window=window,
                              per_window=per_window, scale=scale, lsh_seed=lsh_seed)

    def blocks_out(blocks):
        return _ordinary_blocks(blocks, q, k, v, seg, compressed, schedule, num_global=num_global,
                                block_size=block_size, causal=causal, scale=scale, ssmax_s=s)

    if name == "xla_chunked":
        per_chunk = _blocks_per_chunk(num_blocks, block_size)
        ids = jnp.arange(num_blocks, dtype=jnp.int32).reshape(-1, per_chunk)
        out = jax.lax.map(jax.checkpoint(blocks_out), ids)  # [chunks, B, per_chunk, B_l, H, D]
        out = jnp.moveaxis(out, 0, 1)
    else:
        out = blocks_out(np.arange(num_blocks))
    out = out.reshape(batch, ordinary, heads, head_dim)
    if num_global:
        out_global = _dense_rows(q[:, :num_global], k, v, seg, num_global=num_global, causal=causal,
                                 scale=scale, ssmax_s=s)
        out = jnp.concatenate([out_global, out], axis=1)
    return out.astype(out_dtype)


@dataclasses.dataclass(frozen=True)
class LSGOptions(registry.Options):
    """Options of LSG attention (kind ``"lsg"``); see ``lsg_attention``.

    The first ``num_global_tokens`` positions the function receives are the global tokens:
    ``TransformerLM`` prepends that many learned embeddings, so ``check_seq_len`` takes the
    length of the ordinary tokens.
    """

    causal: bool = True
    block_size: int = 128
    sparse_block_size: int = 128
    sparsity_factor: int = 2
    sparsity_type: str = "norm"
    num_global_tokens: int = 1
    softmax: str = "softmax"
    lsh_seed: int = 0

    def validate(self):
        core.check_causal(self.causal)
        check_geometry(self.block_size, self.sparsity_factor, self.sparse_block_size)
        check_sparsity_type(self.sparsity_type)
        core.check_int("num_global_tokens", self.num_global_tokens, minimum=0)
        core.check_softmax(self.softmax)
        core.check_int("lsh_seed", self.lsh_seed, minimum=0)

    def check_seq_len(self, seq_len):
        super().check_seq_len(seq_len)
        check_seq_len(seq_len + self.num_global_tokens, block_size=self.block_size,
                      num_global_tokens=self.num_global_tokens)


registry.register(
    "lsg",
    lsg_attention,
    LSGOptions,
    doc="LSG attention: local blocks, compressed sparse tokens and global tokens.",
    backends=BACKEND_TABLE,
)
