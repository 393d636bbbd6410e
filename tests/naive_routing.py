"""Independent naive references for routing attention (Routing Transformer), no jaxattn code.

``naive_routing_attention`` loops over batch, head and query in float64 NumPy: for every query
it lists the keys it may see (``visible_keys``, built from the cluster definitions), then takes
a softmax (or SSMax) over just those. Heads ``h < local_heads`` use block-local attention.
``routing_mask`` is the same rule as an explicit ``[B, H, T, T]`` array, for autodiff with
``tests.naive_attention.naive_masked_attention_jnp`` with the cluster structure held fixed. ``naive_update_centroids`` and ``naive_commitment_loss`` follow the
online k-means definitions token by token.

Routing vectors are computed in float64 and rounded to float32, as the package returns them;
scores against the (float32) centroids are then taken in float64.
"""

import numpy as np

from tests.naive_attention import attend_row

ROUTING_EPS = 1e-6


def normalize_for_routing(x):
    """``(x - mean) / sqrt(var + 1e-6) / sqrt(D)`` over the last axis, rounded to float32."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out = (x - mean) / np.sqrt(var + ROUTING_EPS) / np.sqrt(x.shape[-1])
    return out.astype(np.float32)


def repeat_kv(x, heads):
    """``[B, T, K, D]`` → ``[B, T, heads, D]``: head ``h`` reads kv head ``h // (heads // K)``."""
    x = np.asarray(x)
    group = heads // x.shape[2]
    return x[:, :, np.arange(heads) // group]


def cluster_scores(xn, centroids):
    """Float64 ``[B, T, H_r, C]``: ``xn[b, t, h] · centroids[h, c]``."""
    xn = np.asarray(xn, dtype=np.float64)
    centroids = np.asarray(centroids, dtype=np.float64)
    batch, length, heads, _ = xn.shape
    scores = np.zeros((batch, length, heads, centroids.shape[1]))
    for b in range(batch):
        for t in range(length):
            for h in range(heads):
                for c in range(centroids.shape[1]):
                    scores[b, t, h, c] = float(np.dot(xn[b, t, h], centroids[h, c]))
    return scores


def assign_clusters(xn, centroids):
    """Int ``[B, T, H_r]``: the centroid of largest dot product (first one on ties)."""
    return np.argmax(cluster_scores(xn, centroids), axis=-1).astype(np.int32)


def argmax_margin(xn, centroids):
    """Smallest gap between the best and second-best centroid score over all tokens and heads."""
    scores = cluster_scores(xn, centroids)
    if scores.shape[-1] < 2:
        return np.inf
    top = np.sort(scores, axis=-1)
    return float(np.min(top[..., -1] - top[..., -2]))


def _valid(segment_ids, batch, length):
    if segment_ids is None:
        return np.ones((batch, length), dtype=bool)
    return np.asarray(segment_ids) != 0


def balanced_members(scores, valid, size):
    """Bool ``[C, T]`` for one (batch, head): the ``size`` tokens of largest score per centroid.

    ``scores`` is ``[T, C]``; tokens with ``valid`` False score ``-inf`` (and so come last).
    """
    length, num_clusters = scores.shape
    members = np.zeros((num_clusters, length), dtype=bool)
    for c in range(num_clusters):
        ranked = sorted(range(length), key=lambda t: -scores[t, c] if valid[t] else np.inf)
        members[c, ranked[:size]] = True
    return members


def balanced_margin(xn, centroids, size, segment_ids=None):
    """Smallest gap between the ``size``-th and next score of a centroid (valid tokens only)."""
    scores = cluster_scores(xn, centroids)
    batch, length = scores.shape[:2]
    valid = _valid(segment_ids, batch, length)
    margin = np.inf
    for b in range(batch):
        if valid[b].sum() <= size:
            continue
        for h in range(scores.shape[2]):
            for c in range(scores.shape[3]):
                ordered = np.sort(scores[b, valid[b], h, c])[::-1]
                margin = min(margin, float(ordered[size - 1] - ordered[size]))
    return margin


def routing_margin(q, k, centroids, *, num_clusters, cluster_size=None, causal=True, assignment=None,
                   shared_qk=True, local_heads=0, segment_ids=None):
    """How far the routing decisions are from a tie (a float32 rounding could flip a tie)."""
    heads, length = q.shape[2], q.shape[1]
    size = length // num_clusters if cluster_size is None else cluster_size
    assignment = assignment or ("argmax" if causal else "balanced")
    qn = normalize_for_routing(np.asarray(q)[:, :, local_heads:])
    kn = normalize_for_routing(repeat_kv(k, heads)[:, :, local_heads:])
    vectors = [qn] if shared_qk else [qn, kn]
    if assignment == "argmax":
        return min(argmax_margin(x, centroids) for x in vectors)
    return min(balanced_margin(x, centroids, size, segment_ids) for x in vectors)


def argmax_ranks(clusters):
    """``rank[i]`` = number of tokens ``l < i`` with ``clusters[l] == clusters[i]``."""
    ranks = np.zeros(len(clusters), dtype=np.int64)
    for i in range(len(clusters)):
        ranks[i] = sum(1 for l in range(i) if clusters[l] == clusters[i])
    return ranks


def local_visible_keys(i, length, *, block_size, causal, seg):
    """Keys of block-local attention: key blocks ``b-1, b`` (causal, ``j <= i``) or ``b-1..b+1``."""
    block = i // block_size
    highest = block if causal else block + 1
    keys = []
    for j in range(length):
        if not block - 1 <= j // block_size <= highest:
            continue
        if causal and j > i:
            continue
        if seg is not None and (seg[i] == 0 or seg[j] != seg[i]):
            continue
        keys.append(j)
    return keys


def _argmax_visible_keys(i, q_clusters, q_ranks, k_clusters, k_ranks, *, size, causal, seg):
    keys = []
    for j in range(len(k_clusters)):
        if k_clusters[j] != q_clusters[i]:
            continue
        if seg is not None and (seg[i] == 0 or seg[j] != seg[i]):
            continue
        gap = q_ranks[i] - k_ranks[j]
        if (0 <= gap < size) if causal else (abs(gap) < size):
            keys.append(j)
    return keys


def _balanced_visible_keys(i, q_members, k_members, *, causal, seg):
    keys = set()
    for c in range(q_members.shape[0]):
        if q_members[c, i]:
            keys.update(int(j) for j in np.flatnonzero(k_members[c]))
    visible = []
    for j in sorted(keys):
        if seg is not None and (seg[i] == 0 or seg[j] != seg[i]):
            continue
        if causal and j > i:
            continue
        visible.append(j)
    return visible


def visible_key_lists(q, k, *, centroids, num_clusters, cluster_size=None, causal=True, assignment=None,
                      shared_qk=True, local_heads=0, block_size=64, segment_ids=None):
    """``keys[b][h][i]``: the list of keys query ``i`` of head ``h`` sees, from the definitions.

    Argmax: query ``i`` in cluster ``c_i`` at rank ``r_i`` (earlier tokens of its cluster) sees
    key ``j`` of the same cluster whose rank ``r_j`` among the keys of that cluster satisfies
    ``0 <= r_i - r_j < w`` (causal) or ``|r_i - r_j| < w``. With ``shared_qk`` the keys take the
    queries' clusters, so ``r_j`` is ``j``'s own query rank. Balanced: the union of the key sets
    of the clusters whose top-``w`` queries hold ``i``.

    ``assignment="balanced"`` with ``causal=True`` is the paper's top-k routing under a causal
    mask (which the package refuses, since it leaks the future); it is here to show the leak.
    """
    q = np.asarray(q)
    batch, length, heads, _ = q.shape
    size = length // num_clusters if cluster_size is None else cluster_size
    assignment = assignment or ("argmax" if causal else "balanced")
    qn = normalize_for_routing(q[:, :, local_heads:])
    kn = normalize_for_routing(repeat_kv(k, heads)[:, :, local_heads:])
    q_scores = cluster_scores(qn, centroids)
    k_scores = q_scores if shared_qk else cluster_scores(kn, centroids)
    valid = _valid(segment_ids, batch, length)
    keys = [[None] * heads for _ in range(batch)]
    for b in range(batch):
        seg = None if segment_ids is None else np.asarray(segment_ids)[b]
        for h in range(heads):
            if h < local_heads:
                keys[b][h] = [local_visible_keys(i, length, block_size=block_size, causal=causal, seg=seg)
                              for i in range(length)]
                continue
            r = h - local_heads
            if assignment == "argmax":
                q_clusters = np.argmax(q_scores[b, :, r], axis=-1)
                k_clusters = np.argmax(k_scores[b, :, r], axis=-1)
                q_ranks, k_ranks = argmax_ranks(q_clusters), argmax_ranks(k_clusters)
                keys[b][h] = [_argmax_visible_keys(i, q_clusters, q_ranks, k_clusters, k_ranks, size=size,
                                                   causal=causal, seg=seg)
                              for i in range(length)]
            else:
                q_members = balanced_members(q_scores[b, :, r], valid[b], size)
                k_members = balanced_members(k_scores[b, :, r], valid[b], size)
                keys[b][h] = [_balanced_visible_keys(i, q_members, k_members, causal=causal, seg=seg)
                              for i in range(length)]
    return keys


def routing_mask(q, k, **routing):
    """Bool ``[B, H, T, T]`` with ``mask[b, h, i, j]`` iff key ``j`` is in ``visible_key_lists``."""
    q = np.asarray(q)
    batch, length, heads, _ = q.shape
    keys = visible_key_lists(q, k, **routing)
    mask = np.zeros((batch, heads, length, length), dtype=bool)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                mask[b, h, i, keys[b][h][i]] = True
    return mask


def naive_routing_attention(q, k, v, *, softmax="softmax", ssmax_s=None, scale=None, **routing):
    """Float64 ``[B, T, H, D]`` routing attention; a query that sees no key outputs zeros.

    ``routing`` holds ``centroids, num_clusters, cluster_size, causal, assignment, shared_qk,
    local_heads, block_size, segment_ids`` as in ``visible_key_lists``.
    """
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    batch, length, heads, head_dim = q.shape
    k_rep, v_rep = repeat_kv(k, heads), repeat_kv(v, heads)
    scale = 1.0 / np.sqrt(head_dim) if scale is None else float(scale)
    keys = visible_key_lists(q, k, **routing)
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                visible = keys[b][h][i]
                if not visible:
                    continue
                out[b, i, h] = attend_row(q[b, i, h], k_rep[b, visible, h], v_rep[b, visible, h],
                                          scale=scale, softmax=softmax, ssmax_s=ssmax_s, head=h)
    return out


def naive_update_centroids(centroids, qn, kn, *, segment_ids=None, decay=0.999):
    """One online k-means step, token by token, in float64.

    For each head and cluster, the assigned valid query and key vectors are averaged; the
    centroid becomes ``decay * mu + (1 - decay) * mean``, L2-normalised. A cluster with no
    vector keeps its centroid.
    """
    centroids = np.asarray(centroids, dtype=np.float64)
    qn, kn = np.asarray(qn, dtype=np.float64), np.asarray(kn, dtype=np.float64)
    batch, length, heads, _ = qn.shape
    valid = _valid(segment_ids, batch, length)
    q_clusters, k_clusters = assign_clusters(qn, centroids), assign_clusters(kn, centroids)
    new = centroids.copy()
    for h in range(heads):
        for c in range(centroids.shape[1]):
            members = []
            for b in range(batch):
                for t in range(length):
                    if not valid[b, t]:
                        continue
                    if q_clusters[b, t, h] == c:
                        members.append(qn[b, t, h])
                    if k_clusters[b, t, h] == c:
                        members.append(kn[b, t, h])
            if not members:
                continue
            mean = np.mean(members, axis=0)
            mu = decay * centroids[h, c] + (1.0 - decay) * mean
            new[h, c] = mu / np.linalg.norm(mu)
    return new


def naive_commitment_loss(qn, kn, centroids, *, segment_ids=None):
    """Mean over valid tokens and heads of ``(|qn - mu_q|^2 + |kn - mu_k|^2) / 2``, in float64."""
    centroids = np.asarray(centroids, dtype=np.float64)
    qn, kn = np.asarray(qn, dtype=np.float64), np.asarray(kn, dtype=np.float64)
    batch, length, heads, _ = qn.shape
    valid = _valid(segment_ids, batch, length)
    q_clusters, k_clusters = assign_clusters(qn, centroids), assign_clusters(kn, centroids)
    terms = []
    for b in range(batch):
        for t in range(length):
            if not valid[b, t]:
                continue
            for h in range(heads):
                dq = qn[b, t, h] - centroids[h, q_clusters[b, t, h]]
                dk = kn[b, t, h] - centroids[h, k_clusters[b, t, h]]
                terms.append((dq @ dq + dk @ dk) / 2.0)
    return float(np.mean(terms))
