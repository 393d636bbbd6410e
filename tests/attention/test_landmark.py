"""landmark_attention against a naive float64 reference of the paper's eqs. 1-4; helpers; errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxattn.attention import dense_attention
from jaxattn.attention.landmark import (check_segment_alignment, insert_landmarks, landmark_attention,
                                        landmark_positions_mask, segments_block_aligned)
from tests.fast_jit import fast_jit, jit_with_static_options
from tests.naive_landmark import naive_groups, naive_landmark_attention, naive_landmark_attention_jnp

SETTINGS = settings(max_examples=15, deadline=None)
FEW = settings(max_examples=8, deadline=None)
STATIC_OPTIONS = ("block_size", "causal", "softmax", "scale")
HEAD_LAYOUTS = [(2, 1), (2, 2), (3, 1), (4, 1), (4, 2), (4, 4)]

attend = jit_with_static_options(landmark_attention, STATIC_OPTIONS)


def aligned_segment_ids(rng, batch, num_blocks, block_size):
    """Documents made of whole blocks, ids 1, 2, ...; sometimes padding blocks (id 0)."""
    rows = []
    for _ in range(batch):
        starts = rng.random(num_blocks) < 0.4
        starts[0] = True
        ids = np.cumsum(starts)
        if rng.random() < 0.5:
            ids[num_blocks - rng.integers(0, num_blocks // 2 + 1):] = 0
        if rng.random() < 0.3:
            ids[rng.integers(0, num_blocks)] = 0
        rows.append(np.repeat(ids, block_size))
    return np.stack(rows).astype(np.int32)


@st.composite
def landmark_cases(draw, causal=None):
    heads, kv_heads = draw(st.sampled_from(HEAD_LAYOUTS))
    return dict(
        batch=draw(st.integers(1, 2)),
        block_size=draw(st.integers(2, 8)),
        num_blocks=draw(st.integers(1, 6)),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=draw(st.sampled_from([4, 8])),
        causal=draw(st.booleans()) if causal is None else causal,
        segments=draw(st.booleans()),
        softmax=draw(st.sampled_from(["softmax", "ssmax"])),
        scale=draw(st.one_of(st.none(), st.floats(0.1, 2.0))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_inputs(case):
    """NumPy float64 ``(q, k, v)`` and the keyword options shared by package and reference."""
    rng = np.random.default_rng(case["seed"])
    b, t = case["batch"], case["block_size"] * case["num_blocks"]
    q = rng.normal(size=(b, t, case["heads"], case["head_dim"]))
    k = rng.normal(size=(b, t, case["kv_heads"], case["head_dim"]))
    v = rng.normal(size=(b, t, case["kv_heads"], case["head_dim"]))
    options = dict(block_size=case["block_size"], causal=case["causal"], softmax=case["softmax"],
                   scale=case["scale"], segment_ids=None, ssmax_s=None)
    if case["segments"]:
        options["segment_ids"] = aligned_segment_ids(rng, b, case["num_blocks"], case["block_size"])
    if case["softmax"] == "ssmax":
        options["ssmax_s"] = rng.uniform(0.2, 1.5, size=case["heads"])
    return q, k, v, options


def to_jax(q, k, v, options, dtype):
    """Casts inputs to ``dtype`` (``ssmax_s`` to float32 unless ``dtype`` is float64)."""
    options = dict(options)
    if options["segment_ids"] is not None:
        options["segment_ids"] = jnp.asarray(options["segment_ids"], jnp.int32)
    if options["ssmax_s"] is not None:
        s_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32
        options["ssmax_s"] = jnp.asarray(options["ssmax_s"], s_dtype)
    return jnp.asarray(q, dtype), jnp.asarray(k, dtype), jnp.asarray(v, dtype), options


def naive(q, k, v, options):
    options = {**options, "segment_ids": None if options["segment_ids"] is None
               else np.asarray(options["segment_ids"]),
               "ssmax_s": None if options["ssmax_s"] is None else np.asarray(options["ssmax_s"])}
    return naive_landmark_attention(np.asarray(q, np.float64), np.asarray(k, np.float64),
                                    np.asarray(v, np.float64), **options)


def live_queries(options, shape):
    """Bool ``[B, T]``: queries that are not padding."""
    if options["segment_ids"] is None:
        return np.ones(shape[:2], bool)
    return np.asarray(options["segment_ids"]) != 0


# Values.

@SETTINGS
@given(landmark_cases())
def test_matches_naive_float64(case):
    q, k, v, options = make_inputs(case)
    expected = naive(q, k, v, options)
    with jax.enable_x64(True):
        jq, jk, jv, jopts = to_jax(q, k, v, options, jnp.float64)
        out = attend(jq, jk, jv, **jopts)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-10, rtol=1e-10)


@SETTINGS
@given(landmark_cases())
def test_matches_naive_float32(case):
    q, k, v, options = make_inputs(case)
    jq, jk, jv, jopts = to_jax(q, k, v, options, jnp.float32)
    out = attend(jq, jk, jv, **jopts)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), naive(jq, jk, jv, jopts), atol=1e-5, rtol=1e-5)


@FEW
@given(landmark_cases())
def test_gradients_match_naive_autodiff(case):
    q, k, v, options = make_inputs(case)
    cotangent = np.random.default_rng(case["seed"] + 1).normal(size=q.shape)
    groups = naive_groups(q.shape[0], q.shape[1], block_size=case["block_size"], causal=case["causal"],
                          segment_ids=options["segment_ids"])
    ssmax = case["softmax"] == "ssmax"
    s = options["ssmax_s"] if ssmax else np.ones(case["heads"])
    with jax.enable_x64(True):
        _, _, _, jopts = to_jax(q, k, v, options, jnp.float64)
        jopts.pop("ssmax_s")

        def package_loss(q, k, v, s):
            return jnp.sum(landmark_attention(q, k, v, ssmax_s=s if ssmax else None, **jopts) * cotangent)

        def reference_loss(q, k, v, s):
            out = naive_landmark_attention_jnp(q, k, v, groups, block_size=case["block_size"],
                                               ssmax_s=s if ssmax else None, scale=case["scale"])
            return jnp.sum(out * cotangent)

        args = tuple(jnp.asarray(x, jnp.float64) for x in (q, k, v, s))
        got = fast_jit(jax.grad(package_loss, argnums=(0, 1, 2, 3)))(*args)
        want = fast_jit(jax.grad(reference_loss, argnums=(0, 1, 2, 3)))(*args)
        for name, g, w in zip("qkvs", got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-9, rtol=1e-9, err_msg=name)


@FEW
@given(landmark_cases())
def test_weights_sum_to_one_and_landmark_values_are_never_read(case):
    q, k, v, options = make_inputs(case)
    jq, jk, jv, jopts = to_jax(q, k, v, options, jnp.float32)
    live = live_queries(options, q.shape)[:, :, None, None]
    ones = attend(jq, jk, jnp.ones_like(jv), **jopts)
    np.testing.assert_allclose(np.asarray(ones), np.broadcast_to(live, ones.shape).astype(np.float32),
                               atol=1e-6)
    landmark = landmark_positions_mask(q.shape[1], case["block_size"])[None, :, None, None]
    noise = jnp.asarray(np.random.default_rng(case["seed"] + 2).normal(size=v.shape) * 100, jnp.float32)
    before = np.asarray(attend(jq, jk, jv, **jopts))
    after = np.asarray(attend(jq, jk, jnp.where(landmark, noise, jv), **jopts))
    np.testing.assert_array_equal(after, before)


@FEW
@given(landmark_cases(causal=True), st.data())
def test_causality(case, data):
    q, k, v, options = make_inputs(case)
    jq, jk, jv, jopts = to_jax(q, k, v, options, jnp.float32)
    length = q.shape[1]
    cut = data.draw(st.integers(0, length - 1))
    rng = np.random.default_rng(case["seed"] + 3)
    later = (np.arange(length) >= cut)[None, :, None, None]

    def perturb(x):
        return jnp.where(later, jnp.asarray(rng.normal(size=x.shape) * 10, jnp.float32), x)

    before = np.asarray(attend(jq, jk, jv, **jopts))
    after = np.asarray(attend(perturb(jq), perturb(jk), perturb(jv), **jopts))
    np.testing.assert_array_equal(after[:, :cut], before[:, :cut])


@pytest.mark.parametrize("softmax", ["softmax", "ssmax"])
def test_more_than_64_blocks(softmax):
    """70 blocks of 2: past the 64 groups hard-coded in the authors' LLaMA code."""
    rng = np.random.default_rng(7)
    q = rng.normal(size=(1, 140, 2, 4))
    k = rng.normal(size=(1, 140, 1, 4))
    v = rng.normal(size=(1, 140, 1, 4))
    s = rng.uniform(0.2, 1.5, size=2)
    ssmax_s = s if softmax == "ssmax" else None
    expected = naive_landmark_attention(q, k, v, block_size=2, softmax=softmax, ssmax_s=ssmax_s)
    groups = naive_groups(1, 140, block_size=2)
    cotangent = rng.normal(size=q.shape)
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(x) for x in (q, k, v, s))
        ssmax = softmax == "ssmax"
        out = landmark_attention(*args[:3], block_size=2, softmax=softmax,
                                 ssmax_s=args[3] if ssmax else None)
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-10, rtol=1e-10)
        # The last query's gates reach all 69 earlier blocks.
        assert not np.allclose(expected[0, -1], naive_landmark_attention(
            q[:, 2:], k[:, 2:], v[:, 2:], block_size=2, softmax=softmax, ssmax_s=ssmax_s)[0, -1])

        def package_loss(q, k, v, s):
            out = landmark_attention(q, k, v, block_size=2, softmax=softmax, ssmax_s=s if ssmax else None)
            return jnp.sum(out * cotangent)

        def reference_loss(q, k, v, s):
            out = naive_landmark_attention_jnp(q, k, v, groups, block_size=2, ssmax_s=s if ssmax else None)
            return jnp.sum(out * cotangent)

        got = fast_jit(jax.grad(package_loss, argnums=(0, 1, 2, 3)))(*args)
        want = fast_jit(jax.grad(reference_loss, argnums=(0, 1, 2, 3)))(*args)
        for name, g, w in zip("qkvs", got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-9, rtol=1e-9, err_msg=name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("softmax", ["softmax", "ssmax"])
def test_single_block_documents_equal_dense_over_normal_tokens(causal, softmax):
    """With one block per document there is no gate: softmax over the block's normal tokens."""
    rng = np.random.default_rng(8)
    block_size, num_blocks = 5, 3
    length = block_size * num_blocks
    seg = np.array([[1] * 5 + [2] * 5 + [0] * 5, [3] * 5 + [4] * 5 + [5] * 5], np.int32)
    kv_seg = np.where(landmark_positions_mask(length, block_size)[None], 0, seg).astype(np.int32)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(2, length, 4, 8)))
        k = jnp.asarray(rng.normal(size=(2, length, 2, 8)))
        v = jnp.asarray(rng.normal(size=(2, length, 2, 8)))
        s = jnp.asarray(rng.uniform(0.2, 1.5, size=4)) if softmax == "ssmax" else None
        landmark = fast_jit(functools.partial(landmark_attention, block_size=block_size, causal=causal,
                                              softmax=softmax))
        dense = fast_jit(functools.partial(dense_attention, causal=causal, softmax=softmax))
        out = landmark(q, k, v, segment_ids=jnp.asarray(seg), ssmax_s=s)
        expected = dense(q, k, v, segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(kv_seg), ssmax_s=s)
        np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-12)
        # The same for a whole sequence that is a single block.
        first = (slice(None), slice(0, block_size))
        one = landmark(q[first], k[first], v[first], ssmax_s=s)
        normal = jnp.asarray([[1] * (block_size - 1) + [0]] * 2, jnp.int32)
        dense_one = dense(q[first], k[first], v[first], segment_ids=jnp.ones((2, block_size), jnp.int32),
                          kv_segment_ids=normal, ssmax_s=s)
        np.testing.assert_allclose(np.asarray(one), np.asarray(dense_one), atol=1e-12)


