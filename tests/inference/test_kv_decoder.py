"""KV-cache decoding: ``cached_attention`` against the naive float64 references for every
decodable kind; ``KVCacheDecoder`` fed in any pieces equals the full forward (dense, window,
SSMax, local, LSG with several sparsity types and global tokens, GQA, bf16); greedy
generation equals ``FullForwardGreedy``; padding never leaks; sampling; ``make_decoder``
dispatch; argument and overflow errors. Routing: ``test_kv_routing.py``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from jaxattn.attention import kv_cache, registry
from jaxattn.evaluation.retrieval import FullForwardGreedy, runnable_length
from jaxattn.inference import (KVCacheDecoder, LandmarkDecoder, Sampler, TitansStream,
                               decoder_kind, make_decoder, sample_logits)
from jaxattn.inference.sampling import step_key
from jaxattn.nn import AttentionSpec, TransformerConfig, TransformerLM
from jaxattn.nn.titans import TitansConfig
from tests.naive_attention import naive_attention
from tests.naive_lsg import naive_lsg

VOCAB = 50
SEQ = 37


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    """Every model here compiles a handful of small programs: skip XLA's optimisations."""
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


SPECS = {
    "dense": dict(kind="dense"),
    "ssmax": dict(kind="ssmax"),
    "window": dict(kind="dense", window=5),
    "ssmax_window": dict(kind="ssmax", window=6),
    "local": dict(kind="local", block_size=8),
    "local_ssmax": dict(kind="local", block_size=4, softmax="ssmax"),
    "lsg_pooling_g2": dict(kind="lsg", block_size=4, sparse_block_size=2, sparsity_factor=2,
                           sparsity_type="pooling", num_global_tokens=2),
    "lsg_stride_g2": dict(kind="lsg", block_size=4, sparse_block_size=3, sparsity_factor=2,
                          sparsity_type="stride", num_global_tokens=2),
    "lsg_norm_g0": dict(kind="lsg", block_size=8, sparse_block_size=4, sparsity_factor=4,
                        sparsity_type="norm", num_global_tokens=0),
    "lsg_stride_g0": dict(kind="lsg", block_size=4, sparse_block_size=2, sparsity_factor=2,
                          sparsity_type="stride", num_global_tokens=0),
    "lsg_pooling_g0": dict(kind="lsg", block_size=4, sparse_block_size=2, sparsity_factor=4,
                           sparsity_type="pooling", num_global_tokens=0),
    "lsg_bos_g1": dict(kind="lsg", block_size=4, sparse_block_size=2, sparsity_factor=2,
                       sparsity_type="bos_pooling", num_global_tokens=1, softmax="ssmax"),
    "lsg_lsh_g1": dict(kind="lsg", block_size=8, sparse_block_size=4, sparsity_factor=2,
                       sparsity_type="lsh", num_global_tokens=1, lsh_seed=2),
    "lsg_block_stride_g1": dict(kind="lsg", block_size=4, sparse_block_size=4,
                                sparsity_factor=2, sparsity_type="block_stride",
                                num_global_tokens=1),
    "landmark": dict(kind="landmark", mem_freq=3),
    "routing": dict(kind="routing", num_clusters=2, block_size=8),
    "routing_w4": dict(kind="routing", num_clusters=3, cluster_size=4),
    "routing_local_ssmax": dict(kind="routing", num_clusters=2, cluster_size=5, local_heads=2,
                                block_size=4, softmax="ssmax"),
    "routing_default": dict(kind="routing", num_clusters=8, local_heads=1, block_size=8),
    "bidirectional": dict(kind="dense", causal=False),
}


def spec(name):
    options = dict(SPECS[name])
    return AttentionSpec.create(options.pop("kind"), **options)


