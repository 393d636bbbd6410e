"""The neural long-term memory of Titans (Behrouz, Zhong & Mirrokni 2025, arXiv 2501.00663).

Every (batch row, head) owns a memory ``M``: an MLP ``R^D -> R^D`` of depth ``L_M >= 1`` with
no biases, a single matrix ``M(x) = x W`` when ``L_M = 1``, else
``M(x) = silu(... silu(x W_1) ...) W_L`` with ``W_1 [D, Dh]``, ``W_i [Dh, Dh]``, ``W_L [Dh, D]``.
Its weights are learned at test time, token by token (paper §3.1):

- eq. (12), associative loss: ``l(M; k_t, v_t) = || M(k_t) - v_t ||_2^2``, the plain sum of
  squares over ``D`` (constant 1: no ``1/2``, no mean), so the gradient of a linear memory is
  ``2 k_t^T (k_t W - v_t)``;
- eq. (14), surprise with momentum: ``S_t = eta_t S_{t-1} - theta_t grad_W l(M_{t-1}; k_t, v_t)``;
- eq. (13), forgetting: ``M_t = (1 - alpha_t) M_{t-1} + S_t``;
- eq. (15), retrieval: ``y_t = M*(q_t)``, a forward pass without any update.

``theta_t >= 0`` (step size), ``eta_t in [0, 1]`` (momentum decay) and ``alpha_t in [0, 1]``
(forgetting) are data-dependent, one per token and head; this file takes them as inputs.

**Chunked training form** (paper §3.2). The sequence is cut into chunks of ``b`` tokens. Inside
a chunk starting after token ``t'`` every gradient is taken at the chunk-start memory
``M_{t'}`` (mini-batch gradient descent), while momentum and forgetting still run per token,
and every token of the chunk reads ``y_t = M_{t'}(q_t)``, the memory before that chunk's
writes. With ``b = 1`` this is exactly the sequential rule, reading ``M_{t-1}(q_t)`` before
token ``t`` writes. The chunk's end state is computed without per-token weights or gradients:
one token acts on the pair ``(M, S)`` as the upper-triangular map
``T_i = [[1 - alpha_i, eta_i], [0, eta_i]]`` plus the injection ``-theta_i g_i (1, 1)``, so with
``Q = T_b ... T_1`` and ``P_l = T_b ... T_{l+1}`` (``P_b = I``)::

    M_end = Q_11 M_start + Q_12 S_start - sum_l c_l g_l,   c_l = theta_l (P_l,11 + P_l,12)
    S_end = Q_22 S_start               - sum_l s_l g_l,   s_l = theta_l  P_l,22

The suffix products come from one ``jax.lax.associative_scan`` (products only, no division,
so ``eta = 0`` or ``alpha = 1`` are safe), and ``sum_l c_l g_l = grad_W sum_l c_l l(M_start;
k_l, v_l)`` is a single vector-Jacobian product of the memory's forward pass on the chunk's
keys with cotangent ``2 c_l (M_start(k_l) - v_l)`` (the same forward serves ``s_l``).

Everything is differentiable (second order: through the inner gradient) with respect to
``q, k, v``, the gates and the initial state, and the state goes in and out, so a stream runs
segment by segment in constant memory: ``neural_memory`` on ``[x1; x2]`` equals running it on
``x1`` then on ``x2`` from the returned state (when ``x1``'s length is a multiple of the chunk).

**Stability.** The chunked rule is heavy-ball gradient descent whose ``b`` gradients of a chunk
are all taken at the chunk start: for a linear memory the chunk applies
``W <- Q_11 W - 2 sum_l c_l k_l^T (k_l W - v_l)``, a step of ``2 lambda_max(sum_l c_l k_l^T k_l)``
on the chunk's keys, with ``sum_l c_l`` growing like ``theta b / (1 - eta)`` (up to
``theta b (b + 1) / 2`` as ``eta -> 1``), and a deep memory's curvature grows with its weights.
Past about 2 the memory diverges geometrically from chunk to chunk, and the weights overflow
float32 within a few chunks; this is the rule itself (float64 and the per-token loops of the
mini-batch definition diverge identically), not rounding, while ``b = 1`` with the same gates
stays bounded. Keep ``max_lr * b`` small (and smaller still with strong momentum), or pass
``max_grad_norm``: every token's gradient of every memory layer is clipped to that Frobenius
norm before it enters the momentum (gradient clipping of the inner loop, as the ``max_grad_norm``
option of lucidrains/titans-pytorch, which soft-clamps instead). With bounded gradients ``S``
stays below ``theta max_grad_norm / (1 - eta)`` and, for ``alpha > 0``, ``M`` stays bounded, so
the state is always finite. It is not the paper's rule, so it is off by default.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxattn.attention import core


class MemoryState(NamedTuple):
    """The memory of every (batch row, head), a pytree.

    Attributes:
      weights: tuple of ``L_M`` arrays ``[B, H, d_in, d_out]`` (``W_1 ... W_L``).
      momentum: tuple of arrays of the same shapes, the surprise ``S``.

    Both are float32 (float64 for float64 inputs) whatever the input dtype.
    """

    weights: tuple
    momentum: tuple


# Validation.

def _describe(x):
    shape = getattr(x, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else type(x).__name__


def _check_depth_hidden(depth, hidden):
    core.check_positive_int("depth", depth)
    if depth > 1:
        core.check_positive_int("hidden", hidden)


def _layer_dims(dim, depth, hidden):
    """``[(d_in, d_out)]`` of the ``depth`` memory layers."""
    if depth == 1:
        return [(dim, dim)]
    return [(dim, hidden)] + [(hidden, hidden)] * (depth - 2) + [(hidden, dim)]


def _check_weight_chain(name, weights, dim, lead):
    """``weights``: non-empty tuple of ``[*lead, d_in, d_out]`` chaining ``dim -> ... -> dim``."""
    if not isinstance(weights, (tuple, list)) or not weights:
        got = f"{type(weights).__name__}" + (" of length 0" if isinstance(weights, (tuple, list))
                                              else "")
        raise ValueError(
            f"{name} must be a non-empty tuple of memory weight arrays (depth >= 1), got {got}")
    d_in = dim
    for i, w in enumerate(weights):
        shape = getattr(w, "shape", None)
        if shape is None or len(shape) != len(lead) + 2 or tuple(shape[:len(lead)]) != lead:
            lead_names = ", ".join(map(str, lead))
            raise ValueError(
                f"{name}[{i}] must be [{lead_names}, d_in, d_out], got {_describe(w)}")
        if not jnp.issubdtype(w.dtype, jnp.floating):
            raise ValueError(f"{name}[{i}] must have a floating dtype, got {w.dtype}")
        if shape[-2] != d_in:
            raise ValueError(
                f"{name}[{i}] must have d_in = {d_in} (head_dim for the first layer, the previous "
                f"layer's d_out after), got shape {tuple(shape)}")
        d_in = shape[-1]
    if d_in != dim:
        raise ValueError(
            f"{name}[-1] must map back to head_dim = {dim} (d_out of the last layer), got shape "
            f"{tuple(weights[-1].shape)}")


def check_memory_state(state, batch, heads, dim):
    """Raises ``ValueError`` unless ``state`` is a ``MemoryState`` of ``[batch, heads, ., .]``
    weights chaining ``dim -> ... -> dim`` and momentum of the same shapes."""
    if not isinstance(state, MemoryState):
        raise ValueError(
            f"state must be a MemoryState(weights, momentum) (init_memory_state builds one), got "
            f"{type(state).__name__}")
    _check_weight_chain("state.weights", state.weights, dim, (batch, heads))
    momentum = state.momentum
    if not isinstance(momentum, (tuple, list)) or len(momentum) != len(state.weights):
        raise ValueError(
            f"state.momentum must be a tuple of {len(state.weights)} arrays shaped like "
            f"state.weights, got {type(momentum).__name__}"
            f"{' of length ' + str(len(momentum)) if isinstance(momentum, (tuple, list)) else ''}")
    for i, (w, s) in enumerate(zip(state.weights, momentum)):
        if getattr(s, "shape", None) != w.shape:
            raise ValueError(
                f"state.momentum[{i}] must have the shape of state.weights[{i}] "
                f"{tuple(w.shape)}, got {_describe(s)}")
        if not jnp.issubdtype(s.dtype, jnp.floating):
            raise ValueError(f"state.momentum[{i}] must have a floating dtype, got {s.dtype}")


def check_memory_inputs(q, k, v, theta, eta, alpha):
    """Checks ``q, k, v [B, T, H, D]`` (same shape) and gates ``[B, T, H]``.

    Returns ``(batch, seq_len, heads, head_dim)``.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        shape = getattr(x, "shape", None)
        if shape is None or len(shape) != 4:
            raise ValueError(f"{name} must be [batch, seq, heads, head_dim], got {_describe(x)}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    if not q.shape == k.shape == v.shape:
        raise ValueError(
            f"q, k and v must have the same shape [batch, seq, heads, head_dim], got q "
            f"{tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)}")
    if min(q.shape) == 0:
        raise ValueError(f"q, k and v must be non-empty, got shape {tuple(q.shape)}")
    batch, seq_len, heads, head_dim = q.shape
    for name, g in (("theta", theta), ("eta", eta), ("alpha", alpha)):
        shape = getattr(g, "shape", None)
        if shape is None or tuple(shape) != (batch, seq_len, heads):
            raise ValueError(
                f"{name} must be a float array [batch, seq, heads] = {[batch, seq_len, heads]}, "
                f"got {_describe(g)}")
        if not jnp.issubdtype(g.dtype, jnp.floating):
            raise ValueError(f"{name} must have a floating dtype, got {g.dtype}")
    return batch, seq_len, heads, head_dim


def check_chunk_size(seq_len, chunk_size):
    """Raises ``ValueError`` unless ``seq_len`` is a multiple of the int ``chunk_size >= 1``."""
    core.check_positive_int("chunk_size", chunk_size)
    if seq_len % chunk_size:
        padded = -(-seq_len // chunk_size) * chunk_size
        raise ValueError(
            f"sequence length {seq_len} is not a multiple of chunk_size={chunk_size}; pad to "
            f"{padded} or pick a chunk_size dividing it")


# Memory weights and state.

def init_memory_weights(key, *, heads, dim, depth, hidden=None, dtype=jnp.float32):
    """Learnable initial memory weights, LeCun normal (std ``1/sqrt(d_in)``).

    Args:
      key: a ``jax.random`` key.
      heads: number of heads ``H``; dim: head dimension ``D``.
      depth: ``L_M >= 1`` layers; ``hidden``: ``Dh``, required when ``depth > 1``.
      dtype: parameter dtype.

    Returns:
      A tuple of ``depth`` arrays ``[H, d_in, d_out]``: ``[D, D]`` for ``depth = 1``, else
      ``[D, Dh], [Dh, Dh], ..., [Dh, D]``.
    """
    core.check_positive_int("heads", heads)
    core.check_positive_int("dim", dim)
    _check_depth_hidden(depth, hidden)
    keys = jax.random.split(key, depth)
    return tuple(jax.random.normal(kk, (heads, d_in, d_out), dtype) * (1.0 / math.sqrt(d_in))
                 for kk, (d_in, d_out) in zip(keys, _layer_dims(dim, depth, hidden)))


def state_dtype(dtype):
    """Dtype of the memory state for inputs of ``dtype``: float32, float64 for float64 inputs."""
    return core.compute_dtype(dtype)


def init_memory_state(weights, batch, *, dtype=None):
    """The memory state at the start of a stream: ``weights`` broadcast over ``batch``, zero
    momentum.

    Args:
      weights: tuple of ``[H, d_in, d_out]`` (``init_memory_weights``, usually parameters).
      batch: int ``B >= 1``.
      dtype: state dtype; default ``promote(weights dtype, float32)``.

    Returns:
      ``MemoryState`` with weights and momentum ``[B, H, d_in, d_out]``. Differentiable with
      respect to ``weights``.
    """
    core.check_positive_int("batch", batch)
    if not isinstance(weights, (tuple, list)) or not weights:
        raise ValueError(
            f"weights must be a non-empty tuple of [heads, d_in, d_out] arrays, got "
            f"{type(weights).__name__}")
    if getattr(weights[0], "ndim", None) != 3:
        raise ValueError(f"weights[0] must be [heads, d_in, d_out], got {_describe(weights[0])}")
    heads, dim = weights[0].shape[:2]
    _check_weight_chain("weights", weights, dim, (heads,))
    if dtype is None:
        dtype = state_dtype(weights[0].dtype)
    ws = tuple(jnp.broadcast_to(w.astype(dtype)[None], (batch, *w.shape)) for w in weights)
    return MemoryState(ws, tuple(jnp.zeros_like(w) for w in ws))


def memory_forward(weights, x):
    """The memory MLP ``M(x)``: ``x W_1``, SiLU between layers, no biases.

    ``weights``: tuple of ``[B, H, d_in, d_out]``; ``x``: ``[B, H, N, D]`` -> ``[B, H, N, D]``.
    """
    h = x
    for i, w in enumerate(weights):
        if i:
            h = jax.nn.silu(h)
        h = jnp.einsum("bhnd,bhde->bhne", h, w)
    return h


def memory_retrieve(weights, q):
    """Retrieval ``y = M*(q)`` (eq. 15), a forward pass that does not update the memory.

    Args:
      weights: ``MemoryState.weights``, tuple of ``[B, H, d_in, d_out]`` (or ``[H, d_in,
        d_out]``, shared by every batch row).
      q: ``[B, T, H, D]``.

    Returns:
      ``[B, T, H, D]`` in ``q.dtype``, computed in the weights' dtype.
    """
    shape = getattr(q, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"q must be [batch, seq, heads, head_dim], got {_describe(q)}")
    batch, _, heads, dim = q.shape
    if isinstance(weights, (tuple, list)) and weights and getattr(weights[0], "ndim", 0) == 3:
        _check_weight_chain("weights", weights, dim, (heads,))
        weights = tuple(jnp.broadcast_to(w[None], (batch, *w.shape)) for w in weights)
    _check_weight_chain("weights", weights, dim, (batch, heads))
    dtype = jnp.promote_types(state_dtype(q.dtype), weights[0].dtype)
    x = jnp.swapaxes(q.astype(dtype), 1, 2)
    y = memory_forward(tuple(w.astype(dtype) for w in weights), x)
    return jnp.swapaxes(y, 1, 2).astype(q.dtype)


def associative_loss(weights, k, v):
    """Per-token eq. (12) ``|| M(k) - v ||_2^2``, summed over ``D`` (constant 1).

    ``weights``: tuple of ``[B, H, d_in, d_out]``; ``k, v``: ``[B, H, N, D]`` -> ``[B, H, N]``.
    """
    return jnp.sum(jnp.square(memory_forward(weights, k) - v), axis=-1)


# The chunked update.

def _compose(later, earlier):
    """``later @ earlier`` for upper-triangular ``[[a, b], [0, e]]`` held as ``(a, b, e)``."""
    a1, b1, e1 = later
    a2, b2, e2 = earlier
    return a1 * a2, a1 * b2 + b1 * e2, e1 * e2


def chunk_coefficients(theta, eta, alpha):
    """Scalar coefficients of a chunk's end state (module docstring), per batch row and head.

    Args:
      theta, eta, alpha: ``[..., b]``, the chunk's gates in token order.

    Returns:
      ``(m_from_m, m_from_s, s_from_s, c, s)``: ``[...]`` each for the first three, with
      ``M_end = m_from_m M_start + m_from_s S_start - sum_l c_l g_l`` and
      ``S_end = s_from_s S_start - sum_l s_l g_l``; ``c, s`` are ``[..., b]``.
    """
    keep = 1.0 - alpha
    # Inclusive suffix products Q_l = T_b ... T_l.
    a, b, e = jax.lax.associative_scan(_compose, (keep, eta, eta), reverse=True,
                                       axis=keep.ndim - 1)
    # P_l = Q_{l+1}, P_b = I.
    one = jnp.ones_like(a[..., :1])
    zero = jnp.zeros_like(a[..., :1])
    pa = jnp.concatenate([a[..., 1:], one], axis=-1)
    pb = jnp.concatenate([b[..., 1:], zero], axis=-1)
    pe = jnp.concatenate([e[..., 1:], one], axis=-1)
    return a[..., 0], b[..., 0], e[..., 0], theta * (pa + pb), theta * pe


def _clip_scale(max_grad_norm, *sq_norms):
    """``min(1, max_grad_norm / ||g||)`` for ``||g|| = prod_j sqrt(sq_norms[j])`` (the squared
    norms of the factors of an outer product, or one squared norm), factor by factor so that
    large norms do not overflow; finite derivatives at ``g = 0`` (no square root there)."""
    limit = jnp.asarray(max_grad_norm, sq_norms[0].dtype)
    norm = functools.reduce(jnp.multiply, [jnp.sqrt(jax.lax.stop_gradient(x)) for x in sq_norms])
    over = norm > limit
    scale = limit
    for x in sq_norms:
        scale = scale * jax.lax.rsqrt(jnp.where(over, x, 1.0))
    return jnp.where(over, scale, 1.0)


def _clipped_weighted_grads(weights, k, v, weightings, max_grad_norm):
    """``sum_l w_l clip(g_{l,i})`` for every memory layer ``i`` and each per-token weighting
    ``w [B, H, b]`` of ``weightings``, with ``g_{l,i} = grad_{W_i} l(M; k_l, v_l)`` clipped to
    Frobenius norm ``<= max_grad_norm`` token by token and layer by layer.

    Manual backpropagation through the memory MLP: token ``l``'s gradient of layer ``i`` is the
    outer product ``h_{i-1,l} (x) delta_{i,l}`` of the layer's input and the loss gradient at its
    output, so its norm is ``||h_{i-1,l}|| ||delta_{i,l}||`` without forming it.
    """
    inputs, pre = [], []
    h = k
    for i, w in enumerate(weights):
        if i:
            h = jax.nn.silu(pre[-1])
        inputs.append(h)
        pre.append(jnp.einsum("bhnd,bhde->bhne", h, w))
    delta = 2.0 * (pre[-1] - v)  # d l_l / d M(k_l)
    sums = [[None] * len(weights) for _ in weightings]
    for i in range(len(weights) - 1, -1, -1):
        scale = _clip_scale(max_grad_norm, jnp.sum(jnp.square(inputs[i]), -1),
                            jnp.sum(jnp.square(delta), -1))
        for out, w_l in zip(sums, weightings):
            out[i] = jnp.einsum("bhnd,bhn,bhne->bhde", inputs[i], w_l * scale, delta)
        if i:
            sig = jax.nn.sigmoid(pre[i - 1])
            silu_grad = sig * (1.0 + pre[i - 1] * (1.0 - sig))
            delta = jnp.einsum("bhne,bhde->bhnd", delta, weights[i]) * silu_grad
    return tuple(tuple(out) for out in sums)


def _chunk_step(state, chunk, max_grad_norm=None):
    """One chunk: reads of the chunk-start memory and the end state. Shapes in ``neural_memory``."""
    weights, momentum = state
    q, k, v, theta, eta, alpha = chunk  # [B, H, b, D] x3, [B, H, b] x3
    y = memory_forward(weights, q)
    m_from_m, m_from_s, s_from_s, c, s = chunk_coefficients(theta, eta, alpha)
    if max_grad_norm is None:
        pred, vjp = jax.vjp(lambda ws: memory_forward(ws, k), weights)
        residual = 2.0 * (pred - v)  # d l_l / d M(k_l)
        (grad_c,) = vjp(c[..., None] * residual)  # sum_l c_l g_l
        (grad_s,) = vjp(s[..., None] * residual)  # sum_l s_l g_l
    else:
        grad_c, grad_s = _clipped_weighted_grads(weights, k, v, (c, s), max_grad_norm)
    expand = lambda x: x[..., None, None]
    new_weights = tuple(expand(m_from_m) * w + expand(m_from_s) * sm - gc
                        for w, sm, gc in zip(weights, momentum, grad_c))
    new_momentum = tuple(expand(s_from_s) * sm - gs for sm, gs in zip(momentum, grad_s))
    return MemoryState(new_weights, new_momentum), y


def check_max_grad_norm(max_grad_norm):
    """Raises ``ValueError`` unless ``max_grad_norm`` is ``None`` or a positive finite float."""
    if max_grad_norm is None:
        return
    if (isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float))
            or not math.isfinite(max_grad_norm) or max_grad_norm <= 0):
        raise ValueError(
            f"max_grad_norm must be None (no clipping) or a positive finite float, got "
            f"{max_grad_norm!r}")


