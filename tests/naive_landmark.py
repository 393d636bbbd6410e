"""Independent landmark-attention references for the tests (no jaxattn code).

Both follow the paper's definition (Mohtashami & Jaggi 2023, arXiv 2305.16300, eqs. 1-4) as
written, not its closed form. Blocks hold ``block_size`` tokens, the last one a landmark;
``p_j`` is the landmark of token ``j``'s block. For query ``i`` and each key ``j`` it sees:

- eq. (2): ``G_ij = p_j`` (``j`` normal), ``-1`` (``j = p_i``, ignored), ``p_i`` (other landmark);
- eq. (1), (3): ``S_ij = exp(z_ij) / sum_{y: G_iy = G_ij} exp(z_iy)``;
- eq. (4): ``AttW_ij = 0`` (``j`` a landmark), ``S_ij`` (``G_ij = p_i``), ``S_ij * S_{i, p_j}``
  (otherwise).

A query sees keys ``j <= i`` (causal, else all) of its own segment (id 0 = padding sees
nothing). SSMax multiplies all of query ``i``'s logits by ``s_h * log(n_i)``, ``n_i`` the size of
the query's own group ``{j : G_ij = p_i}``.

``naive_landmark_attention`` loops over queries, keys and groups in float64 NumPy;
``naive_landmark_attention_jnp`` is the same formula over an explicit group matrix, for autodiff.
"""

import jax
import jax.numpy as jnp
import numpy as np

INVISIBLE = -2
IGNORED = -1


def landmark_of(j, block_size):
    """``p_j``: the index of the landmark closing ``j``'s block."""
    return (j // block_size) * block_size + block_size - 1


def is_landmark(j, block_size):
    return j % block_size == block_size - 1


def visible_keys(i, length, *, causal, segment_ids=None):
    """Keys query ``i`` of one batch row sees, as a list of indices."""
    keys = []
    for j in range(length):
        if causal and j > i:
            continue
        if segment_ids is not None and (segment_ids[i] == 0 or segment_ids[j] != segment_ids[i]):
            continue
        keys.append(j)
    return keys


def group_of(i, j, block_size):
    """``G_ij`` of eq. (2)."""
    if not is_landmark(j, block_size):
        return landmark_of(j, block_size)
    if j == landmark_of(i, block_size):
        return IGNORED
    return landmark_of(i, block_size)


def naive_groups(batch, length, *, block_size, causal=True, segment_ids=None):
    """Int ``[batch, length, length]``: ``G_ij`` for visible keys, ``INVISIBLE`` elsewhere."""
    groups = np.full((batch, length, length), INVISIBLE, dtype=np.int64)
    for b in range(batch):
        ids = None if segment_ids is None else np.asarray(segment_ids)[b]
        for i in range(length):
            for j in visible_keys(i, length, causal=causal, segment_ids=ids):
                groups[b, i, j] = group_of(i, j, block_size)
    return groups


def naive_landmark_attention(q, k, v, *, block_size, causal=True, segment_ids=None,
                             softmax="softmax", ssmax_s=None, scale=None):
    """Float64 ``[B, T, H, D]``; queries with no visible key output zeros."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    batch, length, heads, head_dim = q.shape
    group_size = heads // k.shape[2]
    scale = 1.0 / np.sqrt(head_dim) if scale is None else float(scale)
    out = np.zeros_like(q)
    for b in range(batch):
        ids = None if segment_ids is None else np.asarray(segment_ids)[b]
        for i in range(length):
            keys = visible_keys(i, length, causal=causal, segment_ids=ids)
            groups = {j: group_of(i, j, block_size) for j in keys}
            counted = [j for j in keys if groups[j] != IGNORED]
            own_group = landmark_of(i, block_size)
            n_i = sum(groups[j] == own_group for j in counted)
            if not counted:
                continue
            for h in range(heads):
                kv_head = h // group_size
                z = {j: float(q[b, i, h] @ k[b, j, kv_head]) * scale for j in counted}
                if softmax == "ssmax":
                    factor = float(np.asarray(ssmax_s, dtype=np.float64)[h]) * np.log(n_i)
                    z = {j: zj * factor for j, zj in z.items()}
                probs = {}
                for j in counted:
                    members = [y for y in counted if groups[y] == groups[j]]
                    top = max(z[y] for y in members)
                    probs[j] = np.exp(z[j] - top) / sum(np.exp(z[y] - top) for y in members)
                for j in counted:
                    if is_landmark(j, block_size):
                        weight = 0.0
                    elif groups[j] == own_group:
                        weight = probs[j]
                    else:
                        weight = probs[j] * probs.get(landmark_of(j, block_size), 0.0)
                    out[b, i, h] += weight * v[b, j, kv_head]
    return out


def naive_landmark_attention_jnp(q, k, v, groups, *, block_size, ssmax_s=None, scale=None):
    """Eqs. 1-4 over ``groups`` (from ``naive_groups``) in jnp, ``O(T^3)`` memory.

    ``ssmax_s`` ``[H]`` turns on SSMax. Rows with no visible key output zeros.
    """
    heads, head_dim = q.shape[2], q.shape[3]
    length = q.shape[1]
    group_size = heads // k.shape[2]
    k = jnp.repeat(k, group_size, axis=2)
    v = jnp.repeat(v, group_size, axis=2)
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    positions = np.arange(length)
    landmarks = landmark_of(positions, block_size)
    counted = groups >= 0
    in_own_group = groups == landmarks[None, :, None]
    same = (counted[:, :, :, None] & counted[:, :, None, :]
            & (groups[:, :, :, None] == groups[:, :, None, :]))

    z = jnp.einsum("bihd,bjhd->bhij", q, k) * scale
    if ssmax_s is not None:
        n = jnp.sum(in_own_group, axis=-1).astype(z.dtype)
        z = z * ssmax_s[None, :, None, None] * jnp.log(jnp.maximum(n, 1.0))[:, None, :, None]

    # members[b, h, i, j, y] = z_iy for y in j's group.
    members = jnp.where(same[:, None], z[:, :, :, None, :], -jnp.inf)
    top = jax.lax.stop_gradient(jnp.max(members, axis=-1))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    denominator = jnp.sum(jnp.exp(members - top[..., None]), axis=-1)
    numerator = jnp.exp(jnp.where(counted[:, None], z - top, -jnp.inf))
    probs = numerator / jnp.where(denominator > 0, denominator, 1.0)

    gate = probs[:, :, :, landmarks]  # S_{i, p_j}
    weights = jnp.where(in_own_group[:, None], probs, probs * gate)
    weights = jnp.where(is_landmark(positions, block_size)[None, None, None, :], 0.0, weights)
    return jnp.einsum("bhij,bjhd->bihd", weights, v)
