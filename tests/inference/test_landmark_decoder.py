"""LandmarkDecoder: retrieving every cached block reproduces the full grouped-softmax forward;
top-k retrieval matches a step-by-step float64 reference of §3.2; causality; host offloading is
exact; cache growth, generation, reset and argument errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxattn.inference import LandmarkDecoder, RetrievalConfig
from jaxattn.nn import AttentionSpec, TransformerConfig, TransformerLM
from tests.attention.test_landmark_retrieval import (np_rope, np_select_scores,
                                                     py_retrieved_positions, py_window_start)
from tests.naive_landmark import naive_landmark_attention
from tests.model_helpers import perturb_params

VOCAB = 50
MEM_FREQ = 3


def landmark_model(*, mem_freq=MEM_FREQ, seed=0, dtype="float32", softmax="softmax",
                   causal=True, kinds=None, num_layers=2):
    spec = AttentionSpec.create("landmark", mem_freq=mem_freq, softmax=softmax, causal=causal)
    kinds = ["landmark"] * num_layers if kinds is None else kinds
    attention = [spec if kind == "landmark" else AttentionSpec.create(kind) for kind in kinds]
    cfg = TransformerConfig(vocab_size=VOCAB, num_layers=len(attention), embed_dim=32,
                            num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, train_len=64,
                            attention=attention, dtype=dtype, ssmax_init=0.8)
    model = TransformerLM(cfg, rngs=nnx.Rngs(seed))
    # Output projections start at zero; perturb every parameter as training would.
    return perturb_params(model, seed, 0.05)


@functools.lru_cache(maxsize=None)
def cached_model(**kwargs):
    model = landmark_model(**kwargs)
    graph, state = nnx.split(model)
    forward = jax.jit(lambda state, tokens: nnx.merge(graph, state)(tokens))
    return model, lambda tokens: np.asarray(forward(state, jnp.asarray(tokens)))


def tokens_of(seed, batch, length):
    return np.random.default_rng(seed).integers(0, VOCAB, size=(batch, length)).astype(np.int32)


def feed_in_pieces(decoder, tokens, cuts):
    """Feeds ``tokens`` cut at ``cuts``; returns the concatenated logits."""
    bounds = [0, *cuts, tokens.shape[1]]
    outs = [decoder.feed(tokens[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return np.concatenate(outs, axis=1)


# Retrieving everything is the full forward.

# Every selection with and without offloading; every chunk size twice.
FULL_CASES = [("per_token_and_head", 1, False), ("per_token_and_head", 2, True),
              ("max_over_tokens", 3, False), ("max_over_tokens", 1, True),
              ("max_over_heads", 2, False), ("max_over_heads", 3, True)]


@pytest.mark.parametrize("selection, chunk_blocks, offload", FULL_CASES)
def test_retrieving_every_block_equals_full_forward(selection, chunk_blocks, offload):
    model, forward = cached_model()
    length = 35  # 11 full blocks and a partial one
    tokens = tokens_of(chunk_blocks, 2, length)
    # Past the partial block: future tokens cannot change these logits.
    full = forward(np.pad(tokens, ((0, 0), (0, 1))))[:, :length]
    num_blocks = -(-length // MEM_FREQ)
    decoder = LandmarkDecoder(model, RetrievalConfig(top_k=num_blocks, chunk_blocks=chunk_blocks,
                                                     selection=selection, offload=offload),
                              batch_size=2)
    out = feed_in_pieces(decoder, tokens, [1, 2, 7, 8, 20, 33])
    assert out.shape == (2, length, VOCAB) and out.dtype == np.float32
    np.testing.assert_allclose(out, full, atol=2e-5, rtol=2e-5)
    assert decoder.num_tokens == length
    # Windows commit when the next block needs room: 11 landmarks so far.
    assert decoder.num_cached == (length - 1) // MEM_FREQ // chunk_blocks * chunk_blocks
    assert decoder.num_cached > 0


def test_ssmax_model_retrieving_every_block_equals_full_forward():
    """SSMax's n_i counts retrieved landmarks as the full forward counts its past blocks."""
    model, forward = cached_model(softmax="ssmax", mem_freq=4, seed=3)
    tokens = tokens_of(5, 1, 32)
    decoder = LandmarkDecoder(model, RetrievalConfig(top_k=8, chunk_blocks=2), batch_size=1)
    out = feed_in_pieces(decoder, tokens, [3, 13, 14])
    np.testing.assert_allclose(out, forward(tokens), atol=2e-5, rtol=2e-5)


