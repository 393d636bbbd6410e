"""Routing attention (Roy, Saffar, Vaswani & Grangier, TACL 2021): content-based sparse
attention through online k-means.

Queries and keys are layer-normalised (no scale or bias) and routed to the nearest of
``C`` centroids per head; each query attends only to keys of its own cluster, so with
``C ~ sqrt(T)`` clusters of ``w = T / C`` tokens the cost is ``O(T^1.5 d)``. Centroids are
state, updated outside the gradient by an exponential moving average (paper Sec. 4.1):
``mu <- normalise(lambda mu + (1 - lambda) mean{x assigned to mu})``.

Two ways to give every cluster a static size ``w``:

- ``assignment="balanced"`` (the paper's, bidirectional only): each centroid takes the ``w``
  tokens scoring highest against it (top-k per centroid), so a token may sit in several
  clusters or in none. A token's output is the softmax over the union of its clusters' keys
  (each key counted once); a token in no cluster gets 0 from the routing heads.
- ``assignment="argmax"`` (causal-safe): each token joins its nearest centroid, and attends
  to the ``w`` most recent members of that cluster (itself included), by original position.
  Top-k per centroid ranks all tokens of the sequence, so in causal mode a future token can
  evict a past one from a cluster and change the past token's output; with argmax a token's
  cluster and its window depend on earlier tokens only, so causal routing uses it.

``local_heads`` of the ``H`` heads use block-local attention instead (``local.py``), the
paper's mix of local and routing heads.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxattn.attention import checks
from jaxattn.attention import core
from jaxattn.attention import local as local_lib
from jaxattn.attention import registry

ASSIGNMENTS = ("argmax", "balanced")
_LN_EPS = 1e-6


# --- k-means pieces ---------------------------------------------------------------------------

def normalize_for_routing(x):
    """Layer norm over ``head_dim`` without scale or bias, divided by ``sqrt(head_dim)``.

    ``[..., D]`` -> ``[..., D]`` in float32 (float64 for float64 input), close to unit norm,
    so ``x . mu`` is a cosine similarity.
    """
    x = x.astype(core.compute_dtype(x.dtype))
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + _LN_EPS) / math.sqrt(x.shape[-1])


def _unit_rows(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def init_centroids(key, num_heads, num_clusters, head_dim):
    """Random unit centroids, float32 ``[num_heads, num_clusters, head_dim]``."""
    core.check_int("num_heads", num_heads, minimum=0)
    core.check_positive_int("num_clusters", num_clusters)
    core.check_positive_int("head_dim", head_dim)
    return _unit_rows(jax.random.normal(key, (num_heads, num_clusters, head_dim), jnp.float32))


def _cluster_scores(xn, centroids):
    """``[B, T, H, D] x [H, C, D] -> [B, T, H, C]``."""
    return jnp.einsum("bthd,hcd->bthc", xn, centroids.astype(xn.dtype))


def assign_clusters(xn, centroids):
    """Nearest centroid of each routed vector: int32 ``[B, T, H]`` (``xn`` is ``[B, T, H, D]``)."""
    return jnp.argmax(_cluster_scores(xn, centroids), axis=-1).astype(jnp.int32)


def _valid_tokens(segment_ids, batch, length, dtype):
    """``[B, T, 1, 1]``: 1 for real tokens (segment id != 0), 0 for padding."""
    if segment_ids is None:
        return jnp.ones((batch, length, 1, 1), dtype)
    return (segment_ids != 0).astype(dtype)[:, :, None, None]


def update_centroids(centroids, qn, kn, *, segment_ids=None, decay=0.999):
    """One online k-means step (no gradient).

    For head ``h`` and cluster ``c``, ``S`` is every routed query and key vector (padding
    excluded) whose nearest centroid is ``c``; then
    ``mu_c <- normalise(decay * mu_c + (1 - decay) * mean(S))``, and ``mu_c`` is unchanged
    when ``S`` is empty.

    Args:
      centroids: ``[H, C, D]``.
      qn, kn: ``[B, T, H, D]`` routed (normalised) queries and keys.
      segment_ids: ``[B, T]``; id 0 marks padding.
      decay: EMA decay ``lambda`` in ``[0, 1)``.

    Returns:
      New centroids, ``[H, C, D]`` float32.
    """
    qn, kn, centroids = jax.lax.stop_gradient((qn, kn, centroids))
    num_clusters = centroids.shape[1]
    valid = _valid_tokens(segment_ids, qn.shape[0], qn.shape[1], qn.dtype)
    sums = jnp.zeros(centroids.shape, qn.dtype)
    counts = jnp.zeros(centroids.shape[:2], qn.dtype)
    for xn in (qn, kn):
        onehot = jax.nn.one_hot(assign_clusters(xn, centroids), num_clusters, dtype=xn.dtype)
        onehot = onehot * valid
        sums = sums + jnp.einsum("bthc,bthd->hcd", onehot, xn)
        counts = counts + jnp.sum(onehot, axis=(0, 1))
    mean = sums / jnp.maximum(counts, 1.0)[:, :, None]
    moved = _unit_rows(decay * centroids.astype(qn.dtype) + (1.0 - decay) * mean)
    return jnp.where((counts > 0)[:, :, None], moved, centroids).astype(jnp.float32)


def commitment_loss(qn, kn, centroids, *, segment_ids=None):
    """Mean over real tokens and heads of ``(|qn - mu(qn)|^2 + |kn - mu(kn)|^2) / 2``.

    Pulls routed vectors towards their (fixed, no-gradient) nearest centroids.
    """
    centroids = jax.lax.stop_gradient(centroids)
    num_clusters = centroids.shape[1]
    valid = _valid_tokens(segment_ids, qn.shape[0], qn.shape[1], qn.dtype)[..., 0]

    def sq_dist(xn):
        onehot = jax.nn.one_hot(assign_clusters(xn, centroids), num_clusters, dtype=xn.dtype)
        nearest = jnp.einsum("bthc,hcd->bthd", onehot, centroids.astype(xn.dtype))
        return jnp.sum(jnp.square(xn - nearest), axis=-1)

    per_token = 0.5 * (sq_dist(qn) + sq_dist(kn)) * valid
    return jnp.sum(per_token) / jnp.maximum(jnp.sum(valid) * qn.shape[2], 1.0)


# --- attention ----------------------------------------------------------------------------------

def resolve_assignment(assignment, causal):
    """``None`` -> ``"argmax"`` when causal, ``"balanced"`` otherwise; validates the pair."""
    if assignment is None:
        return "argmax" if causal else "balanced"
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS} or None, got {assignment!r}")
    if causal and assignment == "balanced":
        raise ValueError(
            "assignment='balanced' cannot be causal: top-k per centroid ranks the whole "
            "sequence, so a future token can evict a past token from its cluster and change "
            "the past token's output. Use assignment='argmax' (the default when causal)")
    return assignment


def _check_options(q, k, v, *, centroids, num_clusters, cluster_size, causal, assignment,
                   shared_qk, local_heads, block_size, segment_ids, softmax, ssmax_s, scale,
                   implementation):
    _, seq_len, heads, head_dim = checks.check_self_attention(
        "routing", q, k, v, causal=causal, softmax=softmax, ssmax_s=ssmax_s, scale=scale,
        segment_ids=segment_ids, implementation=implementation)
    core.check_positive_int("num_clusters", num_clusters)
    core.check_int("local_heads", local_heads, minimum=0)
    if local_heads > heads:
        raise ValueError(f"local_heads must be in [0, heads={heads}], got {local_heads}")
    if not isinstance(shared_qk, bool):
        raise ValueError(f"shared_qk must be a bool, got {shared_qk!r}")
    assignment = resolve_assignment(assignment, causal)
    if local_heads:
        local_lib.check_seq_len(seq_len, block_size)
    routing_heads = heads - local_heads
    expected = (routing_heads, num_clusters, head_dim)
    if getattr(centroids, "shape", None) != expected:
        raise ValueError(f"centroids must be [heads - local_heads, num_clusters, head_dim] = "
                         f"{list(expected)}, got shape {getattr(centroids, 'shape', None)}")
    cluster_size = default_cluster_size(seq_len, num_clusters, cluster_size)
    if routing_heads and assignment == "argmax":
        if not shared_qk:
            raise ValueError(
                "assignment='argmax' needs shared_qk=True: each token is routed once, by its "
                "query, which is also its key (the paper's setting for causal models)")
        if seq_len % cluster_size:
            raise ValueError(f"sequence length {seq_len} is not a multiple of cluster_size="
                             f"{cluster_size}; pad the sequence or choose a cluster size "
                             f"that divides it")
    return assignment, cluster_size


def default_cluster_size(seq_len, num_clusters, cluster_size=None):
    """``cluster_size`` validated against ``seq_len``, defaulting to ``seq_len // num_clusters``."""
    if cluster_size is None:
        if num_clusters > seq_len:
            raise ValueError(f"num_clusters ({num_clusters}) must not exceed the sequence "
                             f"length ({seq_len})")
        return seq_len // num_clusters
    core.check_positive_int("cluster_size", cluster_size)
    if cluster_size > seq_len:
        raise ValueError(f"cluster_size must be in [1, seq_len={seq_len}], got {cluster_size}")
    return cluster_size


