"""Independent float64 reference for LSG attention (no jaxattn code).

``naive_lsg`` loops over batch, head and query in NumPy: for each query it lists the keys it
sees (``visible_keys``: global positions, local positions, compressed tokens), builds every
compressed key/value vector from its member tokens (``compressed_tokens``, written per sparsity
type from its definition), and takes a softmax (or SSMax) over just those keys.
``naive_lsg_jnp`` is the same rule as explicit masks plus a jnp formula, for autodiff with the
discrete choices (norm ranking, lsh buckets) held fixed.

Rules (the package's documented ones): the first ``G`` positions are global tokens whose
segment ids are ignored; a global key is seen by every non-padding query; a bidirectional
global query sees all globals and all non-padding ordinary keys, a causal one the globals
``j <= i``; an ordinary query sees ordinary keys of its own non-zero segment, local blocks
``b-1..b+1`` (``b-1, b`` and ``j <= i`` when causal) and the ``S`` compressed tokens left (and
right, bidirectional) of the local window; a compressed token has the segment id its
non-padding members share, else it is masked. ``N <= 2 * block_size`` ordinary tokens: dense.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


NORM_BITS = 12


def rounded(norm):
    """A norm at ``NORM_BITS`` significant bits (half to even): LSG compares norms so."""
    mantissa, exponent = np.frexp(norm)
    return np.ldexp(np.round(mantissa * 2.0**NORM_BITS), exponent - NORM_BITS)


def norm_chunk(block_size, sparsity_factor, sparse_block_size):
    """Compressed tokens per window for ``norm`` and ``lsh`` (window: ``f`` times as many tokens)."""
    step = block_size // sparsity_factor
    return math.gcd(step, max(1, min(block_size, sparse_block_size) // sparsity_factor))


def lsh_rotations(seed, heads, head_dim, chunk):
    """Float64 ``[H, D, ceil(chunk/2)]`` random projections, drawn in float32 from ``PRNGKey(seed)``."""
    shape = (heads, head_dim, -(-chunk // 2))
    with jax.ensure_compile_time_eval():
        return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32), np.float64)


def _shared_segment(seg, members):
    ids = {int(seg[j]) for j in members}
    return ids.pop() if len(ids) == 1 else 0


def compressed_tokens(k_ord, seg_ord, head, *, sparsity_type, block_size, sparsity_factor,
                      sparse_block_size, lsh_seed=0, rotations=None):
    """Compressed tokens of one batch element and head, in order.

    ``k_ord``: float64 ``[N, D]`` keys of this head; ``seg_ord``: ``[N]``. Each entry is a dict
    with ``members`` (ordinary indices), ``kind`` (``"mean"``, ``"pick"`` or ``"bos"``) and
    ``segment`` (0 = masked).
    """
    n, f, b = len(seg_ord), sparsity_factor, block_size
    tokens = []
    if sparsity_type in ("pooling", "bos_pooling"):
        for c in range(n // f):
            members = [j for j in range(c * f, c * f + f) if seg_ord[j] != 0]
            kind = "mean" if sparsity_type == "pooling" else "bos"
            tokens.append(dict(members=members, kind=kind, segment=_shared_segment(seg_ord, members)))
    elif sparsity_type == "stride":
        for c in range(n // f):
            j = c * f + head % f
            tokens.append(dict(members=[j], kind="pick", segment=int(seg_ord[j])))
    elif sparsity_type == "block_stride":
        step = b // f
        for c in range(n // f):
            j = (c // step) * b + (head * step) % b + c % step
            tokens.append(dict(members=[j], kind="pick", segment=int(seg_ord[j])))
    elif sparsity_type == "norm":
        chunk = norm_chunk(b, f, sparse_block_size)
        window = f * chunk
        for w in range(n // window):
            span = range(w * window, (w + 1) * window)
            ranked = sorted(span, key=lambda j: (seg_ord[j] == 0, -rounded(np.linalg.norm(k_ord[j])),
                                                 j))
            for j in sorted(ranked[:chunk]):
                tokens.append(dict(members=[j], kind="pick", segment=int(seg_ord[j])))
    elif sparsity_type == "lsh":
        chunk = norm_chunk(b, f, sparse_block_size)
        window = f * chunk
        r = rotations[head]
        for w in range(n // window):
            buckets = [[] for _ in range(chunk)]
            for j in range(w * window, (w + 1) * window):
                if seg_ord[j] == 0:
                    continue
                p = k_ord[j] @ r
                buckets[int(np.argmax(np.concatenate([p, -p])[:chunk]))].append(j)
            for members in buckets:
                tokens.append(dict(members=members, kind="mean", segment=_shared_segment(seg_ord, members)))
    elif sparsity_type != "none":
        raise ValueError(sparsity_type)
    return tokens


def visible_keys(i, seg, compressed, *, num_global, block_size, sparsity_factor, sparse_block_size,
                 sparsity_type, causal):
    """Keys of query ``i``: a list of ``("token", j)`` and ``("compressed", c)``."""
    length, g = len(seg), num_global
    n = length - g
    if i < g:
        return [("token", j) for j in range(length)
                if not (causal and j > i) and (j < g or seg[j] != 0)]
    if seg[i] == 0:
        return []
    if n <= 2 * block_size:
        return [("token", j) for j in range(length)
                if not (causal and j > i) and (j < g or seg[j] == seg[i])]
    keys = [("token", j) for j in range(g)]
    qn = i - g
    qb = qn // block_size
    for m in range(n):
        kb = m // block_size
        if not (qb - 1 <= kb <= (qb if causal else qb + 1)):
            continue
        if causal and m > qn:
            continue
        if seg[g + m] == seg[i]:
            keys.append(("token", g + m))
    if sparsity_type != "none":
        step = block_size // sparsity_factor
        s = sparse_block_size
        ranges = [range((qb - 1) * step - s, (qb - 1) * step)]
        if not causal:
            ranges.append(range((qb + 2) * step, (qb + 2) * step + s))
        for r in ranges:
            for c in r:
                if 0 <= c < len(compressed) and compressed[c]["segment"] == seg[i]:
                    keys.append(("compressed", c))
    return keys


def _setup(q, k, v, segment_ids, num_global):
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    batch, length, heads, head_dim = q.shape
    k = k[:, :, np.arange(heads) // (heads // k.shape[2])]
    v = v[:, :, np.arange(heads) // (heads // v.shape[2])]
    seg = np.ones((batch, length), np.int64) if segment_ids is None else np.asarray(segment_ids)
    return q, k, v, seg


def _plan(k, seg, *, num_global, block_size, sparsity_factor, sparse_block_size, sparsity_type,
          causal, lsh_seed):
    """Per (batch, head): the compressed tokens and every query's key list."""
    batch, length, heads, head_dim = k.shape
    g = num_global
    rotations = None
    if sparsity_type == "lsh":
        rotations = lsh_rotations(lsh_seed, heads, head_dim,
                                  norm_chunk(block_size, sparsity_factor, sparse_block_size))
    plan = {}
    for b in range(batch):
        for h in range(heads):
            compressed = compressed_tokens(
                k[b, g:, h], seg[b, g:], h, sparsity_type=sparsity_type, block_size=block_size,
                sparsity_factor=sparsity_factor, sparse_block_size=sparse_block_size,
                lsh_seed=lsh_seed, rotations=rotations)
            keys = [visible_keys(i, seg[b], compressed, num_global=g, block_size=block_size,
                                 sparsity_factor=sparsity_factor, sparse_block_size=sparse_block_size,
                                 sparsity_type=sparsity_type, causal=causal)
                    for i in range(length)]
            plan[b, h] = (compressed, keys)
    return plan


