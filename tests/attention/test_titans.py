"""Titans' neural memory against independent float64 NumPy oracles; state carrying; extreme
gates; gradients by finite differences; dtypes; errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxattn.attention.titans import (MemoryState, chunk_coefficients, init_memory_state,
                                      init_memory_weights, memory_retrieve, neural_memory,
                                      sequential_memory)
from tests.fast_jit import fast_jit
from tests.naive_titans import (loss_and_grad, mlp_forward, naive_minibatch_memory,
                                naive_sequential_memory)

SETTINGS = settings(max_examples=10, deadline=None)
FEW = settings(max_examples=5, deadline=None)


@functools.lru_cache(maxsize=None)
def _compiled(chunk_size, max_grad_norm=None):
    return fast_jit(functools.partial(neural_memory, chunk_size=chunk_size,
                                      max_grad_norm=max_grad_norm))


def run_memory(state, q, k, v, theta, eta, alpha, *, chunk_size, max_grad_norm=None):
    return _compiled(chunk_size, max_grad_norm)(state, q, k, v, theta, eta, alpha)


@functools.lru_cache(maxsize=None)
def _compiled_sequential(max_grad_norm=None):
    return fast_jit(functools.partial(sequential_memory, max_grad_norm=max_grad_norm))


def run_sequential(*args, max_grad_norm=None):
    return _compiled_sequential(max_grad_norm)(*args)


@st.composite
def memory_cases(draw, max_chunk=4, max_chunks=4):
    depth = draw(st.integers(1, 3))
    return dict(
        batch=draw(st.integers(1, 2)),
        heads=draw(st.integers(1, 2)),
        dim=draw(st.integers(1, 4)),
        depth=depth,
        hidden=draw(st.integers(1, 5)) if depth > 1 else None,
        chunk_size=draw(st.integers(1, max_chunk)),
        num_chunks=draw(st.integers(1, max_chunks)),
        momentum=draw(st.booleans()),
        extremes=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def layer_dims(dim, depth, hidden):
    if depth == 1:
        return [(dim, dim)]
    return [(dim, hidden)] + [(hidden, hidden)] * (depth - 2) + [(hidden, dim)]


def make_inputs(case, seq_len=None):
    """Float64 NumPy ``(weights, momentum, q, k, v, theta, eta, alpha)``; weights and momentum
    are lists of ``[B, H, d_in, d_out]``. With ``extremes``, some gates are exactly 0 or 1."""
    rng = np.random.default_rng(case["seed"])
    b, h, d = case["batch"], case["heads"], case["dim"]
    t = seq_len or case["chunk_size"] * case["num_chunks"]
    dims = layer_dims(d, case["depth"], case["hidden"])
    weights = [rng.normal(size=(b, h, i, o)) / np.sqrt(i) for i, o in dims]
    momentum = [0.1 * rng.normal(size=(b, h, i, o)) if case["momentum"] else np.zeros((b, h, i, o))
                for i, o in dims]
    q, k, v = (rng.normal(size=(b, t, h, d)) for _ in range(3))
    theta = rng.uniform(0.0, 0.3, size=(b, t, h))
    eta = rng.uniform(0.0, 1.0, size=(b, t, h))
    alpha = rng.uniform(0.0, 1.0, size=(b, t, h))
    if case["extremes"]:
        for gate, values in ((theta, [0.0]), (eta, [0.0, 1.0]), (alpha, [0.0, 1.0])):
            where = rng.random(gate.shape) < 0.4
            gate[where] = rng.choice(values, size=int(where.sum()))
    return weights, momentum, q, k, v, theta, eta, alpha


def to_jax(weights, momentum, *arrays, dtype=jnp.float64):
    state = MemoryState(tuple(jnp.asarray(w, dtype) for w in weights),
                        tuple(jnp.asarray(s, dtype) for s in momentum))
    return (state, *(jnp.asarray(x, dtype) for x in arrays))


def assert_close(actual, expected, tol=1e-10):
    expected = np.asarray(expected)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=tol, atol=tol * scale)


def assert_state_close(state, weights, momentum, tol=1e-10):
    assert len(state.weights) == len(weights) == len(state.momentum)
    for got, want in zip(state.weights, weights):
        assert_close(got, want, tol)
    for got, want in zip(state.momentum, momentum):
        assert_close(got, want, tol)


# The oracle itself.

@pytest.mark.parametrize("depth", [1, 2, 3])
def test_oracle_gradient_matches_finite_differences(depth):
    rng = np.random.default_rng(depth)
    dims = layer_dims(3, depth, 4)
    weights = [rng.normal(size=s) for s in dims]
    k, v = rng.normal(size=3), rng.normal(size=3)
    loss, grads = loss_and_grad(weights, k, v)
    assert np.isclose(loss, np.sum((mlp_forward(weights, k)[0] - v) ** 2))
    eps = 1e-6
    for i, w in enumerate(weights):
        for idx in np.ndindex(w.shape):
            plus = [x.copy() for x in weights]
            minus = [x.copy() for x in weights]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            fd = (loss_and_grad(plus, k, v)[0] - loss_and_grad(minus, k, v)[0]) / (2 * eps)
            assert abs(fd - grads[i][idx]) < 1e-6 * max(1.0, abs(fd))


def test_oracle_chunk_one_is_sequential():
    case = dict(batch=1, heads=2, dim=3, depth=2, hidden=4, chunk_size=1, num_chunks=5,
                momentum=True, extremes=False, seed=0)
    inputs = make_inputs(case)
    y1, w1, s1 = naive_minibatch_memory(*inputs, 1)
    y2, w2, s2 = naive_sequential_memory(*inputs)
    for a, b in zip([y1, *w1, *s1], [y2, *w2, *s2]):
        np.testing.assert_array_equal(a, b)


# Values.

@SETTINGS
@given(memory_cases(max_chunk=1, max_chunks=6))
def test_chunk_one_matches_sequential_oracle(case):
    inputs = make_inputs(case)
    y_ref, w_ref, s_ref = naive_sequential_memory(*inputs)
    with jax.enable_x64(True):
        args = to_jax(*inputs)
        y, state = run_memory(*args, chunk_size=1)
        assert y.dtype == jnp.float64
        assert all(w.dtype == jnp.float64 for w in state.weights + state.momentum)
        assert_close(y, y_ref)
        assert_state_close(state, w_ref, s_ref)
        y_seq, state_seq = run_sequential(*args)
        assert_close(y_seq, y_ref)
        assert_state_close(state_seq, w_ref, s_ref)


@SETTINGS
@given(memory_cases())
def test_chunked_matches_minibatch_oracle(case):
    inputs = make_inputs(case)
    y_ref, w_ref, s_ref = naive_minibatch_memory(*inputs, case["chunk_size"])
    with jax.enable_x64(True):
        y, state = run_memory(*to_jax(*inputs), chunk_size=case["chunk_size"])
        assert_close(y, y_ref)
        assert_state_close(state, w_ref, s_ref)


@FEW
@given(memory_cases())
def test_float32_close_to_oracle(case):
    inputs = make_inputs(case)
    y_ref, w_ref, s_ref = naive_minibatch_memory(*inputs, case["chunk_size"])
    y, state = run_memory(*to_jax(*inputs, dtype=jnp.float32), chunk_size=case["chunk_size"])
    assert y.dtype == jnp.float32
    assert_close(y, y_ref, 1e-4)
    assert_state_close(state, w_ref, s_ref, 1e-4)


def test_reads_chunk_start_memory():
    """Within a chunk, y never depends on that chunk's keys and values; with chunk 1 it is the
    memory before the token's own write."""
    case = dict(batch=1, heads=1, dim=3, depth=2, hidden=4, chunk_size=3, num_chunks=2,
                momentum=False, extremes=False, seed=3)
    weights, momentum, q, k, v, theta, eta, alpha = make_inputs(case)
    with jax.enable_x64(True):
        args = to_jax(weights, momentum, q, k, v, theta, eta, alpha)
        y, _ = run_memory(*args, chunk_size=3)
        k2, v2 = k.copy(), v.copy()
        k2[:, 3:], v2[:, 3:] = 10.0, -10.0  # the second chunk's writes
        y2, _ = run_memory(*to_jax(weights, momentum, q, k2, v2, theta, eta, alpha), chunk_size=3)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y2))
        y_first = memory_retrieve(args[0].weights, args[1][:, :3])
        assert_close(y[:, :3], y_first, 1e-14)