def test_gate_closed_form_two_blocks():
    """Query 2 (block 1, offset 0) with block_size 2: Z = e^{z_1} + e^{z_2}, block 0 holds token 0."""
    rng = np.random.default_rng(9)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(1, 4, 1, 2)))
        k = jnp.asarray(rng.normal(size=(1, 4, 1, 2)))
        v = jnp.asarray(rng.normal(size=(1, 4, 1, 2)))
        out = fast_jit(functools.partial(landmark_attention, block_size=2))(q, k, v)
        z = np.asarray(k[0, :, 0] @ q[0, 2, 0]) / np.sqrt(2)
        gate = np.exp(z[1]) / (np.exp(z[1]) + np.exp(z[2]))
        expected = gate * np.asarray(v[0, 0, 0]) + (1 - gate) * np.asarray(v[0, 2, 0])
        np.testing.assert_allclose(np.asarray(out[0, 2, 0]), expected, atol=1e-14)
        # Query 3 (a landmark) masks its own landmark: same weights as query 2 with its own logits.
        z3 = np.asarray(k[0, :, 0] @ q[0, 3, 0]) / np.sqrt(2)
        gate3 = np.exp(z3[1]) / (np.exp(z3[1]) + np.exp(z3[2]))
        expected3 = gate3 * np.asarray(v[0, 0, 0]) + (1 - gate3) * np.asarray(v[0, 2, 0])
        np.testing.assert_allclose(np.asarray(out[0, 3, 0]), expected3, atol=1e-14)


