"""Landmark retrieval (inference, paper §3.2): position mapping, block selection and gathering
against plain-Python/NumPy references, and ``landmark_attention(..., retrieved=...)`` against the
naive grouped softmax of eqs. 1-4 over [retrieved blocks] + [window]."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxattn.attention import landmark_retrieval as retrieval
from jaxattn.attention.landmark import RetrievedBlocks, landmark_attention
from tests.fast_jit import fast_jit
from tests.naive_landmark import naive_groups, naive_landmark_attention, naive_landmark_attention_jnp

POSITIONS = settings(max_examples=40, deadline=None)
SELECT = settings(max_examples=15, deadline=None)
ATTEND = settings(max_examples=8, deadline=None)
GRADIENTS = settings(max_examples=6, deadline=None)
HEAD_LAYOUTS = [(1, 1), (2, 1), (4, 1), (4, 2), (4, 4)]


# Position mapping: plain-Python versions of the rules in the module docstring.

def py_window_start(n, k, block):
    return min(n, k + 1) * block


def py_scoring_positions(n, k, block):
    """Filled slots only: the last min(N, k+1) landmarks on relative slots 0.., older on 0."""
    kept = min(n, k + 1)
    positions = []
    for i in range(n):
        slot = i - (n - kept) if i >= n - kept else 0
        positions.append(slot * block + block - 1)
    return positions


def py_retrieved_positions(indices, n, k, block):
    """The j-th selected (chronological) goes to slot j, or j + 1 if N > k and it is among the
    last k cached blocks."""
    out = []
    for j, index in enumerate(indices):
        slot = j + 1 if (n > k and index >= n - k) else j
        out.append([slot * block + u for u in range(block)])
    return out


@POSITIONS
@given(n=st.integers(0, 20), k=st.integers(1, 6), extra=st.integers(0, 5),
       block=st.integers(2, 7), data=st.data())
def test_position_rules_match_plain_python(n, k, extra, block, data):
    capacity = max(n, k) + extra
    assert int(retrieval.window_start(n, k, block)) == py_window_start(n, k, block)
    scoring = np.asarray(retrieval.scoring_positions(n, capacity, k, block))
    assert scoring.shape == (capacity,)
    np.testing.assert_array_equal(scoring[:n], py_scoring_positions(n, k, block))
    # Traced num_cached gives the same.
    traced = jax.jit(retrieval.scoring_positions, static_argnums=(1, 2, 3))(
        jnp.asarray(n, jnp.int32), capacity, k, block)
    np.testing.assert_array_equal(np.asarray(traced)[:n], scoring[:n])
    if n == 0:
        return
    count = data.draw(st.integers(1, min(n, k)), label="count")
    indices = sorted(data.draw(st.lists(st.integers(0, n - 1), min_size=count, max_size=count,
                                        unique=True), label="indices"))
    got = np.asarray(retrieval.retrieved_positions(jnp.asarray(indices, jnp.int32), n, k, block))
    np.testing.assert_array_equal(got, py_retrieved_positions(indices, n, k, block))
    # With leading (batch, token, head) axes, row by row.
    other = sorted(data.draw(st.lists(st.integers(0, n - 1), min_size=count, max_size=count,
                                      unique=True), label="other"))
    rows = np.stack([indices, other])[:, None, None]
    got_rows = np.asarray(retrieval.retrieved_positions(jnp.asarray(rows), n, k, block))
    assert got_rows.shape == (2, 1, 1, count, block)
    np.testing.assert_array_equal(got_rows[0, 0, 0], got)
    np.testing.assert_array_equal(got_rows[1, 0, 0], py_retrieved_positions(other, n, k, block))


def test_position_rules_paper_example():
    """N=10 cached blocks of 5, k=3: the last 4 landmarks on slots 0..3, older ones on slot 0."""
    n, k, block = 10, 3, 5
    scoring = np.asarray(retrieval.scoring_positions(n, 12, k, block))
    np.testing.assert_array_equal(scoring[:n], [4, 4, 4, 4, 4, 4, 4, 9, 14, 19])
    assert int(retrieval.window_start(n, k, block)) == 20
    got = np.asarray(retrieval.retrieved_positions(jnp.asarray([1, 8, 9]), n, k, block))
    np.testing.assert_array_equal(got[:, 0], [0, 10, 15])  # slots 0, 2, 3
    np.testing.assert_array_equal(got, np.array([0, 2, 3])[:, None] * 5 + np.arange(5))
    # The window follows the reserved k + 1 slots.
    assert got.max() < 20


@POSITIONS
@given(k=st.integers(1, 6), block=st.integers(2, 7), data=st.data())
def test_retrieving_every_cached_block_gives_true_positions(k, block, data):
    n = data.draw(st.integers(0, k), label="n")  # N <= k: every cached block is selected
    assert int(retrieval.window_start(n, k, block)) == n * block
    if n:
        got = np.asarray(retrieval.retrieved_positions(jnp.arange(n), n, k, block))
        np.testing.assert_array_equal(got, np.arange(n)[:, None] * block + np.arange(block))
    # Scoring puts every landmark at its true position too.
    np.testing.assert_array_equal(np.asarray(retrieval.scoring_positions(n, k + 2, k, block))[:n],
                                  np.arange(n) * block + block - 1)


# Selection.

def np_rope(x, positions, base=10_000.0):
    """NumPy float64 RoPE, "half" layout: pairs (x[i], x[i + D/2]) by pos * base^(-2i/D)."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    inv = base ** (-2.0 * np.arange(half) / x.shape[-1])
    angles = np.asarray(positions, np.float64)[..., None] * inv
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(angles) - x2 * np.sin(angles),
                           x2 * np.cos(angles) + x1 * np.sin(angles)], axis=-1)