def naive_lsg(q, k, v, *, block_size, sparse_block_size, sparsity_factor, sparsity_type,
              num_global_tokens, causal, segment_ids=None, softmax="softmax", ssmax_s=None,
              scale=None, lsh_seed=0):
    """Float64 ``[B, T, H, D]`` LSG attention; a query with no visible key outputs zeros."""
    q, k, v, seg = _setup(q, k, v, segment_ids, num_global_tokens)
    batch, length, heads, head_dim = q.shape
    g = num_global_tokens
    scale = 1.0 / np.sqrt(head_dim) if scale is None else float(scale)
    plan = _plan(k, seg, num_global=g, block_size=block_size, sparsity_factor=sparsity_factor,
                 sparse_block_size=sparse_block_size, sparsity_type=sparsity_type, causal=causal,
                 lsh_seed=lsh_seed)
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            compressed, key_lists = plan[b, h]
            k_ord, v_ord = k[b, g:, h], v[b, g:, h]
            q_bos = q[b, g, h] if seg[b, g] != 0 else np.zeros(head_dim)
            vectors = []
            for token in compressed:
                members = token["members"]
                if not members:
                    vectors.append((np.zeros(head_dim), np.zeros(head_dim)))
                    continue
                if token["kind"] == "bos":
                    z = k_ord[members] @ q_bos * scale
                    w = np.exp(z - z.max())
                    w /= w.sum()
                else:
                    w = np.full(len(members), 1.0 / len(members))
                vectors.append((w @ k_ord[members], w @ v_ord[members]))
            for i in range(length):
                keys = key_lists[i]
                if not keys:
                    continue
                ks = np.stack([k[b, j, h] if kind == "token" else vectors[j][0] for kind, j in keys])
                vs = np.stack([v[b, j, h] if kind == "token" else vectors[j][1] for kind, j in keys])
                z = ks @ q[b, i, h] * scale
                if softmax == "ssmax":
                    z = z * float(np.asarray(ssmax_s, np.float64)[h]) * np.log(len(keys))
                p = np.exp(z - z.max())
                p /= p.sum()
                out[b, i, h] = p @ vs
    return out