def test_padding_rows_are_zero_with_finite_gradients():
    rng = np.random.default_rng(10)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 0, 0, 0]], jnp.int32)
    q = jnp.asarray(rng.normal(size=(1, 9, 2, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 9, 2, 4)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(1, 9, 2, 4)), jnp.float32)
    s = jnp.ones((2,), jnp.float32)
    for causal in (True, False):
        def loss(q, k, v, s):
            out = landmark_attention(q, k, v, block_size=3, causal=causal, segment_ids=seg,
                                     softmax="ssmax", ssmax_s=s)
            return jnp.sum(out**2), out

        grads, out = fast_jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, s)
        assert np.all(np.asarray(out[:, 6:]) == 0)
        assert np.all(np.isfinite(np.asarray(out)))
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g)))
        assert np.all(np.asarray(grads[0][:, 6:]) == 0)


def test_bf16_output_close_to_float32():
    rng = np.random.default_rng(11)
    q, k, v = (rng.normal(size=(2, 12, 4, 8)) for _ in range(3))
    k, v = k[:, :, :2], v[:, :, :2]
    fn = fast_jit(functools.partial(landmark_attention, block_size=3))
    out = fn(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    ref = fn(*(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32) for x in (q, k, v)))
    err = np.abs(np.asarray(out.astype(jnp.float32)) - np.asarray(ref))
    assert np.all(err <= 2.0**-8 * np.abs(np.asarray(ref)) * (1 + 1e-4) + 1e-6), err.max()