def np_select_scores(q, landmarks, n, *, top_k, block, selection, rope_base):
    """Float64 aggregated landmark probabilities ``[B, T, H, n]`` over the filled slots
    (``max_over_tokens``: the running max over the window's tokens so far)."""
    batch, q_len, heads, dim = q.shape
    kv_heads = landmarks.shape[2]
    positions = np.array(py_scoring_positions(n, top_k, block))
    keys = np_rope(landmarks[:, :n], positions[None, :, None], rope_base)
    probs = np.zeros((batch, q_len, heads, n))
    for b in range(batch):
        for t in range(q_len):
            for h in range(heads):
                logits = np.array([q[b, t, h] @ keys[b, c, h // (heads // kv_heads)]
                                   for c in range(n)]) / np.sqrt(dim)
                if n:
                    e = np.exp(logits - logits.max())
                    probs[b, t, h] = e / e.sum()
    if selection == "max_over_tokens":
        return np.maximum.accumulate(probs, axis=1)
    if selection == "max_over_heads":
        return np.broadcast_to(probs.max(axis=2, keepdims=True), probs.shape)
    return probs


@SELECT
@given(data=st.data())
def test_select_blocks_matches_numpy(data):
    heads, kv_heads = data.draw(st.sampled_from([(4, 2), (4, 1), (2, 2), (3, 1)]), label="heads")
    batch = data.draw(st.integers(1, 2), label="batch")
    q_len = data.draw(st.integers(1, 5), label="q_len")
    dim = data.draw(st.sampled_from([4, 8]), label="dim")
    top_k = data.draw(st.integers(1, 4), label="top_k")
    capacity = data.draw(st.integers(top_k, 9), label="capacity")
    n = data.draw(st.integers(0, capacity), label="num_cached")
    block = data.draw(st.integers(2, 5), label="block")
    selection = data.draw(st.sampled_from(retrieval.SELECTION_METHODS), label="selection")
    rope_base = data.draw(st.sampled_from([10_000.0, 100.0]), label="rope_base")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    q = rng.normal(size=(batch, q_len, heads, dim)).astype(np.float32)
    landmarks = rng.normal(size=(batch, capacity, kv_heads, dim)).astype(np.float32)
    # Empty slots hold garbage that must never be picked.
    landmarks[:, n:] *= 100

    select = fast_jit(functools.partial(retrieval.select_blocks, top_k=top_k, block_size=block,
                                        selection=selection, rope_base=rope_base))
    indices, valid = select(jnp.asarray(q), jnp.asarray(landmarks), jnp.asarray(n, jnp.int32))
    indices, valid = np.asarray(indices), np.asarray(valid)
    assert indices.shape == valid.shape == (batch, q_len, heads, top_k)
    assert indices.dtype == np.int32 and valid.dtype == bool
    assert np.all(np.diff(indices, axis=-1) > 0)  # sorted, distinct
    picked = min(n, top_k)
    assert np.all(valid[..., :picked]) and not np.any(valid[..., picked:])
    np.testing.assert_array_equal(valid, indices < n)

    scores = np_select_scores(q.astype(np.float64), landmarks.astype(np.float64), n, top_k=top_k,
                              block=block, selection=selection, rope_base=rope_base)
    for idx in np.ndindex(*indices.shape[:3]):
        s = scores[idx]
        want = np.sort(np.argsort(-s, kind="stable")[:picked])
        got = indices[idx][:picked]
        if not np.array_equal(got, want):
            # Only a near-tie (float32 vs float64) may swap picks.
            rest = np.setdiff1d(np.arange(n), got)
            assert rest.size and s[got].min() >= s[rest].max() - 1e-6, (idx, got, want, s)


@pytest.mark.parametrize("selection", retrieval.SELECTION_METHODS)
def test_select_blocks_never_sees_later_queries(selection):
    """A later query that strongly prefers another block changes no earlier selection (the
    paper's chunk-wide ``max_over_tokens`` would let it), but does change its own."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(1, 3, 2, 8)).astype(np.float32)
    landmarks = rng.normal(size=(1, 12, 1, 8)).astype(np.float32)
    args = dict(top_k=2, block_size=3, selection=selection)
    base, _ = retrieval.select_blocks(jnp.asarray(q), jnp.asarray(landmarks), 12, **args)
    other = [c for c in range(12) if c not in np.asarray(base)[0, :2].ravel()][0]
    key = np_rope(landmarks[0, other, 0], py_scoring_positions(12, 2, 3)[other])
    q[0, 2] = 50 * key / np.linalg.norm(key)
    changed, _ = retrieval.select_blocks(jnp.asarray(q), jnp.asarray(landmarks), 12, **args)
    np.testing.assert_array_equal(np.asarray(changed)[:, :2], np.asarray(base)[:, :2])
    assert other in np.asarray(changed)[0, 2].ravel()


def test_select_blocks_bad_arguments():
    q = jnp.zeros((1, 2, 2, 4))
    lm = jnp.zeros((1, 3, 1, 4))
    with pytest.raises(ValueError, match="selection must be one of"):
        retrieval.select_blocks(q, lm, 2, top_k=1, block_size=3, selection="best")
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"top_k must be in \[1, cache capacity 3\]"):
            retrieval.select_blocks(q, lm, 2, top_k=bad, block_size=3,
                                    selection="per_token_and_head")


# Gathering.

@settings(max_examples=10, deadline=None)
@given(heads_kv=st.sampled_from(HEAD_LAYOUTS), batch=st.integers(1, 2), capacity=st.integers(1, 6),
       rows=st.integers(1, 3), n=st.integers(1, 4), block=st.integers(2, 4),
       seed=st.integers(0, 2**32 - 1))
def test_gather_blocks_device_and_host_match_loop(heads_kv, batch, capacity, rows, n, block, seed):
    heads, kv_heads = heads_kv
    rng = np.random.default_rng(seed)
    cache = rng.normal(size=(batch, capacity, block, kv_heads, 4)).astype(np.float32)
    indices = rng.integers(0, capacity, size=(batch, rows, heads, n)).astype(np.int32)
    want = np.zeros((batch, rows, heads, n, block, 4), np.float32)
    for b, t, h, j in np.ndindex(*indices.shape):
        want[b, t, h, j] = cache[b, indices[b, t, h, j], :, h // (heads // kv_heads)]
    device = np.asarray(retrieval.gather_blocks(jnp.asarray(cache), jnp.asarray(indices),
                                                heads=heads))
    host = retrieval.gather_blocks_host(cache, indices, heads=heads)
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(device, want)
    np.testing.assert_array_equal(host, want)


def test_rotate_retrieved_uses_retrieved_positions():
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(1, 2, 2, 2, 3, 4)).astype(np.float32)
    indices = np.array([[[[0, 5], [3, 4]], [[1, 2], [4, 5]]]], np.int32)
    got = np.asarray(retrieval.rotate_retrieved(jnp.asarray(keys), jnp.asarray(indices), 6,
                                                top_k=2, block_size=3))
    for idx in np.ndindex(*indices.shape):
        # The j-th of the sorted selection: its rank in its own row.
        row = list(indices[idx[:3]])
        pos = py_retrieved_positions(row, 6, 2, 3)[idx[3]]
        np.testing.assert_allclose(got[idx], np_rope(keys[idx], pos), atol=1e-5)


# landmark_attention with retrieved blocks.

@st.composite
def retrieval_cases(draw):
    heads, kv_heads = draw(st.sampled_from(HEAD_LAYOUTS))
    return dict(
        batch=draw(st.integers(1, 2)),
        block_size=draw(st.integers(2, 4)),
        num_blocks=draw(st.integers(1, 3)),
        n=draw(st.integers(1, 3)),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=draw(st.sampled_from([4, 8])),
        shared=draw(st.booleans()),
        valid_rate=draw(st.sampled_from([0.0, 0.5, 0.8, 1.0])),
        softmax=draw(st.sampled_from(["softmax", "ssmax"])),
        scale=draw(st.one_of(st.none(), st.floats(0.3, 2.0))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_retrieval_inputs(case):
    rng = np.random.default_rng(case["seed"])
    b, bs, h, kh, d = (case[x] for x in ("batch", "block_size", "heads", "kv_heads", "head_dim"))
    t = bs * case["num_blocks"]
    rows = 1 if case["shared"] else t
    q = rng.normal(size=(b, t, h, d))
    k = rng.normal(size=(b, t, kh, d))
    v = rng.normal(size=(b, t, kh, d))
    rk = rng.normal(size=(b, rows, h, case["n"], bs, d))
    rv = rng.normal(size=(b, rows, h, case["n"], bs, d))
    valid = rng.random(size=(b, rows, h, case["n"])) < case["valid_rate"]
    s = rng.uniform(0.3, 1.5, size=h) if case["softmax"] == "ssmax" else None
    return q, k, v, rk, rv, valid, s


def naive_retrieval_one(q, k, v, rk, rv, valid, s, case, b, t, h):
    """Output of query (b, t, h): eqs. 1-4 over [valid retrieved blocks in order] + [window],
    causal, batch 1 and one head, the query at index len(retrieved tokens) + t."""
    bs = case["block_size"]
    kv = h // (case["heads"] // case["kv_heads"])
    tr = 0 if case["shared"] else t
    blocks = [j for j in range(case["n"]) if valid[b, tr, h, j]]
    keys = np.concatenate([rk[b, tr, h, j] for j in blocks] + [k[b, :, kv]])
    values = np.concatenate([rv[b, tr, h, j] for j in blocks] + [v[b, :, kv]])
    i = len(blocks) * bs + t
    # Causal: later keys cannot matter, so the sequence stops at the query.
    length = i + 1
    queries = np.zeros((1, length, 1, q.shape[-1]))
    queries[0, i, 0] = q[b, t, h]
    out = naive_landmark_attention(queries, keys[None, :length, None], values[None, :length, None],
                                   block_size=bs, causal=True, softmax=case["softmax"],
                                   ssmax_s=None if s is None else np.array([s[h]]),
                                   scale=case["scale"])
    return out[0, i, 0]


def naive_retrieval_jnp(q, k, v, rk, rv, s, valid, case):
    """All queries at once with ``naive_landmark_attention_jnp``: one sequence per (b, t, h) of
    all ``n`` retrieved blocks then the window; invalid blocks get another segment id, so the
    query (segment 1) never sees them. SSMax's ``s_h`` is folded into the query."""
    bs, n = case["block_size"], case["n"]
    batch, t_len, heads, dim = q.shape
    group = heads // case["kv_heads"]
    rows = rk.shape[1]
    rk = jnp.broadcast_to(rk, (batch, t_len, *rk.shape[2:])).reshape(batch, t_len, heads, n * bs, dim)
    rv = jnp.broadcast_to(rv, (batch, t_len, *rv.shape[2:])).reshape(batch, t_len, heads, n * bs, dim)
    kv_of = np.arange(heads) // group
    wk = jnp.broadcast_to(jnp.moveaxis(k[:, :, kv_of], 1, 2)[:, None], (batch, t_len, heads, t_len, dim))
    wv = jnp.broadcast_to(jnp.moveaxis(v[:, :, kv_of], 1, 2)[:, None], (batch, t_len, heads, t_len, dim))
    length = n * bs + t_len
    seq_k = jnp.concatenate([rk, wk], axis=3).reshape(-1, length, 1, dim)
    seq_v = jnp.concatenate([rv, wv], axis=3).reshape(-1, length, 1, dim)
    qs = q if s is None else q * s[None, None, :, None]
    seq_q = jnp.broadcast_to(qs[:, :, :, None], (batch, t_len, heads, length, dim)).reshape(
        -1, length, 1, dim)
    groups = []
    for b, t, h in np.ndindex(batch, t_len, heads):
        pattern = tuple(bool(x) for x in valid[b, 0 if rows == 1 else t, h])
        groups.append(_groups_for(pattern, bs, t_len))
    out = naive_landmark_attention_jnp(seq_q, seq_k, seq_v, np.stack(groups), block_size=bs,
                                       ssmax_s=None if s is None else jnp.ones((1,), q.dtype),
                                       scale=case["scale"])
    query_index = n * bs + np.tile(np.repeat(np.arange(t_len), heads), batch)
    picked = out[np.arange(out.shape[0]), query_index, 0]
    return picked.reshape(batch, t_len, heads, dim)


@functools.lru_cache(maxsize=None)
def _groups_for(pattern, bs, t_len):
    ids = np.concatenate([np.full(bs, 1 if ok else 2) for ok in pattern] + [np.ones(t_len)])
    return naive_groups(1, len(ids), block_size=bs, causal=True,
                        segment_ids=ids[None].astype(np.int64))[0]


def _package(case):
    return fast_jit(lambda q, k, v, rk, rv, valid, s: landmark_attention(
        q, k, v, block_size=case["block_size"], causal=True, softmax=case["softmax"],
        ssmax_s=s, scale=case["scale"], retrieved=RetrievedBlocks(rk, rv, valid)))


@ATTEND
@given(retrieval_cases())
def test_retrieved_attention_matches_naive_float64(case):
    q, k, v, rk, rv, valid, s = make_retrieval_inputs(case)
    with jax.enable_x64(True):
        args = [jnp.asarray(x, jnp.float64) for x in (q, k, v, rk, rv)]
        js = None if s is None else jnp.asarray(s, jnp.float64)
        out = np.asarray(_package(case)(*args, jnp.asarray(valid), js))
        assert out.dtype == np.float64 and out.shape == q.shape
        vectorised = np.asarray(fast_jit(
            lambda q, k, v, rk, rv, s: naive_retrieval_jnp(q, k, v, rk, rv, s, valid, case))(
                *args, js))
    np.testing.assert_allclose(out, vectorised, atol=1e-10, rtol=1e-10)
    # The loop reference on a sample of queries (it costs O(T^3) per query).
    rng = np.random.default_rng(case["seed"] + 1)
    triples = list(np.ndindex(*q.shape[:3]))
    for pick in rng.permutation(len(triples))[:12]:
        b, t, h = triples[pick]
        want = naive_retrieval_one(q, k, v, rk, rv, valid, s, case, b, t, h)
        np.testing.assert_allclose(out[b, t, h], want, atol=1e-10, rtol=1e-10,
                                   err_msg=str((b, t, h)))


@ATTEND
@given(retrieval_cases())
def test_retrieved_attention_float32_and_invalid_entries_are_ignored(case):
    q, k, v, rk, rv, valid, s = make_retrieval_inputs(case)
    args = [jnp.asarray(x, jnp.float32) for x in (q, k, v, rk, rv)]
    js = None if s is None else jnp.asarray(s, jnp.float32)
    fn = _package(case)
    out = np.asarray(fn(*args, jnp.asarray(valid), js))
    assert out.dtype == np.float32
    with jax.enable_x64(True):
        want = np.asarray(fast_jit(
            lambda *a: naive_retrieval_jnp(*a, valid, case))(
                *(jnp.asarray(np.asarray(x), jnp.float64) for x in args),
                None if s is None else jnp.asarray(np.asarray(js), jnp.float64)))
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=2e-5)
    # Garbage in invalid entries changes nothing.
    noise = np.random.default_rng(case["seed"] + 2).normal(size=rk.shape) * 100
    invalid = ~valid[..., None, None]
    noisy = [jnp.asarray(np.where(invalid, noise, x), jnp.float32) for x in (rk, rv)]
    again = np.asarray(fn(*args[:3], *noisy, jnp.asarray(valid), js))
    np.testing.assert_array_equal(again, out)
    # Without any valid entry it is the window's own landmark attention.
    if not valid.any():
        alone = landmark_attention(*args[:3], block_size=case["block_size"], softmax=case["softmax"],
                                   ssmax_s=js, scale=case["scale"])
        np.testing.assert_allclose(out, np.asarray(alone), atol=1e-6)