def naive_lsg_jnp(q, k, v, *, block_size, sparse_block_size, sparsity_factor, sparsity_type,
                  num_global_tokens, causal, segment_ids=None, ssmax_s=None, scale=None, lsh_seed=0,
                  plan_keys=None):
    """The same attention as a jnp formula over explicit masks (differentiable in q, k, v, s).

    Which keys each query sees and which tokens each compressed token summarises come from
    the NumPy plan, computed from the values ``plan_keys`` (default ``k``; pass them when
    ``k`` is traced); the weights and the attention are jnp.
    """
    plan_keys = k if plan_keys is None else plan_keys
    _, k_np, _, seg = _setup(np.zeros(q.shape), plan_keys, plan_keys, segment_ids,
                             num_global_tokens)
    batch, length, heads, head_dim = q.shape
    g = num_global_tokens
    n = length - g
    scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
    plan = _plan(k_np, seg, num_global=g, block_size=block_size, sparsity_factor=sparsity_factor,
                 sparse_block_size=sparse_block_size, sparsity_type=sparsity_type, causal=causal,
                 lsh_seed=lsh_seed)
    num_comp = max(1, max(len(plan[b, h][0]) for b in range(batch) for h in range(heads)))
    tok_mask = np.zeros((batch, heads, length, length), bool)
    comp_mask = np.zeros((batch, heads, length, num_comp), bool)
    members = np.zeros((batch, heads, num_comp, n), bool)
    for (b, h), (compressed, key_lists) in plan.items():
        for c, token in enumerate(compressed):
            members[b, h, c, token["members"]] = True
        for i, keys in enumerate(key_lists):
            for kind, j in keys:
                (tok_mask if kind == "token" else comp_mask)[b, h, i, j] = True
    group = heads // k.shape[2]
    k = jnp.repeat(k, group, axis=2)
    v = jnp.repeat(v, group, axis=2)
    k_ord, v_ord = k[:, g:], v[:, g:]
    members = jnp.asarray(members)
    if sparsity_type == "bos_pooling":
        q_bos = jnp.where(jnp.asarray(seg[:, g] != 0)[:, None, None], q[:, g], 0.0)
        z = jnp.einsum("bhd,bnhd->bhn", q_bos, k_ord)[:, :, None, :] * scale
        z = jnp.where(members, z, -1e30)
        e = jnp.where(members, jnp.exp(z - jnp.max(z, axis=-1, keepdims=True)), 0.0)
    else:
        e = members.astype(k.dtype)
    total = jnp.sum(e, axis=-1, keepdims=True)
    weights = e / jnp.where(total > 0, total, 1.0)
    ck = jnp.einsum("bhcn,bnhd->bchd", weights, k_ord)
    cv = jnp.einsum("bhcn,bnhd->bchd", weights, v_ord)
    keys = jnp.concatenate([k, ck], axis=1)
    values = jnp.concatenate([v, cv], axis=1)
    mask = jnp.asarray(np.concatenate([tok_mask, comp_mask], axis=-1))
    z = jnp.einsum("bihd,bjhd->bhij", q, keys) * scale
    if ssmax_s is not None:
        count = jnp.sum(mask, axis=-1, keepdims=True).astype(z.dtype)
        z = z * ssmax_s[None, :, None, None] * jnp.log(jnp.maximum(count, 1.0))
    z = jnp.where(mask, z, -1e30)
    e = jnp.where(mask, jnp.exp(z - jnp.max(z, axis=-1, keepdims=True)), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    p = e / jnp.where(total > 0, total, 1.0)
    return jnp.einsum("bhij,bjhd->bihd", p, values)