@pytest.mark.parametrize("implementation", [None, "reference"])
def test_implementation_reference_eager_and_jit(implementation):
    q = jnp.asarray(np.random.default_rng(12).normal(size=(1, 6, 2, 4)), jnp.float32)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2]], jnp.int32)
    eager = landmark_attention(q, q, q, block_size=3, segment_ids=seg, implementation=implementation)
    jitted = jax.jit(functools.partial(landmark_attention, block_size=3))(q, q, q, segment_ids=seg)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), atol=1e-6)


def test_pallas_not_available_yet():
    q = jnp.zeros((1, 6, 2, 4))
    with pytest.raises(ValueError, match="no pallas implementation"):
        landmark_attention(q, q, q, block_size=3, implementation="pallas")


# Segments.

@pytest.mark.parametrize("seg, position", [
    ([[1, 1, 1, 1, 2, 2, 2, 2, 2]], 4),
    ([[1, 1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 2, 2, 2, 2, 0, 0]], 7),
])
def test_misaligned_segments_raise(seg, position):
    seg = np.asarray(seg, np.int32)
    q = jnp.zeros((seg.shape[0], 9, 2, 4))
    match = (r"segment boundaries must fall on block boundaries \(block_size=3.*document starting at "
             rf"position {position} .*is misaligned")
    with pytest.raises(ValueError, match=match):
        landmark_attention(q, q, q, block_size=3, segment_ids=jnp.asarray(seg))
    with pytest.raises(ValueError, match=match):
        landmark_attention(q, q, q, block_size=3, segment_ids=seg)
    with pytest.raises(ValueError, match=match):
        check_segment_alignment(seg, 3)
    assert not np.all(np.asarray(segments_block_aligned(jnp.asarray(seg), 3)))


