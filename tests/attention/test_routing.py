"""routing_attention and its online k-means against naive float64 references.

Covers values and gradients against ``tests.naive_routing``, the one-cluster limit (dense
attention), the local heads, causality through attention and clustering, the k-means step,
the commitment loss, determinism, low precision and the argument errors.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from jaxattn.attention import dense_attention, local_attention
from jaxattn.attention import routing
from tests import naive_routing as naive
from tests.fast_jit import fast_jit, jit_with_static_options
from tests.naive_attention import naive_masked_attention_jnp

SETTINGS = settings(max_examples=12, deadline=None)
FEW = settings(max_examples=6, deadline=None)
FEWER = settings(max_examples=5, deadline=None)
KMEANS = settings(max_examples=20, deadline=None)
CAUSAL = settings(max_examples=10, deadline=None)
STATIC_OPTIONS = ("num_clusters", "cluster_size", "causal", "assignment", "shared_qk", "local_heads",
                  "block_size", "softmax", "scale")
ROUTING_KEYS = ("centroids", "num_clusters", "cluster_size", "causal", "assignment", "shared_qk",
                "local_heads", "block_size", "segment_ids")
# Routing decisions closer than this to a tie may flip between float32 and float64 scores.
MARGIN = 1e-5


attend = jit_with_static_options(routing.routing_attention, STATIC_OPTIONS)


@functools.lru_cache(maxsize=None)
def _compiled_update(decay):
    options = {} if decay is None else {"decay": decay}
    return fast_jit(functools.partial(routing.update_centroids, **options))


def update(centroids, qn, kn, *, segment_ids=None, decay=None):
    """``update_centroids`` under ``fast_jit`` (``decay=None`` keeps the default)."""
    return _compiled_update(decay)(centroids, qn, kn, segment_ids=segment_ids)


assign = fast_jit(routing.assign_clusters)
commitment = fast_jit(routing.commitment_loss)


def routing_only(options):
    """The options that decide which keys each query sees."""
    return {key: options[key] for key in ROUTING_KEYS}


def margin(q, k, options):
    """How far the reference's routing of these inputs is from a tie."""
    return naive.routing_margin(q, k, options["centroids"], num_clusters=options["num_clusters"],
                                cluster_size=options["cluster_size"], causal=options["causal"],
                                assignment=options["assignment"], shared_qk=options["shared_qk"],
                                local_heads=options["local_heads"], segment_ids=options["segment_ids"])


