"""Titans NNX blocks: causality, streaming with carried state, gradient flow, checkpointing."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxattn.attention.titans import MemoryState
from jaxattn.nn.titans import (LMMBlock, MACBlock, MAGBlock, MALBlock, NeuralMemory,
                               NeuralMemoryState)
from jaxattn.nn.titans.masked_attention import attend
from tests.fast_jit import fast_jit
from tests.model_helpers import orbax_round_trip, perturb_params

EMBED = 16
CHUNK = 2

CONFIGS = {
    "lmm": (LMMBlock, dict(num_heads=2, head_dim=4, mlp_dim=24)),
    "mac": (MACBlock, dict(num_heads=2, num_kv_heads=1, head_dim=8, segment_len=4,
                           num_persistent=2, memory_depth=2, mlp_dim=24)),
    "mag": (MAGBlock, dict(num_heads=2, head_dim=8, window=3, num_persistent=2, memory_depth=1,
                           mlp_dim=24)),
    "mal": (MALBlock, dict(num_heads=2, head_dim=8, window=5, segment_len=4, num_persistent=3,
                           memory_depth=3)),
}


def build(kind, seed=0, **overrides):
    cls, kwargs = CONFIGS[kind]
    return cls(EMBED, chunk_size=CHUNK, rngs=nnx.Rngs(seed), **{**kwargs, **overrides})


# Streams split where each architecture promises one-pass equality: MAC at segment boundaries
# (segment_len 4), the others at any chunk boundary.
SPLITS = {"lmm": [2, 8], "mac": [4, 12], "mag": [2, 6], "mal": [6, 10]}
KINDS = sorted(CONFIGS)


def perturbed(module, seed):
    """Every parameter moved off its initial value (output projections start at zero)."""
    return perturb_params(module, seed, 0.1)


def make(builder, seed=None):
    """``builder()`` (perturbed with ``seed`` unless ``None``), initialised in one compiled call
    rather than op by op."""
    graphdef = nnx.split(nnx.eval_shape(builder))[0]

    def init():
        module = builder()
        return nnx.split(module if seed is None else perturbed(module, seed))[1]

    return nnx.merge(graphdef, fast_jit(init)())


@functools.lru_cache(maxsize=None)
def block(kind, seed=0):
    return make(lambda: build(kind, seed), seed)


@functools.lru_cache(maxsize=None)
def _compiled(graphdef, method):
    def fn(params, *args):
        return getattr(nnx.merge(graphdef, params), method)(*args)

    return fast_jit(fn)


def call(module, *args, method="__call__"):
    """``module.method(*args)`` compiled once per module structure, method and shapes."""
    graphdef, params = nnx.split(module)
    return _compiled(graphdef, method)(params, *args)


def run(module, x, state):
    return call(module, x, state)


def run_fresh(module, x):
    return call(module, x)


def inputs(seed, length, batch=2):
    return jax.random.normal(jax.random.key(seed), (batch, length, EMBED))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_future_tokens_never_change_past_outputs(kind, data):
    module = block(kind)
    length = 16
    cut = data.draw(st.integers(0, length - 2), label="last unchanged token")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    x = inputs(seed, length)
    noise = 3.0 * jax.random.normal(jax.random.key(seed + 1), x.shape)
    changed = x.at[:, cut + 1:].add(noise[:, cut + 1:])
    y, _ = run_fresh(module, x)
    y2, _ = run_fresh(module, changed)
    np.testing.assert_array_equal(np.asarray(y[:, :cut + 1]), np.asarray(y2[:, :cut + 1]))
    assert not np.allclose(np.asarray(y[:, cut + 1:]), np.asarray(y2[:, cut + 1:]))


@pytest.mark.parametrize("kind", KINDS)
def test_segments_equal_one_pass(kind):
    module = block(kind)
    x = inputs(7, 16)
    y_full, state_full = run_fresh(module, x)
    state = module.init_state(x.shape[0])
    bounds = [0, *SPLITS[kind], x.shape[1]]
    pieces = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        y, state = run(module, x[:, lo:hi], state)
        pieces.append(y)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, axis=1)), np.asarray(y_full),
                               rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(state) == jax.tree.structure(state_full)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state_full)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["mag", "mal"])
def test_window_blocks_do_not_depend_on_segment_len(kind):
    """segment_len is only the scan step: 2 (< window), 6 and 16 give the same outputs."""
    x = inputs(3, 16)
    outs = []
    for segment_len in (2, 6, 16):
        module = nnx.clone(block(kind))
        module.segment_len = segment_len
        outs.append(run_fresh(module, x)[0])
    for y in outs[1:]:
        np.testing.assert_allclose(np.asarray(y), np.asarray(outs[0]), rtol=1e-5, atol=1e-5)


def test_window_attention_matches_dense_mask():
    """The cached sliding window with a persistent prefix, segment by segment, equals one
    masked attention over [p || x] (mask: prefix, or causal within the window)."""
    module = block("mag")
    h = inputs(11, 12)
    batch, length = h.shape[:2]
    num_p, window = module.persistent.num_tokens, module.window
    state = module.init_state(batch)
    cache, filled, pieces = state.cache, state.filled, []
    for lo in range(0, length, 4):
        out, cache, filled = call(module, h[:, lo:lo + 4], cache, filled,
                                  method="_window_attention")
        pieces.append(out)
    i = np.arange(length)[:, None]
    j = np.arange(length)[None]
    mask = np.concatenate([np.ones((length, num_p), bool), (j <= i) & (i - j < window)], axis=1)
    pos = jnp.arange(length, dtype=jnp.int32)
    graphdef, params = nnx.split(module)

    @fast_jit
    def reference(params):
        m = nnx.merge(graphdef, params)
        keys = jnp.concatenate([m.persistent(batch), h], axis=1)
        return attend(m.attn, h, keys, pos, pos, jnp.asarray(mask), num_p)

    expected = reference(params)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, axis=1)), np.asarray(expected),
                               rtol=1e-5, atol=1e-5)
    assert int(filled) == window - 1


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    module = block(kind)
    x = inputs(5, 16)
    probe = jax.random.normal(jax.random.key(6), x.shape)

    graphdef, params = nnx.split(module)
    g = fast_jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x)[0] * probe)))(params)
    flat = jax.tree_util.tree_flatten_with_path(g)[0]
    assert flat
    names = set()
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        names.add(name)
        assert np.all(np.isfinite(np.asarray(leaf))), name
        assert np.any(np.asarray(leaf) != 0), f"no gradient reaches {name}"
    for expected in ("query", "key", "value", "conv_q", "conv_k", "conv_v", "theta", "eta",
                     "alpha", "memory_init", "out", "gate"):
        assert any(f"'{expected}'" in n for n in names), expected


@pytest.mark.parametrize("kind", ["mac", "mag"])
def test_state_round_trips_through_orbax(kind, tmp_path):
    module = block(kind)
    x = inputs(9, 8)
    _, state = run_fresh(module, x)
    restored = orbax_round_trip(state, tmp_path / "state")
    more = inputs(10, 8)
    np.testing.assert_array_equal(np.asarray(run(module, more, restored)[0]),
                                  np.asarray(run(module, more, state)[0]))


def test_neural_memory_state_is_float32_for_bfloat16():
    memory = make(lambda: NeuralMemory(EMBED, num_heads=2, head_dim=4, chunk_size=2,
                                       rngs=nnx.Rngs(0), dtype=jnp.bfloat16))
    y, state = call(memory, inputs(0, 4).astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    assert isinstance(state, NeuralMemoryState) and isinstance(state.memory, MemoryState)
    assert all(w.dtype == jnp.float32 for w in state.memory.weights + state.memory.momentum)
    assert [w.shape for w in state.memory.weights] == [(2, 2, 4, 16), (2, 2, 16, 4)]


@pytest.mark.parametrize("kind", KINDS)
def test_max_grad_norm_reaches_the_memory(kind):
    """Every block passes ``max_grad_norm`` to its memory: a bound no gradient reaches gives
    the default outputs, a tiny one changes them (a memory written with tiny steps)."""
    x = inputs(11, 8)
    base = run_fresh(block(kind, 2), x)[0]
    params = nnx.state(block(kind, 2))

    def with_bound(bound):
        module = build(kind, 2, max_grad_norm=bound)
        nnx.update(module, params)
        return run_fresh(module, x)[0]

    np.testing.assert_allclose(np.asarray(with_bound(1e30)), np.asarray(base), rtol=1e-5,
                               atol=1e-5)
    assert not np.allclose(np.asarray(with_bound(1e-6)), np.asarray(base), rtol=1e-4, atol=1e-4)


BAD = [
    ("sequence length 6 is not a positive multiple of segment_len=4",
     lambda: block("mac")(inputs(0, 6))),
    ("sequence length 3 is not a positive multiple of chunk_size=2",
     lambda: block("mag")(inputs(0, 3))),
    ("sequence length 5", lambda: block("lmm")(inputs(0, 5))),
    (r"x must be \[batch, seq, 16\]", lambda: block("mal")(jnp.ones((2, 4, 8)))),
    ("segment_len", lambda: MACBlock(EMBED, num_heads=2, head_dim=8, segment_len=5, chunk_size=2,
                                     rngs=nnx.Rngs(0))),
    ("window", lambda: MAGBlock(EMBED, num_heads=2, head_dim=8, window=0, chunk_size=2,
                                rngs=nnx.Rngs(0))),
    ("max_lr", lambda: NeuralMemory(EMBED, num_heads=2, head_dim=4, chunk_size=2, max_lr=-1.0,
                                    rngs=nnx.Rngs(0))),
    ("depth", lambda: NeuralMemory(EMBED, num_heads=2, head_dim=4, chunk_size=2, depth=0,
                                   rngs=nnx.Rngs(0))),
    ("max_grad_norm", lambda: NeuralMemory(EMBED, num_heads=2, head_dim=4, chunk_size=2,
                                           max_grad_norm=0.0, rngs=nnx.Rngs(0))),
]


@pytest.mark.parametrize("match,call", BAD, ids=[m.split()[0] for m, _ in BAD])
def test_bad_inputs_raise(match, call):
    with pytest.raises(ValueError, match=match):
        call()