def test_misaligned_segments_under_jit_do_not_mix_documents():
    """Traced ids cannot be checked; tokens of one document still never reach another."""
    rng = np.random.default_rng(13)
    seg = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 2, 2]], jnp.int32)
    aligned = fast_jit(segments_block_aligned, static_argnums=1)(seg, 3)
    assert aligned.shape == (1,) and not bool(aligned[0])
    assert bool(segments_block_aligned(jnp.asarray([[1, 1, 1, 2, 2, 2, 0, 0, 0]]), 3)[0])
    q, k, v = (jnp.asarray(rng.normal(size=(1, 9, 2, 4)), jnp.float32) for _ in range(3))
    fn = fast_jit(functools.partial(landmark_attention, block_size=3))
    first = (np.asarray(seg) == 1)[:, :, None, None]
    noise = jnp.asarray(rng.normal(size=(1, 9, 2, 4)) * 10, jnp.float32)
    before = np.asarray(fn(q, k, v, segment_ids=seg))
    after = np.asarray(fn(*(jnp.where(first, noise, x) for x in (q, k, v)), segment_ids=seg))
    assert np.all(np.isfinite(before))
    np.testing.assert_array_equal(after[:, 4:], before[:, 4:])
    np.testing.assert_allclose(np.asarray(fn(q, k, jnp.ones_like(v), segment_ids=seg)), 1.0, atol=1e-6)


# Helpers.

def test_landmark_positions_mask():
    np.testing.assert_array_equal(landmark_positions_mask(7, 3), [0, 0, 1, 0, 0, 1, 0])
    assert landmark_positions_mask(0, 2).shape == (0,)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="block_size must be an int >= 2"):
            landmark_positions_mask(6, bad)
    with pytest.raises(ValueError, match="seq_len must be an int >= 0"):
        landmark_positions_mask(-1, 2)


