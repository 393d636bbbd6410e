"""KV-cache decoding of causal routing attention: ``cached_attention(kind="routing")`` against
an independent float64 NumPy reference (per query: its cluster's members so far, the last
``window`` of them); routing models fed in any pieces give the full forward's logits (with
and without local heads, SSMax, the default window ``train_len // num_clusters``); greedy
generation equals ``FullForwardGreedy``; ``make_decoder`` and ``greedy_decoder`` pick the KV
cache; balanced and bidirectional routing are refused."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from jaxattn.attention import kv_cache
from jaxattn.evaluation import retrieval
from jaxattn.evaluation.retrieval import FullForwardGreedy, runnable_length
from jaxattn.inference import KVCacheDecoder, make_decoder
from jaxattn.nn import TransformerConfig
from tests.inference.test_kv_decoder import (SEQ, SPECS, VOCAB, fast_compile,  # noqa: F401
                                             feed_in_pieces, host_model, spec, tokens_of)
from tests.naive_attention import attend_row

TRAIN_LEN = 40


@functools.lru_cache(maxsize=None)
def routing_model(kinds, seed=0):
    """A tiny routing ``TransformerLM`` (shared QK: 4 kv heads) with random weights, every
    parameter off its initial value, and unit centroids as ``init_centroids`` draws them."""
    cfg = TransformerConfig(vocab_size=VOCAB, num_layers=len(kinds), embed_dim=32, num_heads=4,
                            num_kv_heads=4, head_dim=8, mlp_dim=64, train_len=TRAIN_LEN,
                            attention=[spec(k) for k in kinds], ssmax_init=0.6)
    model = host_model(cfg, seed)
    for block in model.blocks:
        if block.attn.state is not None:
            c = np.asarray(block.attn.state[...])
            block.attn.state[...] = jnp.asarray(c / np.linalg.norm(c, axis=-1, keepdims=True))
    return model


@functools.lru_cache(maxsize=None)
def forward(kinds, width):
    """Full-forward logits of ``tokens [2, SEQ]`` over a buffer of ``width`` tokens."""
    graph, state = nnx.split(routing_model(kinds))
    run = jax.jit(lambda s, t: nnx.merge(graph, s)(t))
    return lambda tokens: np.asarray(run(state, jnp.asarray(
        np.pad(tokens, ((0, 0), (0, width - tokens.shape[1]))))))[:, :tokens.shape[1]]


@functools.lru_cache(maxsize=None)
def decoder(kinds, prefill_chunk):
    return KVCacheDecoder(routing_model(kinds), batch_size=2, capacity=SEQ + 8,
                          prefill_chunk=prefill_chunk)


# (kinds, prefill_chunk). routing_w4 and routing_local_ssmax fix their window (4 and 5);
# routing_default's is train_len // num_clusters = 5, the full forward's at width train_len.
MODELS = [(("routing_w4", "routing_local_ssmax"), 5), (("routing_default", "dense"), 8)]
MODEL_IDS = ["-".join(kinds) for kinds, _ in MODELS]


@pytest.mark.parametrize("kinds, prefill_chunk", MODELS, ids=MODEL_IDS)
@settings(max_examples=3, deadline=None)
@given(cuts=st.sets(st.integers(1, SEQ - 1), max_size=6))
def test_any_pieces_equal_the_full_forward(kinds, prefill_chunk, cuts):
    width = runnable_length(routing_model(kinds).cfg, SEQ)
    assert width == TRAIN_LEN  # the default window is train_len's for routing_default
    dec = decoder(kinds, prefill_chunk)
    dec.reset()
    out = feed_in_pieces(dec, tokens_of(0), cuts)
    assert out.shape == (2, SEQ, VOCAB) and out.dtype == np.float32
    np.testing.assert_allclose(out, forward(kinds, width)(tokens_of(0)), atol=3e-5, rtol=3e-5)
    assert dec.num_tokens == SEQ
    # Not vacuous: every routing head uses several clusters, and some cluster outgrows its
    # window, so the window rule (not only the cluster rule) shapes the logits.
    options = SPECS[kinds[0]]
    window = options.get("cluster_size") or TRAIN_LEN // options["num_clusters"]
    clusters = np.asarray(dec._caches[0].clusters)[:, :SEQ]  # pylint: disable=protected-access
    assert clusters.shape[-1] == 4 - options.get("local_heads", 0)
    counts = np.stack([np.bincount(row, minlength=options["num_clusters"])
                       for row in clusters.transpose(0, 2, 1).reshape(-1, SEQ)])
    assert (np.sum(counts > 0, axis=-1) > 1).all() and (counts > window).any()


def test_greedy_generation_equals_full_forward_greedy():
    kinds = MODELS[0][0]
    dec = decoder(kinds, 5)
    prompt = tokens_of(1, 9)
    expected = FullForwardGreedy(routing_model(kinds))(prompt, 6)
    dec.reset()
    np.testing.assert_array_equal(dec.generate(6, prompt=prompt), expected)
    dec.reset()  # a prompt fed in pieces, then generation from where it stopped
    dec.feed(prompt[:, :4])
    dec.feed(prompt[:, 4:])
    np.testing.assert_array_equal(dec.generate(6), expected)


def test_make_decoder_and_greedy_decoder_use_the_kv_cache():
    model = routing_model(MODELS[0][0])
    dec = make_decoder(model, batch_size=2, capacity=20, prefill_chunk=4)
    assert isinstance(dec, KVCacheDecoder)
    # Per layer: keys + values [2, 128, 4, 8] float32, length, clusters [2, 128, H_r] int32
    # (4 routing heads, then 2 beside 2 local heads).
    assert dec.cache_bytes() == 2 * (2 * 2 * 128 * 4 * 8 * 4 + 4) + 2 * 128 * (4 + 2) * 4
    assert isinstance(retrieval.greedy_decoder(model), retrieval.KVCacheGreedy)


# cached_attention against the naive float64 reference.

SLOTS, CHUNK, HEADS, KV_HEADS, HEAD_DIM = 32, 5, 4, 2, 6
# (options, seq_len): GQA caches, local heads, SSMax, the default window from seq_len.
ROUTING_OPTIONS = {
    "w3": (dict(num_clusters=3, cluster_size=3), None),
    "local_ssmax": (dict(num_clusters=2, cluster_size=4, local_heads=1, block_size=4,
                         softmax="ssmax"), None),
    "default_window": (dict(num_clusters=4, local_heads=2, block_size=8), 20),  # w = 5
}


@functools.lru_cache(maxsize=None)
def jitted_routing_attention(name):
    options, seq_len = ROUTING_OPTIONS[name]
    return jax.jit(lambda q, cache, s: kv_cache.cached_attention(
        q, cache, kind="routing", ssmax_s=s, seq_len=seq_len, **options))


def naive_cached_routing(q, k, v, clusters, length, *, window, local_heads=0, block_size=None,
                         ssmax_s=None):
    """Rows ``[length, length + CHUNK)``, query by query, from the definitions: a local head
    sees ``j <= p`` in its block or the one before; a routing head lists the slots ``j <= p``
    of the query's cluster and keeps the last ``window`` of them."""
    batch, _, heads, head_dim = q.shape
    group = heads // k.shape[2]
    out = np.zeros((batch, CHUNK, heads, head_dim))
    for b in range(batch):
        for h in range(heads):
            for i in range(CHUNK):
                p = length + i
                if h < local_heads:
                    keys = [j for j in range(p + 1) if j // block_size >= p // block_size - 1]
                else:
                    own = clusters[b, :, h - local_heads]
                    keys = [j for j in range(p + 1) if own[j] == own[p]][-window:]
                out[b, i, h] = attend_row(
                    q[b, p, h], k[b, keys, h // group], v[b, keys, h // group],
                    scale=1.0 / np.sqrt(head_dim),
                    softmax="softmax" if ssmax_s is None else "ssmax", ssmax_s=ssmax_s, head=h)
    return out


@pytest.mark.parametrize("name", list(ROUTING_OPTIONS))
@settings(max_examples=4, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_cached_routing_attention_equals_the_naive_reference(name, data, seed):
    """Every slot holds random keys, values and clusters, also past ``length + C``: the rule,
    not zeros, keeps them out."""
    options, seq_len = ROUTING_OPTIONS[name]
    local = options.get("local_heads", 0)
    window = options.get("cluster_size") or seq_len // options["num_clusters"]
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(2, SLOTS, HEADS, HEAD_DIM))
    k = rng.normal(size=(2, SLOTS, KV_HEADS, HEAD_DIM))
    v = rng.normal(size=(2, SLOTS, KV_HEADS, HEAD_DIM))
    clusters = rng.integers(0, options["num_clusters"], size=(2, SLOTS, HEADS - local))
    ssmax_s = rng.uniform(0.5, 1.5, size=HEADS) if options.get("softmax") == "ssmax" else None
    length = data.draw(st.integers(0, SLOTS - CHUNK), label="length")
    with jax.enable_x64(True):
        cache = kv_cache.KVCache(keys=jnp.asarray(k), values=jnp.asarray(v),
                                 length=jnp.asarray(length, jnp.int32),
                                 bos_query=jnp.zeros((2, 0, HEAD_DIM)),
                                 clusters=jnp.asarray(clusters, jnp.int32))
        out = np.asarray(jitted_routing_attention(name)(
            jnp.asarray(q[:, length:length + CHUNK]), cache,
            None if ssmax_s is None else jnp.asarray(ssmax_s)))
    expected = naive_cached_routing(q, k, v, clusters, length, window=window, local_heads=local,
                                    block_size=options.get("block_size"), ssmax_s=ssmax_s)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, expected, atol=1e-10, rtol=1e-10)


def test_write_chunk_keeps_the_clusters():
    cache = kv_cache.init_cache(2, 6, 2, 4, cluster_heads=3)
    assert cache.clusters.shape == (2, 6, 3) and cache.clusters.dtype == jnp.int32
    assert kv_cache.init_cache(2, 6, 2, 4).clusters.shape == (2, 6, 0)
    k = jnp.ones((2, 2, 2, 4))
    clusters = jnp.arange(12, dtype=jnp.int32).reshape(2, 2, 3)
    cache = kv_cache.advance(kv_cache.write_chunk(cache, k, k, clusters=clusters), 1)
    cache = kv_cache.write_chunk(cache, k, k, clusters=clusters + 100)
    np.testing.assert_array_equal(cache.clusters[:, 0], clusters[:, 0])
    np.testing.assert_array_equal(cache.clusters[:, 1:3], clusters + 100)
    np.testing.assert_array_equal(cache.clusters[:, 3:], 0)
    with pytest.raises(ValueError, match="clusters is required"):
        kv_cache.write_chunk(cache, k, k)
    with pytest.raises(ValueError, match=r"clusters must be \[batch, chunk, routing_heads\] = "
                                         r"\[2, 2, 3\]"):
        kv_cache.write_chunk(cache, k, k, clusters=clusters[..., :2])


def test_routing_errors():
    cache = kv_cache.init_cache(1, 8, 4, 4, cluster_heads=4)
    q = jnp.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match="routing attention decodes from a KV cache only when "
                                         "causal with assignment='argmax', got causal=False, "
                                         "assignment='balanced'"):
        kv_cache.cached_attention(q, cache, kind="routing", causal=False, cluster_size=2)
    with pytest.raises(ValueError, match="got causal=False, assignment='argmax'"):
        kv_cache.cached_attention(q, cache, kind="routing", causal=False, assignment="argmax",
                                  cluster_size=2)
    with pytest.raises(ValueError, match="assignment='balanced' cannot be causal"):
        kv_cache.cached_attention(q, cache, kind="routing", assignment="balanced")
    with pytest.raises(ValueError, match="cluster_size=None has the window seq_len // "
                                         "num_clusters.*pass cluster_size=, or seq_len="):
        kv_cache.cached_attention(q, cache, kind="routing")
    with pytest.raises(ValueError, match=r"cache.clusters must be \[batch, capacity, heads - "
                                         r"local_heads\] = \[1, 8, 3\].*cluster_heads=3"):
        kv_cache.cached_attention(q, cache, kind="routing", cluster_size=2, local_heads=1)
    with pytest.raises(ValueError, match=r"= \[1, 8, 4\].*got \[1, 8, 0\]"):
        kv_cache.cached_attention(q, kv_cache.init_cache(1, 8, 4, 4), kind="routing",
                                  cluster_size=2)
    with pytest.raises(ValueError, match=r"local_heads must be in \[0, heads=4\]"):
        kv_cache.cached_attention(q, cache, kind="routing", cluster_size=2, local_heads=5)