def unit_rows(rng, shape):
    """Float32 random vectors of unit L2 norm along the last axis."""
    x = rng.normal(size=shape)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def segment_ids_for(rng, kind, batch, length):
    """None, packed documents 1, 2, ... with trailing padding, or random ids in {0, 1, 2}."""
    if kind is None:
        return None
    if kind == "packed":
        ids = np.cumsum(rng.random((batch, length)) < 0.15, axis=1) + 1
        ids[:, length - rng.integers(0, length // 3 + 1):] = 0
        return ids.astype(np.int32)
    return rng.integers(0, 3, size=(batch, length)).astype(np.int32)


@st.composite
def routing_cases(draw, assignment=None, causal=None):
    """Shapes and options for one routing_attention call (inputs come from ``seed``)."""
    length = draw(st.sampled_from([8, 16, 32]))
    heads = draw(st.integers(2, 4))
    if assignment is None:
        assignment = draw(st.sampled_from(["argmax", "balanced"]))
    if assignment == "argmax":
        causal = draw(st.booleans()) if causal is None else causal
        shared_qk = True
        num_clusters = draw(st.sampled_from([c for c in (1, 2, 3, 4) if length % (length // c) == 0]))
        divisors = [w for w in range(1, length + 1) if length % w == 0]
        cluster_size = draw(st.one_of(st.none(), st.sampled_from(divisors)))
    else:
        causal = False
        shared_qk = draw(st.booleans())
        num_clusters = draw(st.integers(1, 4))
        cluster_size = draw(st.one_of(st.none(), st.integers(1, length)))
    return dict(
        batch=draw(st.integers(1, 2)),
        length=length,
        heads=heads,
        kv_heads=draw(st.sampled_from([d for d in (1, 2) if heads % d == 0])),
        head_dim=draw(st.integers(4, 8)),
        local_heads=draw(st.integers(0, heads - 1)),
        block_size=draw(st.sampled_from([4, 8])),
        assignment=assignment,
        default_assignment=draw(st.booleans()),
        causal=causal,
        shared_qk=shared_qk,
        num_clusters=num_clusters,
        cluster_size=cluster_size,
        segments=draw(st.sampled_from([None, "packed", "random"])),
        softmax=draw(st.sampled_from(["softmax", "ssmax"])),
        scale=draw(st.sampled_from([None, None, 0.3, 1.7])),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_inputs(case):
    """NumPy float64 ``(q, k, v)`` and the options shared by the package and the reference."""
    rng = np.random.default_rng(case["seed"])
    b, t, h, d = case["batch"], case["length"], case["heads"], case["head_dim"]
    q = rng.normal(size=(b, t, h, d))
    k = rng.normal(size=(b, t, case["kv_heads"], d))
    v = rng.normal(size=(b, t, case["kv_heads"], d))
    default = case["default_assignment"] and not (case["assignment"] == "argmax" and not case["causal"])
    options = dict(
        centroids=unit_rows(rng, (h - case["local_heads"], case["num_clusters"], d)),
        num_clusters=case["num_clusters"],
        cluster_size=case["cluster_size"],
        causal=case["causal"],
        assignment=None if default else case["assignment"],
        shared_qk=case["shared_qk"],
        local_heads=case["local_heads"],
        block_size=case["block_size"],
        segment_ids=segment_ids_for(rng, case["segments"], b, t),
        softmax=case["softmax"],
        ssmax_s=rng.uniform(0.2, 1.5, size=h) if case["softmax"] == "ssmax" else None,
        scale=case["scale"],
    )
    return q, k, v, options


def to_jax(q, k, v, options, dtype):
    """Casts inputs to ``dtype``; centroids stay float32, ``ssmax_s`` is float64 only with float64."""
    options = dict(options)
    options["centroids"] = jnp.asarray(options["centroids"], jnp.float32)
    if options["segment_ids"] is not None:
        options["segment_ids"] = jnp.asarray(options["segment_ids"], jnp.int32)
    if options["ssmax_s"] is not None:
        s_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32
        options["ssmax_s"] = jnp.asarray(options["ssmax_s"], s_dtype)
    return jnp.asarray(q, dtype), jnp.asarray(k, dtype), jnp.asarray(v, dtype), options


def as_numpy(options):
    """The options with jax arrays turned back into NumPy, for the reference."""
    return {key: np.asarray(val) if isinstance(val, jax.Array) else val for key, val in options.items()}


# Routing vectors and centroids.

def test_normalize_for_routing_matches_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 8)) * 3 + 1
    for dtype in (jnp.float32, jnp.bfloat16):
        xj = jnp.asarray(x, dtype)
        out = routing.normalize_for_routing(xj)
        assert out.dtype == jnp.float32 and out.shape == x.shape
        np.testing.assert_allclose(np.asarray(out), naive.normalize_for_routing(np.asarray(xj, np.float64)),
                                   atol=1e-6, rtol=1e-5)
    norms = np.linalg.norm(np.asarray(routing.normalize_for_routing(jnp.asarray(x, jnp.float32))), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_init_centroids_unit_rows_and_deterministic():
    key = jax.random.PRNGKey(3)
    a = routing.init_centroids(key, 3, 5, 8)
    assert a.dtype == jnp.float32 and a.shape == (3, 5, 8)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(a), axis=-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(routing.init_centroids(key, 3, 5, 8)), np.asarray(a))
    other = routing.init_centroids(jax.random.PRNGKey(4), 3, 5, 8)
    assert not np.allclose(np.asarray(other), np.asarray(a))


@FEW
@given(st.integers(1, 2), st.integers(1, 12), st.integers(1, 3), st.integers(1, 5), st.integers(2, 8),
       st.integers(0, 2**32 - 1))
def test_assign_clusters_matches_naive(batch, length, heads, num_clusters, head_dim, seed):
    rng = np.random.default_rng(seed)
    xn = naive.normalize_for_routing(rng.normal(size=(batch, length, heads, head_dim)))
    centroids = unit_rows(rng, (heads, num_clusters, head_dim))
    assume(naive.argmax_margin(xn, centroids) > MARGIN)
    got = assign(jnp.asarray(xn), jnp.asarray(centroids))
    assert got.dtype == jnp.int32 and got.shape == (batch, length, heads)
    np.testing.assert_array_equal(np.asarray(got), naive.assign_clusters(xn, centroids))


# The online k-means step and the commitment loss.

def _hand_example():
    """One head, three clusters, 2-D vectors; token 3 is padding."""
    centroids = np.array([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]], np.float32)
    qn = np.array([[0.8, 0.6], [0.6, 0.8], [0.28, 0.96], [-0.6, -0.8]], np.float32)[None, :, None]
    kn = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]], np.float32)[None, :, None]
    segment_ids = np.array([[1, 2, 1, 0]], np.int32)
    return centroids, qn, kn, segment_ids


def test_update_centroids_hand_computed_ema_step():
    """decay 0.5: new = normalise(mu / 2 + mean(S) / 2) with S the assigned q and k vectors.

    Cluster 0 gets q0 = (.8, .6), k0 = (1, 0): mean (.9, .3), new ∝ (.95, .15).
    Cluster 1 gets q1 = (.6, .8), k1 = (0, 1), q2 = (.28, .96), k2 = (.6, .8): mean (.37, .89),
    new ∝ (.185, .945). Cluster 2 would only get the padding query (-.6, -.8): unchanged.
    Without segment ids the padding token counts: q3 joins cluster 2, new ∝ (-.8, -.4), and
    k3 = (.8, .6) joins cluster 0, mean (2.6, 1.2) / 3, new ∝ (14, 3).
    """
    centroids, qn, kn, segment_ids = _hand_example()
    args = (jnp.asarray(centroids), jnp.asarray(qn), jnp.asarray(kn))
    unit = lambda x: np.asarray(x) / np.linalg.norm(x)
    got = update(*args, segment_ids=jnp.asarray(segment_ids), decay=0.5)
    assert got.dtype == jnp.float32 and got.shape == centroids.shape
    expected = np.stack([unit([19.0, 3.0]), unit([37.0, 189.0]), [-1.0, 0.0]])
    np.testing.assert_allclose(np.asarray(got)[0], expected, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got)[0, 2], centroids[0, 2])

    got = update(*args, decay=0.5)
    expected = np.stack([unit([14.0, 3.0]), unit([37.0, 189.0]), unit([-2.0, -1.0])])
    np.testing.assert_allclose(np.asarray(got)[0], expected, atol=1e-6)

    np.testing.assert_allclose(
        naive.naive_update_centroids(centroids, qn, kn, segment_ids=segment_ids, decay=0.5)[0],
        np.stack([unit([19.0, 3.0]), unit([37.0, 189.0]), [-1.0, 0.0]]), atol=1e-7)


