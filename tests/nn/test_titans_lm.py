"""TransformerLM with Titans layers: causality, gradients, streaming, packed documents, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxattn.nn import AttentionSpec, TransformerConfig, TransformerLM
from jaxattn.nn.titans import MACBlock, MAGBlock, MALBlock, LMMBlock, TitansConfig
from tests.fast_jit import fast_jit

VOCAB = 50
SEQ = 16
# max_lr 0.1 (not the default 0.01): a strong memory, so that what it carries shows up
# clearly in these small random-input models.
TITANS = {
    "mac": dict(segment_len=8, chunk_size=4, num_persistent=2, max_lr=0.1),
    "mag": dict(window=6, chunk_size=4, num_persistent=2, max_lr=0.1),
    "mal": dict(window=5, chunk_size=4, segment_len=4, num_persistent=3, memory_depth=1,
                max_lr=0.1),
    "lmm": dict(chunk_size=4, memory_depth=3, memory_hidden=12, max_lr=0.1),
}
BLOCKS = {"mac": MACBlock, "mag": MAGBlock, "mal": MALBlock, "lmm": LMMBlock}
ARCHS = sorted(TITANS)
# Stream pieces at multiples of what each arch needs: MAC segments (8), others chunks (4).
PIECES = {"mac": [8, 8], "mag": [4, 8, 4], "mal": [12, 4], "lmm": [4, 4, 8]}


def model_config(arch, num_layers=2, **overrides):
    cfg = dict(vocab_size=VOCAB, num_layers=num_layers, embed_dim=32, num_heads=4,
               num_kv_heads=2, head_dim=8, mlp_dim=48, train_len=SEQ,
               attention=(AttentionSpec.create("dense"),) * num_layers,
               titans=TitansConfig(arch, **TITANS[arch]))
    cfg.update(overrides)
    return TransformerConfig(**cfg)


def _perturbed(model, seed):
    """Every parameter moved off its initial value (output projections start at zero), with
    host noise (compiling a random draw per parameter would dominate these tests)."""
    rng = np.random.default_rng(seed + 1)
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    leaves = [x + jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype) for x in leaves]
    nnx.update(model, jax.tree.unflatten(treedef, leaves))
    return model


@functools.lru_cache(maxsize=None)
def lm(arch, seed=0):
    """A perturbed tiny Titans LM."""
    return _perturbed(TransformerLM(model_config(arch), rngs=nnx.Rngs(seed)), seed)


@functools.lru_cache(maxsize=None)
def _compiled(graphdef, method, kwargs_names):
    def fn(params, *args):
        *args, kwargs = args
        return getattr(nnx.merge(graphdef, params), method)(*args,
                                                             **dict(zip(kwargs_names, kwargs)))

    return fast_jit(fn)


def call(model, *args, method="__call__", **kwargs):
    graphdef, params = nnx.split(model)
    names = tuple(sorted(kwargs))
    return _compiled(graphdef, method, names)(params, *args, tuple(kwargs[n] for n in names))


def tokens(seed, length=SEQ, batch=2):
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (batch, length),
                                                            dtype=np.int32))


@pytest.mark.parametrize("arch", ARCHS)
def test_titans_layers_and_causality(arch):
    """Every layer is a block of the arch between shared embeddings and the tied unembedding;
    changing tokens from ``cut`` on leaves the logits before ``cut`` bit-identical."""
    model = lm(arch)
    assert len(model.blocks) == 2
    assert all(type(block) is BLOCKS[arch] for block in model.blocks)
    assert model.unembed is None and model.global_tokens is None
    x = tokens(1)
    logits = call(model, x)
    assert logits.shape == (2, SEQ, VOCAB) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
    for cut in (3, 8, 13):  # inside a chunk, at a segment boundary, late
        changed = x.at[:, cut:].set((x[:, cut:] + 7) % VOCAB)
        a, b = call(model, x), call(model, changed)
        np.testing.assert_array_equal(np.asarray(a[:, :cut]), np.asarray(b[:, :cut]))
        assert not np.allclose(np.asarray(a[:, cut:]), np.asarray(b[:, cut:]))


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_every_parameter(arch):
    # One layer holds every kind of parameter (and halves the compile of the second-order
    # gradient through the memory's scan).
    model = _perturbed(TransformerLM(model_config(arch, num_layers=1), rngs=nnx.Rngs(0)), 0)
    x = tokens(2)
    probe = jax.random.normal(jax.random.key(3), (2, SEQ, VOCAB))
    graphdef, params = nnx.split(model)
    grads = fast_jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) * probe)))(params)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    assert len(flat) == len(jax.tree.leaves(params))
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(np.asarray(leaf))), name
        assert np.any(np.asarray(leaf) != 0), f"no gradient reaches {name}"
    names = " ".join(jax.tree_util.keystr(path) for path, _ in flat)
    for expected in ("embed", "final_norm", "memory_init", "theta", "conv_q"):
        assert expected in names, expected


@pytest.mark.parametrize("arch", ARCHS)
def test_stream_in_pieces_equals_one_pass(arch):
    model = lm(arch)
    x = tokens(4)
    full = call(model, x)
    state = model.init_stream_state(2)
    pieces, start = [], 0
    for size in PIECES[arch]:
        logits, state = call(model, x[:, start:start + size], state, method="stream")
        pieces.append(logits)
        start += size
    assert start == SEQ
    np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, axis=1)), np.asarray(full),
                               rtol=1e-5, atol=1e-5)
    _, one_state = call(model, x, None, method="stream")
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(one_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # The state's size is fixed by the model, not by the tokens seen.
    sizes = [leaf.shape for leaf in jax.tree.leaves(state)]
    assert sizes == [leaf.shape for leaf in jax.tree.leaves(model.init_stream_state(2))]


@pytest.mark.parametrize("arch", ["mac", "mag", "mal"])
def test_packed_stream_with_segment_ids_equals_one_pass(arch):
    """The window caches carry the cached tokens' document ids across calls."""
    model = lm(arch)
    x = tokens(5)
    ids = jnp.asarray(np.repeat(np.array([[1] * 6 + [2] * 7 + [0] * 3]), 2, axis=0),
                      jnp.int32)
    full = call(model, x, segment_ids=ids)
    assert not np.allclose(np.asarray(full), np.asarray(call(model, x)))
    state, pieces, start = model.init_stream_state(2), [], 0
    for size in PIECES[arch]:
        logits, state = call(model, x[:, start:start + size], state, method="stream",
                             segment_ids=ids[:, start:start + size])
        pieces.append(logits)
        start += size
    np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, axis=1)), np.asarray(full),
                               rtol=1e-5, atol=1e-5)