@pytest.mark.parametrize("as_jax", [False, True])
@pytest.mark.parametrize("mem_freq", [1, 3, 4])
def test_insert_landmarks_round_trips(as_jax, mem_freq):
    tokens = np.random.default_rng(mem_freq).integers(0, 100, size=(2, 3, 12)).astype(np.int32)
    given_tokens = jnp.asarray(tokens) if as_jax else tokens
    out, is_landmark = insert_landmarks(given_tokens, mem_freq, 999)
    assert isinstance(out, jax.Array) == as_jax and isinstance(is_landmark, jax.Array) == as_jax
    out, is_landmark = np.asarray(out), np.asarray(is_landmark)
    assert out.shape == is_landmark.shape == (2, 3, 12 + 12 // mem_freq)
    assert out.dtype == np.int32 and is_landmark.dtype == bool
    np.testing.assert_array_equal(is_landmark[0, 0], landmark_positions_mask(out.shape[-1], mem_freq + 1))
    assert np.all(out[is_landmark] == 999)
    np.testing.assert_array_equal(out[~is_landmark].reshape(tokens.shape), tokens)
    # Under jit too, for the pipeline's static shapes.
    jitted, _ = jax.jit(insert_landmarks, static_argnums=(1, 2))(jnp.asarray(tokens), mem_freq, 999)
    np.testing.assert_array_equal(np.asarray(jitted), out)


@pytest.mark.parametrize("args, match", [
    ((np.arange(10), 3, 7), r"tokens: length 10 is not a multiple of mem_freq=3; pad to 12"),
    ((np.arange(6), 0, 7), r"mem_freq must be an int >= 1"),
    ((np.arange(6), 2.0, 7), r"mem_freq must be an int >= 1"),
    ((np.arange(6), 2, -1), r"landmark_id must be an int >= 0"),
    ((np.arange(6), 2, "x"), r"landmark_id must be an int >= 0"),
    ((np.arange(6, dtype=np.int8), 2, 300), r"landmark_id must fit the dtype of tokens \(int8\)"),
    ((np.zeros(6, np.float32), 2, 7), r"tokens must have an integer dtype"),
    ((np.int32(3), 2, 7), r"tokens must be an int array \[\.\.\., length\]"),
])
def test_insert_landmarks_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        insert_landmarks(*args)


# Errors.

def _base():
    q = jnp.zeros((2, 8, 4, 8), jnp.float32)
    k = jnp.zeros((2, 8, 2, 8), jnp.float32)
    return dict(q=q, k=k, v=k, block_size=4)


BAD_INPUTS = [
    (dict(q=jnp.zeros((2, 3))), r"q must be \[batch, seq, heads, head_dim\], got shape \(2, 3\)"),
    (dict(k=jnp.zeros((2, 8, 2)), v=jnp.zeros((2, 8, 2))), r"k must be \[batch, seq, heads, head_dim\]"),
    (dict(v=jnp.zeros((2, 4, 2, 8))), r"k and v must have the same shape"),
    (dict(k=jnp.zeros((2, 8, 3, 8)), v=jnp.zeros((2, 8, 3, 8))), r"k/v heads must divide q heads"),
    (dict(k=jnp.zeros((2, 8, 2, 4)), v=jnp.zeros((2, 8, 2, 4))), r"head_dim"),
    (dict(k=jnp.zeros((1, 8, 2, 8)), v=jnp.zeros((1, 8, 2, 8))), r"batch"),
    (dict(q=jnp.zeros((2, 8, 4, 8), jnp.int32)), r"q must have a floating dtype"),
    (dict(k=jnp.zeros((2, 12, 2, 8)), v=jnp.zeros((2, 12, 2, 8))),
     r"q and k of the same sequence length, got q_len=8, kv_len=12"),
    (dict(block_size=3), r"sequence length 8 is not a multiple of block_size=3 .*pad to 9"),
    (dict(block_size=1), r"block_size must be an int >= 2"),
    (dict(block_size=0), r"block_size must be an int >= 2"),
    (dict(block_size=4.0), r"block_size must be an int >= 2"),
    (dict(block_size=None), r"block_size must be an int >= 2"),
    (dict(causal="yes"), r"causal must be a bool"),
    (dict(softmax="sparsemax"), r"softmax must be one of"),
    (dict(softmax="ssmax"), r"ssmax_s is required"),
    (dict(softmax="ssmax", ssmax_s=jnp.ones((2,))), r"ssmax_s must be a float array of shape \[heads\] = \[4\]"),
    (dict(softmax="ssmax", ssmax_s=jnp.ones((4,), jnp.int32)), r"ssmax_s must have a floating dtype"),
    (dict(ssmax_s=jnp.ones((4,))), r"ssmax_s is only used with softmax='ssmax'"),
    (dict(segment_ids=jnp.ones((2, 7), jnp.int32)), r"segment_ids must be an int array of shape \[batch, seq\]"),
    (dict(segment_ids=jnp.ones((2, 8), jnp.float32)), r"segment_ids must have an integer dtype"),
    (dict(scale=0.0), r"scale must be None or a positive number"),
    (dict(scale="big"), r"scale must be None or a positive number"),
    (dict(implementation="cuda"), r"implementation must be None or one of reference, xla_chunked, cudnn, splash, pallas"),
]


@pytest.mark.parametrize("changes, match", BAD_INPUTS)
def test_bad_inputs_raise(changes, match):
    kwargs = {**_base(), **changes}
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    with pytest.raises(ValueError, match=match):
        landmark_attention(q, k, v, **kwargs)


def test_segment_helpers_reject_bad_inputs():
    with pytest.raises(ValueError, match=r"segment_ids must be an int array \[batch, seq\]"):
        check_segment_alignment(np.ones(6, np.int32), 3)
    with pytest.raises(ValueError, match=r"sequence length 7 is not a multiple of block_size=3"):
        check_segment_alignment(np.ones((1, 7), np.int32), 3)
    with pytest.raises(ValueError, match=r"block_size must be an int >= 2"):
        segments_block_aligned(jnp.ones((1, 6), jnp.int32), 1)
    with pytest.raises(ValueError, match=r"segment_ids must be an int array \[batch, seq\]"):
        segments_block_aligned(jnp.ones((6,), jnp.int32), 3)