def test_update_centroids_counts_shared_vectors_once_in_the_mean():
    centroids, qn, _, segment_ids = _hand_example()
    got = update(jnp.asarray(centroids), jnp.asarray(qn), jnp.asarray(qn), segment_ids=jnp.asarray(segment_ids),
                 decay=0.5)
    unit = lambda x: np.asarray(x) / np.linalg.norm(x)
    # Cluster 0: mean of q0 alone; cluster 1: mean of q1, q2 = (.44, .88).
    expected = np.stack([unit([0.9, 0.3]), unit([0.22, 0.94]), [-1.0, 0.0]])
    np.testing.assert_allclose(np.asarray(got)[0], expected, atol=1e-6)


def test_update_centroids_has_no_gradient():
    centroids, qn, kn, segment_ids = _hand_example()
    weights = np.random.default_rng(0).normal(size=centroids.shape)
    grads = fast_jit(jax.grad(
        lambda c, q, k: jnp.sum(routing.update_centroids(c, q, k, segment_ids=jnp.asarray(segment_ids),
                                                         decay=0.5) * weights),
        argnums=(0, 1, 2),
    ))(jnp.asarray(centroids), jnp.asarray(qn), jnp.asarray(kn))
    for g in grads:
        np.testing.assert_array_equal(np.asarray(g), 0)


@st.composite
def kmeans_cases(draw):
    return dict(
        batch=draw(st.integers(1, 2)),
        length=draw(st.integers(1, 16)),
        heads=draw(st.integers(1, 3)),
        num_clusters=draw(st.integers(1, 6)),
        head_dim=draw(st.integers(2, 8)),
        segments=draw(st.sampled_from([None, "packed", "random"])),
        decay=draw(st.one_of(st.none(), st.floats(0.0, 0.99))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_kmeans_inputs(case):
    rng = np.random.default_rng(case["seed"])
    shape = (case["batch"], case["length"], case["heads"], case["head_dim"])
    qn = naive.normalize_for_routing(rng.normal(size=shape))
    kn = naive.normalize_for_routing(rng.normal(size=shape))
    centroids = unit_rows(rng, (case["heads"], case["num_clusters"], case["head_dim"]))
    segment_ids = segment_ids_for(rng, case["segments"], case["batch"], case["length"])
    assume(min(naive.argmax_margin(qn, centroids), naive.argmax_margin(kn, centroids)) > MARGIN)
    return qn, kn, centroids, segment_ids


@KMEANS
@given(kmeans_cases())
def test_update_centroids_matches_naive(case):
    qn, kn, centroids, segment_ids = make_kmeans_inputs(case)
    seg = None if segment_ids is None else jnp.asarray(segment_ids)
    got = update(jnp.asarray(centroids), jnp.asarray(qn), jnp.asarray(kn), segment_ids=seg, decay=case["decay"])
    decay = {} if case["decay"] is None else {"decay": case["decay"]}
    expected = naive.naive_update_centroids(centroids, qn, kn, segment_ids=segment_ids, **decay)
    assert got.dtype == jnp.float32 and got.shape == centroids.shape
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-6)


@KMEANS
@given(kmeans_cases())
def test_commitment_loss_matches_naive(case):
    qn, kn, centroids, segment_ids = make_kmeans_inputs(case)
    assume(segment_ids is None or np.any(segment_ids != 0))
    seg = None if segment_ids is None else jnp.asarray(segment_ids)
    got = commitment(jnp.asarray(qn), jnp.asarray(kn), jnp.asarray(centroids), segment_ids=seg)
    assert got.shape == ()
    expected = naive.naive_commitment_loss(qn, kn, centroids, segment_ids=segment_ids)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)