def test_bfloat16_model_retrieving_every_block_close_to_full_forward():
    model, forward = cached_model(dtype="bfloat16", seed=4)
    tokens = tokens_of(6, 2, 24)
    decoder = LandmarkDecoder(model, RetrievalConfig(top_k=8, chunk_blocks=2), batch_size=2)
    out = feed_in_pieces(decoder, tokens, [5, 11])
    full = forward(tokens)
    scale = np.abs(full).max()
    np.testing.assert_allclose(out, full, atol=0.03 * scale)
    # Still far closer than an unrelated stream.
    other = forward(tokens_of(7, 2, 24))
    assert np.abs(out - full).mean() < 0.2 * np.abs(other - full).mean()


# Retrieving fewer blocks than cached: the decoder against a step-by-step reference.

def reference_stream_logits(model, tokens, *, top_k, chunk_blocks, selection):
    """One-layer model over ``tokens [B, n]`` as the paper's §3.2 inference: landmarks after
    every mem_freq tokens, windows of chunk_blocks blocks at ``S = min(N, k + 1) * block``;
    each query scores the cached landmarks (keys before RoPE, rotated at the stingy slots),
    keeps its top_k blocks and attends (naive float64 eqs. 1-4) to [retrieved blocks at their
    mapped positions] + [window]. Returns the logits of the ordinary tokens."""
    cfg = model.cfg
    mem_freq = cfg.landmark.mem_freq
    block = mem_freq + 1
    layer = model.blocks[0]
    attn = layer.attn
    heads, kv_heads = cfg.num_heads, cfg.num_kv_heads
    batch, n = tokens.shape
    stream, where = [], []
    for i in range(n):
        if i and i % mem_freq == 0:
            stream.append(np.full(batch, cfg.landmark_id))
        where.append(len(stream))
        stream.append(tokens[:, i])
    stream = np.stack(stream, axis=1).astype(np.int32)
    width = chunk_blocks * block
    cache_k, cache_v = [], []  # per block: [B, block, K, D] before RoPE
    logits_out = np.zeros((batch, stream.shape[1], cfg.vocab_size), np.float32)
    for start in range(0, stream.shape[1], width):
        filled = min(width, stream.shape[1] - start)
        window = np.zeros((batch, width), np.int32)
        window[:, :filled] = stream[:, start:start + filled]
        cached = len(cache_k)
        positions = py_window_start(cached, top_k, block) + np.arange(width)
        x = model.embed(jnp.asarray(window))
        q, k, v = (np.asarray(a, np.float64) for a in attn.project(layer.attn_norm(x)))
        q_rot = np_rope(q, positions[None, :, None], attn.rope_base)
        k_rot = np_rope(k, positions[None, :, None], attn.rope_base)
        if cached:
            landmarks = np.stack(cache_k, axis=1)[:, :, -1]
            scores = np_select_scores(q_rot, landmarks, cached, top_k=top_k, block=block,
                                      selection=selection, rope_base=attn.rope_base)
        out = np.zeros_like(q_rot)
        for b, t, h in np.ndindex(batch, filled, heads):
            kv = h // (heads // kv_heads)
            keys, values = [], []
            if cached:
                row = scores[b, t, h]
                picked = sorted(np.argsort(-row, kind="stable")[:min(top_k, cached)])
                mapped = py_retrieved_positions(picked, cached, top_k, block)
                for j, pos in zip(picked, mapped):
                    keys.append(np_rope(cache_k[j][b, :, kv], np.array(pos), attn.rope_base))
                    values.append(cache_v[j][b, :, kv])
            keys.append(k_rot[b, :, kv])
            values.append(v[b, :, kv])
            keys, values = np.concatenate(keys), np.concatenate(values)
            i = len(keys) - width + t
            query = np.zeros((1, i + 1, 1, q.shape[-1]))
            query[0, i, 0] = q_rot[b, t, h]
            out[b, t, h] = naive_landmark_attention(
                query, keys[None, :i + 1, None], values[None, :i + 1, None], block_size=block)[0, i, 0]
        x = x + attn.output(jnp.asarray(out, jnp.float32))
        x = x + layer.mlp(layer.mlp_norm(x))
        logits_out[:, start:start + filled] = np.asarray(
            model.logits(model.final_norm(x)))[:, :filled]
        if filled == width:
            for c in range(chunk_blocks):
                cache_k.append(k[:, c * block:(c + 1) * block])
                cache_v.append(v[:, c * block:(c + 1) * block])
    return logits_out[:, where]


@pytest.mark.parametrize("selection, top_k, chunk_blocks", [
    ("per_token_and_head", 1, 1), ("max_over_tokens", 2, 1), ("max_over_heads", 1, 2)])