def neural_memory(state, q, k, v, theta, eta, alpha, *, chunk_size, max_grad_norm=None):
    """Titans' long-term memory over a sequence, chunked (eqs. 12-15 with §3.2's mini-batches).

    Args:
      state: ``MemoryState`` with weights and momentum ``[B, H, d_in, d_out]``
        (``init_memory_state``, or the state returned by the previous segment).
      q, k, v: ``[B, T, H, D]``, any float dtype (bf16 allowed).
      theta: ``[B, T, H]`` step sizes ``>= 0``; eta: ``[B, T, H]`` momentum decay in ``[0, 1]``;
        alpha: ``[B, T, H]`` forgetting in ``[0, 1]`` (ranges are not checked).
      chunk_size: int ``b >= 1`` dividing ``T``. Inside a chunk every gradient is taken at the
        chunk-start memory; ``b = 1`` is the sequential rule.
      max_grad_norm: ``None`` (default: the paper's rule, no clipping) or a float ``> 0``:
        every token's gradient ``grad_{W_i} l(M_{t'}; k_t, v_t)`` of every memory layer ``i`` is
        clipped to Frobenius norm ``<= max_grad_norm`` before it enters the momentum (module
        docstring, "Stability"). Applied per token, so ``b = 1`` still equals
        ``sequential_memory`` with the same ``max_grad_norm``.

    Returns:
      ``(y, new_state)``: ``y [B, T, H, D]`` in ``q.dtype`` with ``y_t = M_{t'}(q_t)``, ``M_{t'}``
      the memory at the start of ``t``'s chunk (before the chunk's writes); ``new_state`` after
      all ``T`` tokens. The state is float32 (float64 for float64 inputs); an incoming state of
      another dtype is cast.
    """
    batch, seq_len, heads, dim = check_memory_inputs(q, k, v, theta, eta, alpha)
    check_chunk_size(seq_len, chunk_size)
    check_max_grad_norm(max_grad_norm)
    check_memory_state(state, batch, heads, dim)
    dtype = state_dtype(q.dtype)
    num_chunks = seq_len // chunk_size
    state = MemoryState(tuple(w.astype(dtype) for w in state.weights),
                        tuple(s.astype(dtype) for s in state.momentum))

    def tokens(x):  # [B, T, H, D] -> [N, B, H, b, D]
        x = x.astype(dtype).reshape(batch, num_chunks, chunk_size, heads, dim)
        return jnp.transpose(x, (1, 0, 3, 2, 4))

    def gates(g):  # [B, T, H] -> [N, B, H, b]
        g = g.astype(dtype).reshape(batch, num_chunks, chunk_size, heads)
        return jnp.transpose(g, (1, 0, 3, 2))

    chunks = (tokens(q), tokens(k), tokens(v), gates(theta), gates(eta), gates(alpha))
    step = functools.partial(_chunk_step, max_grad_norm=max_grad_norm)
    new_state, y = jax.lax.scan(step, state, chunks)
    y = jnp.transpose(y, (1, 0, 3, 2, 4)).reshape(batch, seq_len, heads, dim)
    return y.astype(q.dtype), new_state