def test_commitment_loss_hand_computed():
    """Token 0: |q0 - mu0|^2 = .2^2 + .6^2 = .4, k0 on mu0: 0. Token 1: q1 .4, k1 0. Token 2:
    |q2 - mu1|^2 = .28^2 + .04^2 = .08, |k2 - mu1|^2 = .6^2 + .2^2 = .4. Padding is left out.
    Mean over the three tokens of the halved sums: 1.28 / 6."""
    centroids, qn, kn, segment_ids = _hand_example()
    got = commitment(jnp.asarray(qn), jnp.asarray(kn), jnp.asarray(centroids),
                     segment_ids=jnp.asarray(segment_ids))
    np.testing.assert_allclose(float(got), 1.28 / 6, rtol=1e-6)


# Values.

@SETTINGS
@given(routing_cases())
def test_matches_naive_float64(case):
    q, k, v, options = make_inputs(case)
    assume(margin(q, k, options) > MARGIN)
    expected = naive.naive_routing_attention(q, k, v, **options)
    with jax.enable_x64(True):
        jq, jk, jv, jopts = to_jax(q, k, v, options, jnp.float64)
        out = attend(jq, jk, jv, **jopts)
        assert out.dtype == jnp.float64 and out.shape == q.shape
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-10, rtol=1e-10)


@SETTINGS
@given(routing_cases())
def test_matches_naive_float32(case):
    q, k, v, options = make_inputs(case)
    jq, jk, jv, jopts = to_jax(q, k, v, options, jnp.float32)
    q32, k32, v32 = (np.asarray(x) for x in (jq, jk, jv))
    ref_options = as_numpy(jopts)
    assume(margin(q32, k32, ref_options) > MARGIN)
    out = attend(jq, jk, jv, **jopts)
    assert out.dtype == jnp.float32
    expected = naive.naive_routing_attention(q32, k32, v32, **ref_options)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("assignment, causal", [("argmax", True), ("argmax", False), ("balanced", False)])
def test_one_full_cluster_is_dense_attention(assignment, causal):
    """With one cluster of size T every query sees every key allowed by the mask (packed documents)."""
    rng = np.random.default_rng(7)
    seg = np.array([[1] * 5 + [2] * 8 + [0] * 3, [1] * 16], np.int32)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(2, 16, 4, 8)))
        k = jnp.asarray(rng.normal(size=(2, 16, 2, 8)))
        v = jnp.asarray(rng.normal(size=(2, 16, 2, 8)))
        centroids = routing.init_centroids(jax.random.PRNGKey(0), 4, 1, 8)
        seg = jnp.asarray(seg)

        def routed(q, k, v):
            return routing.routing_attention(q, k, v, centroids=centroids, num_clusters=1, cluster_size=16,
                                             causal=causal, assignment=assignment, segment_ids=seg)

        def dense(q, k, v):
            return dense_attention(q, k, v, causal=causal, segment_ids=seg)

        np.testing.assert_allclose(np.asarray(fast_jit(routed)(q, k, v)), np.asarray(dense(q, k, v)),
                                   atol=1e-12, rtol=1e-12)
        cotangent = jnp.asarray(rng.normal(size=q.shape))
        loss = lambda fn: (lambda *a: jnp.sum(fn(*a) * cotangent))
        got = fast_jit(jax.grad(loss(routed), argnums=(0, 1, 2)))(q, k, v)
        want = fast_jit(jax.grad(loss(dense), argnums=(0, 1, 2)))(q, k, v)
        for name, g, w in zip("qkv", got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-11, rtol=1e-11, err_msg=name)