def test_ssmax_counts_retrieved_landmarks():
    """n_i = visible landmarks (retrieved ones too) + own-block normal tokens: query 0 of the
    window with 2 valid retrieved blocks has n = 3, against n = 1 without them."""
    rng = np.random.default_rng(3)
    bs = 3
    q = rng.normal(size=(1, bs, 1, 4))
    k = rng.normal(size=(1, bs, 1, 4))
    v = rng.normal(size=(1, bs, 1, 4))
    rk = rng.normal(size=(1, 1, 1, 2, bs, 4))
    rv = rng.normal(size=(1, 1, 1, 2, bs, 4))
    s = np.array([0.7])
    with jax.enable_x64(True):
        out = landmark_attention(*(jnp.asarray(x) for x in (q, k, v)), block_size=bs,
                                 softmax="ssmax", ssmax_s=jnp.asarray(s),
                                 retrieved=RetrievedBlocks(jnp.asarray(rk), jnp.asarray(rv),
                                                           jnp.ones((1, 1, 1, 2), bool)))
    # Closed form for query 0: logits z (gates of the 2 blocks, own token 0) times s*log(3).
    factor = s[0] * np.log(3) / 2.0  # / sqrt(D)
    z = np.array([q[0, 0, 0] @ rk[0, 0, 0, 0, -1], q[0, 0, 0] @ rk[0, 0, 0, 1, -1],
                  q[0, 0, 0] @ k[0, 0, 0]]) * factor
    outer = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    expected = outer[2] * v[0, 0, 0]
    for j in range(2):
        inner = rk[0, 0, 0, j, :-1] @ q[0, 0, 0] * factor
        w = np.exp(inner - inner.max()) / np.exp(inner - inner.max()).sum()
        expected = expected + outer[j] * (w @ rv[0, 0, 0, j, :-1])
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], expected, atol=1e-12)