def memory_step(state, q, k, v, theta, eta, alpha, *, max_grad_norm=None):
    """One token of the sequential rule: read ``y = M_{t-1}(q)``, then write ``(k, v)``.

    ``q, k, v [B, H, D]``, gates ``[B, H]``, ``state`` as in ``neural_memory`` (already in the
    state dtype); ``max_grad_norm`` as in ``neural_memory``. Returns ``(y [B, H, D],
    new_state)``; ``y`` in the state dtype.
    """
    weights, momentum = state
    q, k, v = (x.astype(weights[0].dtype)[:, :, None] for x in (q, k, v))
    y = memory_forward(weights, q)[:, :, 0]
    grads = jax.grad(lambda ws: jnp.sum(associative_loss(ws, k, v)))(weights)
    if max_grad_norm is not None:
        grads = tuple(
            g * _clip_scale(max_grad_norm, jnp.sum(jnp.square(g), (-2, -1)))[..., None, None]
            for g in grads)
    expand = lambda x: x.astype(weights[0].dtype)[..., None, None]
    new_momentum = tuple(expand(eta) * sm - expand(theta) * g for sm, g in zip(momentum, grads))
    new_weights = tuple((1.0 - expand(alpha)) * w + sm for w, sm in zip(weights, new_momentum))
    return y, MemoryState(new_weights, new_momentum)


def sequential_memory(state, q, k, v, theta, eta, alpha, *, max_grad_norm=None):
    """The per-token rule (eqs. 12-15) as a ``jax.lax.scan`` over tokens, for decoding and as a
    cross-check of ``neural_memory(..., chunk_size=1)``, which it equals (with the same
    ``max_grad_norm``).

    Arguments and returns as in ``neural_memory``.
    """
    batch, _, heads, dim = check_memory_inputs(q, k, v, theta, eta, alpha)
    check_max_grad_norm(max_grad_norm)
    check_memory_state(state, batch, heads, dim)
    dtype = state_dtype(q.dtype)
    state = MemoryState(tuple(w.astype(dtype) for w in state.weights),
                        tuple(s.astype(dtype) for s in state.momentum))
    xs = tuple(jnp.swapaxes(x, 0, 1) for x in (q, k, v, theta, eta, alpha))

    def step(carry, x):
        y, new = memory_step(carry, *x, max_grad_norm=max_grad_norm)
        return new, y

    new_state, y = jax.lax.scan(step, state, xs)
    return jnp.swapaxes(y, 0, 1).astype(q.dtype), new_state