@pytest.mark.parametrize("causal", [True, False])
def test_one_cluster_is_a_sliding_window_over_padding_too(causal):
    """Argmax with one cluster of size w is dense attention with window w: ranks are positions,
    padding tokens included, so a padding token still takes a place in its neighbours' windows."""
    rng = np.random.default_rng(8)
    seg = jnp.asarray([[1, 0, 1, 1, 2, 0, 2, 2, 2, 2, 0, 0], [1, 1, 1, 0, 1, 1, 1, 1, 3, 3, 3, 3]], jnp.int32)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(2, 12, 2, 8)))
        k = jnp.asarray(rng.normal(size=(2, 12, 1, 8)))
        v = jnp.asarray(rng.normal(size=(2, 12, 1, 8)))
        centroids = routing.init_centroids(jax.random.PRNGKey(0), 2, 1, 8)
        out = attend(q, k, v, centroids=centroids, num_clusters=1, cluster_size=3, causal=causal,
                     assignment="argmax", segment_ids=seg)
        window = fast_jit(functools.partial(dense_attention, causal=causal, window=3))(q, k, v, segment_ids=seg)
        np.testing.assert_allclose(np.asarray(out), np.asarray(window), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("local_heads", [1, 4])
def test_local_heads_are_local_attention(causal, local_heads):
    """Heads below ``local_heads`` equal ``local_attention`` on the repeated k/v heads."""
    rng = np.random.default_rng(local_heads)
    seg = jnp.asarray(segment_ids_for(rng, "packed", 2, 16))
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(2, 16, 4, 8)))
        k = jnp.asarray(rng.normal(size=(2, 16, 2, 8)))
        v = jnp.asarray(rng.normal(size=(2, 16, 2, 8)))
        s = jnp.asarray(rng.uniform(0.2, 1.5, size=4))
        centroids = routing.init_centroids(jax.random.PRNGKey(1), 4 - local_heads, 2, 8)
        out = attend(q, k, v, centroids=centroids, num_clusters=2, causal=causal, local_heads=local_heads,
                     block_size=4, segment_ids=seg, softmax="ssmax", ssmax_s=s)
        k_rep, v_rep = jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2)
        local = fast_jit(functools.partial(local_attention, block_size=4, causal=causal, softmax="ssmax"))(
            q[:, :, :local_heads], k_rep[:, :, :local_heads], v_rep[:, :, :local_heads], segment_ids=seg,
            ssmax_s=s[:local_heads])
        assert out.shape == q.shape
        np.testing.assert_allclose(np.asarray(out[:, :, :local_heads]), np.asarray(local),
                                   atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_default_assignment_and_cluster_size(causal):
    """``assignment=None`` is argmax when causal, balanced otherwise; ``cluster_size`` is T // C."""
    rng = np.random.default_rng(11)
    q = jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32)
    centroids = routing.init_centroids(jax.random.PRNGKey(2), 2, 4, 8)
    explicit = attend(q, k, k, centroids=centroids, num_clusters=4, cluster_size=4, causal=causal,
                      assignment="argmax" if causal else "balanced")
    default = attend(q, k, k, centroids=centroids, num_clusters=4, causal=causal)
    np.testing.assert_array_equal(np.asarray(default), np.asarray(explicit))


def test_argmax_needs_shared_qk_even_when_bidirectional():
    """argmax routes each token once, by its query, which must then also be its key."""
    rng = np.random.default_rng(21)
    q = jnp.asarray(rng.normal(size=(2, 16, 2, 8)))
    k = jnp.asarray(rng.normal(size=(2, 16, 1, 8)))
    options = dict(centroids=jnp.asarray(unit_rows(rng, (2, 2, 8))), num_clusters=2,
                   cluster_size=4, causal=False, assignment="argmax", shared_qk=False)
    with pytest.raises(ValueError, match="shared_qk"):
        routing.routing_attention(q, k, k, **options)


def _several_or_no_clusters(rng):
    """T = 4 tokens, two clusters of size 2, routing vectors built from orthogonal ±1 patterns.

    Centroid 0 is ``a/2``, centroid 1 is ``b/2``. Token 0 (``a + b``) scores 0.71 with both,
    token 1 (``a``) is nearest centroid 0, token 2 (``b``) centroid 1, token 3 (``c``) scores 0
    with both. So cluster 0 = {0, 1}, cluster 1 = {0, 2}: token 0 is in both, token 3 in none.
    """
    a = np.array([1.0, 1.0, -1.0, -1.0])
    b = np.array([1.0, -1.0, 1.0, -1.0])
    c = np.array([1.0, -1.0, -1.0, 1.0])
    q = np.stack([a + b, a, b, c])[None, :, None, :]
    centroids = (np.stack([a, b]) / 2.0)[None].astype(np.float32)
    k = rng.normal(size=(1, 4, 1, 4))
    v = rng.normal(size=(1, 4, 1, 4))
    return q, k, v, centroids


