"""Cached attention for decoding: a fixed-capacity key/value cache per layer, pure JAX.

A ``KVCache`` holds the keys (after RoPE) and values of every position fed so far, in slots
``[0, length)`` of arrays with a static ``capacity``. Decoding a chunk of ``C`` new tokens is

1. ``write_chunk(cache, k, v)``: the chunk's keys/values go to slots ``[length, length + C)``
   (``jax.lax.dynamic_update_slice``; ``length`` is not moved yet);
2. ``cached_attention(q, cache, kind=..., **options)``: the chunk's queries, at slots
   ``[length, length + C)``, attend over every cached key they may see;
3. ``advance(cache, count)``: ``length += count``, the chunk's real tokens (``count <= C``).

``length`` is a traced scalar, so one compiled program serves every step of a given chunk
size. Kinds whose queries see a bounded neighbourhood (``window``, ``local``, ``lsg``) score
only the slots that neighbourhood can hold (``key_span``: a static number of slots at a
traced offset) and LSG compresses only the windows its visible compressed tokens come from,
so a decode step costs the same at every cache length; dense attention without a window and
routing score every slot under a mask. A query never sees a slot to its right, so slots
written by padding at the end of a chunk (``count < C``) are invisible to every real query and
are overwritten by the next chunk.

Visibility of key slot ``j`` for the query in slot ``p`` (the rules of the full forward of
each kind, restricted to what a causal query can see):

- ``dense`` / ``ssmax``: ``j <= p``; with ``window=w`` also ``p - w < j``.
- ``local`` (``block_size=B``): ``j <= p`` and ``j // B >= p // B - 1``.
- ``lsg``: the first ``G = num_global_tokens`` slots hold the global tokens. A global query
  (``p < G``) sees ``j <= p``. An ordinary query (ordinary index ``i = p - G``, block
  ``b = i // B``) sees every global key, the ordinary keys ``m = j - G`` with ``m <= i`` and
  ``m // B >= b - 1``, and the compressed tokens ``[(b-1) B/f - S, (b-1) B/f)`` built by
  ``lsg.py``'s compression from the cached ordinary keys (those windows lie entirely left of
  block ``b-1``, so they are complete). ``bos_pooling`` reads the query of the first ordinary
  token, which ``write_chunk`` keeps in ``KVCache.bos_query``.
- ``routing`` (causal, ``assignment="argmax"`` only): ``write_chunk`` stores each slot's
  cluster per routing head in ``KVCache.clusters``, the nearest centroid of the layer-normed
  query after RoPE (``chunk_clusters``; with shared QK that query is also the key), as the
  full forward routes it. A routing head's query in slot ``p`` of cluster ``c`` sees the
  slots ``j <= p`` of cluster ``c`` with fewer than ``w = cluster_size`` slots of cluster
  ``c`` in ``(j, p]``: the ``w`` most recent members of its cluster, itself included. The
  first ``local_heads`` heads follow the ``local`` rule (``block_size``). ``cluster_size``
  must be known: its default ``T // num_clusters`` depends on the sequence length ``T``, so
  ``cached_attention_for(..., seq_len=T)`` resolves it (the model passes its ``train_len``),
  and the cache then equals the full forward of any length with that same window.

``softmax="ssmax"`` multiplies the logits of each query by ``s_h * log(n)``, ``n`` the number
of keys it sees under these rules, as in ``ssmax.py``. Logits and softmax statistics are
float32 (float64 for float64 inputs); the output has ``q``'s dtype.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxattn.attention import core
from jaxattn.attention import lsg as lsg_lib
from jaxattn.attention import registry
from jaxattn.attention import routing as routing_lib
from jaxattn.attention import ssmax as ssmax_lib

DECODABLE_KINDS = ("dense", "ssmax", "local", "lsg", "routing")


class KVCache(NamedTuple):
    """One layer's decoding cache.

    keys: ``[B, capacity, K, D]``, keys after RoPE.
    values: ``[B, capacity, K, D]``.
    length: int32 scalar, the filled slots ``[0, length)``.
    bos_query: ``[B, H, D]`` query (after RoPE) of the first ordinary token, read by LSG's
      ``bos_pooling``; ``[B, 0, D]`` when not needed.
    clusters: int32 ``[B, capacity, H_r]``, the cluster of every slot for each of routing's
      ``H_r = H - local_heads`` routing heads; ``[B, capacity, 0]`` (``init_cache``'s default)
      or ``None`` for other kinds.
    """

    keys: jax.Array
    values: jax.Array
    length: jax.Array
    bos_query: jax.Array
    clusters: jax.Array | None = None

    @property
    def capacity(self) -> int:
        return self.keys.shape[1]


def check_decodable(kind: str, options) -> None:
    """``ValueError`` unless attention ``kind`` with ``options`` can decode from a cache:
    a causal dense, ssmax, local, LSG or routing (``assignment="argmax"``) kind."""
    registry.get_variant(kind)  # unknown kinds list the valid ones
    if kind not in DECODABLE_KINDS:
        raise ValueError(f"attention kind {kind!r} has no KV-cache decoding; kinds with one: "
                         f"{', '.join(DECODABLE_KINDS)}")
    if kind == "routing":
        causal = getattr(options, "causal", True)
        assignment = getattr(options, "assignment", None) or ("argmax" if causal else
                                                              "balanced")
        if not causal or assignment != "argmax":
            raise ValueError(
                f"routing attention decodes from a KV cache only when causal with "
                f"assignment='argmax', got causal={causal}, assignment={assignment!r}: balanced "
                f"clusters take each centroid's top-k over the whole sequence, and a "
                f"bidirectional query reads keys that do not exist yet")
    if not getattr(options, "causal", True):
        raise ValueError(f"causal must be True to decode attention kind {kind!r} from a cache "
                         f"(a bidirectional query reads keys that do not exist yet)")


def needs_bos_query(kind: str, options) -> bool:
    """Whether the cache of this kind must keep the first ordinary token's query."""
    return kind == "lsg" and options.sparsity_type == "bos_pooling" and \
        options.sparse_block_size > 0


def cluster_heads(kind: str, options, num_heads: int) -> int:
    """Heads whose slot clusters the cache keeps: ``num_heads - local_heads`` for routing,
    else 0."""
    if kind != "routing":
        return 0
    return num_heads - options.local_heads


def chunk_clusters(q: jax.Array, centroids: jax.Array, *, local_heads: int = 0) -> jax.Array:
    """Routing clusters of a chunk, int32 ``[B, C, H - local_heads]``: the nearest centroid
    (``centroids [H - local_heads, num_clusters, D]``) of each routing head's layer-normed
    query ``q [B, C, H, D]`` (after RoPE), as ``routing.py``'s argmax assignment routes it."""
    return routing_lib.assign_clusters(
        routing_lib.normalize_for_routing(q[:, :, local_heads:]), centroids)


def init_cache(batch: int, capacity: int, num_kv_heads: int, head_dim: int, *,
               dtype=jnp.float32, bos_heads: int = 0, cluster_heads: int = 0) -> KVCache:
    """An empty cache: zeros ``[batch, capacity, num_kv_heads, head_dim]``, ``length = 0``.

    ``bos_heads``: query heads of ``bos_query`` (``H`` for LSG ``bos_pooling``, else 0).
    ``cluster_heads``: routing heads whose slot clusters the cache keeps (``cluster_heads``
    of the layer's kind; 0 for other kinds).
    """
    for name, value in (("batch", batch), ("capacity", capacity),
                        ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
        core.check_positive_int(name, value)
    core.check_int("bos_heads", bos_heads, minimum=0)
    core.check_int("cluster_heads", cluster_heads, minimum=0)
    shape = (batch, capacity, num_kv_heads, head_dim)
    return KVCache(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype),
                   length=jnp.zeros((), jnp.int32),
                   bos_query=jnp.zeros((batch, bos_heads, head_dim), dtype),
                   clusters=jnp.zeros((batch, capacity, cluster_heads), jnp.int32))


def _concrete(x):
    """``int(x)`` when ``x`` is known at trace time, else ``None``."""
    try:
        return int(x)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return None


def _check_cache(cache):
    if not isinstance(cache, KVCache):
        raise ValueError(f"cache must be a KVCache (init_cache), got {type(cache).__name__}")
    if cache.keys.ndim != 4 or cache.keys.shape != cache.values.shape:
        raise ValueError(f"cache keys and values must both be [batch, capacity, kv_heads, "
                         f"head_dim], got {cache.keys.shape} and {cache.values.shape}")


def _num_cluster_heads(cache):
    return 0 if cache.clusters is None else cache.clusters.shape[-1]


def write_chunk(cache: KVCache, k: jax.Array, v: jax.Array, *, q: jax.Array | None = None,
                num_global_tokens: int = 0, clusters: jax.Array | None = None) -> KVCache:
    """Writes a chunk's keys/values to slots ``[length, length + C)``; ``length`` unchanged.

    Args:
      cache: a ``KVCache``.
      k, v: ``[B, C, K, D]``, keys after RoPE.
      q: ``[B, C, H, D]`` the chunk's queries (after RoPE); only read when the cache keeps a
        ``bos_query``, which takes the query of slot ``num_global_tokens`` when the chunk
        holds it.
      num_global_tokens: LSG's ``G`` (slots ``[0, G)`` are global tokens).
      clusters: int ``[B, C, H_r]`` the chunk's routing clusters (``chunk_clusters``);
        required when the cache keeps clusters (routing), ignored otherwise.

    ``ValueError`` naming ``k`` when the chunk cannot fit (checked when ``length`` is known
    at trace time; under ``jit`` the caller keeps ``length + C <= capacity``).
    """
    _check_cache(cache)
    if k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"k and v must both be [batch, chunk, kv_heads, head_dim], got "
                         f"{k.shape} and {v.shape}")
    batch, chunk = k.shape[:2]
    if (batch,) + k.shape[2:] != (cache.keys.shape[0],) + cache.keys.shape[2:]:
        raise ValueError(f"k must be [batch, chunk, kv_heads, head_dim] matching the cache "
                         f"{cache.keys.shape}, got {k.shape}")
    length = _concrete(cache.length)
    if chunk > cache.capacity or (length is not None and length + chunk > cache.capacity):
        raise ValueError(f"k: a chunk of {chunk} tokens does not fit the cache (capacity "
                         f"{cache.capacity}, {length if length is not None else '?'} filled); "
                         f"create the cache with a larger capacity")
    start = cache.length.astype(jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    index = (zero, start, zero, zero)
    keys = jax.lax.dynamic_update_slice(cache.keys, k.astype(cache.keys.dtype), index)
    values = jax.lax.dynamic_update_slice(cache.values, v.astype(cache.values.dtype), index)
    bos = cache.bos_query
    if bos.shape[1]:
        if q is None:
            raise ValueError("q is required: this cache keeps the first ordinary token's query "
                             "(LSG bos_pooling)")
        if q.shape[:2] != (batch, chunk) or q.shape[2:] != bos.shape[1:]:
            raise ValueError(f"q must be [batch, chunk, heads, head_dim] = "
                             f"{[batch, chunk, *bos.shape[1:]]}, got {q.shape}")
        offset = num_global_tokens - start
        inside = (offset >= 0) & (offset < chunk)
        row = jax.lax.dynamic_index_in_dim(q, jnp.clip(offset, 0, chunk - 1), axis=1,
                                           keepdims=False)
        bos = jnp.where(inside, row.astype(bos.dtype), bos)
    slot_clusters = cache.clusters
    if _num_cluster_heads(cache):
        expected = (batch, chunk, slot_clusters.shape[2])
        if clusters is None:
            raise ValueError("clusters is required: this cache keeps the routing cluster of "
                             "every slot (chunk_clusters)")
        if getattr(clusters, "shape", None) != expected:
            raise ValueError(f"clusters must be [batch, chunk, routing_heads] = "
                             f"{list(expected)}, got shape {getattr(clusters, 'shape', None)}")
        slot_clusters = jax.lax.dynamic_update_slice(
            slot_clusters, clusters.astype(jnp.int32), (zero, start, zero))
    return cache._replace(keys=keys, values=values, bos_query=bos, clusters=slot_clusters)


def advance(cache: KVCache, count) -> KVCache:
    """The cache with ``length += count`` (the real tokens of the chunk just written)."""
    _check_cache(cache)
    return cache._replace(length=cache.length + jnp.asarray(count, jnp.int32))


def _options(kind, options):
    opts = registry.make_options(kind, **options)
    check_decodable(kind, opts)
    return opts


def _token_mask(kind, opts, q_slot, k_slot):
    """Bool ``[C, capacity]`` visibility of cached slots (module doc)."""
    causal = k_slot <= q_slot
    if kind in ("dense", "ssmax"):
        if opts.window is not None:
            return causal & (q_slot - k_slot < opts.window)
        return causal
    if kind == "local":
        size = opts.block_size
        return causal & (k_slot // size >= q_slot // size - 1)
    g, size = opts.num_global_tokens, opts.block_size
    k_global = k_slot < g
    local = ~k_global & causal & ((k_slot - g) // size >= (q_slot - g) // size - 1)
    return jnp.where(q_slot < g, causal, k_global | local)


def _routing_window(opts, seq_len):
    """Routing's ``w``: ``cluster_size``, else ``seq_len // num_clusters``."""
    if opts.cluster_size is not None:
        return opts.cluster_size
    if seq_len is None:
        raise ValueError(
            "routing attention with cluster_size=None has the window seq_len // num_clusters, "
            "which depends on the sequence length: pass cluster_size=, or seq_len= (through "
            "cached_attention_for; TransformerLM passes its train_len)")
    core.check_positive_int("seq_len", seq_len)
    return routing_lib.default_cluster_size(seq_len, opts.num_clusters)


def _routing_mask(opts, cache, q_slot, k_slot, *, heads, chunk, window):
    """Bool ``[B, H, C, capacity]``: the local rule for the first ``local_heads`` heads, the
    ``window`` most recent slots of the query's cluster for the others (module doc)."""
    batch, capacity = cache.keys.shape[:2]
    local = opts.local_heads
    parts = []
    if local:
        mask = _token_mask("local", opts, q_slot, k_slot)
        parts.append(jnp.broadcast_to(mask[None, None], (batch, local, chunk, capacity)))
    if local < heads:
        k_cluster = jnp.transpose(cache.clusters, (0, 2, 1))  # [B, H_r, capacity]
        q_cluster = jax.lax.dynamic_slice_in_dim(k_cluster, cache.length.astype(jnp.int32),
                                                 chunk, axis=2)  # [B, H_r, C]
        member = ((k_cluster[:, :, None, :] == q_cluster[..., None])
                  & (k_slot <= q_slot)[None, None])
        seen = jnp.cumsum(member.astype(jnp.int32), axis=-1)  # members in [0, j]
        later = seen[..., -1:] - seen  # members in (j, p]
        parts.append(member & (later < window))
    return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _check_routing_cache(opts, cache, heads):
    local = opts.local_heads
    if local > heads:
        raise ValueError(f"local_heads must be in [0, heads={heads}], got {local}")
    expected = heads - local
    if _num_cluster_heads(cache) != expected or (
            expected and cache.clusters.shape[:2] != cache.keys.shape[:2]):
        shape = None if cache.clusters is None else list(cache.clusters.shape)
        raise ValueError(f"cache.clusters must be [batch, capacity, heads - local_heads] = "
                         f"{[*cache.keys.shape[:2], expected]} for routing attention "
                         f"(init_cache(..., cluster_heads={expected})), got {shape}")


def _span_blocks(chunk: int, block_size: int) -> int:
    """Blocks that hold every local key of a chunk of ``chunk`` consecutive queries: the
    blocks the queries fall in (at most ``ceil((C-1)/B) + 1``) and the one before."""
    return -(-(chunk - 1) // block_size) + 2


def key_span(kind: str, opts, length, chunk: int, capacity: int):
    """The cached slots a chunk of queries can see, as ``(start, size)`` or ``None``.

    For the kinds whose queries see a bounded neighbourhood, every non-global key visible to
    the queries in slots ``[length, length + C)`` lies in slots ``[start, start + size)``
    (``size`` static, ``start`` traced, clamped into ``[G, capacity - size]``): ``window=w``
    dense/SSMax ``size = C + w - 1``; ``local`` and ``lsg`` the ``_span_blocks`` blocks of
    ``block_size`` ending with the last query's. ``None``: the whole capacity (no window,
    routing, or a span as long as the cache), which ``cached_attention`` then scores.
    """
    g = getattr(opts, "num_global_tokens", 0)
    length = jnp.asarray(length, jnp.int32)
    if kind in ("dense", "ssmax") and opts.window is not None:
        size = chunk + opts.window - 1
        start = length - (opts.window - 1)
    elif kind in ("local", "lsg"):
        size = _span_blocks(chunk, opts.block_size) * opts.block_size
        start = g + ((length - g) // opts.block_size - 1) * opts.block_size
    else:
        return None
    if g + size >= capacity:
        return None
    return jnp.clip(start, g, capacity - size), size


def _gather_slots(cache, span, num_global):
    """``(k_slot [1, S], keys, values)``: the global slots and ``span``'s slots, or every slot."""
    capacity = cache.capacity
    if span is None:
        return (jax.lax.broadcasted_iota(jnp.int32, (1, capacity), 1), cache.keys,
                cache.values)
    start, size = span
    k_slot = jnp.concatenate([jnp.arange(num_global, dtype=jnp.int32),
                              start + jnp.arange(size, dtype=jnp.int32)])[None]

    def take(x):
        window = jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)
        return jnp.concatenate([x[:, :num_global], window], axis=1) if num_global else window

    return k_slot, take(cache.keys), take(cache.values)


def _compressed(opts, cache, q_slot, chunk, heads, scale, dtype):
    """LSG's compressed keys of the cached ordinary tokens and their visibility.

    Only the compression windows that hold the chunk's visible compressed tokens are
    compressed (each window's compressed tokens depend on that window alone), unless those
    are about all the windows of the cache.

    Returns ``(ck [B, M, H, D], cv [B, M, H, D], mask [B, H, C, M])``.
    """
    g, size = opts.num_global_tokens, opts.block_size
    batch, capacity, kv_heads, head_dim = cache.keys.shape
    window, per_window = lsg_lib.lsg_compression_window(
        opts.sparsity_type, block_size=size, sparsity_factor=opts.sparsity_factor,
        sparse_block_size=opts.sparse_block_size)
    step = size // opts.sparsity_factor
    ordinary = capacity - g
    group = heads // kv_heads
    length = cache.length.astype(jnp.int32)
    # Compressed tokens seen by the chunk: [(b-1) step - S, (b_last-1) step) for its blocks b.
    needed = opts.sparse_block_size + (_span_blocks(chunk, size) - 2) * step
    num_windows = needed // per_window + 2
    whole_windows = ordinary // window
    if num_windows < whole_windows:
        first = ((length - g) // size - 1) * step - opts.sparse_block_size
        first_window = jnp.clip(first // per_window, 0, whole_windows - num_windows)
        count = num_windows * window

        def ordinary_part(x):
            x = jax.lax.dynamic_slice_in_dim(x, g + first_window * window, count, axis=1)
            return core.repeat_kv(x, group).astype(dtype)
    else:
        first_window = jnp.zeros((), jnp.int32)
        count = -(-ordinary // window) * window

        def ordinary_part(x):
            x = core.repeat_kv(x[:, g:], group).astype(dtype)
            return jnp.pad(x, ((0, 0), (0, count - ordinary), (0, 0), (0, 0)))

    filled = length + chunk - g  # ordinary slots written so far, this chunk included
    index = first_window * window + jax.lax.broadcasted_iota(jnp.int32, (1, count), 1)
    seg = jnp.broadcast_to((index < filled).astype(jnp.int32), (batch, count))
    q_bos = None
    if opts.sparsity_type == "bos_pooling":
        q_bos = cache.bos_query.astype(dtype)
    ck, cv, cseg = lsg_lib.compress(
        opts.sparsity_type, ordinary_part(cache.keys), ordinary_part(cache.values), seg, q_bos,
        window=window, per_window=per_window, scale=scale, lsh_seed=opts.lsh_seed)
    num_compressed = ck.shape[1]
    q_block = (q_slot - g) // size  # [C, 1]
    c = first_window * per_window + jax.lax.broadcasted_iota(jnp.int32, (1, num_compressed), 1)
    hi = (q_block - 1) * step
    in_range = (c >= hi - opts.sparse_block_size) & (c < hi) & (q_slot >= g)  # [C, M]
    valid = jnp.transpose(cseg != 0, (0, 2, 1))[:, :, None, :]  # [B, H, 1, M]
    mask = in_range[None, None] & valid
    return ck, cv, mask


def cached_attention(q: jax.Array, cache: KVCache, *, kind: str = "dense",
                     ssmax_s: jax.Array | None = None, scale=None, seq_len: int | None = None,
                     **options) -> jax.Array:
    """Attention of a chunk of new queries over a ``KVCache`` (rules in the module doc).

    Args:
      q: ``[B, C, H, D]``, queries (after RoPE) of slots ``[cache.length, cache.length + C)``;
        ``H`` a multiple of the cache's ``K`` (GQA: head ``h`` reads kv head ``h // (H/K)``).
      cache: a ``KVCache`` whose slots ``[0, length + C)`` are written (``write_chunk``; for
        routing with their ``clusters``).
      kind: ``"dense"``, ``"ssmax"``, ``"local"``, ``"lsg"`` or ``"routing"``.
      ssmax_s: ``[H]`` per-head SSMax ``s``; required with ``softmax="ssmax"``.
      scale: logit scale, default ``1/sqrt(D)``.
      seq_len: routing only: the sequence length whose default window
        ``seq_len // num_clusters`` applies when ``cluster_size`` is None.
      **options: the kind's registry options (``window``, ``block_size``, ``sparsity_type``,
        ``num_clusters``, ``cluster_size``, ``local_heads``, ...), validated as
        ``registry.make_options(kind, **options)``; ``causal`` must be True (and routing's
        ``assignment`` argmax).

    Returns:
      ``[B, C, H, D]`` in ``q.dtype``; equal to the full forward's rows
      ``[length, length + C)`` of the same kind (routing: of a sequence whose window is the
      same).
    """
    opts = _options(kind, options)
    _check_cache(cache)
    if getattr(q, "ndim", None) != 4:
        raise ValueError(f"q must be [batch, chunk, heads, head_dim], got shape "
                         f"{getattr(q, 'shape', None)}")
    batch, chunk, heads, head_dim = q.shape
    _, capacity, kv_heads, kv_dim = cache.keys.shape
    if cache.keys.shape[0] != batch or kv_dim != head_dim or heads % kv_heads:
        raise ValueError(f"q [batch, chunk, heads, head_dim] = {list(q.shape)} does not match "
                         f"the cache {list(cache.keys.shape)} (same batch and head_dim, heads a "
                         f"multiple of kv_heads)")
    if chunk > capacity:
        raise ValueError(f"q: a chunk of {chunk} queries exceeds the cache capacity {capacity}")
    core.check_scale(scale)
    ssmax_lib.check_ssmax_s(ssmax_s, opts.softmax, heads)
    g = getattr(opts, "num_global_tokens", 0)
    if g >= capacity:
        raise ValueError(f"num_global_tokens ({g}) must be smaller than the cache capacity "
                         f"({capacity})")
    group = heads // kv_heads
    dtype = core.compute_dtype(q.dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)

    q_slot = cache.length.astype(jnp.int32) + jax.lax.broadcasted_iota(
        jnp.int32, (chunk, 1), 0)
    span = key_span(kind, opts, cache.length, chunk, capacity)
    k_slot, keys, values = _gather_slots(cache, span, g)
    num_keys = k_slot.shape[1]
    qg = core.group_query_heads(q, kv_heads).astype(dtype)  # [B, C, K, G, D]
    logits = jnp.einsum("bqkgd,bskd->bkgqs", qg, keys.astype(dtype))
    logits = logits * jnp.asarray(scale, dtype)
    if kind == "routing":
        _check_routing_cache(opts, cache, heads)
        window = _routing_window(opts, seq_len) if opts.local_heads < heads else 1
        mask = _routing_mask(opts, cache, q_slot, k_slot, heads=heads, chunk=chunk,
                             window=window).reshape(logits.shape)
    else:
        mask = jnp.broadcast_to(_token_mask(kind, opts, q_slot, k_slot)[None, None, None],
                                logits.shape)
    sparse = (kind == "lsg" and opts.sparsity_type != "none" and opts.sparse_block_size > 0)
    if sparse:
        ck, cv, smask = _compressed(opts, cache, q_slot, chunk, heads, scale, dtype)
        num_compressed = ck.shape[1]
        ckg = ck.reshape(batch, num_compressed, kv_heads, group, head_dim)
        slogits = jnp.einsum("bqkgd,bmkgd->bkgqm", qg, ckg) * jnp.asarray(scale, dtype)
        smask = smask.reshape(batch, kv_heads, group, chunk, num_compressed)
        logits = jnp.concatenate([logits, slogits], axis=-1)
        mask = jnp.concatenate([mask, jnp.broadcast_to(smask, slogits.shape)], axis=-1)
    if opts.softmax == "ssmax":
        count = jnp.sum(mask, axis=-1, dtype=jnp.int32).astype(dtype)  # [B, K, G, C]
        s = ssmax_s.astype(dtype).reshape(1, kv_heads, group, 1)
        logits = logits * (s * jnp.log(jnp.maximum(count, 1.0)))[..., None]
    probs = core.masked_softmax(logits, mask)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs[..., :num_keys], values.astype(dtype))
    if sparse:
        cvg = cv.reshape(batch, num_compressed, kv_heads, group, head_dim)
        out = out + jnp.einsum("bkgqm,bmkgd->bqkgd", probs[..., num_keys:], cvg)
    return out.reshape(batch, chunk, heads, head_dim).astype(q.dtype)


def cached_attention_for(spec, q, cache, *, ssmax_s=None, scale=None, seq_len=None):
    """``cached_attention`` with the kind and options of an ``AttentionSpec``-like ``spec``
    (``.kind``, ``.options``); ``seq_len`` as there (routing's default window)."""
    return cached_attention(q, cache, kind=spec.kind, ssmax_s=ssmax_s, scale=scale,
                            seq_len=seq_len, **dataclasses.asdict(spec.options))


def cache_nbytes(caches) -> int:
    """Bytes held by a pytree of caches."""
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(caches)))