def _memory_silenced(model):
    """A copy whose memories output zero (their output projections zeroed): what is left of
    MAC and MAG is the attention (and the token-wise MLP)."""
    model = nnx.clone(model)
    for block in model.blocks:
        block.memory.out.kernel[...] = jnp.zeros_like(block.memory.out.kernel[...])
    return model


@pytest.mark.parametrize("arch", ["mac", "mag"])
def test_attention_stays_inside_documents(arch):
    """Document B (tokens 6..15) does not see document A (0..5) through attention: with the
    memory silenced, changing A leaves B's logits unchanged with segment ids, not without."""
    model = _memory_silenced(lm(arch))
    x = tokens(6)
    changed = x.at[:, :6].set((x[:, :6] + 11) % VOCAB)
    ids = jnp.asarray(np.repeat(np.array([[1] * 6 + [2] * 10]), 2, axis=0), jnp.int32)
    a, b = call(model, x, segment_ids=ids), call(model, changed, segment_ids=ids)
    np.testing.assert_allclose(np.asarray(a[:, 6:]), np.asarray(b[:, 6:]), rtol=1e-5, atol=1e-6)
    a, b = call(model, x), call(model, changed)
    assert not np.allclose(np.asarray(a[:, 6:]), np.asarray(b[:, 6:]), rtol=1e-5, atol=1e-6)