@pytest.mark.parametrize("softmax", ["softmax", "ssmax"])
def test_balanced_token_in_several_clusters_or_none(softmax):
    rng = np.random.default_rng(5)
    q, k, v, centroids = _several_or_no_clusters(rng)
    options = dict(centroids=centroids, num_clusters=2, cluster_size=2, causal=False, assignment="balanced",
                   shared_qk=True, local_heads=0, block_size=4, segment_ids=None)
    keys = naive.visible_key_lists(q, k, **options)[0][0]
    assert keys == [[0, 1, 2], [0, 1], [0, 2], []]
    s = np.array([0.8])
    ssmax = dict(softmax="ssmax", ssmax_s=s) if softmax == "ssmax" else {}
    expected = naive.naive_routing_attention(q, k, v, **options, **ssmax)
    # Token 0 sees keys 0, 1, 2 once each: a plain softmax over those three keys.
    z = k[0, :3, 0] @ q[0, 0, 0] / 2.0 * (0.8 * np.log(3) if softmax == "ssmax" else 1.0)
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(expected[0, 0, 0], p @ v[0, :3, 0], atol=1e-12)
    with jax.enable_x64(True):
        jssmax = {key: jnp.asarray(val) if key == "ssmax_s" else val for key, val in ssmax.items()}
        run = lambda q, k, v: routing.routing_attention(
            q, k, v, centroids=jnp.asarray(centroids), num_clusters=2, cluster_size=2, causal=False,
            assignment="balanced", **jssmax)
        jq, jk, jv = (jnp.asarray(x) for x in (q, k, v))
        out = np.asarray(fast_jit(run)(jq, jk, jv))
        np.testing.assert_allclose(out, expected, atol=1e-12)
        np.testing.assert_array_equal(out[0, 3], 0.0)
        grads = fast_jit(jax.grad(lambda *a: jnp.sum(run(*a) ** 2), argnums=(0, 1, 2)))(jq, jk, jv)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(grads[0])[0, 3], 0.0)
    np.testing.assert_array_equal(np.asarray(grads[2])[0, 3], 0.0)


# Gradients.

@FEW
@given(routing_cases())
def test_gradients_match_naive_autodiff(case):
    q, k, v, options = make_inputs(case)
    assume(margin(q, k, options) > MARGIN)
    rng = np.random.default_rng(case["seed"] + 1)
    cotangent = rng.normal(size=q.shape)
    mask = naive.routing_mask(q, k, **routing_only(options))
    s = options["ssmax_s"] if options["ssmax_s"] is not None else np.ones(case["heads"])
    ssmax = case["softmax"] == "ssmax"
    with jax.enable_x64(True):
        _, _, _, jopts = to_jax(q, k, v, options, jnp.float64)
        jopts.pop("ssmax_s")
        static = {key: val for key, val in jopts.items() if key in STATIC_OPTIONS}
        arrays = {key: val for key, val in jopts.items() if key not in STATIC_OPTIONS}

        def package_loss(q, k, v, s, arrays):
            out = routing.routing_attention(q, k, v, ssmax_s=s if ssmax else None, **static, **arrays)
            return jnp.sum(out * cotangent)

        def reference_loss(q, k, v, s):
            out = naive_masked_attention_jnp(q, k, v, mask, ssmax_s=s if ssmax else None,
                                                scale=case["scale"])
            return jnp.sum(out * cotangent)

        args = tuple(jnp.asarray(x, jnp.float64) for x in (q, k, v, s))
        got = fast_jit(jax.grad(package_loss, argnums=(0, 1, 2, 3)))(*args, arrays)
        want = fast_jit(jax.grad(reference_loss, argnums=(0, 1, 2, 3)))(*args)
        for name, g, w in zip("qkvs", got, want):
            assert np.all(np.isfinite(np.asarray(g))), name
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-9, rtol=1e-9, err_msg=name)


# Causality.

def _future_replaced(rng, x, cut):
    """``x`` with rows after ``cut`` replaced by copies of earlier rows (nudged) or large noise."""
    x = np.array(x, dtype=np.float64)
    length = x.shape[1]
    for t in range(cut + 1, length):
        if rng.random() < 0.5:
            x[:, t] = x[:, rng.integers(0, cut + 1)] + 1e-3 * rng.normal(size=x[:, t].shape)
        else:
            x[:, t] = 10.0 * rng.normal(size=x[:, t].shape)
    return x


@st.composite
def causal_cases(draw):
    """A causal argmax case and the last position ``cut`` whose outputs must not move."""
    case = draw(routing_cases(assignment="argmax", causal=True))
    case["cut"] = draw(st.integers(0, case["length"] - 1))
    return case