def test_chunking_changes_the_state():
    """Mini-batch gradients differ from per-token ones (sanity check on the oracle tests)."""
    case = dict(batch=1, heads=1, dim=3, depth=2, hidden=4, chunk_size=2, num_chunks=2,
                momentum=False, extremes=False, seed=4)
    inputs = make_inputs(case)
    with jax.enable_x64(True):
        args = to_jax(*inputs)
        _, one = run_memory(*args, chunk_size=1)
        _, two = run_memory(*args, chunk_size=2)
        assert not np.allclose(np.asarray(one.weights[0]), np.asarray(two.weights[0]))


# State carrying.

@SETTINGS
@given(memory_cases(max_chunks=5), st.data())
def test_segments_equal_one_pass(case, data):
    inputs = make_inputs(case)
    chunk, n = case["chunk_size"], case["num_chunks"]
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, n - 1)), max_size=2)) if n > 1 else [])
    bounds = [0] + [c * chunk for c in cuts] + [n * chunk]
    with jax.enable_x64(True):
        state, *seq = to_jax(*inputs)
        y_full, final = run_memory(state, *seq, chunk_size=chunk)
        pieces = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            y, state = run_memory(state, *(x[:, lo:hi] for x in seq), chunk_size=chunk)
            pieces.append(y)
        assert_close(jnp.concatenate(pieces, axis=1), y_full, 1e-12)
        assert_state_close(state, final.weights, final.momentum, 1e-12)


