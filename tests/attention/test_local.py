"""local_attention: its block schedule, values and gradients against explicit-mask references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxattn.attention import dense_attention, local_attention, local_block_schedule, ssmax_init_value
from tests.fast_jit import fast_jit, jit_with_static_options
from tests.naive_attention import naive_attention, naive_mask, naive_masked_attention_jnp

SETTINGS = settings(max_examples=30, deadline=None)
FEW = settings(max_examples=15, deadline=None)
STATIC_OPTIONS = ("block_size", "causal", "softmax", "scale")


attend = jit_with_static_options(local_attention, STATIC_OPTIONS)


@st.composite
def local_cases(draw, causal=None):
    block_size = draw(st.sampled_from([1, 2, 3, 4, 8]))
    kv_heads = draw(st.sampled_from([1, 2]))
    return dict(
        batch=draw(st.integers(1, 2)),
        block_size=block_size,
        num_blocks=draw(st.integers(1, max(1, min(5, 33 // block_size)))),
        heads=kv_heads * draw(st.sampled_from([1, 2, 4])),
        kv_heads=kv_heads,
        head_dim=draw(st.integers(4, 16)),
        causal=draw(st.booleans()) if causal is None else causal,
        segments=draw(st.sampled_from([None, "packed", "random"])),
        softmax=draw(st.sampled_from(["softmax", "ssmax"])),
        scale=draw(st.one_of(st.none(), st.floats(0.1, 2.0))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_inputs(case, dtype):
    """``(q, k, v, options)`` as jax arrays of ``dtype``; ``ssmax_s`` float64 only with float64."""
    rng = np.random.default_rng(case["seed"])
    b, t = case["batch"], case["block_size"] * case["num_blocks"]
    q = jnp.asarray(rng.normal(size=(b, t, case["heads"], case["head_dim"])), dtype)
    k = jnp.asarray(rng.normal(size=(b, t, case["kv_heads"], case["head_dim"])), dtype)
    v = jnp.asarray(rng.normal(size=(b, t, case["kv_heads"], case["head_dim"])), dtype)
    options = dict(block_size=case["block_size"], causal=case["causal"], softmax=case["softmax"],
                   scale=case["scale"], segment_ids=None, ssmax_s=None)
    if case["segments"] == "packed":
        ids = np.cumsum(rng.random((b, t)) < 0.2, axis=1) + 1
        ids[:, t - rng.integers(0, t // 3 + 1):] = 0
        options["segment_ids"] = jnp.asarray(ids, jnp.int32)
    elif case["segments"] == "random":
        options["segment_ids"] = jnp.asarray(rng.integers(0, 3, size=(b, t)), jnp.int32)
    if case["softmax"] == "ssmax":
        s_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32
        options["ssmax_s"] = jnp.asarray(rng.uniform(0.2, 1.5, size=case["heads"]), s_dtype)
    return q, k, v, options


def naive(q, k, v, options):
    return naive_attention(np.asarray(q, np.float64), np.asarray(k, np.float64), np.asarray(v, np.float64),
                           causal=options["causal"], segment_ids=options["segment_ids"],
                           softmax=options["softmax"], ssmax_s=options["ssmax_s"], scale=options["scale"],
                           block_size=options["block_size"])


# Schedule.

def test_schedule_examples():
    causal = local_block_schedule(3, causal=True)
    assert causal.dtype == np.int32
    np.testing.assert_array_equal(causal, [[-1, 0], [0, 1], [1, 2]])
    np.testing.assert_array_equal(local_block_schedule(3, causal=False), [[-1, 0, 1], [0, 1, 2], [1, 2, -1]])
    np.testing.assert_array_equal(local_block_schedule(1, causal=True), [[-1, 0]])
    np.testing.assert_array_equal(local_block_schedule(1, causal=False), [[-1, 0, -1]])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("num_blocks", [1, 2, 5, 9])
def test_schedule_definition(num_blocks, causal):
    schedule = local_block_schedule(num_blocks, causal=causal)
    neighbours = (-1, 0) if causal else (-1, 0, 1)
    assert schedule.shape == (num_blocks, len(neighbours))
    for b in range(num_blocks):
        expected = [b + d if 0 <= b + d < num_blocks else -1 for d in neighbours]
        assert list(schedule[b]) == expected


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "3"])
def test_schedule_rejects_bad_num_blocks(bad):
    with pytest.raises(ValueError, match="num_blocks"):
        local_block_schedule(bad, causal=True)


# Values.

@SETTINGS
@given(local_cases())
def test_matches_naive_float64(case):
    with jax.enable_x64(True):
        q, k, v, options = make_inputs(case, jnp.float64)
        out = attend(q, k, v, **options)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out), naive(q, k, v, options), atol=1e-10, rtol=1e-10)


@SETTINGS
@given(local_cases())
def test_matches_naive_float32(case):
    q, k, v, options = make_inputs(case, jnp.float32)
    out = attend(q, k, v, **options)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), naive(q, k, v, options), atol=1e-5, rtol=1e-5)


@FEW
@given(local_cases())
def test_equals_dense_with_block_mask_values_and_gradients(case):
    rng = np.random.default_rng(case["seed"] + 1)
    with jax.enable_x64(True):
        q, k, v, options = make_inputs(case, jnp.float64)
        mask = naive_mask(q.shape[0], q.shape[1], k.shape[1], causal=case["causal"],
                          block_size=case["block_size"], segment_ids=options["segment_ids"])
        ssmax = case["softmax"] == "ssmax"
        given_s = options.pop("ssmax_s")
        s = given_s if ssmax else jnp.ones((case["heads"],), jnp.float64)
        cotangent = jnp.asarray(rng.normal(size=q.shape))

        def local_loss(q, k, v, s):
            out = local_attention(q, k, v, ssmax_s=s if ssmax else None, **options)
            return jnp.sum(out * cotangent), out

        def masked_loss(q, k, v, s):
            out = naive_masked_attention_jnp(q, k, v, mask, ssmax_s=s if ssmax else None, scale=case["scale"])
            return jnp.sum(out * cotangent), out

        grad = functools.partial(jax.grad, argnums=(0, 1, 2, 3), has_aux=True)
        got, out = fast_jit(grad(local_loss))(q, k, v, s)
        want, expected = fast_jit(grad(masked_loss))(q, k, v, s)
        np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-10, rtol=1e-10)
        for name, g, w in zip("qkvs", got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-9, rtol=1e-9, err_msg=name)


@pytest.mark.parametrize("causal, num_blocks", [(True, 1), (True, 2), (False, 1), (False, 2)])
@pytest.mark.parametrize("softmax", ["softmax", "ssmax"])
def test_equals_dense_attention_when_blocks_cover_the_sequence(causal, num_blocks, softmax):
    rng = np.random.default_rng(num_blocks)
    q = jnp.asarray(rng.normal(size=(2, 4 * num_blocks, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 4 * num_blocks, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 4 * num_blocks, 2, 8)), jnp.float32)
    seg = jnp.asarray(rng.integers(0, 3, size=(2, 4 * num_blocks)), jnp.int32)
    s = jnp.asarray(rng.uniform(0.3, 1.2, size=4), jnp.float32) if softmax == "ssmax" else None
    local = local_attention(q, k, v, block_size=4, causal=causal, segment_ids=seg, softmax=softmax, ssmax_s=s)
    dense = dense_attention(q, k, v, causal=causal, segment_ids=seg, softmax=softmax, ssmax_s=s)
    np.testing.assert_allclose(np.asarray(local), np.asarray(dense), atol=1e-6)


def test_ssmax_counts_local_keys():
    """Causal: query i in block b >= 1 sees block_size + (i mod block_size) + 1 keys.

    With s = 1/log(2 * block_size) the last row of every block after the first matches softmax.
    """
    block = 4
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(1, 16, 2, 8)))
        k = jnp.asarray(rng.normal(size=(1, 16, 2, 8)))
        v = jnp.asarray(rng.normal(size=(1, 16, 2, 8)))
        s = jnp.full((2,), ssmax_init_value(2 * block), jnp.float64)
        plain = np.asarray(local_attention(q, k, v, block_size=block))
        scaled = np.asarray(local_attention(q, k, v, block_size=block, softmax="ssmax", ssmax_s=s))
    full_rows = [2 * block - 1, 3 * block - 1, 4 * block - 1]
    np.testing.assert_allclose(scaled[:, full_rows], plain[:, full_rows], atol=1e-12)
    assert not np.allclose(scaled[:, block], plain[:, block], atol=1e-6)


@FEW
@given(local_cases(causal=True), st.data())
def test_causality(case, data):
    q, k, v, options = make_inputs(case, jnp.float32)
    t = q.shape[1]
    cut = data.draw(st.integers(0, t - 1))
    rng = np.random.default_rng(case["seed"] + 2)
    later = (np.arange(t) >= cut)[None, :, None, None]
    k2 = jnp.where(later, jnp.asarray(rng.normal(size=k.shape) * 10, jnp.float32), k)
    v2 = jnp.where(later, jnp.asarray(rng.normal(size=v.shape) * 10, jnp.float32), v)
    before = np.asarray(attend(q, k, v, **options))
    after = np.asarray(attend(q, k2, v2, **options))
    np.testing.assert_array_equal(after[:, :cut], before[:, :cut])


@FEW
@given(local_cases())
def test_bf16_uses_float32_statistics(case):
    q, k, v, options = make_inputs(case, jnp.bfloat16)
    out = attend(q, k, v, **options)
    assert out.dtype == jnp.bfloat16
    ref = np.asarray(attend(*(x.astype(jnp.float32) for x in (q, k, v)), **options))
    err = np.abs(np.asarray(out.astype(jnp.float32)) - ref)
    assert np.all(err <= 2.0**-8 * np.abs(ref) * (1 + 1e-4) + 1e-6), err.max()


def _largest_intermediate(jaxpr):
    """Element count of the largest value produced anywhere in ``jaxpr`` (sub-jaxprs included)."""
    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            largest = max(largest, int(np.prod(var.aval.shape)))
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                largest = max(largest, _largest_intermediate(inner))
    return largest


@pytest.mark.parametrize("causal", [True, False])
def test_memory_is_linear_in_sequence_length(causal):
    """No T x T array, forward or backward: the largest value is O(T * block)."""
    t, block, heads = 512, 16, 2
    q = jnp.zeros((1, t, heads, 8), jnp.float32)
    k = jnp.zeros((1, t, 1, 8), jnp.float32)
    seg = jnp.ones((1, t), jnp.int32)

    def loss(q, k, v, s):
        return jnp.sum(local_attention(q, k, v, block_size=block, causal=causal, segment_ids=seg,
                                       softmax="ssmax", ssmax_s=s))

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, k, jnp.ones((heads,)))
    largest = _largest_intermediate(jaxpr.jaxpr)
    assert largest <= heads * t * 3 * block < t * t


# Errors.

@pytest.mark.parametrize("length, block_size", [(100, 64), (10, 3)])
def test_length_not_multiple_of_block_size(length, block_size):
    q = jnp.zeros((1, length, 2, 4))
    padded = -(-length // block_size) * block_size
    message = (f"sequence length {length} is not a multiple of block_size={block_size}; "
               f"pad to {padded} or choose a block size that divides it")
    with pytest.raises(ValueError, match=message):
        local_attention(q, q, q, block_size=block_size)


def _base():
    q = jnp.zeros((2, 8, 4, 8), jnp.float32)
    k = jnp.zeros((2, 8, 2, 8), jnp.float32)
    return dict(q=q, k=k, v=k, block_size=4)


BAD_INPUTS = [
    (dict(q=jnp.zeros((2, 8, 4))), r"q must be \[batch, seq, heads, head_dim\]"),
    (dict(k=jnp.zeros((2, 8, 3, 8)), v=jnp.zeros((2, 8, 3, 8))), r"k/v heads must divide q heads"),
    (dict(k=jnp.zeros((2, 12, 2, 8)), v=jnp.zeros((2, 12, 2, 8))), r"same sequence length"),
    (dict(block_size=0), r"block_size must be an int >= 1"),
    (dict(block_size="64"), r"block_size must be an int >= 1"),
    (dict(block_size=4.0), r"block_size must be an int >= 1"),
    (dict(causal="yes"), r"causal must be a bool"),
    (dict(softmax="sparsemax"), r"softmax must be one of"),
    (dict(softmax="ssmax"), r"ssmax_s is required"),
    (dict(softmax="ssmax", ssmax_s=jnp.ones((3,))), r"ssmax_s must be a float array of shape \[heads\]"),
    (dict(segment_ids=jnp.ones((2, 4), jnp.int32)), r"segment_ids must be an int array of shape"),
    (dict(scale=-1.0), r"scale must be None or a positive number"),
    (dict(implementation="triton"), r"implementation must be None or one of"),
]


@pytest.mark.parametrize("changes, match", BAD_INPUTS)
def test_bad_inputs_raise(changes, match):
    kwargs = {**_base(), **changes}
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    with pytest.raises(ValueError, match=match):
        local_attention(q, k, v, **kwargs)


def test_pallas_not_available_yet():
    q = jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="no pallas implementation"):
        local_attention(q, q, q, block_size=4, implementation="pallas")