@GRADIENTS
@given(retrieval_cases())
def test_retrieved_attention_gradients_match_naive_autodiff(case):
    q, k, v, rk, rv, valid, s = make_retrieval_inputs(case)
    cotangent = np.random.default_rng(case["seed"] + 4).normal(size=q.shape)
    ssmax = s is not None
    s = np.ones(case["heads"]) if s is None else s
    with jax.enable_x64(True):
        jvalid = jnp.asarray(valid)

        def package_loss(q, k, v, rk, rv, s):
            out = landmark_attention(q, k, v, block_size=case["block_size"], causal=True,
                                     softmax=case["softmax"], ssmax_s=s if ssmax else None,
                                     scale=case["scale"], retrieved=RetrievedBlocks(rk, rv, jvalid))
            return jnp.sum(out * cotangent)

        def reference_loss(q, k, v, rk, rv, s):
            out = naive_retrieval_jnp(q, k, v, rk, rv, s if ssmax else None, valid, case)
            return jnp.sum(out * cotangent)

        args = tuple(jnp.asarray(x, jnp.float64) for x in (q, k, v, rk, rv, s))
        got = fast_jit(jax.grad(package_loss, argnums=tuple(range(6))))(*args)
        want = fast_jit(jax.grad(reference_loss, argnums=tuple(range(6))))(*args)
    for name, g, w in zip(["q", "k", "v", "retrieved.keys", "retrieved.values", "ssmax_s"],
                          got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-9, rtol=1e-9,
                                   err_msg=name)
    # Invalid retrieved entries get no gradient.
    invalid = ~valid[..., None, None]
    assert not np.any(np.where(invalid, np.asarray(got[3]), 0))
    assert not np.any(np.where(invalid, np.asarray(got[4]), 0))


