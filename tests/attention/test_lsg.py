"""lsg_attention: every sparsity type against the naive float64 reference, causality, padding, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxattn.attention import dense_attention, local_attention
from jaxattn.attention.lsg import (SPARSITY_TYPES, lsg_attention, lsg_compression_window,
                                   lsg_key_schedule)
from tests.fast_jit import fast_jit, jit_with_static_options
from tests.naive_lsg import naive_lsg, naive_lsg_jnp

SETTINGS = settings(max_examples=20, deadline=None)
FEW = settings(max_examples=10, deadline=None)
GRADIENTS = settings(max_examples=8, deadline=None)
STATIC_OPTIONS = ("block_size", "sparse_block_size", "sparsity_factor", "sparsity_type",
                  "num_global_tokens", "causal", "softmax", "scale", "lsh_seed")

attend = jit_with_static_options(lsg_attention, STATIC_OPTIONS)


@st.composite
def lsg_cases(draw, causal=None, segments=None):
    block_size = draw(st.sampled_from([4, 8]))
    heads, kv_heads = draw(st.sampled_from([(2, 1), (2, 2), (3, 1), (4, 1), (4, 2)]))
    return dict(
        batch=draw(st.integers(1, 2)),
        block_size=block_size,
        sparsity_factor=draw(st.sampled_from([1, 2, 4])),
        sparse_block_size=draw(st.sampled_from([0, 1, 2, 4])),
        sparsity_type=draw(st.sampled_from(SPARSITY_TYPES)),
        num_global_tokens=draw(st.integers(0, 2)),
        # 1 and 2 blocks take the short-sequence (dense) path.
        num_blocks=draw(st.sampled_from([1, 2, 3, 4, 5])),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=draw(st.integers(3, 8)),
        causal=draw(st.booleans()) if causal is None else causal,
        segments=draw(st.sampled_from([None, "packed", "random"])) if segments is None else segments,
        softmax=draw(st.sampled_from(["softmax", "ssmax"])),
        scale=draw(st.one_of(st.none(), st.floats(0.2, 2.0))),
        lsh_seed=draw(st.integers(0, 3)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def make_inputs(case, dtype):
    """``(q, k, v, options)``; ``ssmax_s`` is float64 only with float64 inputs."""
    rng = np.random.default_rng(case["seed"])
    b = case["batch"]
    t = case["num_global_tokens"] + case["block_size"] * case["num_blocks"]
    q = jnp.asarray(rng.normal(size=(b, t, case["heads"], case["head_dim"])), dtype)
    k = jnp.asarray(rng.normal(size=(b, t, case["kv_heads"], case["head_dim"])), dtype)
    v = jnp.asarray(rng.normal(size=(b, t, case["kv_heads"], case["head_dim"])), dtype)
    options = {key: case[key] for key in STATIC_OPTIONS}
    options.update(segment_ids=None, ssmax_s=None)
    if case["segments"] == "packed":
        ids = np.cumsum(rng.random((b, t)) < 0.15, axis=1) + 1
        ids[:, t - rng.integers(0, t // 3 + 1):] = 0
        options["segment_ids"] = jnp.asarray(ids, jnp.int32)
    elif case["segments"] == "random":
        options["segment_ids"] = jnp.asarray(rng.integers(0, 3, size=(b, t)), jnp.int32)
    if case["softmax"] == "ssmax":
        s_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32
        options["ssmax_s"] = jnp.asarray(rng.uniform(0.2, 1.5, size=case["heads"]), s_dtype)
    return q, k, v, options


def naive(q, k, v, options):
    return naive_lsg(np.asarray(q, np.float64), np.asarray(k, np.float64), np.asarray(v, np.float64),
                     **options)


# Schedule.

def test_schedule_example():
    schedule = lsg_key_schedule(4, block_size=4, sparsity_factor=2, sparse_block_size=2, causal=False)
    np.testing.assert_array_equal(schedule.local_blocks, [[-1, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, -1]])
    # Compressed length 8, two compressed tokens per block.
    np.testing.assert_array_equal(schedule.sparse_index,
                                  [[-1, -1, 4, 5], [-1, -1, 6, 7], [0, 1, -1, -1], [2, 3, -1, -1]])
    causal = lsg_key_schedule(4, block_size=4, sparsity_factor=2, sparse_block_size=2, causal=True)
    np.testing.assert_array_equal(causal.local_blocks, [[-1, 0], [0, 1], [1, 2], [2, 3]])
    np.testing.assert_array_equal(causal.sparse_index, [[-1, -1], [-1, -1], [0, 1], [2, 3]])
    assert causal.sparse_index.dtype == np.int32


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize("block_size, factor, sparse", [(16, 2, 3), (8, 4, 3), (12, 3, 5), (128, 8, 128),
                                                        (6, 1, 7), (16, 16, 1), (16, 4, 0)])
def test_causal_schedule_reads_only_the_past(sparsity_type, block_size, factor, sparse):
    """Every compressed token of causal block b summarises only tokens before block b-1."""
    window, per_window = lsg_compression_window(sparsity_type, block_size=block_size,
                                                sparsity_factor=factor, sparse_block_size=sparse)
    assert block_size % window == 0 and window == per_window * factor
    schedule = lsg_key_schedule(9, block_size=block_size, sparsity_factor=factor,
                                sparse_block_size=sparse, causal=True)
    for b, row in enumerate(schedule.sparse_index):
        for c in row[row >= 0]:
            assert (c // per_window + 1) * window <= (b - 1) * block_size


# Values.

@SETTINGS
@given(lsg_cases())
def test_matches_naive_float64(case):
    with jax.enable_x64(True):
        q, k, v, options = make_inputs(case, jnp.float64)
        out = attend(q, k, v, **options)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(out), naive(q, k, v, options), atol=1e-10, rtol=1e-10)


@SETTINGS
@given(lsg_cases())
def test_matches_naive_float32(case):
    q, k, v, options = make_inputs(case, jnp.float32)
    out = attend(q, k, v, **options)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), naive(q, k, v, options), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_every_type_both_directions(sparsity_type, causal):
    """A fixed long geometry with padding, GQA and SSMax for every type: values and gradients."""
    case = dict(batch=2, block_size=4, sparsity_factor=2, sparse_block_size=2,
                sparsity_type=sparsity_type, num_global_tokens=1, num_blocks=6, heads=4, kv_heads=2,
                head_dim=5, causal=causal, segments="random", softmax="ssmax", scale=None,
                lsh_seed=1, seed=3)
    with jax.enable_x64(True):
        q, k, v, options = make_inputs(case, jnp.float64)
        out = attend(q, k, v, **options)
        np.testing.assert_allclose(np.asarray(out), naive(q, k, v, options), atol=1e-10, rtol=1e-10)
        _check_gradients(q, k, v, options, np.random.default_rng(4))


def _check_gradients(q, k, v, options, rng):
    """Gradients in q, k, v (and SSMax's s) equal autodiff of the jnp naive reference."""
    options = dict(options)
    ssmax = options.pop("softmax") == "ssmax"
    s = options.pop("ssmax_s")
    if not ssmax:
        s = jnp.ones((q.shape[2],), jnp.float64)
    cotangent = jnp.asarray(rng.normal(size=q.shape))
    reference = functools.partial(naive_lsg_jnp, plan_keys=np.asarray(k), **options)

    def lsg_loss(q, k, v, s):
        out = lsg_attention(q, k, v, softmax="ssmax" if ssmax else "softmax",
                            ssmax_s=s if ssmax else None, **options)
        return jnp.sum(out * cotangent), out

    def naive_loss(q, k, v, s):
        out = reference(q, k, v, ssmax_s=s if ssmax else None)
        return jnp.sum(out * cotangent), out

    grad = functools.partial(jax.grad, argnums=(0, 1, 2, 3), has_aux=True)
    got, out = fast_jit(grad(lsg_loss))(q, k, v, s)
    want, expected = fast_jit(grad(naive_loss))(q, k, v, s)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-10, rtol=1e-10)
    for name, g, w in zip("qkvs", got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-9, rtol=1e-9, err_msg=name)