# Extreme gates.

def _extreme_case(seed, depth=2, chunk_size=2):
    case = dict(batch=2, heads=2, dim=3, depth=depth, hidden=4, chunk_size=chunk_size,
                num_chunks=3, momentum=True, extremes=False, seed=seed)
    return make_inputs(case)


@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_no_step_no_forgetting_keeps_memory(chunk_size):
    """theta = 0, alpha = 0, eta = 1 from zero momentum: the memory never changes."""
    weights, momentum, q, k, v, theta, eta, alpha = _extreme_case(0, chunk_size=chunk_size)
    momentum = [np.zeros_like(s) for s in momentum]
    with jax.enable_x64(True):
        args = to_jax(weights, momentum, q, k, v, np.zeros_like(theta), np.ones_like(eta),
                      np.zeros_like(alpha))
        y, state = run_memory(*args, chunk_size=chunk_size)
        for got, want in zip(state.weights, weights):
            np.testing.assert_array_equal(np.asarray(got), want)
        assert all(not np.any(np.asarray(s)) for s in state.momentum)
        assert_close(y, memory_retrieve(args[0].weights, args[1]), 1e-14)


@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_full_forgetting_keeps_only_momentum(chunk_size):
    """alpha = 1: M_t = S_t; with eta = 0 too, M_T = S_T = -theta_T grad l(M_{T'}; k_T, v_T)."""
    weights, momentum, q, k, v, theta, eta, alpha = _extreme_case(1, chunk_size=chunk_size)
    ones = np.ones_like(alpha)
    y_ref, w_ref, s_ref = naive_minibatch_memory(weights, momentum, q, k, v, theta, eta, ones,
                                                 chunk_size)
    with jax.enable_x64(True):
        _, state = run_memory(*to_jax(weights, momentum, q, k, v, theta, eta, ones),
                              chunk_size=chunk_size)
        assert_state_close(state, w_ref, s_ref)
        for w, s in zip(state.weights, state.momentum):
            np.testing.assert_array_equal(np.asarray(w), np.asarray(s))
        zeros = np.zeros_like(eta)
        _, state = run_memory(*to_jax(weights, momentum, q, k, v, theta, zeros, ones),
                              chunk_size=chunk_size)
    # The chunk-start memory of the last chunk, from the oracle on the earlier tokens.
    t = q.shape[1]
    start = t - chunk_size
    _, w_start, _ = naive_minibatch_memory(weights, momentum, q[:, :start], k[:, :start],
                                           v[:, :start], theta[:, :start], zeros[:, :start],
                                           ones[:, :start], chunk_size)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            _, grads = loss_and_grad([w[b, h] for w in w_start], k[b, -1, h], v[b, -1, h])
            for i, g in enumerate(grads):
                assert_close(state.weights[i][b, h], -theta[b, -1, h] * g)
                assert_close(state.momentum[i][b, h], -theta[b, -1, h] * g)