def test_top_k_retrieval_matches_reference(selection, top_k, chunk_blocks):
    """N > k: the stingy scoring positions, the mapped positions of the retrieved blocks and
    the window start all matter here (with every block retrieved they reduce to the truth)."""
    model = landmark_model(num_layers=1, mem_freq=2, seed=7)
    tokens = tokens_of(13, 2, 17)
    decoder = LandmarkDecoder(model, RetrievalConfig(top_k=top_k, chunk_blocks=chunk_blocks,
                                                     selection=selection, initial_capacity=2),
                              batch_size=2)
    out = feed_in_pieces(decoder, tokens, [3, 4, 11])
    assert decoder.num_cached > top_k + 1
    want = reference_stream_logits(model, tokens, top_k=top_k, chunk_blocks=chunk_blocks,
                                   selection=selection)
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("selection", ["per_token_and_head", "max_over_heads", "max_over_tokens"])
def test_decoder_is_causal(selection):
    """With top_k < N, a token's logits never depend on later tokens, even in one feed call."""
    model, _ = cached_model()
    decoder = LandmarkDecoder(model, RetrievalConfig(top_k=1, chunk_blocks=3, selection=selection))
    tokens = tokens_of(14, 1, 30)
    base = decoder.feed(tokens)
    rng = np.random.default_rng(15)
    for cut in (25, 28):
        changed = tokens.copy()
        changed[:, cut:] = (tokens[:, cut:] + rng.integers(1, VOCAB, size=(1, 30 - cut))) % VOCAB
        decoder.reset()
        out = decoder.feed(changed)
        np.testing.assert_array_equal(out[:, :cut], base[:, :cut])
        assert not np.allclose(out[:, cut:], base[:, cut:])


# Offloading.

@pytest.mark.parametrize("top_k, selection", [(1, "max_over_tokens"), (2, "per_token_and_head")])
def test_offload_is_bitwise_identical_and_keeps_only_landmarks_on_device(top_k, selection):
    model, forward = cached_model()
    tokens = tokens_of(top_k, 2, 42)  # 14 blocks, windows of 2
    decoders = {offload: LandmarkDecoder(
        model, RetrievalConfig(top_k=top_k, chunk_blocks=2, selection=selection, offload=offload,
                               initial_capacity=8), batch_size=2) for offload in (False, True)}
    outs = {offload: feed_in_pieces(d, tokens, [4, 20, 21]) for offload, d in decoders.items()}
    np.testing.assert_array_equal(outs[True], outs[False])
    # Retrieval is not vacuous here: the first window (no cache) is the full forward, later
    # tokens see only top_k of the cached blocks.
    full = forward(tokens)
    np.testing.assert_allclose(outs[True][:, :6], full[:, :6], atol=2e-5)
    assert not np.allclose(outs[True][:, -6:], full[:, -6:], atol=1e-3)

    host, device = decoders[True], decoders[False]
    assert host.num_cached == device.num_cached == 12
    assert host.capacity == device.capacity == 16
    layers, batch, kv_heads, head_dim, block = 2, 2, 2, 8, MEM_FREQ + 1
    landmark_bytes = layers * batch * host.capacity * kv_heads * head_dim * 4
    block_bytes = 2 * layers * batch * host.capacity * block * kv_heads * head_dim * 4
    assert host.device_cache_bytes() == landmark_bytes
    assert host.host_cache_bytes() == block_bytes > 0
    assert device.device_cache_bytes() == landmark_bytes + block_bytes
    assert device.host_cache_bytes() == 0
    for cache in host._caches:
        assert isinstance(cache.keys, np.ndarray) and isinstance(cache.values, np.ndarray)
        assert isinstance(cache.landmarks, jax.Array)
    for cache in device._caches:
        assert isinstance(cache.keys, jax.Array)
    # Both caches hold the same blocks; the landmarks are the blocks' last keys.
    for a, b in zip(host._caches, device._caches):
        np.testing.assert_array_equal(a.keys, np.asarray(b.keys))
        np.testing.assert_array_equal(a.values, np.asarray(b.values))
        np.testing.assert_array_equal(np.asarray(a.landmarks), a.keys[:, :, -1])
        assert not np.any(a.keys[:, host.num_cached:])


# Cache growth.

def test_cache_grows_matches_a_big_cache_and_resets():
    model, _ = cached_model()
    tokens = tokens_of(9, 1, 28)
    small = LandmarkDecoder(model, RetrievalConfig(top_k=2, chunk_blocks=2, initial_capacity=1))
    big = LandmarkDecoder(model, RetrievalConfig(top_k=2, chunk_blocks=2, initial_capacity=64))
    assert small.capacity == 2  # at least top_k
    assert big.capacity == 64
    out_small = feed_in_pieces(small, tokens, [9, 10, 25])
    out_big = feed_in_pieces(big, tokens, [9, 10, 25])
    # 9 landmarks so far, 4 full windows of 2 blocks committed.
    assert small.num_cached == big.num_cached == 8
    capacity = 2
    for cached in range(2, 9, 2):
        if cached > capacity:
            capacity = max(2 * capacity, cached)
    assert small.capacity == capacity == 8
    assert big.capacity == 64
    np.testing.assert_allclose(out_small, out_big, atol=1e-6, rtol=1e-6)

    # reset() forgets the stream: the same tokens give the same logits again.
    small.reset()
    assert small.num_cached == 0 and small.num_tokens == 0 and small.capacity == 2
    with pytest.raises(ValueError, match="feed a prompt first"):
        small.generate(1)
    np.testing.assert_array_equal(feed_in_pieces(small, tokens, [9, 10, 25]), out_small)