@GRADIENTS
@given(lsg_cases())
def test_gradients_match_naive_jnp(case):
    with jax.enable_x64(True):
        q, k, v, options = make_inputs(case, jnp.float64)
        _check_gradients(q, k, v, options, np.random.default_rng(case["seed"] + 1))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("num_blocks", [1, 2])
def test_short_sequences_are_dense(causal, num_blocks):
    rng = np.random.default_rng(num_blocks)
    t = 8 * num_blocks
    q = jnp.asarray(rng.normal(size=(2, t, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, t, 2, 8)), jnp.float32)
    seg = jnp.asarray(np.sort(rng.integers(0, 3, size=(2, t)), axis=1), jnp.int32)
    lsg = attend(q, k, k, block_size=8, num_global_tokens=0, causal=causal, segment_ids=seg,
                 sparse_block_size=2)
    dense = fast_jit(functools.partial(dense_attention, causal=causal))(q, k, k, segment_ids=seg)
    np.testing.assert_allclose(np.asarray(lsg), np.asarray(dense), atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_without_globals_or_sparse_keys_it_is_local_attention(causal):
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 40, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 40, 1, 8)), jnp.float32)
    seg = jnp.asarray(rng.integers(0, 3, size=(1, 40)), jnp.int32)
    local = functools.partial(local_attention, block_size=8, causal=causal)
    expected = fast_jit(local)(q, k, k, segment_ids=seg)
    for sparsity_type, sparse in (("none", 4), ("pooling", 0)):
        out = attend(q, k, k, block_size=8, sparse_block_size=sparse, sparsity_type=sparsity_type,
                     num_global_tokens=0, causal=causal, segment_ids=seg)
        np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-6)