def host_model(cfg, seed=0):
    """A ``TransformerLM`` of ``cfg`` with random weights drawn on the host (no initialiser
    programs to compile), every parameter off its initial value so attention reaches the
    output."""
    graph, state = nnx.split(nnx.eval_shape(lambda: TransformerLM(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(size=leaf.shape)
        value = 1 + 0.1 * noise if "scale" in jax.tree_util.keystr(path) else 0.15 * noise
        if "ssmax_s" in jax.tree_util.keystr(path):
            value = 0.6 + 0.1 * noise
        return jnp.asarray(value.astype(leaf.dtype))

    return nnx.merge(graph, jax.tree.map_with_path(draw, state))


@functools.lru_cache(maxsize=None)
def tiny_model(kinds, *, kv_heads=2, dtype="float32", seed=0, titans=None):
    """A small ``TransformerLM`` with one layer per entry of ``kinds`` (names of ``SPECS``)."""
    cfg = TransformerConfig(vocab_size=VOCAB, num_layers=len(kinds), embed_dim=32, num_heads=4,
                            num_kv_heads=kv_heads, head_dim=8, mlp_dim=64, train_len=64,
                            attention=[spec(k) for k in kinds], dtype=dtype, ssmax_init=0.6,
                            titans=titans)
    return host_model(cfg, seed)


@functools.lru_cache(maxsize=None)
def forward(kinds, **model_kwargs):
    """The full forward's logits of ``tokens [2, SEQ]``, compiled once per model (padded to a
    length every layer takes; causal, so the padding does not reach them)."""
    model = tiny_model(kinds, **model_kwargs)
    width = runnable_length(model.cfg, SEQ)
    graph, state = nnx.split(model)
    run = jax.jit(lambda s, t: nnx.merge(graph, s)(t))
    return lambda tokens: np.asarray(run(state, jnp.asarray(
        np.pad(tokens, ((0, 0), (0, width - SEQ))))))[:, :SEQ]


@functools.lru_cache(maxsize=None)
def decoder(kinds, prefill_chunk, **model_kwargs):
    return KVCacheDecoder(tiny_model(kinds, **model_kwargs), batch_size=2, capacity=SEQ + 8,
                          prefill_chunk=prefill_chunk)


def tokens_of(seed, length=SEQ):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(2, length)).astype(np.int32)


def feed_in_pieces(dec, tokens, cuts):
    bounds = [0, *sorted(cuts), tokens.shape[1]]
    return np.concatenate([dec.feed(tokens[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])],
                          axis=1)


# (kinds, model options, prefill_chunk, tolerance): every decodable kind, GQA and MHA, with
# and without global tokens, float32 and bf16, prefill chunks from 1 token up.
MODELS = [
    (("dense", "ssmax"), {}, 5, 3e-5),
    (("window", "local"), {"kv_heads": 4}, 8, 3e-5),
    (("lsg_pooling_g2", "lsg_stride_g2"), {}, 3, 3e-5),
    (("lsg_norm_g0", "lsg_stride_g0"), {"kv_heads": 1}, 1, 3e-5),
    (("lsg_bos_g1", "lsg_lsh_g1"), {}, 6, 3e-5),
    (("ssmax_window", "lsg_pooling_g0"), {"dtype": "bfloat16"}, 4, 6e-2),
]
MODEL_IDS = ["-".join(kinds) + ("-bf16" if "dtype" in kw else "") for kinds, kw, _, _ in MODELS]


@pytest.mark.parametrize("kinds, model_kwargs, prefill_chunk, tol", MODELS, ids=MODEL_IDS)
@settings(max_examples=3, deadline=None)
@given(cuts=st.sets(st.integers(1, SEQ - 1), max_size=6))
def test_any_pieces_equal_the_full_forward(kinds, model_kwargs, prefill_chunk, tol, cuts):
    dec = decoder(kinds, prefill_chunk, **model_kwargs)
    dec.reset()
    out = feed_in_pieces(dec, tokens_of(0), cuts)
    assert out.shape == (2, SEQ, VOCAB) and out.dtype == np.float32
    np.testing.assert_allclose(out, forward(kinds, **model_kwargs)(tokens_of(0)), atol=tol,
                               rtol=tol)
    assert dec.num_tokens == SEQ
    assert dec.feed(np.zeros((2, 0), np.int32)).shape == (2, 0, VOCAB)


@pytest.mark.parametrize("kinds, model_kwargs, prefill_chunk, tol", MODELS, ids=MODEL_IDS)
def test_greedy_generation_is_the_argmax_of_the_full_forward(kinds, model_kwargs,
                                                             prefill_chunk, tol):
    """Teacher-forced: every generated token is the argmax of the full forward's logits after
    the tokens before it."""
    del tol
    dec = decoder(kinds, prefill_chunk, **model_kwargs)
    dec.reset()
    prompt = tokens_of(1, 9)
    new = dec.generate(6, prompt=prompt)
    assert new.shape == (2, 6) and new.dtype == np.int32 and dec.num_tokens == 15
    if model_kwargs.get("dtype") == "bfloat16":
        return  # bf16 rounding may flip near ties; its logits are checked above
    tokens = np.zeros((2, SEQ), np.int32)
    tokens[:, :15] = np.concatenate([prompt, new], axis=1)
    logits = forward(kinds, **model_kwargs)(tokens)
    np.testing.assert_array_equal(np.argmax(logits[:, 8:14], axis=-1), new)


@pytest.mark.parametrize("kinds", [("dense", "ssmax"), ("lsg_pooling_g2", "lsg_stride_g2")])
def test_greedy_generation_equals_full_forward_greedy(kinds):
    dec = decoder(kinds, 5 if kinds[0] == "dense" else 3)
    prompt = tokens_of(1, 9)
    expected = FullForwardGreedy(tiny_model(kinds))(prompt, 6)
    dec.reset()
    np.testing.assert_array_equal(dec.generate(6, prompt=prompt), expected)
    dec.reset()
    np.testing.assert_array_equal(dec.generate(6, prompt=prompt, temperature=0.0), expected)
    dec.reset()  # a prompt fed first, then generation from where it stopped
    dec.feed(prompt[:, :4])
    dec.feed(prompt[:, 4:])
    np.testing.assert_array_equal(dec.generate(6), expected)


def test_padding_of_a_partial_chunk_never_reaches_later_tokens():
    """Two runs whose padded first chunk differs only in its padding: the caches' real slots
    and every later logit are bit-identical."""
    model = tiny_model(("lsg_pooling_g2", "lsg_stride_g2"))
    graph, state = nnx.split(model)
    step = jax.jit(lambda s, c, t, n: nnx.merge(graph, s).decode_chunk(t, c, num_valid=n))
    tokens = tokens_of(2, 16)
    runs = []
    for fill in (0, 7):
        caches = jax.jit(lambda s: nnx.merge(graph, s).init_kv_cache(2, 24))(state)
        first = np.full((2, 8), fill, np.int32)
        first[:, :5] = tokens[:, :5]
        _, caches = step(state, caches, jnp.asarray(first), jnp.int32(5))
        assert int(caches[0].length) == 2 + 5  # global tokens, then 5 real tokens
        logits, caches = step(state, caches, jnp.asarray(tokens[:, 5:13]), jnp.int32(8))
        runs.append((np.asarray(logits), np.asarray(caches[1].keys)[:, :2 + 13]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


# cached_attention against the naive float64 references.

ORDINARY, CHUNK, HEADS, KV_HEADS, HEAD_DIM = 32, 5, 4, 2, 6
ATTENTION_KINDS = ["dense", "ssmax", "window", "ssmax_window", "local", "local_ssmax",
                   "lsg_pooling_g2", "lsg_stride_g0", "lsg_norm_g0", "lsg_bos_g1", "lsg_lsh_g1",
                   "lsg_block_stride_g1"]


@functools.lru_cache(maxsize=None)
def jitted_cached_attention(name):  # one compiled program per chunk size (q's shape)
    options = dict(SPECS[name])
    kind = options.pop("kind")
    return jax.jit(lambda q, cache, s: kv_cache.cached_attention(
        q, cache, kind=kind, ssmax_s=s, **options))


def naive_reference(name, q_all, k, v, length, ssmax_s, chunk=CHUNK):
    """Rows ``[length, length + chunk)`` of the naive attention over the slots before them.

    LSG's reference runs on whole blocks (``naive_lsg`` compresses whole blocks only), over
    the slots ``[0, stop)`` rounded up to one: causal, so the extra slots change nothing.
    """
    options = dict(SPECS[name])
    kind = options.pop("kind")
    stop = length + chunk
    softmax = "ssmax" if kind == "ssmax" else options.get("softmax", "softmax")
    if kind == "lsg":
        g, size = options["num_global_tokens"], options["block_size"]
        whole = g + max(1, -(-(stop - g) // size)) * size
        out = naive_lsg(q_all[:, :whole], k[:, :whole], v[:, :whole], causal=True,
                        block_size=size, sparse_block_size=options["sparse_block_size"],
                        sparsity_factor=options["sparsity_factor"],
                        sparsity_type=options["sparsity_type"], num_global_tokens=g,
                        softmax=softmax, ssmax_s=ssmax_s, lsh_seed=options.get("lsh_seed", 0))
        return out[:, length:stop]
    return naive_attention(q_all[:, length:stop], k[:, :stop], v[:, :stop], causal=True,
                           window=options.get("window"), softmax=softmax, ssmax_s=ssmax_s,
                           q_offset=length, block_size=options.get("block_size"))


def random_cache_inputs(name, seed):
    """``(q_all, k, v, ssmax_s)`` float64 for ``G + ORDINARY`` slots."""
    rng = np.random.default_rng(seed)
    slots = SPECS[name].get("num_global_tokens", 0) + ORDINARY
    return (rng.normal(size=(2, slots, HEADS, HEAD_DIM)),
            rng.normal(size=(2, slots, KV_HEADS, HEAD_DIM)),
            rng.normal(size=(2, slots, KV_HEADS, HEAD_DIM)),
            rng.uniform(0.5, 1.5, size=HEADS))


@pytest.mark.parametrize("name", ATTENTION_KINDS)
@settings(max_examples=10, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_cached_attention_equals_the_naive_reference(name, data, seed):
    """Every slot of the cache holds random keys and values, also past ``length + C``: the
    rule, not zeros, keeps them out. Chunks of 1 and 5 score only ``key_span``'s slots for
    the windowed kinds; 12 queries with blocks of 8 span the whole cache."""
    q_all, k, v, ssmax_s = random_cache_inputs(name, seed)
    chunk = data.draw(st.sampled_from([1, CHUNK, 12]), label="chunk")
    length = data.draw(st.integers(0, k.shape[1] - chunk), label="length")
    options = dict(SPECS[name])
    uses_ssmax = options["kind"] == "ssmax" or options.get("softmax") == "ssmax"
    g = options.get("num_global_tokens", 0)
    with jax.enable_x64(True):
        bos = q_all[:, g] if options.get("sparsity_type") == "bos_pooling" else q_all[:, :0, 0]
        cache = kv_cache.KVCache(keys=jnp.asarray(k), values=jnp.asarray(v),
                                 length=jnp.asarray(length, jnp.int32),
                                 bos_query=jnp.asarray(bos))
        out = jitted_cached_attention(name)(jnp.asarray(q_all[:, length:length + chunk]), cache,
                                            jnp.asarray(ssmax_s) if uses_ssmax else None)
        out = np.asarray(out)
    expected = naive_reference(name, q_all, k, v, length, ssmax_s if uses_ssmax else None,
                               chunk)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, expected, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name, chunk, size", [
    ("window", 1, 5), ("window", 5, 9), ("local", 1, 16), ("local", 9, 24),
    ("lsg_pooling_g2", 1, 8), ("lsg_lsh_g1", 5, 24), ("local", 17, None), ("dense", 1, None),
    ("routing", 1, None)])
def test_key_span_holds_every_visible_slot(name, chunk, size):
    """Windowed kinds score a static span of slots at a traced offset; every slot the full
    mask shows a query of the chunk lies inside it, at every cache length."""
    options = dict(SPECS[name])
    kind = options.pop("kind")
    opts = registry.make_options(kind, **options)
    g = options.get("num_global_tokens", 0)
    capacity = g + ORDINARY
    span_of = jax.jit(lambda length: kv_cache.key_span(kind, opts, length, chunk, capacity))
    if size is None:
        assert kv_cache.key_span(kind, opts, 0, chunk, capacity) is None
        return
    q_offsets = np.arange(chunk)[:, None]
    for length in range(capacity - chunk + 1):
        start, got_size = span_of(length)
        assert got_size == size and g <= int(start) <= capacity - size
        visible = np.asarray(kv_cache._token_mask(kind, opts, length + q_offsets,
                                                  np.arange(capacity)[None]))
        slots = np.nonzero(visible.any(axis=0))[0]
        slots = slots[slots >= g]  # none when every query of the chunk is a global token
        assert slots.size or length + chunk <= g
        assert np.all((int(start) <= slots) & (slots < int(start) + size))


@pytest.mark.parametrize("name", ["dense", "lsg_pooling_g2"])
def test_cached_attention_in_bf16_keeps_float32_statistics(name):
    q_all, k, v, _ = random_cache_inputs(name, 5)
    length = 17
    bf16 = lambda x: jnp.asarray(x, jnp.bfloat16)
    cache = kv_cache.KVCache(bf16(k), bf16(v), jnp.asarray(length, jnp.int32),
                             bf16(q_all[:, :0, 0]))
    out = jitted_cached_attention(name)(bf16(q_all[:, length:length + CHUNK]), cache, None)
    assert out.dtype == jnp.bfloat16
    expected = naive_reference(name, *(np.asarray(bf16(x), np.float64) for x in (q_all, k, v)),
                               length, None)
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=2e-2, rtol=2e-2)


def test_write_chunk_and_advance():
    cache = kv_cache.init_cache(2, 6, 1, 4, bos_heads=2)
    assert cache.capacity == 6 and int(cache.length) == 0 and cache.bos_query.shape == (2, 2, 4)
    k = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 1, 4)
    q = jnp.arange(2 * 3 * 2 * 4, dtype=jnp.float32).reshape(2, 3, 2, 4)
    cache = kv_cache.write_chunk(cache, k, -k, q=q, num_global_tokens=1)
    assert int(cache.length) == 0  # the caller advances
    np.testing.assert_array_equal(cache.keys[:, :3], k)
    np.testing.assert_array_equal(cache.values[:, :3], -k)
    np.testing.assert_array_equal(cache.keys[:, 3:], 0)
    np.testing.assert_array_equal(cache.bos_query, q[:, 1])  # slot G = 1
    cache = kv_cache.advance(cache, 2)
    cache = kv_cache.write_chunk(cache, k + 100, k, q=q + 100, num_global_tokens=1)
    np.testing.assert_array_equal(cache.keys[:, 2:5], k + 100)
    np.testing.assert_array_equal(cache.keys[:, :2], k[:, :2])
    np.testing.assert_array_equal(cache.bos_query, q[:, 1])  # slot 1 is not rewritten
    with pytest.raises(ValueError, match=r"k: a chunk of 5 tokens does not fit the cache "
                                         r"\(capacity 6, 2 filled\)"):
        kv_cache.write_chunk(cache, jnp.zeros((2, 5, 1, 4)), jnp.zeros((2, 5, 1, 4)), q=q)


# Errors.


def test_cached_attention_errors():
    cache = kv_cache.init_cache(1, 8, 1, 4)
    q = jnp.zeros((1, 2, 2, 4))
    with pytest.raises(ValueError, match="attention kind 'landmark' has no KV-cache decoding; "
                                         "kinds with one: dense, ssmax, local, lsg, routing"):
        kv_cache.cached_attention(q, cache, kind="landmark")
    with pytest.raises(ValueError, match="unknown attention kind 'flash'; valid kinds"):
        kv_cache.cached_attention(q, cache, kind="flash")
    with pytest.raises(ValueError, match="causal must be True"):
        kv_cache.cached_attention(q, cache, kind="dense", causal=False)
    with pytest.raises(ValueError, match="unknown option 'blocksize'"):
        kv_cache.cached_attention(q, cache, kind="local", blocksize=4)
    with pytest.raises(ValueError, match="ssmax_s is required"):
        kv_cache.cached_attention(q, cache, kind="ssmax")
    with pytest.raises(ValueError, match="q: a chunk of 9 queries exceeds the cache capacity 8"):
        kv_cache.cached_attention(jnp.zeros((1, 9, 2, 4)), cache)
    with pytest.raises(ValueError, match="does not match the cache"):
        kv_cache.cached_attention(jnp.zeros((1, 2, 2, 6)), cache)
    with pytest.raises(ValueError, match="cache must be a KVCache"):
        kv_cache.cached_attention(q, (cache.keys, cache.values))


def test_decoder_overflow_and_argument_errors():
    dec = decoder(("dense", "ssmax"), 5)
    dec.reset()
    with pytest.raises(ValueError, match=r"tokens: 46 more tokens overflow the cache "
                                         r"\(capacity=45, 0 held\)"):
        dec.feed(tokens_of(0, 46))
    assert dec.num_tokens == 0  # nothing ran
    dec.feed(tokens_of(0, 40))
    with pytest.raises(ValueError, match=r"max_new_tokens: 6 new tokens after 40 overflow"):
        dec.generate(6)
    with pytest.raises(ValueError, match="tokens must be \\[batch_size=2, n\\]"):
        dec.feed(np.zeros((3, 2), np.int32))
    with pytest.raises(ValueError, match=r"tokens must be ids in \[0, 50\)"):
        dec.feed(np.full((2, 1), 50))
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        dec.generate(1, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k must be None or an int >= 1"):
        dec.generate(1, temperature=1.0, top_k=0)
    dec.reset()
    with pytest.raises(ValueError, match="nothing to continue: feed a prompt first"):
        dec.generate(1)
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        KVCacheDecoder(tiny_model(("dense", "ssmax")), capacity=0)


# Sampling.


def test_sampling_rules():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(4, 30)), jnp.float32)
    greedy = np.argmax(np.asarray(logits), axis=-1)
    key = step_key(0, 0)
    np.testing.assert_array_equal(sample_logits(logits, key, temperature=0.0), greedy)
    np.testing.assert_array_equal(sample_logits(logits, key, temperature=0.0, top_k=5), greedy)
    np.testing.assert_array_equal(sample_logits(logits, key, temperature=2.0, top_k=1), greedy)
    a = sample_logits(logits, key, temperature=1.0, top_k=5)
    np.testing.assert_array_equal(a, sample_logits(logits, step_key(0, 0), temperature=1.0,
                                                   top_k=5))
    # top_k keeps the k best: over many keys only they are drawn, and all of them.
    draws = np.stack([np.asarray(sample_logits(logits, step_key(1, i), temperature=3.0,
                                               top_k=3)) for i in range(40)])
    best = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
    for row in range(4):
        assert set(draws[:, row]) == set(best[row])
    # A flat distribution: different seeds give different samples.
    flat = jnp.zeros((8, 1000), jnp.float32)
    one = np.asarray(sample_logits(flat, step_key(1, 0), temperature=1.0))
    two = np.asarray(sample_logits(flat, step_key(2, 0), temperature=1.0))
    assert not np.array_equal(one, two)
    np.testing.assert_array_equal(one, sample_logits(flat, step_key(1, 0), temperature=1.0))
    # The host sampler draws the same tokens as the device function, step by step.
    sampler = Sampler(1.0, 5, seed=7)
    for i in range(3):
        np.testing.assert_array_equal(
            sampler(np.asarray(logits)),
            sample_logits(logits, step_key(7, i), temperature=1.0, top_k=5))
    np.testing.assert_array_equal(Sampler()(np.asarray(logits)), greedy)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        Sampler(1.0, seed=-1)


def test_decoder_sampling_is_deterministic_given_the_seed():
    dec = decoder(("dense", "ssmax"), 5)
    prompt = tokens_of(3, 7)
    draws = {}
    for seed in (0, 0, 1):
        dec.reset()
        draws.setdefault(seed, []).append(
            dec.generate(10, prompt=prompt, temperature=3.0, seed=seed))
    np.testing.assert_array_equal(draws[0][0], draws[0][1])
    assert not np.array_equal(draws[0][0], draws[1][0])
    # The same tokens as the host sampler on the decoder's own logits, one feed at a time.
    dec.reset()
    logits = dec.feed(prompt)[:, -1]
    sampler, tokens = Sampler(3.0, None, seed=0), []
    for _ in range(10):
        tokens.append(sampler(logits))
        logits = dec.feed(tokens[-1][:, None])[:, -1]
    np.testing.assert_array_equal(np.stack(tokens, axis=1), draws[0][0])


# make_decoder.


def titans_model():
    return tiny_model(("dense", "dense"), titans=TitansConfig("mag", window=6, chunk_size=4,
                                                              num_persistent=2))


def test_make_decoder_dispatch():
    model = tiny_model(("lsg_pooling_g2", "lsg_stride_g2"))
    dec = make_decoder(model, batch_size=2, capacity=20, prefill_chunk=4)
    assert isinstance(dec, KVCacheDecoder) and decoder_kind(model) == "kv_cache"
    assert dec.capacity == 20 and dec.prefill_chunk == 4 and dec.num_global_tokens == 2
    # 2 layers x (keys + values) x batch 2 x (2 global + 20 + 3 slack, rounded up to 128)
    # slots x 2 x 8, float32
    assert dec.cache_bytes() == 2 * 2 * (2 * 128 * 2 * 8) * 4 + 2 * 4
    assert make_decoder(model).capacity == model.cfg.train_len

    landmark = make_decoder(tiny_model(("landmark", "landmark")), batch_size=2)
    assert isinstance(landmark, LandmarkDecoder) and landmark.batch_size == 2
    assert landmark.cache_bytes() == landmark.device_cache_bytes() > 0

    stream = make_decoder(titans_model(), batch_size=2)
    assert isinstance(stream, TitansStream) and stream.cache_bytes() == stream.state_bytes()

    routing = tiny_model(("dense", "routing_w4"), kv_heads=4)
    assert isinstance(make_decoder(routing), KVCacheDecoder)
    assert decoder_kind(routing) == "kv_cache"

    with pytest.raises(ValueError, match=r"layer 1: causal must be True to decode attention "
                                         r"kind 'dense'.*FullForwardGreedy"):
        make_decoder(tiny_model(("dense", "bidirectional")))
    with pytest.raises(ValueError, match="model must be a TransformerLM"):
        make_decoder(object())


def test_landmark_and_titans_decoders_sample_with_the_same_keywords():
    prompt = tokens_of(4, 5)
    for model in (titans_model(), tiny_model(("landmark", "landmark"))):
        dec = make_decoder(model, batch_size=2)
        greedy = dec.generate(4, prompt=prompt)
        dec.reset()
        np.testing.assert_array_equal(  # top_k=1 is greedy
            dec.generate(4, prompt=prompt, temperature=1.0, top_k=1, seed=5), greedy)
        dec.reset()
        first = dec.generate(4, prompt=prompt, temperature=4.0, seed=5)
        dec.reset()
        np.testing.assert_array_equal(dec.generate(4, prompt=prompt, temperature=4.0, seed=5),
                                      first)
