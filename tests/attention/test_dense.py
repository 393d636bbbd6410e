"""dense_attention against the naive float64 reference: values, gradients, dtypes, masks, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxattn.attention import core
from jaxattn.attention import dense_attention, ssmax_init_value, ssmax_logit_scale
from tests.fast_jit import fast_jit, jit_with_static_options
from tests.naive_attention import naive_attention, naive_mask, naive_masked_attention_jnp

SETTINGS = settings(max_examples=30, deadline=None)
FEW = settings(max_examples=15, deadline=None)
STATIC_OPTIONS = ("causal", "window", "softmax", "scale", "q_offset")


attend = jit_with_static_options(dense_attention, STATIC_OPTIONS)


def packed_segment_ids(rng, length, pad=True):
    """Contiguous documents with ids 1, 2, ... and, sometimes, trailing padding (id 0)."""
    boundaries = np.sort(rng.choice(np.arange(1, length + 1), size=min(length, 3), replace=False))
    ids = np.searchsorted(boundaries, np.arange(length), side="right") + 1
    if pad and rng.random() < 0.5:
        ids[length - rng.integers(0, max(1, length // 3) + 1):] = 0
    return ids.astype(np.int32)


@st.composite
def dense_cases(draw, causal=None):
    """Shapes and options for one dense_attention call (inputs come from ``seed``)."""
    kv_heads = draw(st.sampled_from([1, 2]))
    decode = draw(st.booleans())
    q_len = draw(st.integers(1, 33))
    q_offset = draw(st.integers(0, 8)) if decode else 0
    return dict(
        batch=draw(st.integers(1, 2)),
        q_len=q_len,
        kv_len=q_len + q_offset + draw(st.integers(0, 3)) if decode else q_len,
        q_offset=q_offset,
        heads=kv_heads * draw(st.sampled_from([1, 2, 4])),
        kv_heads=kv_heads,
        head_dim=draw(st.integers(4, 16)),
        causal=draw(st.booleans()) if causal is None else causal,
        window=draw(st.one_of(st.none(), st.integers(1, 12))),
        segments=draw(st.sampled_from([None, "packed", "random"])),
        softmax=draw(st.sampled_from(["softmax", "ssmax"])),
        scale=draw(st.one_of(st.none(), st.floats(0.1, 2.0))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_inputs(case):
    """NumPy float64 ``(q, k, v)`` and the keyword options shared by package and reference."""
    rng = np.random.default_rng(case["seed"])
    b, tq, tk = case["batch"], case["q_len"], case["kv_len"]
    q = rng.normal(size=(b, tq, case["heads"], case["head_dim"]))
    k = rng.normal(size=(b, tk, case["kv_heads"], case["head_dim"]))
    v = rng.normal(size=(b, tk, case["kv_heads"], case["head_dim"]))
    options = dict(causal=case["causal"], window=case["window"], softmax=case["softmax"],
                   scale=case["scale"], q_offset=case["q_offset"], segment_ids=None,
                   kv_segment_ids=None, ssmax_s=None)
    if case["segments"] == "packed":
        kv_ids = np.stack([packed_segment_ids(rng, tk) for _ in range(b)])
        options["segment_ids"] = kv_ids[:, case["q_offset"]:case["q_offset"] + tq]
        options["kv_segment_ids"] = kv_ids if tk != tq or rng.random() < 0.5 else None
    elif case["segments"] == "random":
        options["segment_ids"] = rng.integers(0, 3, size=(b, tq)).astype(np.int32)
        if tk != tq:
            options["kv_segment_ids"] = rng.integers(0, 3, size=(b, tk)).astype(np.int32)
    if case["softmax"] == "ssmax":
        options["ssmax_s"] = rng.uniform(0.2, 1.5, size=case["heads"])
    return q, k, v, options


def to_jax(q, k, v, options, dtype):
    """Casts inputs to ``dtype`` (and ``ssmax_s`` to float32 unless ``dtype`` is float64)."""
    s_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32
    options = dict(options)
    for name in ("segment_ids", "kv_segment_ids"):
        if options[name] is not None:
            options[name] = jnp.asarray(options[name], jnp.int32)
    if options["ssmax_s"] is not None:
        options["ssmax_s"] = jnp.asarray(options["ssmax_s"], s_dtype)
    return jnp.asarray(q, dtype), jnp.asarray(k, dtype), jnp.asarray(v, dtype), options


def reference_mask(q, k, options):
    return naive_mask(q.shape[0], q.shape[1], k.shape[1], causal=options["causal"],
                      window=options["window"], segment_ids=options["segment_ids"],
                      kv_segment_ids=options["kv_segment_ids"], q_offset=options["q_offset"])


# Values.

@SETTINGS
@given(dense_cases())
def test_matches_naive_float64(case):
    q, k, v, options = make_inputs(case)
    expected = naive_attention(q, k, v, **options)
    with jax.enable_x64(True):
        jq, jk, jv, jopts = to_jax(q, k, v, options, jnp.float64)
        out = attend(jq, jk, jv, **jopts)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out), expected, atol=1e-10, rtol=1e-10)


@SETTINGS
@given(dense_cases())
def test_matches_naive_float32(case):
    q, k, v, options = make_inputs(case)
    jq, jk, jv, jopts = to_jax(q, k, v, options, jnp.float32)
    out = attend(jq, jk, jv, **jopts)
    expected = naive_attention(np.asarray(jq), np.asarray(jk), np.asarray(jv),
                               **{**options, "ssmax_s": jopts["ssmax_s"]})
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-5)


def test_gqa_equals_repeated_kv_heads():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 12, 8, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 12, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 12, 2, 8)), jnp.float32)
    grouped = dense_attention(q, k, v, window=5)
    repeated = dense_attention(q, jnp.repeat(k, 4, axis=2), jnp.repeat(v, 4, axis=2), window=5)
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(repeated), atol=1e-6)


def test_jit_matches_eager():
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(2, 16, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32)
    seg = jnp.asarray(np.stack([packed_segment_ids(rng, 16) for _ in range(2)]))
    s = jnp.full((4,), 0.4, jnp.float32)
    fn = functools.partial(dense_attention, causal=True, window=6, softmax="ssmax")
    eager = fn(q, k, v, segment_ids=seg, ssmax_s=s)
    jitted = jax.jit(fn)(q, k, v, segment_ids=seg, ssmax_s=s)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6)


@pytest.mark.parametrize("implementation", [None, "reference", "xla_chunked"])
def test_implementation_reference(implementation):
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.normal(size=(1, 5, 2, 4)), jnp.float32)
    out = dense_attention(q, q, q, implementation=implementation)
    np.testing.assert_allclose(np.asarray(out), np.asarray(naive_attention(q, q, q)), atol=1e-6)


def test_pallas_not_available_yet():
    q = jnp.zeros((1, 4, 2, 4))
    with pytest.raises(ValueError, match="no pallas implementation"):
        dense_attention(q, q, q, implementation="pallas")


# Gradients.

@FEW
@given(dense_cases())
def test_gradients_match_naive_autodiff(case):
    q, k, v, options = make_inputs(case)
    rng = np.random.default_rng(case["seed"] + 1)
    cotangent = rng.normal(size=q.shape)
    mask = reference_mask(q, k, options)
    s = options["ssmax_s"] if options["ssmax_s"] is not None else np.ones(case["heads"])
    ssmax = case["softmax"] == "ssmax"
    with jax.enable_x64(True):
        _, _, _, jopts = to_jax(q, k, v, options, jnp.float64)
        jopts.pop("ssmax_s")

        def package_loss(q, k, v, s):
            out = dense_attention(q, k, v, ssmax_s=s if ssmax else None, **jopts)
            return jnp.sum(out * cotangent)

        def reference_loss(q, k, v, s):
            out = naive_masked_attention_jnp(q, k, v, mask, ssmax_s=s if ssmax else None, scale=case["scale"])
            return jnp.sum(out * cotangent)

        args = tuple(jnp.asarray(x, jnp.float64) for x in (q, k, v, s))
        got = fast_jit(jax.grad(package_loss, argnums=(0, 1, 2, 3)))(*args)
        want = fast_jit(jax.grad(reference_loss, argnums=(0, 1, 2, 3)))(*args)
        for name, g, w in zip("qkvs", got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-9, rtol=1e-9, err_msg=name)


@pytest.mark.parametrize("softmax", ["softmax", "ssmax"])
def test_gradients_match_finite_differences(softmax):
    rng = np.random.default_rng(3)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 2, 2]], np.int32)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(2, 8, 4, 4)))
        k = jnp.asarray(rng.normal(size=(2, 8, 2, 4)))
        v = jnp.asarray(rng.normal(size=(2, 8, 2, 4)))
        s = jnp.asarray(rng.uniform(0.3, 1.2, size=4))

        def f(q, k, v, s):
            return dense_attention(q, k, v, window=4, segment_ids=jnp.asarray(seg), softmax=softmax,
                                   ssmax_s=s if softmax == "ssmax" else None)

        check_grads(jax.jit(f), (q, k, v, s), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_fully_masked_rows_are_zero_with_finite_gradients():
    rng = np.random.default_rng(4)
    seg = jnp.asarray([[1, 1, 2, 2, 0, 0]], jnp.int32)
    q = jnp.asarray(rng.normal(size=(1, 6, 2, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 6, 2, 4)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(1, 6, 2, 4)), jnp.float32)
    s = jnp.ones((2,), jnp.float32)
    out = dense_attention(q, k, v, segment_ids=seg, softmax="ssmax", ssmax_s=s)
    assert np.all(np.asarray(out[:, 4:]) == 0)
    grads = fast_jit(jax.grad(
        lambda *a: jnp.sum(dense_attention(*a[:3], segment_ids=seg, softmax="ssmax", ssmax_s=a[3]) ** 2),
        argnums=(0, 1, 2, 3),
    ))(q, k, v, s)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(grads[0][:, 4:]) == 0)


# Low precision.

@FEW
@given(dense_cases())
def test_bf16_uses_float32_statistics(case):
    q, k, v, options = make_inputs(case)
    bq, bk, bv, bopts = to_jax(q, k, v, options, jnp.bfloat16)
    out = attend(bq, bk, bv, **bopts)
    assert out.dtype == jnp.bfloat16
    ref = np.asarray(attend(*(x.astype(jnp.float32) for x in (bq, bk, bv)), **bopts))
    # Only the final rounding to bf16 (unit roundoff 2**-8) may separate the two.
    err = np.abs(np.asarray(out.astype(jnp.float32)) - ref)
    assert np.all(err <= 2.0**-8 * np.abs(ref) * (1 + 1e-4) + 1e-6), err.max()


# Masks.

@SETTINGS
@given(dense_cases(causal=True), st.data())
def test_causality(case, data):
    q, k, v, options = make_inputs(case)
    jq, jk, jv, jopts = to_jax(q, k, v, options, jnp.float32)
    cut = data.draw(st.integers(0, case["kv_len"] - 1))
    rng = np.random.default_rng(case["seed"] + 2)
    later = np.arange(case["kv_len"]) >= cut
    jk2 = jnp.where(later[None, :, None, None], jnp.asarray(rng.normal(size=k.shape) * 10, jnp.float32), jk)
    jv2 = jnp.where(later[None, :, None, None], jnp.asarray(rng.normal(size=v.shape) * 10, jnp.float32), jv)
    before = np.asarray(attend(jq, jk, jv, **jopts))
    after = np.asarray(attend(jq, jk2, jv2, **jopts))
    unaffected = max(0, cut - case["q_offset"])  # queries at positions < cut
    np.testing.assert_array_equal(after[:, :unaffected], before[:, :unaffected])


@SETTINGS
@given(dense_cases())
def test_make_mask_and_visible_key_count_match_naive(case):
    q, k, _, options = make_inputs(case)
    kv_ids = options["kv_segment_ids"]
    if options["segment_ids"] is not None and kv_ids is None:
        kv_ids = options["segment_ids"]
    mask = core.make_mask(case["q_len"], case["kv_len"], causal=case["causal"], window=case["window"],
                          q_segment_ids=options["segment_ids"], kv_segment_ids=kv_ids,
                          q_offset=case["q_offset"])
    expected = reference_mask(q, k, options)
    mask = np.broadcast_to(np.asarray(mask), (case["batch"], 1, case["q_len"], case["kv_len"]))
    np.testing.assert_array_equal(mask[:, 0], expected)
    counts = core.visible_key_count(jnp.asarray(mask))
    assert counts.dtype == jnp.float32 and counts.shape == (case["batch"], 1, case["q_len"])
    np.testing.assert_array_equal(np.asarray(counts)[:, 0], expected.sum(-1))


def test_window_definitions():
    causal = core.make_mask(5, 5, causal=True, window=2)[0, 0]
    assert [list(np.flatnonzero(row)) for row in causal] == [[0], [0, 1], [1, 2], [2, 3], [3, 4]]
    both = core.make_mask(5, 5, causal=False, window=2)[0, 0]
    assert [list(np.flatnonzero(row)) for row in both] == [[0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4]]
    decode = core.make_mask(2, 6, causal=True, window=3, q_offset=3)[0, 0]
    assert [list(np.flatnonzero(row)) for row in decode] == [[1, 2, 3], [2, 3, 4]]


def test_masked_softmax_fully_masked_row_is_zero():
    logits = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.asarray([[True, False, True], [False, False, False]])
    probs = np.asarray(core.masked_softmax(logits, mask))
    np.testing.assert_allclose(probs[0], [1 / (1 + np.e**2), 0, np.e**2 / (1 + np.e**2)], rtol=1e-6)
    np.testing.assert_array_equal(probs[1], 0)
    lse = np.asarray(core.masked_logsumexp(logits, mask))
    np.testing.assert_allclose(lse[0, 0], np.log(np.e + np.e**3), rtol=1e-6)
    assert lse[1, 0] == -np.inf


# SSMax.

def test_ssmax_logit_scale_values():
    s = jnp.asarray([0.5, 2.0], jnp.float32)
    n = jnp.asarray([[[1.0, 2.0, 7.0]]], jnp.float32)
    scale = ssmax_logit_scale(s, n)
    assert scale.shape == (1, 2, 3, 1) and scale.dtype == jnp.float32
    expected = np.array([0.5, 2.0])[:, None] * np.log([1.0, 2.0, 7.0])[None, :]
    np.testing.assert_allclose(np.asarray(scale)[0, :, :, 0], expected, rtol=1e-6)
    zero = ssmax_logit_scale(s, jnp.zeros((1, 1, 2), jnp.float32))
    assert np.all(np.asarray(zero) == 0)


def test_ssmax_init_value():
    assert ssmax_init_value(1024) == pytest.approx(1 / np.log(1024))
    for bad in (1, 0, 2.5, True, "1024"):
        with pytest.raises(ValueError, match="train_len"):
            ssmax_init_value(bad)


@pytest.mark.parametrize("length", [2, 7, 16])
def test_ssmax_at_init_value_equals_softmax_bidirectional(length):
    rng = np.random.default_rng(length)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(2, length, 4, 8)))
        k = jnp.asarray(rng.normal(size=(2, length, 2, 8)))
        v = jnp.asarray(rng.normal(size=(2, length, 2, 8)))
        s = jnp.full((4,), ssmax_init_value(length), jnp.float64)
        plain = dense_attention(q, k, v, causal=False)
        scaled = dense_attention(q, k, v, causal=False, softmax="ssmax", ssmax_s=s)
        np.testing.assert_allclose(np.asarray(scaled), np.asarray(plain), atol=1e-12)


@pytest.mark.parametrize("window", [3, 5])
def test_ssmax_counts_window_keys(window):
    """With s = 1/log(w) the rows whose window is full (n_i = w) match plain softmax; others do not."""
    rng = np.random.default_rng(window)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(1, 12, 2, 8)))
        k = jnp.asarray(rng.normal(size=(1, 12, 2, 8)))
        v = jnp.asarray(rng.normal(size=(1, 12, 2, 8)))
        s = jnp.full((2,), ssmax_init_value(window), jnp.float64)
        plain = np.asarray(dense_attention(q, k, v, window=window))
        scaled = np.asarray(dense_attention(q, k, v, window=window, softmax="ssmax", ssmax_s=s))
    np.testing.assert_allclose(scaled[:, window - 1:], plain[:, window - 1:], atol=1e-12)
    for i in range(1, window - 1):
        assert not np.allclose(scaled[:, i], plain[:, i], atol=1e-6)


def test_ssmax_counts_segment_keys():
    """n_i counts only same-segment keys: a document of length L with s = 1/log(L) matches softmax."""
    rng = np.random.default_rng(5)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 2]], jnp.int32)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(1, 8, 2, 4)))
        k = jnp.asarray(rng.normal(size=(1, 8, 2, 4)))
        v = jnp.asarray(rng.normal(size=(1, 8, 2, 4)))
        for length, rows in ((3, slice(0, 3)), (5, slice(3, 8))):
            s = jnp.full((2,), ssmax_init_value(length), jnp.float64)
            plain = np.asarray(dense_attention(q, k, v, causal=False, segment_ids=seg))
            scaled = np.asarray(dense_attention(q, k, v, causal=False, segment_ids=seg, softmax="ssmax",
                                                ssmax_s=s))
            np.testing.assert_allclose(scaled[:, rows], plain[:, rows], atol=1e-12)


def test_ssmax_equals_softmax_on_rescaled_queries():
    """Causal SSMax is plain softmax with q_i scaled by s_h log(i + 1 + q_offset)."""
    rng = np.random.default_rng(6)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(2, 6, 4, 8)))
        k = jnp.asarray(rng.normal(size=(2, 9, 2, 8)))
        v = jnp.asarray(rng.normal(size=(2, 9, 2, 8)))
        s = jnp.asarray(rng.uniform(0.2, 1.5, size=4))
        row = s[None, None, :, None] * jnp.log(jnp.arange(6) + 4.0)[None, :, None, None]
        plain = dense_attention(q * row, k, v, q_offset=3)
        scaled = dense_attention(q, k, v, q_offset=3, softmax="ssmax", ssmax_s=s)
        np.testing.assert_allclose(np.asarray(scaled), np.asarray(plain), atol=1e-12)


# Errors.

def _base():
    q = jnp.zeros((2, 8, 4, 8), jnp.float32)
    k = jnp.zeros((2, 8, 2, 8), jnp.float32)
    return dict(q=q, k=k, v=k)


BAD_INPUTS = [
    (dict(q=jnp.zeros((2, 3))), r"q must be \[batch, seq, heads, head_dim\], got shape \(2, 3\)"),
    (dict(k=jnp.zeros((2, 8, 2)), v=jnp.zeros((2, 8, 2))), r"k must be \[batch, seq, heads, head_dim\]"),
    (dict(v=jnp.zeros((2, 7, 2, 8))), r"k and v must have the same shape"),
    (dict(k=jnp.zeros((2, 8, 3, 8)), v=jnp.zeros((2, 8, 3, 8))), r"k/v heads must divide q heads"),
    (dict(k=jnp.zeros((2, 8, 2, 4)), v=jnp.zeros((2, 8, 2, 4))), r"head_dim"),
    (dict(k=jnp.zeros((1, 8, 2, 8)), v=jnp.zeros((1, 8, 2, 8))), r"batch"),
    (dict(q=jnp.zeros((2, 8, 4, 8), jnp.int32)), r"q must have a floating dtype"),
    (dict(softmax="sparsemax"), r"softmax must be one of"),
    (dict(window=0), r"window must be None or an int >= 1"),
    (dict(window=-1), r"window must be None or an int >= 1"),
    (dict(window=2.5), r"window must be None or an int >= 1"),
    (dict(window=True), r"window must be None or an int >= 1"),
    (dict(causal="yes"), r"causal must be a bool"),
    (dict(softmax="ssmax"), r"ssmax_s is required"),
    (dict(softmax="ssmax", ssmax_s=jnp.ones((2,))), r"ssmax_s must be a float array of shape \[heads\] = \[4\]"),
    (dict(softmax="ssmax", ssmax_s=jnp.ones((4,), jnp.int32)), r"ssmax_s must have a floating dtype"),
    (dict(ssmax_s=jnp.ones((4,))), r"ssmax_s is only used with softmax='ssmax'"),
    (dict(segment_ids=jnp.ones((2, 7), jnp.int32)), r"segment_ids must be an int array of shape \[batch, seq\]"),
    (dict(segment_ids=jnp.ones((2, 8), jnp.float32)), r"segment_ids must have an integer dtype"),
    (dict(segment_ids=jnp.ones((2, 8), jnp.int32), kv_segment_ids=jnp.ones((2, 9), jnp.int32)),
     r"kv_segment_ids must be an int array"),
    (dict(kv_segment_ids=jnp.ones((2, 8), jnp.int32)), r"kv_segment_ids was given without segment_ids"),
    (dict(q_offset=1), r"q_offset"),
    (dict(q_offset=-1), r"q_offset must be an int >= 0"),
    (dict(q_offset=1.0, causal=False), r"q_offset must be an int >= 0"),
    (dict(scale=0.0), r"scale must be None or a positive number"),
    (dict(scale="big"), r"scale must be None or a positive number"),
    (dict(implementation="cuda"), r"implementation must be None or one of reference, xla_chunked, cudnn, splash, pallas"),
]


@pytest.mark.parametrize("changes, match", BAD_INPUTS)
def test_bad_inputs_raise(changes, match):
    kwargs = {**_base(), **changes}
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    with pytest.raises(ValueError, match=match):
        dense_attention(q, k, v, **kwargs)


def test_missing_kv_segment_ids_for_unequal_lengths():
    q = jnp.zeros((1, 4, 2, 4))
    k = jnp.zeros((1, 6, 2, 4))
    with pytest.raises(ValueError, match=r"kv_segment_ids \[batch, kv_len\] is required"):
        dense_attention(q, k, k, segment_ids=jnp.ones((1, 4), jnp.int32))