# Causality, padding, determinism.

def _perturb_from(x, cut, rng, scale=10.0):
    later = (np.arange(x.shape[1]) >= cut)[None, :, None, None]
    return jnp.where(later, jnp.asarray(rng.normal(size=x.shape) * scale, x.dtype), x)


@FEW
@given(lsg_cases(causal=True), st.data())
def test_causality(case, data):
    q, k, v, options = make_inputs(case, jnp.float32)
    cut = data.draw(st.integers(0, q.shape[1] - 1))
    rng = np.random.default_rng(case["seed"] + 2)
    before = np.asarray(attend(q, k, v, **options))
    after = np.asarray(attend(_perturb_from(q, cut, rng), _perturb_from(k, cut, rng),
                              _perturb_from(v, cut, rng), **options))
    np.testing.assert_array_equal(after[:, :cut], before[:, :cut])


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
@pytest.mark.parametrize("block_size, factor, sparse", [(16, 2, 3), (8, 4, 3), (12, 3, 5)])
def test_causality_where_the_original_leaked(sparsity_type, block_size, factor, sparse):
    """The geometries whose windows leaked in the authors' code: block 16, factor 2, sparse 3 etc."""
    rng = np.random.default_rng(5)
    t = 1 + 6 * block_size
    q = jnp.asarray(rng.normal(size=(1, t, 4, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, t, 2, 4)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(1, t, 2, 4)), jnp.float32)
    options = dict(block_size=block_size, sparsity_factor=factor, sparse_block_size=sparse,
                   sparsity_type=sparsity_type, num_global_tokens=1, causal=True)
    before = np.asarray(attend(q, k, v, **options))
    for cut in range(1, t, 5):
        after = np.asarray(attend(_perturb_from(q, cut, rng), _perturb_from(k, cut, rng),
                                  _perturb_from(v, cut, rng), **options))
        np.testing.assert_array_equal(after[:, :cut], before[:, :cut], err_msg=f"cut {cut}")
        assert not np.array_equal(after[:, cut:], before[:, cut:])


@FEW
@given(lsg_cases(segments="random"))
def test_padding_never_changes_real_outputs(case):
    """New q/k/v at padded ordinary positions (segment 0) leave every other output unchanged."""
    q, k, v, options = make_inputs(case, jnp.float32)
    seg = np.asarray(options["segment_ids"])
    padded = seg == 0
    padded[:, :case["num_global_tokens"]] = False
    rng = np.random.default_rng(case["seed"] + 3)

    def replace(x):
        where = padded[:, :, None, None]
        return jnp.where(where, jnp.asarray(rng.normal(size=x.shape) * 10, x.dtype), x)

    before = np.asarray(attend(q, k, v, **options))
    after = np.asarray(attend(replace(q), replace(k), replace(v), **options))
    np.testing.assert_array_equal(after[~padded], before[~padded])
    np.testing.assert_array_equal(after[padded], 0.0)