CAUSAL_EXAMPLE = dict(batch=2, length=32, heads=4, kv_heads=2, head_dim=8, local_heads=1, block_size=8,
                      assignment="argmax", default_assignment=False, causal=True, shared_qk=True,
                      num_clusters=4, cluster_size=4, segments="random", softmax="ssmax", scale=None,
                      seed=3, cut=13)


@CAUSAL
@example(CAUSAL_EXAMPLE)
@example({**CAUSAL_EXAMPLE, "local_heads": 2, "num_clusters": 2, "cluster_size": None, "segments": "packed",
          "softmax": "softmax", "seed": 4, "cut": 20})
@given(causal_cases())
def test_causal_future_tokens_never_change_past_outputs(case):
    """Through attention and clustering: outputs at positions <= cut depend only on tokens <= cut."""
    q, k, v, options = make_inputs(case)
    options["centroids"] = routing.init_centroids(jax.random.PRNGKey(case["seed"] % 2**31),
                                                  case["heads"] - case["local_heads"],
                                                  case["num_clusters"], case["head_dim"])
    cut = case["cut"]
    rng = np.random.default_rng(case["seed"] + 2)
    q2, k2, v2 = (_future_replaced(rng, x, cut) for x in (q, k, v))
    options2 = dict(options)
    if options["segment_ids"] is not None:
        seg = options["segment_ids"].copy()
        seg[:, cut + 1:] = rng.integers(0, 3, size=seg[:, cut + 1:].shape)
        options2["segment_ids"] = seg
    jq, jk, jv, jopts = to_jax(q, k, v, options, jnp.float32)
    before = np.asarray(attend(jq, jk, jv, **jopts))
    jq2, jk2, jv2, jopts2 = to_jax(q2, k2, v2, options2, jnp.float32)
    after = np.asarray(attend(jq2, jk2, jv2, **jopts2))
    np.testing.assert_array_equal(after[:, :cut + 1], before[:, :cut + 1])


@pytest.mark.parametrize("prefix", [8, 16])
def test_causal_prefix_run_equals_full_run(prefix):
    """A prefix run alone (as in generation) gives the full run's outputs on that prefix."""
    rng = np.random.default_rng(prefix)
    seg = segment_ids_for(rng, "packed", 2, 32)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(2, 32, 4, 8)))
        k = jnp.asarray(rng.normal(size=(2, 32, 2, 8)))
        v = jnp.asarray(rng.normal(size=(2, 32, 2, 8)))
        s = jnp.asarray(rng.uniform(0.2, 1.5, size=4))
        centroids = routing.init_centroids(jax.random.PRNGKey(5), 3, 4, 8)
        run = lambda q, k, v, seg: attend(
            q, k, v, centroids=centroids, num_clusters=4, cluster_size=4, causal=True, local_heads=1,
            block_size=4, segment_ids=jnp.asarray(seg), softmax="ssmax", ssmax_s=s)
        full = np.asarray(run(q, k, v, seg))
        part = np.asarray(run(q[:, :prefix], k[:, :prefix], v[:, :prefix], seg[:, :prefix]))
    np.testing.assert_allclose(part, full[:, :prefix], atol=1e-12, rtol=1e-12)


def test_balanced_top_k_would_leak_the_future_so_causal_balanced_is_refused():
    """The paper's top-k clusters rank all tokens, so future tokens can evict past ones.

    One cluster of size 4 over 8 tokens, centroid along ``x``. With future tokens along ``-x``
    the cluster holds the past tokens 0..3; with future tokens along ``x`` it holds 4..7 only,
    and the past tokens, now in no cluster, lose their output: under a causal mask past outputs
    still change. Causal argmax routing on the same pair leaves them unchanged.
    """
    rng = np.random.default_rng(9)
    x = rng.normal(size=4)
    past = rng.normal(size=(1, 4, 1, 4))
    centroid = naive.normalize_for_routing(x).astype(np.float64)
    centroids = (centroid / np.linalg.norm(centroid))[None, None].astype(np.float32)
    q_before = np.concatenate([past, np.broadcast_to(-x, (1, 4, 1, 4))], axis=1)
    q_after = np.concatenate([past, np.broadcast_to(x, (1, 4, 1, 4))], axis=1)
    v = rng.normal(size=(1, 8, 1, 4))
    top_k = dict(centroids=centroids, num_clusters=1, cluster_size=4, causal=True, assignment="balanced",
                 shared_qk=True, local_heads=0, block_size=4, segment_ids=None)
    before = naive.naive_routing_attention(q_before, q_before, v, **top_k)
    after = naive.naive_routing_attention(q_after, q_after, v, **top_k)
    assert np.all(np.abs(before[:, :4]) > 0)
    np.testing.assert_array_equal(after[:, :4], 0.0)

    with pytest.raises(ValueError, match="causal|future"):
        routing.routing_attention(jnp.asarray(q_before, jnp.float32), jnp.asarray(q_before, jnp.float32),
                                  jnp.asarray(v, jnp.float32), centroids=jnp.asarray(centroids),
                                  num_clusters=1, cluster_size=4, causal=True, assignment="balanced")

    run = lambda q: np.asarray(attend(
        jnp.asarray(q, jnp.float32), jnp.asarray(q, jnp.float32), jnp.asarray(v, jnp.float32),
        centroids=jnp.asarray(centroids), num_clusters=1, cluster_size=4, causal=True, assignment="argmax"))
    np.testing.assert_array_equal(run(q_after)[:, :4], run(q_before)[:, :4])