def test_chunk_coefficients_closed_form():
    """Against the products written out: c_l = theta_l sum_{i>=l} prod_{j>i}(1-alpha_j)
    prod_{l<j<=i} eta_j, s_l = theta_l prod_{j>l} eta_j."""
    rng = np.random.default_rng(5)
    b = 5
    theta, eta, alpha = (rng.uniform(size=b) for _ in range(3))
    eta[2], alpha[3] = 0.0, 1.0
    with jax.enable_x64(True):
        mm, ms, ss, c, s = (np.asarray(x) for x in chunk_coefficients(
            *(jnp.asarray(x) for x in (theta, eta, alpha))))
    keep = 1 - alpha
    assert np.isclose(mm, np.prod(keep))
    assert np.isclose(ss, np.prod(eta))
    assert np.isclose(ms, sum(np.prod(keep[i + 1:]) * np.prod(eta[:i + 1]) for i in range(b)))
    for l in range(b):
        want = theta[l] * sum(np.prod(keep[i + 1:]) * np.prod(eta[l + 1:i + 1])
                              for i in range(l, b))
        assert np.isclose(c[l], want)
        assert np.isclose(s[l], theta[l] * np.prod(eta[l + 1:]))


# Stability: large chunks, and inner-loop gradient clipping (max_grad_norm).

def _diverging_case(chunk_size, num_chunks=4, seed=0):
    """MAC-like inputs that make the chunked rule diverge: unit keys around one direction,
    small values, theta = 0.05, eta = 0.9, alpha = 0.02 (the gates of a NeuralMemory with
    max_lr = 0.1 at initialisation). A chunk of b such keys acts as one gradient step of about
    2 * sum_l c_l ~ 2 * 0.05 * b * (1 + 9 (1 - ...)), far past the stable 2 for b >= 8."""
    rng = np.random.default_rng(seed)
    b, h, d, hidden, t = 1, 2, 8, 16, chunk_size * num_chunks
    weights = [rng.normal(size=(b, h, d, hidden)) / np.sqrt(d),
               rng.normal(size=(b, h, hidden, d)) / np.sqrt(hidden)]
    momentum = [np.zeros_like(w) for w in weights]
    k = rng.normal(size=(1, 1, h, d)) + 0.3 * rng.normal(size=(b, t, h, d))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q = rng.normal(size=(b, t, h, d))
    v = 0.05 * rng.normal(size=(b, t, h, d))
    gates = [np.full((b, t, h), g) for g in (0.05, 0.9, 0.02)]
    return weights, momentum, q, k, v, *gates


def _max_abs(ws):
    return max(float(np.max(np.abs(np.asarray(w)))) for w in ws)


@pytest.mark.parametrize("chunk_size", [16, 32])
def test_large_chunks_diverge_by_the_rule_not_by_rounding(chunk_size):
    """The chunked rule itself diverges on these inputs (the per-token loops of the mini-batch
    definition in float64 do too, and the float32 and float64 chunked forms follow them),
    while the sequential rule on the same inputs stays bounded: no numerical bug to fix."""
    inputs = _diverging_case(chunk_size)
    _, w_ref, s_ref = naive_minibatch_memory(*inputs, chunk_size)
    _, w_seq, _ = naive_sequential_memory(*inputs)
    assert _max_abs(w_ref) > 1e6
    assert _max_abs(w_seq) < 1.0
    with jax.enable_x64(True):
        _, state = run_memory(*to_jax(*inputs), chunk_size=chunk_size)
        for got, want in zip(state.weights + state.momentum, w_ref + s_ref):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-8,
                                       atol=1e-8 * np.max(np.abs(want)))
    _, state = run_memory(*to_jax(*inputs, dtype=jnp.float32), chunk_size=chunk_size)
    for got, want in zip(state.weights, w_ref):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3,
                                   atol=1e-4 * np.max(np.abs(want)))


@pytest.mark.parametrize("chunk_size", [16, 32])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_max_grad_norm_keeps_large_chunks_finite(chunk_size, dtype):
    """Regression (NaN loss of titans_mac with memory chunks of 16): with every token's
    inner-loop gradient clipped, the same inputs give a bounded, finite memory equal to the
    clipped float64 mini-batch oracle."""
    inputs = _diverging_case(chunk_size)
    _, w_ref, s_ref = naive_minibatch_memory(*inputs, chunk_size, max_grad_norm=0.5)
    assert _max_abs(w_ref) < 10.0
    with jax.enable_x64(dtype == jnp.float64):
        y, state = run_memory(*to_jax(*inputs, dtype=dtype), chunk_size=chunk_size,
                              max_grad_norm=0.5)
        assert bool(jnp.all(jnp.isfinite(y)))
        tol = 1e-10 if dtype == jnp.float64 else 1e-4
        assert_state_close(state, w_ref, s_ref, tol)