def test_lsh_is_deterministic_given_the_seed():
    rng = np.random.default_rng(11)
    q = jnp.asarray(rng.normal(size=(1, 65, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 65, 2, 8)), jnp.float32)
    options = dict(block_size=16, sparse_block_size=16, sparsity_factor=4, sparsity_type="lsh",
                   num_global_tokens=1, causal=False)
    first = attend(q, k, k, lsh_seed=3, **options)
    again = fast_jit(functools.partial(lsg_attention, lsh_seed=3, **options))(q, k, k)
    other = attend(q, k, k, lsh_seed=4, **options)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.allclose(np.asarray(first), np.asarray(other))


@pytest.mark.parametrize("sparsity_type", ["bos_pooling", "pooling", "lsh"])
def test_a_window_of_padding_is_masked(sparsity_type):
    """Values at padding never leak through a compressed token, even a window of padding only."""
    rng = np.random.default_rng(2)
    seg = np.ones((1, 33), np.int32)
    seg[0, 1:5] = 0
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(1, 33, 2, 4)), jnp.float64)
        k = jnp.asarray(rng.normal(size=(1, 33, 2, 4)), jnp.float64)
        options = dict(block_size=8, sparse_block_size=4, sparsity_factor=4, sparsity_type=sparsity_type,
                       num_global_tokens=1, causal=False, segment_ids=jnp.asarray(seg))
        out = attend(q, k, k, **options)
        np.testing.assert_allclose(np.asarray(out), naive(q, k, k, options), atol=1e-10)


# Memory.

def _largest_intermediate(jaxpr):
    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            largest = max(largest, int(np.prod(var.aval.shape)))
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)
            if hasattr(inner, "eqns"):
                largest = max(largest, _largest_intermediate(inner))
    return largest


@pytest.mark.parametrize("sparsity_type", ["norm", "lsh", "bos_pooling"])
@pytest.mark.parametrize("causal", [True, False])
def test_memory_is_linear_in_sequence_length(sparsity_type, causal):
    """No T x T array, forward or backward: the largest value is O(T * (G + 2S + 3B) * H)."""
    t, block, sparse, g, heads, dim = 1026, 16, 8, 2, 2, 8
    q = jnp.zeros((1, t, heads, dim), jnp.float32)
    k = jnp.zeros((1, t, 1, dim), jnp.float32)
    seg = jnp.ones((1, t), jnp.int32)

    def loss(q, k, v, s):
        return jnp.sum(lsg_attention(q, k, v, block_size=block, sparse_block_size=sparse,
                                     sparsity_factor=4, sparsity_type=sparsity_type, num_global_tokens=g,
                                     causal=causal, segment_ids=seg, softmax="ssmax", ssmax_s=s))

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(q, k, k, jnp.ones((heads,)))
    largest = _largest_intermediate(jaxpr.jaxpr)
    assert largest <= heads * t * max(g + 2 * sparse + 3 * block, dim * 4) < t * t


# Errors.

def _base():
    q = jnp.zeros((2, 17, 4, 8), jnp.float32)
    k = jnp.zeros((2, 17, 2, 8), jnp.float32)
    return dict(q=q, k=k, v=k, block_size=4, sparse_block_size=2, sparsity_factor=2, num_global_tokens=1)