# Determinism.

@pytest.mark.parametrize("causal", [True, False])
def test_deterministic(causal):
    rng = np.random.default_rng(13)
    q = jnp.asarray(rng.normal(size=(2, 16, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32)
    seg = jnp.asarray(segment_ids_for(rng, "random", 2, 16))
    centroids = routing.init_centroids(jax.random.PRNGKey(6), 3, 4, 8)
    run = lambda: np.asarray(attend(q, k, v, centroids=centroids, num_clusters=4, causal=causal,
                                    local_heads=1, block_size=4, segment_ids=seg))
    first = run()
    np.testing.assert_array_equal(run(), first)
    retraced = fast_jit(lambda q, k, v: routing.routing_attention(
        q, k, v, centroids=centroids, num_clusters=4, causal=causal, local_heads=1, block_size=4,
        segment_ids=seg))
    np.testing.assert_array_equal(np.asarray(retraced(q, k, v)), first)


# Low precision.

@FEWER
@given(routing_cases())
def test_bf16_output_close_to_float32(case):
    q, k, v, options = make_inputs(case)
    bq, bk, bv, bopts = to_jax(q, k, v, options, jnp.bfloat16)
    fq, fk, fv = (x.astype(jnp.float32) for x in (bq, bk, bv))
    assume(margin(np.asarray(fq), np.asarray(fk), as_numpy(bopts)) > MARGIN)
    out = attend(bq, bk, bv, **bopts)
    assert out.dtype == jnp.bfloat16 and out.shape == q.shape
    ref = np.asarray(attend(fq, fk, fv, **bopts))
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), ref, atol=2e-2, rtol=2e-2)


# Errors.

def _base():
    q = jnp.zeros((1, 8, 4, 8), jnp.float32)
    k = jnp.zeros((1, 8, 2, 8), jnp.float32)
    return dict(q=q, k=k, v=k, centroids=jnp.ones((4, 2, 8), jnp.float32) / np.sqrt(8), num_clusters=2)


BAD_INPUTS = [
    (dict(centroids=jnp.ones((4, 3, 8), jnp.float32)), r"centroids"),
    (dict(centroids=jnp.ones((3, 2, 8), jnp.float32)), r"centroids"),
    (dict(centroids=jnp.ones((4, 2, 4), jnp.float32)), r"centroids"),
    (dict(centroids=jnp.ones((4, 2, 8), jnp.float32), local_heads=1, block_size=4), r"centroids"),
    (dict(num_clusters=0, centroids=jnp.ones((4, 0, 8), jnp.float32)), r"num_clusters"),
    (dict(cluster_size=0), r"cluster_size"),
    (dict(cluster_size=9, causal=False, assignment="balanced"), r"cluster_size"),
    (dict(cluster_size=3), r"cluster_size"),
    (dict(local_heads=-1), r"local_heads"),
    (dict(local_heads=5), r"local_heads"),
    (dict(assignment="kmeans"), r"assignment"),
    (dict(causal=True, assignment="balanced"), r"causal|future"),
    (dict(causal=True, assignment="argmax", shared_qk=False), r"shared_qk"),
    (dict(local_heads=2, block_size=3, centroids=jnp.ones((2, 2, 8), jnp.float32)), r"block_size"),
]


@pytest.mark.parametrize("changes, match", BAD_INPUTS)
def test_bad_inputs_raise(changes, match):
    kwargs = {**_base(), **changes}
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    with pytest.raises(ValueError, match=match):
        routing.routing_attention(q, k, v, **kwargs)


def test_balanced_cluster_size_need_not_divide_length():
    base = _base()
    out = attend(base["q"], base["k"], base["v"], centroids=base["centroids"], num_clusters=2,
                 cluster_size=3, causal=False, assignment="balanced")
    assert out.shape == base["q"].shape
