"""The shared primitives and block layouts against the float64 naive reference.

``attend``, ``attend_layout`` and ``flash_attend`` (the ``xla_chunked`` online softmax) must
give the naive attention's values, log-sum-exps and gradients on random shapes, GQA, packed
segments, causal / windowed / bidirectional rules, padded last blocks and bf16 inputs; the
layouts must visit exactly the tiles holding a visible pair; the chunked backward must never
build a ``[Tq, Tk]`` array.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxattn.attention import core
from jaxattn.attention import layout as layout_lib
from jaxattn.attention import primitives
from tests.fast_jit import fast_jit
from tests.naive_attention import naive_attention, naive_mask


def _segments(rng, batch, length):
    cuts = np.sort(rng.integers(0, 4, size=(batch, length)), axis=1)
    return np.where(rng.random((batch, 1)) < 0.3, cuts, cuts + 1).astype(np.int32)  # some padding


CASE = st.fixed_dictionaries({
    "batch": st.integers(1, 2), "q_len": st.integers(1, 40), "extra_keys": st.integers(0, 9),
    "kv_heads": st.sampled_from([1, 2]), "group": st.sampled_from([1, 2]),
    "head_dim": st.sampled_from([3, 8]), "causal": st.booleans(),
    "window": st.sampled_from([None, 1, 5, 17]), "segments": st.booleans(),
    "q_block": st.sampled_from([4, 8, 16]), "kv_block": st.sampled_from([4, 8, 32]),
    "seed": st.integers(0, 2**31 - 1),
})


def _inputs(case, dtype=np.float64):
    rng = np.random.default_rng(case["seed"])
    q_len = case["q_len"]
    kv_len = q_len + case["extra_keys"]
    q_offset = case["extra_keys"] if case["causal"] else 0
    heads = case["kv_heads"] * case["group"]
    shape_q = (case["batch"], q_len, heads, case["head_dim"])
    shape_k = (case["batch"], kv_len, case["kv_heads"], case["head_dim"])
    q, k, v = (rng.normal(size=s).astype(dtype) for s in (shape_q, shape_k, shape_k))
    seg = kv_seg = None
    if case["segments"]:
        kv_seg = _segments(rng, case["batch"], kv_len)
        seg = kv_seg[:, kv_len - q_len:] if q_offset else kv_seg[:, :q_len]
    rule = layout_lib.PositionRule(causal=case["causal"], window=case["window"],
                                   q_offset=q_offset)
    return q, k, v, seg, kv_seg, rule


def _naive(q, k, v, seg, kv_seg, rule):
    return naive_attention(q, k, v, causal=rule.causal, window=rule.window, segment_ids=seg,
                           kv_segment_ids=kv_seg, q_offset=rule.q_offset)


def _naive_lse(q, k, seg, kv_seg, rule):
    batch, q_len, heads, head_dim = q.shape
    group = heads // k.shape[2]
    mask = naive_mask(batch, q_len, k.shape[1], segment_ids=seg, kv_segment_ids=kv_seg,
                      causal=rule.causal, window=rule.window, q_offset=rule.q_offset)
    logits = np.einsum("bqhd,bkhd->bqhk", q, np.repeat(k, group, axis=2)) / np.sqrt(head_dim)
    logits = np.where(mask[:, :, None, :], logits, -np.inf)
    top = np.max(logits, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.sum(np.exp(logits - top), axis=-1)) + top[..., 0])


def _run(name, q, k, v, seg, kv_seg, rule, case, return_lse=False):
    """One primitive on one case, jitted without optimisation passes (each example brings
    new shapes, so compilation dominates)."""
    return fast_jit(lambda q, k, v: _call(name, q, k, v, seg, kv_seg, rule, case,
                                          return_lse))(q, k, v)


def _call(name, q, k, v, seg, kv_seg, rule, case, return_lse):
    segs = dict(segment_ids=None if seg is None else jnp.asarray(seg),
                kv_segment_ids=None if kv_seg is None else jnp.asarray(kv_seg))
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    if name == "attend":
        mask = core.make_mask(q.shape[1], k.shape[1], causal=rule.causal, window=rule.window,
                              q_segment_ids=segs["segment_ids"],
                              kv_segment_ids=segs["kv_segment_ids"], q_offset=rule.q_offset)
        return primitives.attend(q, k, v, mask, return_lse=return_lse)
    layout = layout_lib.position_layout(q.shape[1], k.shape[1], rule, q_block=case["q_block"],
                                        kv_block=case["kv_block"])
    fn = primitives.flash_attend if name == "flash" else primitives.attend_layout
    return fn(q, k, v, layout, rule, return_lse=return_lse, **segs)


@pytest.mark.parametrize("name", ["attend", "layout", "flash"])
@settings(max_examples=6, deadline=None)
@given(case=CASE)
def test_values_and_lse_match_naive_float64(name, case):
    with jax.enable_x64(True):
        q, k, v, seg, kv_seg, rule = _inputs(case)
        out, lse = _run(name, q, k, v, seg, kv_seg, rule, case, return_lse=True)
        np.testing.assert_allclose(np.asarray(out), _naive(q, k, v, seg, kv_seg, rule),
                                   atol=1e-12)
        np.testing.assert_allclose(np.asarray(lse), _naive_lse(q, k, seg, kv_seg, rule),
                                   atol=1e-12)


@pytest.mark.parametrize("name", ["layout", "flash"])
@settings(max_examples=5, deadline=None)
@given(case=CASE)
def test_gradients_match_dense_float64(name, case):
    """Gradients of the output and of the log-sum-exp (as a ring merge differentiates it)."""
    with jax.enable_x64(True):
        q, k, v, seg, kv_seg, rule = _inputs(case)
        rng = np.random.default_rng(case["seed"] + 1)
        w_out = jnp.asarray(rng.normal(size=q.shape))
        w_lse = jnp.asarray(rng.normal(size=q.shape[:3]))

        def loss(which):
            def f(q, k, v):
                out, lse = _call(which, q, k, v, seg, kv_seg, rule, case, return_lse=True)
                return jnp.sum(out * w_out) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0) * w_lse)
            grad = fast_jit(jax.grad(f, argnums=(0, 1, 2)))
            return grad(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))

        for got, want in zip(loss(name), loss("attend")):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-11)


@settings(max_examples=4, deadline=None)
@given(case=CASE)
def test_bf16_inputs_keep_float32_statistics(case):
    q, k, v, seg, kv_seg, rule = _inputs(case, np.float32)
    want = _naive(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), seg, kv_seg,
                  rule)
    bf = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    out = _run("flash", *bf, seg, kv_seg, rule, case)
    assert out.dtype == jnp.bfloat16
    rounded = [np.asarray(x.astype(jnp.float32), np.float64) for x in bf]
    want = _naive(*rounded, seg, kv_seg, rule)
    np.testing.assert_allclose(np.asarray(out, np.float64), want, atol=2e-2, rtol=2e-2)


@settings(max_examples=20, deadline=None)
@given(case=CASE)
def test_position_layout_visits_exactly_the_tiles_with_a_visible_pair(case):
    _, k, _, _, _, rule = _inputs(case, np.float32)
    q_len, kv_len = case["q_len"], k.shape[1]
    bq, bk = case["q_block"], case["kv_block"]
    layout = layout_lib.position_layout(q_len, kv_len, rule, q_block=bq, kv_block=bk)
    nq, nk = layout_lib.num_blocks(q_len, bq), layout_lib.num_blocks(kv_len, bk)
    # Padded query rows count as visible queries (their outputs are discarded).
    mask = naive_mask(1, nq * bq, kv_len, causal=rule.causal, window=rule.window,
                      q_offset=rule.q_offset)[0]
    padded = np.zeros((nq * bq, nk * bk), bool)
    padded[:, :kv_len] = mask
    tiles = padded.reshape(nq, bq, nk, bk)
    np.testing.assert_array_equal(layout.block_mask(), tiles.any(axis=(1, 3)))
    for i in range(nq):
        for t in range(layout.counts[i]):
            assert layout.full[i, t] == tiles[i, :, layout.indices[i, t]].all()
    transposed = layout.transposed()
    np.testing.assert_array_equal(transposed.block_mask(), layout.block_mask().T)


def test_merge_partials_equals_one_softmax_over_the_union():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        q, k, v = (jnp.asarray(rng.normal(size=(2, 6, 4, 8))) for _ in range(3))
        mask = jnp.asarray(rng.random((2, 1, 6, 6)) < 0.6).at[:, :, 0].set(False)
        whole, whole_lse = primitives.attend(q, k, v, mask, return_lse=True)
        parts = [primitives.attend(q, k[:, s], v[:, s], mask[..., s], return_lse=True)
                 for s in (slice(0, 2), slice(2, 6))]
        out, lse = primitives.merge_partials([p[0] for p in parts], [p[1] for p in parts])
    np.testing.assert_allclose(np.asarray(out), np.asarray(whole), atol=1e-12)
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(whole_lse))
    assert np.all(np.asarray(out)[:, 0] == 0)  # query 0 sees nothing
    with pytest.raises(ValueError, match="outputs and lses"):
        primitives.merge_partials([out], [])


def _largest_intermediate(jaxpr):
    sizes = [0]
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            sizes.append(int(np.prod(getattr(var.aval, "shape", ()))))
        for param in eqn.params.values():
            subs = param if isinstance(param, (list, tuple)) else [param]
            for sub in subs:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    sizes.append(_largest_intermediate(inner))
    return max(sizes)


def test_flash_backward_never_builds_a_seq_by_seq_array():
    length, heads = 1024, 2
    rule = layout_lib.PositionRule(causal=True)
    layout = layout_lib.position_layout(length, length, rule, q_block=128, kv_block=128)
    x = jnp.zeros((1, length, heads, 16))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, layout, rule))

    flash = jax.make_jaxpr(jax.grad(loss(primitives.flash_attend), argnums=(0, 1, 2)))(x, x, x)
    assert _largest_intermediate(flash.jaxpr) < length * length
    reference = jax.make_jaxpr(jax.grad(loss(primitives.attend_layout)))(x, x, x)
    assert _largest_intermediate(reference.jaxpr) >= length * 2 * 128  # the gathered blocks


def test_layout_must_fit_the_lengths():
    rule = layout_lib.PositionRule()
    layout = layout_lib.position_layout(16, 16, rule, q_block=8, kv_block=8)
    x = jnp.zeros((1, 24, 1, 4))
    with pytest.raises(ValueError, match="need 3 x 3"):
        primitives.flash_attend(x, x, x, layout, rule)
    with pytest.raises(ValueError, match="layout must be a BlockLayout"):
        primitives.attend_layout(x, x, x, "dense", rule)