@SETTINGS
@given(memory_cases(), st.sampled_from([0.05, 0.3, 2.0]))
def test_clipped_chunked_matches_clipped_minibatch_oracle(case, max_grad_norm):
    inputs = make_inputs(case)
    y_ref, w_ref, s_ref = naive_minibatch_memory(*inputs, case["chunk_size"],
                                                 max_grad_norm=max_grad_norm)
    with jax.enable_x64(True):
        y, state = run_memory(*to_jax(*inputs), chunk_size=case["chunk_size"],
                              max_grad_norm=max_grad_norm)
        assert_close(y, y_ref)
        assert_state_close(state, w_ref, s_ref)


@SETTINGS
@given(memory_cases(max_chunk=1, max_chunks=6))
def test_clipped_chunk_one_matches_clipped_sequential(case):
    inputs = make_inputs(case)
    y_ref, w_ref, s_ref = naive_sequential_memory(*inputs, max_grad_norm=0.3)
    with jax.enable_x64(True):
        args = to_jax(*inputs)
        y, state = run_memory(*args, chunk_size=1, max_grad_norm=0.3)
        assert_close(y, y_ref)
        assert_state_close(state, w_ref, s_ref)
        y_seq, state_seq = run_sequential(*args, max_grad_norm=0.3)
        assert_close(y_seq, y_ref)
        assert_state_close(state_seq, w_ref, s_ref)


def test_huge_max_grad_norm_is_the_unclipped_rule():
    """A bound no gradient reaches gives the paper's rule (the manual backward pass of the
    clipped path equals the vector-Jacobian product of the default path)."""
    inputs = _extreme_case(6, depth=3, chunk_size=3)
    with jax.enable_x64(True):
        args = to_jax(*inputs)
        y, state = run_memory(*args, chunk_size=3)
        y2, state2 = run_memory(*args, chunk_size=3, max_grad_norm=1e300)
        assert_close(y2, y, 1e-13)
        assert_state_close(state2, state.weights, state.momentum, 1e-13)


def test_clipped_gradients_finite_at_zero_gradient():
    """Zero keys and values with a memory mapping 0 to 0: every token's inner gradient is 0, where
    the norm has no derivative; the outer gradients stay finite."""
    weights, momentum, q, k, v, theta, eta, alpha = _extreme_case(7, chunk_size=2)

    def loss(args):
        y, state = neural_memory(*args, chunk_size=2, max_grad_norm=0.1)
        return jnp.sum(y ** 2) + sum(jnp.sum(w ** 2) for w in state.weights + state.momentum)

    args = to_jax(weights, momentum, q, np.zeros_like(k), np.zeros_like(v), theta, eta, alpha,
                  dtype=jnp.float32)
    grads = fast_jit(jax.grad(loss))(args)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# Gradients.

def _objective(params, probes, chunk_size, max_grad_norm=None):
    """A scalar touching y and the final state, from initial [H, d_in, d_out] weights."""
    init_w, init_s, q, k, v, theta, eta, alpha = params
    batch = q.shape[0]
    state = init_memory_state(init_w, batch)
    state = MemoryState(state.weights, tuple(init_s))
    y, new = neural_memory(state, q, k, v, theta, eta, alpha, chunk_size=chunk_size,
                           max_grad_norm=max_grad_norm)
    y_probe, w_probe, s_probe = probes
    total = jnp.sum(y * y_probe)
    total += sum(jnp.sum(w * p) for w, p in zip(new.weights, w_probe))
    total += sum(jnp.sum(s * p) for s, p in zip(new.momentum, s_probe))
    return total


@pytest.mark.parametrize("depth,chunk_size,max_grad_norm", [
    (1, 1, None), (1, 3, None), (2, 1, None), (2, 2, None), (3, 3, None), (1, 3, 0.7),
    (2, 2, 0.7), (3, 1, 0.7)])
