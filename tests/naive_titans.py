"""Independent float64 NumPy references of the Titans memory for the tests (no jaxattn code).

Behrouz, Zhong & Mirrokni 2025 (arXiv 2501.00663), eqs. 12-15, written token by token for one
(batch row, head) at a time:

- memory ``M``: ``h_0 = x``, ``z_i = h_{i-1} W_i``, ``h_i = silu(z_i)`` for ``i < L``,
  ``M(x) = z_L`` (no biases; a single matrix when ``L = 1``);
- loss ``l = sum_d (M(k)_d - v_d)^2``, differentiated by hand (backprop with
  ``silu'(z) = s(z) (1 + z (1 - s(z)))``, ``s`` the logistic sigmoid);
- ``S_t = eta_t S_{t-1} - theta_t grad l(M_{t-1}; k_t, v_t)``,
  ``M_t = (1 - alpha_t) M_{t-1} + S_t``;
- retrieval reads the memory before the token (or its chunk) writes.

``naive_sequential_memory`` is the per-token rule; ``naive_minibatch_memory`` takes every
gradient of a chunk of ``chunk_size`` tokens at the chunk-start memory (and reads it), still
applying momentum and forgetting per token, by explicit loops. Both take an optional
``max_grad_norm``: each token's gradient of each layer is scaled to Frobenius norm at most
that (``g * min(1, max_grad_norm / ||g||)``) before it enters the momentum.
"""

import numpy as np


def sigmoid(z):
    """The logistic function, as ``(1 + tanh(z / 2)) / 2`` (no overflow for large ``|z|``)."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def silu(z):
    return z * sigmoid(z)


def silu_grad(z):
    s = sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def mlp_forward(weights, x):
    """``weights``: list of ``[d_in, d_out]``; ``x [D]`` -> ``(M(x), pre-activations, inputs)``."""
    inputs, pre = [], []
    h = x
    for i, w in enumerate(weights):
        if i:
            h = silu(pre[-1])
        inputs.append(h)
        pre.append(h @ w)
    return pre[-1], pre, inputs


def loss_and_grad(weights, k, v):
    """``(||M(k) - v||^2, [dl/dW_i])`` by manual backprop."""
    out, pre, inputs = mlp_forward(weights, k)
    diff = out - v
    loss = float(diff @ diff)
    grads = [None] * len(weights)
    dz = 2.0 * diff
    for i in range(len(weights) - 1, -1, -1):
        grads[i] = np.outer(inputs[i], dz)
        if i:
            dh = weights[i] @ dz
            dz = dh * silu_grad(pre[i - 1])
    return loss, grads


def clip(grads, max_grad_norm):
    """Each layer's gradient scaled down to Frobenius norm ``max_grad_norm`` if above it."""
    if max_grad_norm is None:
        return grads
    return [g * min(1.0, max_grad_norm / np.linalg.norm(g)) if np.linalg.norm(g) > 0 else g
            for g in grads]


def _as_lists(weights, momentum, b, h):
    ws = [np.array(w[b, h], dtype=np.float64) for w in weights]
    ss = [np.array(s[b, h], dtype=np.float64) for s in momentum]
    return ws, ss


def naive_minibatch_memory(weights, momentum, q, k, v, theta, eta, alpha, chunk_size,
                           max_grad_norm=None):
    """Float64 NumPy; ``weights``/``momentum``: lists of ``[B, H, d_in, d_out]``; ``q, k, v
    [B, T, H, D]``; gates ``[B, T, H]``.

    Returns ``(y [B, T, H, D], final weights, final momentum)`` (lists of ``[B, H, ., .]``).
    """
    q, k, v, theta, eta, alpha = (np.asarray(x, np.float64) for x in (q, k, v, theta, eta, alpha))
    batch, length, heads, _ = q.shape
    assert length % chunk_size == 0
    y = np.zeros_like(q)
    out_w = [np.zeros(np.shape(w), np.float64) for w in weights]
    out_s = [np.zeros(np.shape(w), np.float64) for w in weights]
    for b in range(batch):
        for h in range(heads):
            ws, ss = _as_lists(weights, momentum, b, h)
            for start in range(0, length, chunk_size):
                w0 = [w.copy() for w in ws]
                for t in range(start, start + chunk_size):
                    y[b, t, h] = mlp_forward(w0, q[b, t, h])[0]
                    grads = clip(loss_and_grad(w0, k[b, t, h], v[b, t, h])[1], max_grad_norm)
                    for i in range(len(ws)):
                        ss[i] = eta[b, t, h] * ss[i] - theta[b, t, h] * grads[i]
                        ws[i] = (1.0 - alpha[b, t, h]) * ws[i] + ss[i]
            for i in range(len(ws)):
                out_w[i][b, h] = ws[i]
                out_s[i][b, h] = ss[i]
    return y, out_w, out_s


def naive_sequential_memory(weights, momentum, q, k, v, theta, eta, alpha, max_grad_norm=None):
    """The per-token rule: token ``t`` reads ``M_{t-1}(q_t)``, then writes with the gradient at
    ``M_{t-1}``. Arguments and returns as in ``naive_minibatch_memory``."""
    q, k, v, theta, eta, alpha = (np.asarray(x, np.float64) for x in (q, k, v, theta, eta, alpha))
    batch, length, heads, _ = q.shape
    y = np.zeros_like(q)
    out_w = [np.zeros(np.shape(w), np.float64) for w in weights]
    out_s = [np.zeros(np.shape(w), np.float64) for w in weights]
    for b in range(batch):
        for h in range(heads):
            ws, ss = _as_lists(weights, momentum, b, h)
            for t in range(length):
                y[b, t, h] = mlp_forward(ws, q[b, t, h])[0]
                grads = clip(loss_and_grad(ws, k[b, t, h], v[b, t, h])[1], max_grad_norm)
                for i in range(len(ws)):
                    ss[i] = eta[b, t, h] * ss[i] - theta[b, t, h] * grads[i]
                    ws[i] = (1.0 - alpha[b, t, h]) * ws[i] + ss[i]
            for i in range(len(ws)):
                out_w[i][b, h] = ws[i]
                out_s[i][b, h] = ss[i]
    return y, out_w, out_s