BAD_INPUTS = [
    (dict(q=jnp.zeros((2, 17, 4))), r"q must be \[batch, seq, heads, head_dim\]"),
    (dict(k=jnp.zeros((2, 17, 3, 8)), v=jnp.zeros((2, 17, 3, 8))), r"k/v heads must divide q heads"),
    (dict(k=jnp.zeros((2, 21, 2, 8)), v=jnp.zeros((2, 21, 2, 8))), r"same sequence length"),
    (dict(sparsity_type="random"), r"sparsity_type must be one of \('none', 'pooling'"),
    (dict(sparsity_type="NORM"), r"sparsity_type must be one of"),
    (dict(sparsity_type=None), r"sparsity_type must be one of"),
    (dict(sparsity_factor=3), r"sparsity_factor must divide block_size"),
    (dict(sparsity_factor=0), r"sparsity_factor must be an int >= 1"),
    (dict(sparsity_factor=2.0), r"sparsity_factor must be an int >= 1"),
    (dict(sparse_block_size=-1), r"sparse_block_size must be an int >= 0"),
    (dict(sparse_block_size=None), r"sparse_block_size must be an int >= 0"),
    (dict(block_size=0), r"block_size must be an int >= 1"),
    (dict(block_size="4"), r"block_size must be an int >= 1"),
    (dict(num_global_tokens=-1), r"num_global_tokens must be an int >= 0"),
    (dict(num_global_tokens=17), r"num_global_tokens must be < the sequence length 17"),
    (dict(num_global_tokens=True), r"num_global_tokens must be an int >= 0"),
    (dict(num_global_tokens=2), r"block_size=4; pad the sequence to 18 tokens"),
    (dict(block_size=5, sparsity_factor=1), r"not a multiple of block_size=5; pad the sequence to 21"),
    (dict(causal="yes"), r"causal must be a bool"),
    (dict(softmax="sparsemax"), r"softmax must be one of"),
    (dict(softmax="ssmax"), r"ssmax_s is required"),
    (dict(softmax="ssmax", ssmax_s=jnp.ones((3,))), r"ssmax_s must be a float array of shape \[heads\]"),
    (dict(segment_ids=jnp.ones((2, 16), jnp.int32)), r"segment_ids must be an int array of shape"),
    (dict(scale=-1.0), r"scale must be None or a positive number"),
    (dict(lsh_seed=-1), r"lsh_seed must be an int >= 0"),
    (dict(lsh_seed=1.5), r"lsh_seed must be an int >= 0"),
    (dict(implementation="triton"), r"implementation must be None or one of"),
]


@pytest.mark.parametrize("changes, match", BAD_INPUTS)
def test_bad_inputs_raise(changes, match):
    kwargs = {**_base(), **changes}
    q, k, v = kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v")
    with pytest.raises(ValueError, match=match):
        lsg_attention(q, k, v, **kwargs)


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="num_blocks"):
        lsg_key_schedule(0, block_size=4, sparsity_factor=2, sparse_block_size=1, causal=True)
    with pytest.raises(ValueError, match="sparsity_factor must divide block_size"):
        lsg_key_schedule(3, block_size=4, sparsity_factor=3, sparse_block_size=1, causal=True)
    with pytest.raises(ValueError, match="sparsity_type must be one of"):
        lsg_compression_window("strided", block_size=4, sparsity_factor=2, sparse_block_size=1)


def test_pallas_not_available_yet():
    q = jnp.zeros((1, 9, 2, 4))
    with pytest.raises(ValueError, match="no pallas implementation"):
        lsg_attention(q, q, q, block_size=4, implementation="pallas")


def test_norm_selection_does_not_depend_on_rounding_noise():
    """Equal norms in exact arithmetic (a repeated token) tie whatever their last bits: the
    earliest tokens are kept, as with no noise at all."""
    from jaxattn.attention.lsg import compress, lsg_compression_window
    rng = np.random.default_rng(0)
    row = rng.normal(size=(1, 1, 1, 8)).astype(np.float32)
    window, per_window = lsg_compression_window("norm", block_size=8, sparsity_factor=4,
                                                sparse_block_size=8)
    k = np.broadcast_to(row, (1, 2 * window, 2, 8)).copy()
    noisy = k * (1 + rng.choice([-1, 0, 1], size=k.shape[:3] + (1,)) * 2.0**-23)
    seg = jnp.ones((1, 2 * window), jnp.int32)
    chosen = []
    for keys in (k, noisy):
        keys = jnp.asarray(keys, jnp.float32)
        values = keys + jnp.arange(2 * window, dtype=jnp.float32)[None, :, None, None]
        _, cv, _ = compress("norm", keys, values, seg, None, window=window,
                            per_window=per_window, scale=1.0, lsh_seed=0)
        chosen.append(np.asarray(cv[0, :, 0, 0] - keys[0, 0, 0, 0]))
    np.testing.assert_array_equal(chosen[0], chosen[1])
    np.testing.assert_array_equal(np.round(chosen[0]),
                                  [w * window + i for w in range(2) for i in range(per_window)])