def test_memory_carries_across_documents():
    """Documented behaviour: the memory is a recurrent state, not reset at a document
    boundary, so (with the memory on) document B's logits depend on document A."""
    model = lm("lmm")
    x = tokens(7)
    changed = x.at[:, :8].set((x[:, :8] + 11) % VOCAB)
    ids = jnp.asarray(np.repeat(np.array([[1] * 8 + [2] * 8]), 2, axis=0), jnp.int32)
    a, b = call(model, x, segment_ids=ids), call(model, changed, segment_ids=ids)
    assert not np.allclose(np.asarray(a[:, 8:]), np.asarray(b[:, 8:]))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(call(model, x)))  # no attention


def test_positions_are_ignored():
    model = lm("mag")
    x = tokens(8)
    shifted = jnp.broadcast_to(100 + jnp.arange(SEQ, dtype=jnp.int32), x.shape)
    np.testing.assert_array_equal(np.asarray(call(model, x, positions=shifted)),
                                  np.asarray(call(model, x)))


def test_bfloat16_titans_lm_keeps_float32_logits_and_state():
    cfg = model_config("mag", num_layers=1, dtype="bfloat16")
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    logits, state = model.stream(tokens(9, length=8))
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(logits)))
    assert all(w.dtype == jnp.float32 for w in state[0].memory.memory.weights)


LENGTH_ERRORS = [
    ("mac", 12, r"tokens: sequence length 12 is not a positive multiple of "
                r"model.titans.segment_len=8 .*pad to 16"),
    ("mag", 6, r"tokens: sequence length 6 is not a positive multiple of "
               r"model.titans.chunk_size=4 .*pad to 8"),
    ("lmm", 3, r"model.titans.chunk_size=4"),
]


@pytest.mark.parametrize("arch,length,match", LENGTH_ERRORS, ids=[a for a, _, _ in LENGTH_ERRORS])
def test_bad_lengths_name_the_multiple(arch, length, match):
    model = lm(arch)
    with pytest.raises(ValueError, match=match):
        model(tokens(0, length=length))
    with pytest.raises(ValueError, match=match):
        model.stream(tokens(0, length=length))


def test_stream_errors():
    model = lm("mac")
    with pytest.raises(ValueError, match="one block state per layer"):
        model.stream(tokens(0), model.init_stream_state(2)[:1])
    with pytest.raises(ValueError, match=r"segment_ids must be an int array of shape"):
        model(tokens(0), segment_ids=jnp.ones((2, 8), jnp.int32))
    dense = TransformerLM(model_config("mac", titans=None), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs Titans layers"):
        dense.stream(tokens(0))


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="xl"), r"model.titans.arch must be one of mac, mag, mal, lmm, got 'xl'"),
    (dict(arch="mag"), r"model.titans.window must be a positive int \(required for arch 'mag'"),
    (dict(arch="mac"), r"model.titans.segment_len must be a positive int \(required"),
    (dict(arch="mac", segment_len=6, chunk_size=4), r"segment_len \(6\) must be a multiple of "
                                                    r"model.titans.chunk_size \(4\)"),
    (dict(arch="mac", segment_len=8, window=4), r"model.titans.window is not used by arch 'mac'"),
    (dict(arch="lmm", num_persistent=2), r"num_persistent is not used by arch 'lmm'"),
    (dict(arch="mal", window=4, max_lr=0.0), r"max_lr must be a positive finite float"),
    (dict(arch="mag", window=4, chunk_size=0), r"chunk_size must be a positive int"),
    (dict(arch="lmm", max_grad_norm=-1.0), r"model.titans.max_grad_norm must be None \(no "
                                          r"clipping\) or a positive finite float"),
])
def test_bad_titans_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TitansConfig(**kwargs)


@pytest.mark.parametrize("overrides,match", [
    (dict(attention=(AttentionSpec.create("ssmax"),) * 2), r"config.attention must stay the "
                                                          r"plain causal dense kind"),
    (dict(attention=(AttentionSpec.create("dense", window=4),) * 2), r"plain causal dense"),
    (dict(dropout_rate=0.1), r"model.dropout_rate must be 0 with model.titans"),
    (dict(titans={"arch": "mac"}), r"model.titans must be a TitansConfig"),
])
def test_bad_model_config_with_titans(overrides, match):
    with pytest.raises(ValueError, match=match):
        model_config("mac", **overrides)