def routing_attention(q, k, v, *, centroids, num_clusters, cluster_size=None, causal=True,
                      assignment=None, shared_qk=True, local_heads=0, block_size=64,
                      segment_ids=None, softmax="softmax", ssmax_s=None, scale=None,
                      implementation=None):
    """Routing attention with fixed centroids (update them with ``update_centroids``).

    Args:
      q: ``[B, T, H, D]``; k, v: ``[B, T, K, D]`` with ``H % K == 0`` (repeated for routing).
      centroids: ``[H - local_heads, num_clusters, D]`` unit vectors.
      num_clusters: ``C``.
      cluster_size: ``w``, keys per cluster window; default ``T // C``.
      causal: causal mode (needs ``assignment="argmax"``).
      assignment: ``"argmax"``, ``"balanced"`` or ``None`` (argmax if causal, else balanced).
      shared_qk: keys share the queries' routing (required by argmax).
      local_heads: the first ``local_heads`` heads run ``local_attention(block_size)``.
      block_size: block of the local heads; ``T`` must be a multiple when they exist.
      segment_ids: ``[B, T]`` packed documents, 0 = padding (output 0).
      softmax, ssmax_s, scale, implementation: as in ``dense_attention``; SSMax's ``n_i`` is
        the number of keys query ``i`` sees.

    Returns:
      ``[B, T, H, D]`` in ``q.dtype``.
    """
    assignment, window = _check_options(
        q, k, v, centroids=centroids, num_clusters=num_clusters, cluster_size=cluster_size,
        causal=causal, assignment=assignment, shared_qk=shared_qk, local_heads=local_heads,
        block_size=block_size, segment_ids=segment_ids, softmax=softmax, ssmax_s=ssmax_s,
        scale=scale, implementation=implementation)
    heads, head_dim = q.shape[2], q.shape[3]
    k = core.repeat_kv(k, heads // k.shape[2])
    v = core.repeat_kv(v, heads // v.shape[2])
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    split = lambda s: (None, None) if s is None else (s[:local_heads], s[local_heads:])
    s_local, s_routing = split(ssmax_s)

    outs = []
    if local_heads:
        outs.append(local_lib.local_attention(
            q[:, :, :local_heads], k[:, :, :local_heads], v[:, :, :local_heads],
            block_size=block_size, causal=causal, segment_ids=segment_ids, softmax=softmax,
            ssmax_s=s_local, scale=scale))
    if local_heads < heads:
        qr, kr, vr = (x[:, :, local_heads:] for x in (q, k, v))
        route = _argmax_routing if assignment == "argmax" else _balanced_routing
        out = route(qr, kr, vr, centroids=centroids, window=window, causal=causal,
                    shared_qk=shared_qk, segment_ids=segment_ids, ssmax_s=s_routing,
                    scale=scale)
        outs.append(out.astype(q.dtype))
    return jnp.concatenate(outs, axis=2) if len(outs) > 1 else outs[0]


def _to_bhtd(x):
    return jnp.transpose(x, (0, 2, 1, 3))


def _segments_bht(segment_ids, batch, heads, length):
    if segment_ids is None:
        return jnp.ones((batch, heads, length), jnp.int32)
    return jnp.broadcast_to(segment_ids[:, None, :], (batch, heads, length))


def _ssmax_scale(ssmax_s, mask, dtype):
    """``s_h * log(n_i)`` shaped ``[1, H, ..., 1]`` against logits ``[B, H, ..., keys]``."""
    n_visible = jnp.sum(mask, axis=-1, keepdims=True).astype(dtype)
    s = ssmax_s.astype(dtype).reshape((1, -1) + (1,) * (mask.ndim - 2))
    return s * jnp.log(jnp.maximum(n_visible, 1.0))


def _argmax_routing(q, k, v, *, centroids, window, causal, shared_qk, segment_ids, ssmax_s,
                    scale):
    """Each token joins its nearest centroid and sees the ``window`` nearest members of its
    cluster in position order (causal: the most recent ones, itself included).

    Sorting tokens by (cluster, position) makes every cluster a contiguous run that keeps
    position order, so a query at sorted index ``p`` sees sorted indices ``p - d`` for
    offsets ``d`` in ``[0, window)`` (causal) or ``(-window, window)``, masked to its own
    cluster and document. Probabilities and outputs are laid out by offset ``d``, relative
    to the query: what a query computes, and in which order, depends only on its visible
    keys, so in causal mode later tokens leave its output bit-for-bit unchanged. Cost
    ``O(T * window * D)``, memory ``O(T * window)``.
    """
    del shared_qk  # argmax routes each token once, by its query
    batch, length, heads, head_dim = q.shape
    dtype = core.compute_dtype(q.dtype)
    positions = jnp.arange(length, dtype=jnp.int32)[None, None, :]
    clusters = jnp.transpose(assign_clusters(normalize_for_routing(q), centroids), (0, 2, 1))
    order = jnp.argsort(clusters * length + positions, axis=-1)
    sorted_clusters = jnp.take_along_axis(clusters, order, axis=-1)
    segments = jnp.take_along_axis(_segments_bht(segment_ids, batch, heads, length), order,
                                   axis=-1)

    def sort(x):
        return jnp.take_along_axis(_to_bhtd(x), order[..., None], axis=2).astype(dtype)

    qs, ks, vs = sort(q), sort(k), sort(v)
    offsets = np.arange(0 if causal else 1 - window, window)

    # Logits by chunks of `window` sorted tokens against their neighbour chunks (the
    # local-attention schedule), then re-indexed by offset: slot = p_local + window - d.
    num_chunks = length // window
    schedule = local_lib.local_block_schedule(num_chunks, causal=causal)
    neighbours = np.maximum(schedule, 0)

    def chunked(x):
        return x.reshape(batch, heads, num_chunks, window, *x.shape[3:])

    keys = chunked(ks)[:, :, neighbours].reshape(batch, heads, num_chunks, -1, head_dim)
    logits = jnp.einsum("bhnqd,bhnsd->bhnqs", chunked(qs), keys,
                        preferred_element_type=dtype) * jnp.asarray(scale, dtype)
    slots = np.arange(window)[:, None] + window - offsets[None, :]
    logits = jnp.take_along_axis(logits, jnp.asarray(slots)[None, None, None], axis=-1)
    logits = logits.reshape(batch, heads, length, offsets.size)

    # [B, H, T, offsets]: the key at sorted index p - d is in the query's cluster and document.
    source = np.arange(length)[:, None] - offsets[None, :]
    in_range = jnp.asarray((source >= 0) & (source < length))[None, None]
    at_source = lambda x: jnp.take(x, jnp.asarray(np.clip(source, 0, length - 1)), axis=-1)
    mask = (in_range & (at_source(sorted_clusters) == sorted_clusters[..., None])
            & (at_source(segments) == segments[..., None]) & (segments != 0)[..., None])
    if ssmax_s is not None:
        logits = logits * _ssmax_scale(ssmax_s, mask, dtype)
    probs = core.masked_softmax(logits, mask)

    # Sum over offsets in a fixed order, so a query's output is independent of the rest.
    def accumulate(acc, step):
        d, p = step
        return acc + p[..., None] * jnp.roll(vs, d, axis=2), None

    out_sorted, _ = jax.lax.scan(accumulate, jnp.zeros_like(vs),
                                 (jnp.asarray(offsets), jnp.moveaxis(probs, -1, 0)))
    unsort = jnp.argsort(order, axis=-1)
    out = jnp.take_along_axis(out_sorted, unsort[..., None], axis=2)
    return jnp.transpose(out, (0, 2, 1, 3))


def _balanced_routing(q, k, v, *, centroids, window, causal, shared_qk, segment_ids, ssmax_s,
                      scale):
    """The paper's balanced clusters: centroid ``c`` takes the ``window`` top-scoring queries
    ``Q_c`` and keys ``K_c``. Query ``i`` attends to the union of ``K_c`` over its clusters,
    each key once: a (query, key) pair already met in an earlier cluster is masked, and the
    clusters' partial softmaxes are merged by their log-sum-exp.
    """
    del causal  # balanced routing is bidirectional (checked up front)
    batch, length, heads, head_dim = q.shape
    num_clusters = centroids.shape[1]
    dtype = core.compute_dtype(q.dtype)
    segments = _segments_bht(segment_ids, batch, heads, length)
    padding = (segments == 0)[:, :, None, :]

    def members(x):
        scores = jnp.transpose(_cluster_scores(normalize_for_routing(x), centroids), (0, 2, 3, 1))
        scores = jnp.where(padding, -jnp.inf, scores)
        _, idx = jax.lax.top_k(scores, window)          # [B, H, C, w]
        return jnp.sort(idx, axis=-1)

    q_idx = members(q)
    k_idx = q_idx if shared_qk else members(k)

    def gather(x_bht, idx):  # [B, H, T, ...] at [B, H, C, w] -> [B, H, C, w, ...]
        flat = idx.reshape(batch, heads, num_clusters * window)
        if x_bht.ndim == 4:
            out = jnp.take_along_axis(x_bht, flat[..., None], axis=2)
            return out.reshape(batch, heads, num_clusters, window, x_bht.shape[-1])
        out = jnp.take_along_axis(x_bht, flat, axis=2)
        return out.reshape(batch, heads, num_clusters, window, *x_bht.shape[3:])

    def membership(idx):  # bool [B, H, T, C]: token t is in cluster c
        b = jnp.arange(batch)[:, None, None, None]
        h = jnp.arange(heads)[None, :, None, None]
        c = jnp.arange(num_clusters)[None, None, :, None]
        return jnp.zeros((batch, heads, length, num_clusters), dtype).at[b, h, idx, c].set(1.0)

    qc, kc, vc = gather(_to_bhtd(q), q_idx), gather(_to_bhtd(k), k_idx), gather(_to_bhtd(v), k_idx)
    logits = jnp.einsum("bhcqd,bhcsd->bhcqs", qc, kc,
                        preferred_element_type=dtype) * jnp.asarray(scale, dtype)

    q_seg, k_seg = gather(segments, q_idx), gather(segments, k_idx)
    mask = (q_seg[..., :, None] == k_seg[..., None, :]) & (q_seg != 0)[..., :, None]
    # A pair (i, j) counts only in the first cluster holding both i (as a query) and j (as a key).
    q_in, k_in = gather(membership(q_idx), q_idx), gather(membership(k_idx), k_idx)
    earlier = jnp.asarray(np.tril(np.ones((num_clusters, num_clusters)), -1), dtype)
    met_before = jnp.einsum("bhcqe,bhcse,ce->bhcqs", q_in, k_in, earlier) > 0
    mask = mask & ~met_before

    flat_q = q_idx.reshape(batch, heads, num_clusters * window)
    b = jnp.arange(batch)[:, None, None]
    h = jnp.arange(heads)[None, :, None]

    def to_tokens(x, init, op):  # [B, H, C, w, ...] -> per token [B, H, T, ...]
        x = x.reshape(batch, heads, num_clusters * window, *x.shape[4:])
        base = jnp.full((batch, heads, length, *x.shape[3:]), init, x.dtype)
        return getattr(base.at[b, h, flat_q], op)(x)

    if ssmax_s is not None:
        per_token = to_tokens(jnp.sum(mask, axis=-1).astype(dtype), 0.0, "add")
        n_visible = gather(per_token, q_idx)[..., None]
        s = ssmax_s.astype(dtype)[None, :, None, None, None]
        logits = logits * (s * jnp.log(jnp.maximum(n_visible, 1.0)))

    row_max, row_sum, unnorm = core.masked_softmax_stats(logits, mask)
    row_max, row_sum = row_max[..., 0], row_sum[..., 0]
    partial = jnp.einsum("bhcqs,bhcsd->bhcqd", unnorm, vc.astype(dtype))
    seen = row_sum > 0
    token_max = jax.lax.stop_gradient(
        to_tokens(jnp.where(seen, row_max, -jnp.inf), -jnp.inf, "max"))
    token_max = jnp.where(jnp.isfinite(token_max), token_max, 0.0)
    weight = jnp.where(seen, jnp.exp(row_max - gather(token_max, q_idx)), 0.0)
    numerator = to_tokens(weight[..., None] * partial, 0.0, "add")
    denominator = to_tokens(weight * row_sum, 0.0, "add")
    out = numerator / jnp.where(denominator > 0, denominator, 1.0)[..., None]
    return jnp.transpose(out, (0, 2, 1, 3))


# --- registry hooks -----------------------------------------------------------------------------

def init_routing_state(options, *, num_heads, head_dim, key):
    """Centroids for the routing heads of a layer with these ``RoutingOptions``."""
    return init_centroids(key, num_heads - options.local_heads, options.num_clusters, head_dim)


def update_routing_state(q, k, state, options, *, segment_ids=None):
    """``(new_centroids, aux_loss)`` after a training forward pass on ``q``, ``k``.

    ``aux_loss`` is ``commitment_weight * commitment_loss`` at the old centroids.
    """
    local = options.local_heads
    qn = normalize_for_routing(q[:, :, local:])
    if options.shared_qk:
        kn = qn
    else:
        kn = normalize_for_routing(core.repeat_kv(k, q.shape[2] // k.shape[2])[:, :, local:])
    new_state = update_centroids(state, qn, kn, segment_ids=segment_ids, decay=options.decay)
    aux = options.commitment_weight * commitment_loss(qn, kn, state, segment_ids=segment_ids)
    return new_state, aux


def apply_routing(q, k, v, *, state, segment_ids=None, ssmax_s=None, implementation=None,
                  decay, commitment_weight, **options):
    """The registry's entry: ``state`` holds the centroids; ``decay`` and
    ``commitment_weight`` belong to ``update_routing_state``."""
    del decay, commitment_weight
    return routing_attention(q, k, v, centroids=state, segment_ids=segment_ids,
                             ssmax_s=ssmax_s, implementation=implementation, **options)


@dataclasses.dataclass(frozen=True)
class RoutingOptions(registry.Options):
    """Options of routing attention (kind ``"routing"``); see ``routing_attention``.

    ``decay`` (k-means EMA) and ``commitment_weight`` (auxiliary loss) act in the training
    update of the centroids, the rest in the attention itself.
    """

    causal: bool = True
    num_clusters: int = 4
    cluster_size: int | None = None
    assignment: str | None = None
    shared_qk: bool = True
    local_heads: int = 0
    block_size: int = 64
    softmax: str = "softmax"
    decay: float = 0.999
    commitment_weight: float = 1e-4

    def validate(self):
        core.check_causal(self.causal)
        core.check_positive_int("num_clusters", self.num_clusters)
        if self.cluster_size is not None:
            core.check_positive_int("cluster_size", self.cluster_size)
        assignment = resolve_assignment(self.assignment, self.causal)
        if not isinstance(self.shared_qk, bool):
            raise ValueError(f"shared_qk must be a bool, got {self.shared_qk!r}")
        if assignment == "argmax" and not self.shared_qk:
            raise ValueError("shared_qk must be True with assignment='argmax' (each token is "
                             "routed once, by its query, which is also its key)")
        core.check_int("local_heads", self.local_heads, minimum=0)
        core.check_positive_int("block_size", self.block_size)
        core.check_softmax(self.softmax)
        if not (isinstance(self.decay, float) and 0.0 <= self.decay < 1.0):
            raise ValueError(f"decay must be a float in [0, 1), got {self.decay!r}")
        if not (isinstance(self.commitment_weight, (int, float))
                and not isinstance(self.commitment_weight, bool)
                and self.commitment_weight >= 0):
            raise ValueError(f"commitment_weight must be a non-negative float, got "
                             f"{self.commitment_weight!r}")

    def check_seq_len(self, seq_len):
        super().check_seq_len(seq_len)
        window = default_cluster_size(seq_len, self.num_clusters, self.cluster_size)
        if resolve_assignment(self.assignment, self.causal) == "argmax" and seq_len % window:
            raise ValueError(f"sequence length {seq_len} is not a multiple of cluster_size="
                             f"{window}; choose num_clusters or cluster_size to divide it")
        if self.local_heads:
            local_lib.check_seq_len(seq_len, self.block_size)


registry.register(
    "routing",
    apply_routing,
    RoutingOptions,
    doc="Routing attention: online k-means clusters, attention inside each cluster.",
    init_state=init_routing_state,
    update_state=update_routing_state,
)