# Errors.

def _retrieval_base():
    q = jnp.zeros((2, 6, 4, 8))
    k = jnp.zeros((2, 6, 2, 8))
    keys = jnp.zeros((2, 6, 4, 2, 3, 8))
    return q, k, keys, jnp.ones((2, 6, 4, 2), bool)


@pytest.mark.parametrize("make", [
    lambda keys, valid: (keys[0], keys, valid),                             # rank 5
    lambda keys, valid: (keys[:1], keys[:1], valid[:1]),                     # batch
    lambda keys, valid: (keys[:, :3], keys[:, :3], valid[:, :3]),            # Tr not 1 or T
    lambda keys, valid: (keys[:, :, :2], keys[:, :, :2], valid[:, :, :2]),   # heads
    lambda keys, valid: (keys[:, :, :, :, :2], keys[:, :, :, :, :2], valid),  # block size
    lambda keys, valid: (keys[..., :4], keys[..., :4], valid),               # head_dim
    lambda keys, valid: (keys, keys[:, :1], valid),                          # values shape
    lambda keys, valid: (keys, keys, valid[..., :1]),                        # valid shape
    lambda keys, valid: (keys, keys, valid.astype(jnp.int32)),               # valid dtype
    lambda keys, valid: (None, keys, valid),                                 # not an array
])
def test_bad_retrieved_raises(make):
    q, k, keys, valid = _retrieval_base()
    rk, rv, rvalid = make(keys, valid)
    with pytest.raises(ValueError, match="retrieved"):
        landmark_attention(q, k, k, block_size=3, retrieved=RetrievedBlocks(rk, rv, rvalid))


def test_retrieved_must_be_retrieved_blocks():
    q, k, keys, valid = _retrieval_base()
    with pytest.raises(ValueError, match="retrieved must be a RetrievedBlocks"):
        landmark_attention(q, k, k, block_size=3, retrieved=(keys, keys, valid))