def test_gradients_match_finite_differences(depth, chunk_size, max_grad_norm):
    rng = np.random.default_rng(10 * depth + chunk_size)
    batch, heads, dim, hidden, t = 2, 2, 3, 4, 2 * chunk_size
    dims = layer_dims(dim, depth, hidden)
    params = [
        [rng.normal(size=(heads, i, o)) / np.sqrt(i) for i, o in dims],
        [0.1 * rng.normal(size=(batch, heads, i, o)) for i, o in dims],
        *(rng.normal(size=(batch, t, heads, dim)) for _ in range(3)),
        rng.uniform(0.05, 0.3, size=(batch, t, heads)),
        rng.uniform(0.1, 0.9, size=(batch, t, heads)),
        rng.uniform(0.1, 0.9, size=(batch, t, heads)),
    ]
    probes = (rng.normal(size=(batch, t, heads, dim)),
              [rng.normal(size=(batch, heads, i, o)) for i, o in dims],
              [rng.normal(size=(batch, heads, i, o)) for i, o in dims])
    names = ["init_weights", "init_momentum", "q", "k", "v", "theta", "eta", "alpha"]
    with jax.enable_x64(True):
        params = jax.tree.map(jnp.asarray, params)
        probes = jax.tree.map(jnp.asarray, probes)
        objective = functools.partial(_objective, probes=probes, chunk_size=chunk_size,
                                      max_grad_norm=max_grad_norm)
        f = fast_jit(objective)
        grads = fast_jit(jax.grad(objective))(params)
        eps = 1e-5
        for index, name in enumerate(names):
            for trial in range(2):
                key = jax.random.key(100 * index + trial)
                leaves, treedef = jax.tree.flatten(params[index])
                keys = jax.random.split(key, len(leaves))
                direction = treedef.unflatten([jax.random.normal(kk, x.shape, x.dtype)
                                               for kk, x in zip(keys, leaves)])
                shift = lambda s: params[:index] + [jax.tree.map(
                    lambda x, d: x + s * d, params[index], direction)] + params[index + 1:]
                fd = (f(shift(eps)) - f(shift(-eps))) / (2 * eps)
                analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grads[index]),
                                                              jax.tree.leaves(direction)))
                assert np.isfinite(float(analytic)), name
                assert abs(float(analytic) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd))), (
                    name, float(analytic), float(fd))


def test_gradients_finite_at_extreme_gates():
    weights, momentum, q, k, v, theta, eta, alpha = _extreme_case(2, chunk_size=2)
    eta[:, ::2] = 0.0
    alpha[:, 1::2] = 1.0
    theta[:, 0] = 0.0

    def loss(args):
        y, state = neural_memory(*args, chunk_size=2)
        return jnp.sum(y ** 2) + sum(jnp.sum(w ** 2) for w in state.weights)

    args = to_jax(weights, momentum, q, k, v, theta, eta, alpha, dtype=jnp.float32)
    grads = fast_jit(jax.grad(loss))(args)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# Dtypes and helpers.

