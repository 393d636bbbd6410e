"""Titans' memories as Flax NNX modules (Behrouz, Zhong & Mirrokni 2025, arXiv 2501.00663).

- ``NeuralMemory``: the long-term memory module (LMM, §3.1 and §4.4) around
  ``jaxattn.attention.titans.neural_memory``, ``x [B, T, d_model] -> [B, T, d_model]`` with
  a ``NeuralMemoryState``: per-head projections ``W_Q, W_K, W_V`` each followed by a causal
  depthwise 1-D convolution and SiLU, ``q`` and ``k`` L2-normalised, per-token, per-head gates
  ``theta = max_lr * sigmoid(x W_theta)``, ``eta = sigmoid(x W_eta)``,
  ``alpha = sigmoid(x W_alpha)``, learned initial memory weights, and an output head
  (per-head RMS normalisation, a SiLU gate ``x W_G``, projection ``W_O``; §4.4).
- ``PersistentMemory``: ``N_p`` learnable input-independent tokens ``[N_p, d_model]`` (§3.3).

Causality: token ``t`` reads the memory at the start of its chunk (``neural_memory``) and the
convolutions are causal, so every output depends only on the current and past tokens. The
memory, its convolutions and its gates are a recurrent state: nothing resets them at a
document boundary; a new state (``init_state``) does.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxattn.attention.titans import (MemoryState, check_max_grad_norm, init_memory_state,
                                      init_memory_weights, memory_forward, neural_memory)
from jaxattn.nn.init import logical_param, partitioned
from jaxattn.nn.layers import RMSNorm
from jaxattn.nn.titans.sequence import check_input, check_int, tail


class NeuralMemoryState(NamedTuple):
    """State of a ``NeuralMemory`` stream.

    Attributes:
      memory: ``MemoryState``, weights and momentum ``[B, H, d_in, d_out]``, float32.
      inputs: ``[B, max(K - 1, 1), d_model]``, the last inputs, for the causal convolutions
        (kernel ``K``; zeros at the start of a stream, which is the convolution's zero padding).
    """

    memory: MemoryState
    inputs: jax.Array


def _l2_normalize(x, eps=1e-6):
    """``x / ||x||_2`` over the last axis (paper §4.4: normalised queries and keys), in float32."""
    x32 = x.astype(jnp.float32)
    inv_norm = jax.lax.rsqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (x32 * inv_norm).astype(x.dtype)


class PersistentMemory(nnx.Module):
    """``N_p`` learnable, input-independent tokens (paper §3.3), ``[N_p, d_model]``."""

    def __init__(self, num_tokens: int, embed_dim: int, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        check_int("num_persistent", num_tokens, 0)
        self.num_tokens = num_tokens
        self.tokens = logical_param(
            nnx.initializers.normal(0.02)(rngs.params(), (num_tokens, embed_dim), param_dtype),
            (None, "embed"))

    def __call__(self, batch: int, dtype=jnp.float32) -> jnp.ndarray:
        """The tokens broadcast to ``[batch, N_p, d_model]`` in ``dtype``."""
        tokens = self.tokens[...].astype(dtype)
        return jnp.broadcast_to(tokens[None], (batch, *tokens.shape))


class NeuralMemory(nnx.Module):
    """Titans' long-term memory module: ``x [B, T, d_model] -> [B, T, d_model]`` with state.

    Args:
      embed_dim: ``d_model``.
      num_heads, head_dim: memory heads ``H`` and their dimension ``D``.
      chunk_size: ``b``, tokens per mini-batch of the memory update (``T`` must be a multiple).
      depth: memory MLP depth ``L_M >= 1``; hidden: its width ``Dh`` (default ``4 * D``).
      max_lr: the largest step size, ``theta = max_lr * sigmoid(x W_theta + b_theta)``.
      conv_kernel: kernel of the causal depthwise convolutions after ``W_Q, W_K, W_V``.
      init_gates: initial ``(theta / max_lr, eta, alpha)`` values set through the gate biases
        (our choice: ``(0.5, 0.9, 0.02)``, a slowly forgetting memory with strong momentum).
      max_grad_norm: ``None`` (the paper's rule) or a float ``> 0``: clip every token's gradient
        of every memory layer to this Frobenius norm before it enters the momentum
        (``neural_memory``; a guard against the chunked update diverging).
    """

    def __init__(self, embed_dim: int, *, num_heads: int, head_dim: int, chunk_size: int,
                 depth: int = 2, hidden: int | None = None, max_lr: float = 0.1,
                 conv_kernel: int = 4, init_gates=(0.5, 0.9, 0.02),
                 max_grad_norm: float | None = None, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        for name, value, minimum in (("embed_dim", embed_dim, 1), ("num_heads", num_heads, 1),
                                     ("head_dim", head_dim, 1), ("chunk_size", chunk_size, 1),
                                     ("depth", depth, 1), ("conv_kernel", conv_kernel, 1)):
            check_int(name, value, minimum)
        if hidden is None:
            hidden = 4 * head_dim
        check_int("hidden", hidden, 1)
        if not (isinstance(max_lr, (int, float)) and math.isfinite(max_lr) and max_lr > 0):
            raise ValueError(f"max_lr must be a positive finite float, got {max_lr!r}")
        if len(init_gates) != 3 or not all(0.0 < g < 1.0 for g in init_gates):
            raise ValueError(f"init_gates must be three floats in (0, 1), got {init_gates!r}")
        check_max_grad_norm(max_grad_norm)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.chunk_size, self.depth, self.hidden = chunk_size, depth, hidden
        self.max_lr, self.conv_kernel, self.dtype = float(max_lr), conv_kernel, dtype
        width = num_heads * head_dim
        dense = lambda i, o, names: nnx.Linear(
            i, o, use_bias=False, dtype=dtype, param_dtype=param_dtype,
            kernel_init=partitioned(names), rngs=rngs)
        self.query = dense(embed_dim, width, ("embed", "heads"))
        self.key = dense(embed_dim, width, ("embed", "heads"))
        self.value = dense(embed_dim, width, ("embed", "heads"))
        conv_init = nnx.initializers.normal(1.0 / math.sqrt(conv_kernel))
        self.conv_q, self.conv_k, self.conv_v = (
            logical_param(conv_init(rngs.params(), (conv_kernel, width), param_dtype),
                          (None, "heads")) for _ in range(3))

        def gate(initial):
            bias = math.log(initial / (1.0 - initial))
            return nnx.Linear(embed_dim, num_heads, use_bias=True, dtype=jnp.float32,
                              param_dtype=param_dtype, kernel_init=partitioned(("embed", "heads")),
                              bias_init=partitioned(("heads",), nnx.initializers.constant(bias)),
                              rngs=rngs)

        self.theta, self.eta, self.alpha = (gate(g) for g in init_gates)
        self.memory_init = nnx.List([
            logical_param(w, ("heads", None, None)) for w in init_memory_weights(
                rngs.params(), heads=num_heads, dim=head_dim, depth=depth, hidden=hidden,
                dtype=param_dtype)])
        self.out_norm = RMSNorm(head_dim, param_dtype=param_dtype)
        self.gate = dense(embed_dim, width, ("embed", "heads"))
        self.out = dense(width, embed_dim, ("heads", "embed"))

    @property
    def _cache_len(self):
        return max(self.conv_kernel - 1, 1)

    def init_state(self, batch: int) -> NeuralMemoryState:
        """The state at the start of a stream: the learned initial memory, zero momentum, zero
        convolution history. Call it inside the differentiated function for gradients to reach
        the initial memory weights (``__call__`` with ``state=None`` does)."""
        memory = init_memory_state(tuple(w[...] for w in self.memory_init), batch,
                                   dtype=jnp.promote_types(self.memory_init[0][...].dtype,
                                                           jnp.float32))
        return NeuralMemoryState(memory, self.init_inputs(batch))

    def init_inputs(self, batch: int) -> jnp.ndarray:
        """Zero convolution history ``[batch, max(K - 1, 1), d_model]``."""
        return jnp.zeros((batch, self._cache_len, self.embed_dim), self.dtype)

    def _conv_project(self, proj, kernel, x, history):
        """``silu(causal_depthwise_conv(proj([history; x])))`` for the ``T`` tokens of ``x``,
        as ``[B, T, H, D]``."""
        seq = x.shape[1]
        taps = self.conv_kernel
        z = proj(jnp.concatenate([tail(history, taps - 1), x], axis=1))
        w = kernel[...].astype(z.dtype)
        out = sum(w[j][None, None] * z[:, j:j + seq] for j in range(taps))
        return jax.nn.silu(out).reshape(x.shape[0], seq, self.num_heads, self.head_dim)

    def _output(self, y, x):
        """``W_O (norm(y) * silu(x W_G))``: ``y [B, T, H, D]``, ``x [B, T, E]`` -> ``[B, T, E]``."""
        batch, seq = x.shape[:2]
        y = self.out_norm(y.astype(x.dtype)).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.out(y * jax.nn.silu(self.gate(x)))

    def _new_history(self, history, x):
        return tail(jnp.concatenate([history, x.astype(history.dtype)], axis=1), self._cache_len)

    def __call__(self, x: jnp.ndarray, state: NeuralMemoryState | None = None):
        """Reads and writes the memory over ``x``.

        Args:
          x: ``[B, T, d_model]``, ``T`` a multiple of ``chunk_size``.
          state: ``NeuralMemoryState`` or ``None`` (``init_state``).

        Returns:
          ``(out [B, T, d_model], new_state)``; token ``t`` reads the memory at the start of its
          chunk (``neural_memory``), so ``out`` is causal.
        """
        check_input(x, self.embed_dim, self.chunk_size, "chunk_size")
        if state is None:
            state = self.init_state(x.shape[0])
        history = state.inputs
        q = _l2_normalize(self._conv_project(self.query, self.conv_q, x, history))
        k = _l2_normalize(self._conv_project(self.key, self.conv_k, x, history))
        v = self._conv_project(self.value, self.conv_v, x, history)
        x32 = x.astype(jnp.float32)
        theta = self.max_lr * jax.nn.sigmoid(self.theta(x32))
        eta = jax.nn.sigmoid(self.eta(x32))
        alpha = jax.nn.sigmoid(self.alpha(x32))
        y, memory = neural_memory(state.memory, q, k, v, theta, eta, alpha,
                                  chunk_size=self.chunk_size, max_grad_norm=self.max_grad_norm)
        return self._output(y, x), NeuralMemoryState(memory, self._new_history(history, x))

    def retrieve(self, x: jnp.ndarray, memory: MemoryState, history: jnp.ndarray):
        """Reads ``M*(q)`` with the queries of ``x`` without writing (eq. 15).

        Args:
          x: ``[B, T, d_model]`` (any ``T``); memory: the ``MemoryState`` to read.
          history: ``[B, max(K - 1, 1), d_model]``, the inputs before ``x`` of the stream the
            queries are convolved over (``init_inputs`` at its start).

        Returns:
          ``(out [B, T, d_model], new_history)``.
        """
        q = _l2_normalize(self._conv_project(self.query, self.conv_q, x, history))
        y = memory_forward(memory.weights, jnp.swapaxes(q.astype(memory.weights[0].dtype), 1, 2))
        return self._output(jnp.swapaxes(y, 1, 2), x), self._new_history(history, x)