# Generation.

def test_generate_greedy_matches_full_forward():
    model, forward = cached_model(seed=5)
    prompt = tokens_of(10, 2, 7)
    steps = 8
    padded = 18  # one compiled length for every check; later tokens cannot change the past
    decoder = LandmarkDecoder(model, RetrievalConfig(top_k=6, chunk_blocks=2), batch_size=2)
    generated = decoder.generate(steps, prompt=prompt)
    assert generated.shape == (2, steps) and np.issubdtype(generated.dtype, np.integer)
    assert decoder.num_tokens == 7 + steps
    sequence = np.concatenate([prompt, generated], axis=1)
    for s in range(steps):
        prefix = sequence[:, :7 + s]
        logits = forward(np.pad(prefix, ((0, 0), (0, padded - prefix.shape[1]))))[:, 7 + s - 1]
        for b in range(2):
            chosen = generated[b, s]
            # Exact argmax unless the runner-up is within float noise.
            assert chosen == np.argmax(logits[b]) or logits[b, chosen] >= logits[b].max() - 1e-4
    # Continuing after generation keeps the stream.
    more = decoder.generate(2)
    assert more.shape == (2, 2) and decoder.num_tokens == 7 + steps + 2


def test_feeding_nothing_returns_empty_logits():
    model, _ = cached_model()
    decoder = LandmarkDecoder(model, RetrievalConfig(top_k=2))
    out = decoder.feed(np.zeros((1, 0), np.int32))
    assert out.shape == (1, 0, VOCAB), out.shape  # "[B, n, vocab]"
    assert decoder.num_tokens == 0


# Errors.

@pytest.mark.parametrize("kwargs, match", [
    (dict(kinds=["dense", "dense"]), r"landmark attention in every layer"),
    (dict(kinds=["landmark", "dense"]), r"landmark attention in every layer"),
    (dict(causal=False), r"causal"),
])
def test_unsupported_models_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LandmarkDecoder(landmark_model(**kwargs), RetrievalConfig())


def test_not_a_transformer_raises():
    with pytest.raises(ValueError, match="model must be a TransformerLM"):
        LandmarkDecoder(object(), RetrievalConfig())


@pytest.mark.parametrize("kwargs, match", [
    (dict(top_k=0), r"top_k must be a positive int"),
    (dict(top_k=2.0), r"top_k must be a positive int"),
    (dict(top_k=True), r"top_k must be a positive int"),
    (dict(chunk_blocks=0), r"chunk_blocks must be a positive int"),
    (dict(initial_capacity=-1), r"initial_capacity must be a positive int"),
    (dict(selection="best"), r"selection must be one of"),
    (dict(offload=1), r"offload must be a bool"),
    (dict(offload="yes"), r"offload must be a bool"),
])
def test_bad_retrieval_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RetrievalConfig(**kwargs)


def test_bad_decoder_arguments_and_tokens():
    model, _ = cached_model()
    with pytest.raises(ValueError, match="config must be a RetrievalConfig"):
        LandmarkDecoder(model, dict(top_k=2))
    for bad in (0, 1.5, None):
        with pytest.raises(ValueError, match="batch_size must be a positive int"):
            LandmarkDecoder(model, RetrievalConfig(), batch_size=bad)
    decoder = LandmarkDecoder(model, RetrievalConfig(top_k=2), batch_size=2)
    with pytest.raises(ValueError, match="feed a prompt first"):
        decoder.generate(3)
    with pytest.raises(ValueError, match=r"tokens must be \[batch_size=2, n\]"):
        decoder.feed(np.zeros((1, 4), np.int32))
    with pytest.raises(ValueError, match=r"tokens must be \[batch_size=2, n\]"):
        decoder.feed(np.zeros((4,), np.int32))
    with pytest.raises(ValueError, match="tokens must be integer ids"):
        decoder.feed(np.zeros((2, 4), np.float32))
    for bad in (0, 2.0):
        with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
            decoder.generate(bad)
    assert decoder.num_tokens == 0  # nothing was consumed by the failed calls