def test_bfloat16_inputs_give_float32_state():
    weights, momentum, q, k, v, theta, eta, alpha = _extreme_case(3, chunk_size=2)
    state = init_memory_state(tuple(jnp.asarray(w[0], jnp.bfloat16) for w in weights), 2)
    assert all(w.dtype == jnp.float32 for w in state.weights + state.momentum)
    y, new = run_memory(state, *(jnp.asarray(x, jnp.bfloat16)
                                 for x in (q, k, v, theta, eta, alpha)), chunk_size=2)
    assert y.dtype == jnp.bfloat16
    assert all(w.dtype == jnp.float32 for w in new.weights + new.momentum)
    y32, new32 = run_memory(state, *(jnp.asarray(jnp.asarray(x, jnp.bfloat16), jnp.float32)
                                     for x in (q, k, v, theta, eta, alpha)), chunk_size=2)
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32), rtol=2e-2, atol=2e-2)
    for a, b in zip(new.weights, new32.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_helpers():
    ws = init_memory_weights(jax.random.key(0), heads=3, dim=4, depth=3, hidden=5)
    assert [w.shape for w in ws] == [(3, 4, 5), (3, 5, 5), (3, 5, 4)]
    (w1,) = init_memory_weights(jax.random.key(0), heads=2, dim=4, depth=1)
    assert w1.shape == (2, 4, 4)
    state = init_memory_state(ws, 2)
    assert isinstance(state, MemoryState)
    assert [w.shape for w in state.weights] == [(2, 3, 4, 5), (2, 3, 5, 5), (2, 3, 5, 4)]
    assert all(not np.any(np.asarray(s)) for s in state.momentum)
    np.testing.assert_array_equal(np.asarray(state.weights[0][1]), np.asarray(ws[0]))
    q = jax.random.normal(jax.random.key(1), (2, 5, 3, 4))
    np.testing.assert_allclose(np.asarray(memory_retrieve(ws, q)),
                               np.asarray(memory_retrieve(state.weights, q)), rtol=1e-6)


# Errors.

def _valid(batch=2, t=4, heads=2, dim=3, depth=2):
    ws = init_memory_weights(jax.random.key(0), heads=heads, dim=dim, depth=depth, hidden=4)
    state = init_memory_state(ws, batch)
    x = jnp.ones((batch, t, heads, dim))
    g = jnp.full((batch, t, heads), 0.5)
    return state, x, x, x, g, g, g


def _replace(index, value, **kwargs):
    args = list(_valid(**kwargs))
    args[index] = value
    return args


BAD_CALLS = [
    ("q", lambda: neural_memory(*_replace(1, jnp.ones((2, 4, 2))), chunk_size=2)),
    ("k and v", lambda: neural_memory(*_replace(2, jnp.ones((2, 4, 2, 5))), chunk_size=2)),
    ("k", lambda: neural_memory(*_replace(2, jnp.ones((2, 4, 2, 3), jnp.int32)), chunk_size=2)),
    ("theta", lambda: neural_memory(*_replace(4, jnp.ones((2, 4))), chunk_size=2)),
    ("eta", lambda: neural_memory(*_replace(5, jnp.ones((2, 4, 3))), chunk_size=2)),
    ("alpha", lambda: neural_memory(*_replace(6, jnp.ones((2, 4, 2), jnp.int32)), chunk_size=2)),
    ("chunk_size=3", lambda: neural_memory(*_valid(), chunk_size=3)),
    ("chunk_size", lambda: neural_memory(*_valid(), chunk_size=0)),
    ("chunk_size", lambda: neural_memory(*_valid(), chunk_size=2.0)),
    ("state must be a MemoryState", lambda: neural_memory(
        *_replace(0, ({}, {})), chunk_size=2)),
    ("state.weights", lambda: neural_memory(
        *_replace(0, init_memory_state(init_memory_weights(
            jax.random.key(0), heads=2, dim=5, depth=1), 2)), chunk_size=2)),
    ("state.weights", lambda: neural_memory(
        *_replace(0, init_memory_state(init_memory_weights(
            jax.random.key(0), heads=2, dim=3, depth=1), 3)), chunk_size=2)),
    ("state.weights", lambda: neural_memory(*_replace(0, MemoryState((), ())), chunk_size=2)),
    ("state.momentum", lambda: neural_memory(*_replace(0, MemoryState(
        _valid()[0].weights, _valid()[0].momentum[:1])), chunk_size=2)),
    ("state.momentum[1]", lambda: neural_memory(*_replace(0, MemoryState(
        _valid()[0].weights, (_valid()[0].momentum[0], jnp.zeros((2, 2, 4, 4))))),
        chunk_size=2)),
    ("depth", lambda: init_memory_weights(jax.random.key(0), heads=2, dim=3, depth=0)),
    ("hidden", lambda: init_memory_weights(jax.random.key(0), heads=2, dim=3, depth=2)),
    ("batch", lambda: init_memory_state(_valid()[0].weights, 0)),
    ("weights[0]", lambda: init_memory_state((jnp.ones((3, 3)),), 2)),
    ("weights[1]", lambda: init_memory_state((jnp.ones((2, 3, 4)), jnp.ones((2, 5, 3))), 2)),
    ("q", lambda: memory_retrieve(_valid()[0].weights, jnp.ones((2, 3)))),
    ("theta", lambda: sequential_memory(*_replace(4, jnp.ones((2, 4, 1))))),
    ("max_grad_norm", lambda: neural_memory(*_valid(), chunk_size=2, max_grad_norm=0.0)),
    ("max_grad_norm", lambda: neural_memory(*_valid(), chunk_size=2, max_grad_norm=-1.0)),
    ("max_grad_norm", lambda: neural_memory(*_valid(), chunk_size=2, max_grad_norm=np.inf)),
    ("max_grad_norm", lambda: neural_memory(*_valid(), chunk_size=2, max_grad_norm=True)),
    ("max_grad_norm", lambda: sequential_memory(*_valid(), max_grad_norm=float("nan"))),
]


@pytest.mark.parametrize("match,call", BAD_CALLS,
                         ids=[f"{i}-{m}" for i, (m, _) in enumerate(BAD_CALLS)])
def test_bad_inputs_raise(match, call):
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("]", r"\]")):
        call()
