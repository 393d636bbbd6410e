"""The contract every registered attention kind meets through every backend that runs on CPU.

For each kind x backend (``Variant.backends``, those runnable on a CPU): values against the
kind's float64 naive oracle (``tests/naive_*.py``) on random shapes, GQA and packed segments;
gradients against the reference backend's (and the reference's against finite differences);
causality (later tokens never change earlier outputs); bf16 inputs (bf16 out, float32
statistics); and the bad-input table. A kind registered without an entry in ``KINDS`` fails
``test_every_registered_kind_is_covered``: adding a variant means adding its oracle here.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxattn.attention import registry
from tests.fast_jit import fast_jit
from tests.naive_attention import naive_attention
from tests.naive_landmark import naive_landmark_attention
from tests.naive_lsg import naive_lsg
from tests.naive_routing import naive_routing_attention

CPU_BACKENDS = ("reference", "xla_chunked")


@dataclasses.dataclass(frozen=True)
class KindCase:
    """How the contract runs one kind: its options, length rule and float64 oracle.

    ``lengths(n)`` is a valid sequence length for ``n`` units; ``prefix`` positions are
    exempt from the causality cut (LSG's global tokens); ``shared_kv``: keys are the
    queries (routing's shared QK, no GQA).
    """

    options: dict
    lengths: object
    oracle: object
    prefix: int = 0
    shared_kv: bool = False


def _dense_oracle(q, k, v, opts, seg, s, state):
    del state
    return naive_attention(q, k, v, causal=opts.causal, window=opts.window, segment_ids=seg,
                           softmax=opts.softmax, ssmax_s=s)


def _local_oracle(q, k, v, opts, seg, s, state):
    del state
    return naive_attention(q, k, v, causal=opts.causal, block_size=opts.block_size,
                           segment_ids=seg, softmax=opts.softmax, ssmax_s=s)


def _lsg_oracle(q, k, v, opts, seg, s, state):
    del state
    fields = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    return naive_lsg(q, k, v, segment_ids=seg, ssmax_s=s, **fields)


def _landmark_oracle(q, k, v, opts, seg, s, state):
    del state
    return naive_landmark_attention(q, k, v, block_size=opts.mem_freq + 1, causal=opts.causal,
                                    segment_ids=seg, softmax=opts.softmax, ssmax_s=s)


def _routing_oracle(q, k, v, opts, seg, s, state):
    routing = {name: getattr(opts, name) for name in (
        "num_clusters", "cluster_size", "causal", "assignment", "shared_qk", "local_heads",
        "block_size")}
    return naive_routing_attention(q, k, v, softmax=opts.softmax, ssmax_s=s,
                                   centroids=np.asarray(state), segment_ids=seg, **routing)


KINDS = {
    "dense": KindCase({"window": 6}, lambda n: 8 * n, _dense_oracle),
    "ssmax": KindCase({}, lambda n: 8 * n, _dense_oracle),
    "local": KindCase({"block_size": 8}, lambda n: 8 * n, _local_oracle),
    "lsg": KindCase({"block_size": 8, "sparse_block_size": 4, "sparsity_factor": 2,
                     "sparsity_type": "pooling", "num_global_tokens": 1},
                    lambda n: 1 + 8 * (n + 2), _lsg_oracle, prefix=1),
    "landmark": KindCase({"mem_freq": 3}, lambda n: 8 * n, _landmark_oracle),
    "routing": KindCase({"num_clusters": 2, "cluster_size": 8, "local_heads": 1,
                         "block_size": 8}, lambda n: 16 * n, _routing_oracle, shared_kv=True),
}

PAIRS = [(kind, backend) for kind in registry.list_variants()
         for backend in CPU_BACKENDS if backend in registry.get_variant(kind).backends]


def test_every_registered_kind_is_covered():
    assert set(registry.list_variants()) <= set(KINDS)


def _segments(rng, batch, length, prefix):
    """Documents of multiples of 8 tokens after ``prefix`` positions, some padding (0)."""
    ids = np.repeat(np.arange(1, length // 8 + 2), 8)[:length - prefix]
    ids = np.stack([np.minimum(ids, rng.integers(1, ids.max() + 1)) for _ in range(batch)])
    ids[rng.random(batch) < 0.5, -8:] = 0
    return np.concatenate([np.ones((batch, prefix), np.int64), ids], axis=1).astype(np.int32)


def _setup(kind, causal, seed, *, batch=2, units=2, segments=True, dtype=np.float64):
    case = KINDS[kind]
    opts = registry.make_options(kind, causal=causal, **case.options)
    rng = np.random.default_rng(seed)
    length = case.lengths(units)
    heads, kv_heads = (4, 4) if case.shared_kv else (4, 2)
    q = rng.normal(size=(batch, length, heads, 8)).astype(dtype)
    k = q if case.shared_kv else rng.normal(size=(batch, length, kv_heads, 8)).astype(dtype)
    v = rng.normal(size=(batch, length, kv_heads, 8)).astype(dtype)
    seg = _segments(rng, batch, length, case.prefix) if segments else None
    s = rng.uniform(0.3, 1.0, size=heads).astype(dtype) if opts.softmax == "ssmax" else None
    variant = registry.get_variant(kind)
    state = None
    if variant.stateful:
        state = variant.init_state(opts, num_heads=heads,
                                   head_dim=8, key=jax.random.key(seed))
        state = jnp.asarray(state, jnp.float64 if dtype == np.float64 else jnp.float32)
    return opts, q, k, v, seg, s, state


def _apply(kind, backend, opts, seg, s, state):
    variant = registry.get_variant(kind)

    def run(q, k, v):
        return variant.apply(q, k, v, opts, segment_ids=None if seg is None else jnp.asarray(seg),
                             ssmax_s=None if s is None else jnp.asarray(s), state=state,
                             implementation=backend)
    return run


@pytest.mark.parametrize("kind, backend", PAIRS)
@pytest.mark.parametrize("causal", [True, False])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), units=st.integers(1, 3), segments=st.booleans())
def test_values_match_the_float64_oracle(kind, backend, causal, seed, units, segments):
    if kind == "routing" and not causal:
        units = 1  # balanced clusters: the oracle is quadratic in the tokens
    with jax.enable_x64(True):
        opts, q, k, v, seg, s, state = _setup(kind, causal, seed, units=units, segments=segments)
        out = fast_jit(_apply(kind, backend, opts, seg, s, state))(
            jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
        want = KINDS[kind].oracle(q, k, v, opts, seg, s, state)
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-10)


@pytest.mark.parametrize("kind, backend", PAIRS)
def test_gradients(kind, backend):
    """Reference: finite differences. Other backends: the reference's gradients."""
    with jax.enable_x64(True):
        opts, q, k, v, seg, s, state = _setup(kind, True, 7, units=1)
        args = tuple(jnp.asarray(x) for x in (q, k, v))
        if KINDS[kind].shared_kv:
            run = lambda q, v: _apply(kind, backend, opts, seg, s, state)(q, q, v)
            args = (args[0], args[2])
        else:
            run = _apply(kind, backend, opts, seg, s, state)
        if backend == "reference":
            check_grads(jax.jit(run), args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
            return
        w = jnp.asarray(np.random.default_rng(1).normal(size=q.shape))
        reference_run = (
            (lambda q, v: _apply(kind, "reference", opts, seg, s, state)(q, q, v))
            if KINDS[kind].shared_kv else _apply(kind, "reference", opts, seg, s, state))
        grad = lambda fn: fast_jit(jax.grad(lambda *a: jnp.sum(fn(*a) * w),
                                            argnums=tuple(range(len(args)))))(*args)
        for got, want in zip(grad(run), grad(reference_run)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-10)


@pytest.mark.parametrize("kind, backend", PAIRS)
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), data=st.data())
def test_later_tokens_never_change_earlier_outputs(kind, backend, seed, data):
    opts, q, k, v, seg, s, state = _setup(kind, True, seed, units=2, dtype=np.float32)
    length = q.shape[1]
    cut = data.draw(st.integers(KINDS[kind].prefix + 1, length - 1), label="cut")
    rng = np.random.default_rng(seed + 1)
    q2, v2 = q.copy(), v.copy()
    q2[:, cut:] = rng.normal(size=q2[:, cut:].shape)
    v2[:, cut:] = rng.normal(size=v2[:, cut:].shape)
    k2 = q2 if KINDS[kind].shared_kv else k.copy()
    if not KINDS[kind].shared_kv:
        k2[:, cut:] = rng.normal(size=k2[:, cut:].shape)
    run = fast_jit(_apply(kind, backend, opts, seg, s, state))
    a = np.asarray(run(*map(jnp.asarray, (q, k, v))))
    b = np.asarray(run(*map(jnp.asarray, (q2, k2, v2))))
    np.testing.assert_array_equal(a[:, :cut], b[:, :cut])


@pytest.mark.parametrize("kind, backend", PAIRS)
def test_bf16_inputs_give_bf16_outputs_close_to_float32(kind, backend):
    opts, q, k, v, seg, s, state = _setup(kind, True, 3, units=1, dtype=np.float32)
    run = fast_jit(_apply(kind, backend, opts, seg, s, state))
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    out = run(*bf)
    assert out.dtype == jnp.bfloat16
    want = run(*(x.astype(jnp.float32) for x in bf))
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want), atol=3e-2,
                               rtol=3e-2)


@pytest.mark.parametrize("kind, backend", PAIRS)
def test_bad_inputs_raise_naming_the_argument(kind, backend):
    opts, q, k, v, seg, s, state = _setup(kind, True, 0, units=1, dtype=np.float32)
    run = _apply(kind, backend, opts, seg, s, state)
    q, k, v = map(jnp.asarray, (q, k, v))
    with pytest.raises(ValueError, match=r"q must be \[batch, seq, heads, head_dim\]"):
        run(q[0], k, v)
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        run(q, k, v[:, :, :1])
    with pytest.raises(ValueError, match="implementation must be None or one of"):
        registry.get_variant(kind).apply(q, k, v, opts, segment_ids=seg, ssmax_s=s, state=state,
                                         implementation="fast")
    with pytest.raises(ValueError, match="no pallas implementation"):
        registry.get_variant(kind).apply(q, k, v, opts, segment_ids=seg, ssmax_s=s, state=state,
                                         implementation="pallas")
