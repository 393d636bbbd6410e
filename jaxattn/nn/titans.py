"""Titans as Flax NNX modules (Behrouz, Zhong & Mirrokni 2025, arXiv 2501.00663).

- ``NeuralMemory``: the long-term memory module (LMM, §3.1 and §4.4) around
  ``jaxattn.attention.titans.neural_memory``: per-head projections ``W_Q, W_K, W_V`` each
  followed by a causal depthwise 1-D convolution and SiLU, ``q`` and ``k`` L2-normalised,
  per-token, per-head gates ``theta = max_lr * sigmoid(x W_theta)``, ``eta = sigmoid(x W_eta)``,
  ``alpha = sigmoid(x W_alpha)``, learned initial memory weights, and an output head
  (per-head RMS normalisation, a SiLU gate ``x W_G``, projection ``W_O``; §4.4).
- ``PersistentMemory``: ``N_p`` learnable input-independent tokens (§3.3).
- Blocks ``[B, T, d_model] -> [B, T, d_model]``, pre-norm and residual
  (``x + mixer(norm(x))``, then ``x + SwiGLU(norm(x))`` when ``mlp_dim`` is set), each carrying
  an explicit state pytree in and out so that a stream runs segment by segment in constant
  memory: ``MACBlock`` (memory as context, §4.1), ``MAGBlock`` (memory as gate, §4.2),
  ``MALBlock`` (memory as layer, §4.3) and ``LMMBlock`` (the memory alone).

Causality: every output depends only on the current and past tokens. The memory reads the
memory at the start of the token's chunk (``neural_memory``), the convolutions are causal,
and the attention masks are causal; in MAC a segment token sees the retrieved token ``h_j``
only for ``j <= i`` (``h_j`` is read with token ``j``'s query, so it carries token ``j``).

The attention of the blocks uses the projections, RoPE and output projection of an
``Attention`` module (kind ``"dense"``), with the masks the architectures need (an always
visible persistent prefix; retrieved tokens aligned with the segment) built here, since the
registry's options cannot express them. Softmax only (no SSMax). Persistent tokens carry no
RoPE position (their logits use unrotated queries and keys), so what a query reads from them
does not depend on its place in the stream; the other tokens' positions are relative to the
segment (MAC) or to the cached window (MAG, MAL).

Packed documents (``segment_ids``, as ``jaxattn.data`` builds them, 0 = padding): the
attention of every block masks by segment id (a token sees the tokens of its own document,
and the always-visible persistent tokens; the window caches of MAG and MAL carry the ids of
the cached tokens across calls; a padding query, id 0, sees only the persistent tokens). The
memory, its causal convolutions and its gates are a recurrent state and are *not* reset at a
document boundary: a document starting inside a
sequence (or a stream) reads and writes the memory left by the documents before it, exactly
as a stream does across calls. Reset it by starting a new state (``init_state``).

``TitansConfig`` and ``make_block`` build the blocks of a ``TransformerLM`` (its ``titans``
field): one architecture in every layer, with the LM's embeddings, final norm and unembedding.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxattn.attention import core
from jaxattn.attention.rope import apply_rope
from jaxattn.attention.titans import (MemoryState, check_max_grad_norm, init_memory_state,
                                      init_memory_weights, memory_forward, neural_memory)
from jaxattn.nn.attention import Attention, AttentionSpec
from jaxattn.nn.init import logical_param, partitioned
from jaxattn.nn.layers import RMSNorm, SwiGLU


# States.

class NeuralMemoryState(NamedTuple):
    """State of a ``NeuralMemory`` stream.

    Attributes:
      memory: ``MemoryState``, weights and momentum ``[B, H, d_in, d_out]``, float32.
      inputs: ``[B, max(K - 1, 1), d_model]``, the last inputs, for the causal convolutions
        (kernel ``K``; zeros at the start of a stream, which is the convolution's zero padding).
    """

    memory: MemoryState
    inputs: jax.Array


class MACState(NamedTuple):
    """State of a ``MACBlock`` stream.

    Attributes:
      memory: ``NeuralMemoryState`` of the memory written with the attention outputs ``y``.
      query_inputs: ``[B, max(K - 1, 1), d_model]``, the last block inputs, for the convolution
        of the queries that retrieve ``h`` (a different stream from ``y``).
    """

    memory: NeuralMemoryState
    query_inputs: jax.Array


class WindowState(NamedTuple):
    """State of a ``MAGBlock`` or ``MALBlock`` stream.

    Attributes:
      memory: ``NeuralMemoryState``.
      cache: ``[B, max(W - 1, 1), d_model]``, the attention inputs of the last ``W - 1`` tokens
        (sliding window ``W``).
      filled: int32 scalar, how many of them are real tokens (``min(tokens seen, W - 1)``).
      cache_ids: int32 ``[B, max(W - 1, 1)]``, the segment (document) ids of the cached
        tokens, 1 for tokens fed without ``segment_ids``.
    """

    memory: NeuralMemoryState
    cache: jax.Array
    filled: jax.Array
    cache_ids: jax.Array


# Small helpers.

def _check_int(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_input(x, embed_dim, multiple, what):
    """``x [B, T, embed_dim]`` with ``T`` a positive multiple of ``multiple``."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 3 or shape[-1] != embed_dim:
        raise ValueError(
            f"x must be [batch, seq, {embed_dim}], got "
            f"{'shape ' + str(tuple(shape)) if shape is not None else type(x).__name__}")
    if shape[1] == 0 or shape[1] % multiple:
        padded = max(multiple, -(-shape[1] // multiple) * multiple)
        raise ValueError(
            f"sequence length {shape[1]} is not a positive multiple of {what}={multiple}; pad "
            f"to {padded} or split the stream at multiples of it")


def _check_segment_ids(segment_ids, x):
    """``None`` or an int array ``[B, T]`` matching ``x [B, T, E]``."""
    if segment_ids is not None:
        core.check_segment_ids("segment_ids", segment_ids, x.shape[0], x.shape[1])


def _tail(x, n):
    """The last ``n`` rows of ``x [B, L, E]`` (``n = 0`` gives ``[B, 0, E]``)."""
    return x[:, x.shape[1] - n:]


def _l2_normalize(x, eps=1e-6):
    """``x / ||x||_2`` over the last axis (paper §4.4: normalised queries and keys), in float32."""
    x32 = x.astype(jnp.float32)
    inv_norm = jax.lax.rsqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (x32 * inv_norm).astype(x.dtype)


def _attend(attn, x_q, x_kv, q_pos, kv_pos, mask, num_prefix=0):
    """Softmax attention with an explicit mask, using ``attn``'s projections and RoPE.

    Args:
      attn: an ``Attention`` module (its ``query``/``key``/``value``/``out`` projections).
      x_q: ``[B, Tq, E]``; x_kv: ``[B, Tk, E]``, whose first ``num_prefix`` rows are the
        persistent tokens.
      q_pos: int ``[Tq]``; kv_pos: int ``[Tk - num_prefix]``, RoPE positions of the queries and
        of the keys after the prefix. The prefix is position-free: its logits use unrotated
        queries and keys, so a query's view of the persistent tokens does not depend on where
        the query sits in the stream (or on how the stream was split).
      mask: bool ``[Tq, Tk]`` or ``[B, Tq, Tk]``, ``True`` where a query sees a key.

    Returns:
      ``[B, Tq, E]``; a query that sees nothing gives the projection of 0.
    """
    batch, q_len, _ = x_q.shape
    kv_len = x_kv.shape[1]
    heads, kv_heads, head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q_pos = jnp.broadcast_to(q_pos[None], (batch, q_len))
    kv_pos = jnp.broadcast_to(kv_pos[None], (batch, kv_len - num_prefix))
    q = attn.query(x_q).reshape(batch, q_len, heads, head_dim)
    k = attn.key(x_kv).reshape(batch, kv_len, kv_heads, head_dim)
    v = attn.value(x_kv).reshape(batch, kv_len, kv_heads, head_dim)
    q_rot = apply_rope(q, q_pos, attn.rope_base)
    k_rot = apply_rope(k[:, num_prefix:], kv_pos, attn.rope_base)
    dtype = core.compute_dtype(q.dtype)
    logits = [jnp.einsum("bqkgd,bskd->bkgqs", core.group_query_heads(q_rot, kv_heads), k_rot,
                         preferred_element_type=dtype)]
    if num_prefix:
        logits.insert(0, jnp.einsum("bqkgd,bskd->bkgqs", core.group_query_heads(q, kv_heads),
                                    k[:, :num_prefix], preferred_element_type=dtype))
    logits = jnp.concatenate(logits, axis=-1) * jnp.asarray(1.0 / math.sqrt(head_dim), dtype)
    if mask.ndim == 2:
        mask = mask[None]
    probs = core.masked_softmax(logits, mask[:, None, None])
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v.astype(dtype))
    return attn.out(out.reshape(batch, q_len, heads * head_dim).astype(x_q.dtype))


def _scan_segments(module, x, state, segment_len, segment_ids=None):
    """Runs ``module._segment(x_seg, state, ids_seg)`` over the segments of ``x [B, T, E]``
    (and of ``segment_ids [B, T]`` or ``None``) with ``jax.lax.scan``; a trailing shorter
    segment (``T % segment_len``) runs last."""
    batch, seq_len, embed = x.shape
    full = seq_len // segment_len
    outputs = []

    def segments(a):  # [B, full * S, ...] -> [full, B, S, ...]
        a = a[:, :full * segment_len]
        return jnp.swapaxes(a.reshape(batch, full, segment_len, *a.shape[2:]), 0, 1)

    if full:
        # The body reads the module's parameters as closed-over values (no nnx.split/merge:
        # under nnx.capture the modules carry capture slots whose keys do not sort with the
        # integer keys of nnx.List).
        def body(carry, xs):
            x_seg, ids = xs
            return tuple(reversed(module._segment(x_seg, carry, ids)))

        xs = (segments(x), None if segment_ids is None else segments(segment_ids))
        state, ys = jax.lax.scan(body, state, xs)
        outputs.append(jnp.swapaxes(ys, 0, 1).reshape(batch, full * segment_len, embed))
    if seq_len % segment_len:
        rest = None if segment_ids is None else segment_ids[:, full * segment_len:]
        y, state = module._segment(x[:, full * segment_len:], state, rest)
        outputs.append(y)
    return jnp.concatenate(outputs, axis=1) if len(outputs) > 1 else outputs[0], state


# Modules.

class PersistentMemory(nnx.Module):
    """``N_p`` learnable, input-independent tokens (paper §3.3), ``[N_p, d_model]``."""

    def __init__(self, num_tokens: int, embed_dim: int, *, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        _check_int("num_persistent", num_tokens, 0)
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
            _check_int(name, value, minimum)
        if hidden is None:
            hidden = 4 * head_dim
        _check_int("hidden", hidden, 1)
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
        z = proj(jnp.concatenate([_tail(history, taps - 1), x], axis=1))
        w = kernel[...].astype(z.dtype)
        out = sum(w[j][None, None] * z[:, j:j + seq] for j in range(taps))
        return jax.nn.silu(out).reshape(x.shape[0], seq, self.num_heads, self.head_dim)

    def _output(self, y, x):
        """``W_O (norm(y) * silu(x W_G))``: ``y [B, T, H, D]``, ``x [B, T, E]`` -> ``[B, T, E]``."""
        batch, seq = x.shape[:2]
        y = self.out_norm(y.astype(x.dtype)).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.out(y * jax.nn.silu(self.gate(x)))

    def _new_history(self, history, x):
        return _tail(jnp.concatenate([history, x.astype(history.dtype)], axis=1), self._cache_len)

    def __call__(self, x: jnp.ndarray, state: NeuralMemoryState | None = None):
        """Reads and writes the memory over ``x``.

        Args:
          x: ``[B, T, d_model]``, ``T`` a multiple of ``chunk_size``.
          state: ``NeuralMemoryState`` or ``None`` (``init_state``).

        Returns:
          ``(out [B, T, d_model], new_state)``; token ``t`` reads the memory at the start of its
          chunk (``neural_memory``), so ``out`` is causal.
        """
        _check_input(x, self.embed_dim, self.chunk_size, "chunk_size")
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


class _TitansBlock(nnx.Module):
    """Pre-norm residual block around a Titans mixer; subclasses define ``_segment``."""

    def _init_common(self, embed_dim, mlp_dim, *, rngs, dtype, param_dtype):
        _check_int("embed_dim", embed_dim, 1)
        self.embed_dim = embed_dim
        self.dtype = dtype
        self.norm = RMSNorm(embed_dim, param_dtype=param_dtype)
        if mlp_dim is None:
            self.mlp_norm, self.mlp = None, None
        else:
            _check_int("mlp_dim", mlp_dim, 1)
            self.mlp_norm = RMSNorm(embed_dim, param_dtype=param_dtype)
            self.mlp = SwiGLU(embed_dim, mlp_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def _finish(self, x, mixed):
        x = x + mixed.astype(x.dtype)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x

    def _attention(self, embed_dim, num_heads, num_kv_heads, head_dim, rope_base, train_len,
                   window, rngs, dtype, param_dtype):
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        return Attention(embed_dim, num_heads=num_heads, num_kv_heads=num_kv_heads,
                         head_dim=head_dim, spec=AttentionSpec.create("dense", window=window),
                         train_len=train_len, rope_base=rope_base, rngs=rngs, dtype=dtype,
                         param_dtype=param_dtype)


_MEMORY_ARGS = """
      chunk_size: memory mini-batch ``b``.
      memory_heads, memory_head_dim: heads and head dimension of the memory (default: those of
        the attention).
      memory_depth, memory_hidden, max_lr, conv_kernel, max_grad_norm: ``NeuralMemory``'s
        ``depth``, ``hidden``, ``max_lr``, ``conv_kernel``, ``max_grad_norm``.
      mlp_dim: width of a SwiGLU MLP sub-block after the mixer; ``None`` for none.
      rope_base: RoPE base of the attention.
"""


class MACBlock(_TitansBlock):
    """Memory as a context (paper §4.1, eqs. 21-25), segments of ``segment_len = C`` tokens.

    For each segment ``S`` (normalised block input) with memory ``M_{t-1}``:

    - ``h = M*_{t-1}(q)``, retrieved with the segment's own queries (eq. 21);
    - ``y = Attn([p || h || S])`` for the segment tokens (eqs. 22-23): token ``i`` sees every
      persistent token, ``h_j`` and ``S_j`` for ``j <= i`` (``h_j`` carries token ``j``; the
      paper lets all of ``h`` be seen, which would leak the future);
    - ``(m, M_t) = memory(y)``: the memory is written with ``y`` (eq. 24), and ``m`` is read
      with ``y``'s queries from the memory at the start of each memory chunk, i.e. from ``M_t``
      as far as causality allows (``M_{t-1}`` when ``chunk_size = C``);
    - ``o = y * sigmoid(norm(m))`` (eq. 25, ``y ⊗ M*_t(y)`` with the paper's normalisation and
      non-linearity as the gate).

    Args:
      embed_dim: ``d_model``; num_heads, num_kv_heads, head_dim: the attention's.
      segment_len: ``C``; ``T`` must be a multiple, and ``C`` a multiple of ``chunk_size``.
      num_persistent: ``N_p`` persistent tokens.
    """ + _MEMORY_ARGS

    def __init__(self, embed_dim: int, *, num_heads: int, head_dim: int, segment_len: int,
                 chunk_size: int, num_kv_heads: int | None = None, num_persistent: int = 4,
                 memory_heads: int | None = None, memory_head_dim: int | None = None,
                 memory_depth: int = 2, memory_hidden: int | None = None, max_lr: float = 0.1,
                 conv_kernel: int = 4, max_grad_norm: float | None = None,
                 mlp_dim: int | None = None, rope_base: float = 10_000.0,
                 rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        _check_int("segment_len", segment_len, 1)
        _check_int("chunk_size", chunk_size, 1)
        if segment_len % chunk_size:
            raise ValueError(f"segment_len ({segment_len}) must be a multiple of chunk_size "
                             f"({chunk_size}): the memory is written segment by segment")
        self._init_common(embed_dim, mlp_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.segment_len = segment_len
        self.attn = self._attention(embed_dim, num_heads, num_kv_heads, head_dim, rope_base,
                                    segment_len, None, rngs, dtype, param_dtype)
        self.persistent = PersistentMemory(num_persistent, embed_dim, rngs=rngs,
                                           param_dtype=param_dtype)
        self.memory = NeuralMemory(
            embed_dim, num_heads=memory_heads or num_heads, head_dim=memory_head_dim or head_dim,
            chunk_size=chunk_size, depth=memory_depth, hidden=memory_hidden, max_lr=max_lr,
            conv_kernel=conv_kernel, max_grad_norm=max_grad_norm, rngs=rngs, dtype=dtype,
            param_dtype=param_dtype)
        self.gate_norm = RMSNorm(embed_dim, param_dtype=param_dtype)

    def init_state(self, batch: int) -> MACState:
        return MACState(self.memory.init_state(batch), self.memory.init_inputs(batch))

    def _segment(self, x, state, segment_ids=None):
        """One segment ``x [B, C, E]`` (block input, not yet normalised), with its
        ``segment_ids [B, C]`` or ``None``."""
        h_in = self.norm(x)
        batch, seg = h_in.shape[:2]
        num_p = self.persistent.num_tokens
        retrieved, query_inputs = self.memory.retrieve(h_in, state.memory.memory,
                                                       state.query_inputs)
        context = jnp.concatenate(
            [self.persistent(batch, h_in.dtype), retrieved.astype(h_in.dtype), h_in], axis=1)
        causal = jnp.tril(jnp.ones((seg, seg), bool))
        prefix = jnp.ones((seg, num_p), bool)
        if segment_ids is not None:  # h_j carries token j: it shares token j's document
            causal = causal[None] & core.segment_mask(segment_ids, segment_ids)
            prefix = jnp.broadcast_to(prefix[None], (batch, seg, num_p))
        mask = jnp.concatenate([prefix, causal, causal], axis=-1)
        kv_pos = jnp.arange(2 * seg, dtype=jnp.int32)
        y = _attend(self.attn, h_in, context, kv_pos[seg:], kv_pos, mask, num_p)
        m, memory = self.memory(y, state.memory)
        o = y * jax.nn.sigmoid(self.gate_norm(m).astype(jnp.float32)).astype(y.dtype)
        return self._finish(x, o), MACState(memory, query_inputs)

    def __call__(self, x: jnp.ndarray, state: MACState | None = None, *,
                 segment_ids: jnp.ndarray | None = None):
        """``x [B, T, d_model]``, ``T`` a multiple of ``segment_len`` -> ``(y, new_state)``.

        Splitting a stream at multiples of ``segment_len`` and carrying the state gives the
        same outputs as one call. ``segment_ids [B, T]`` (optional, 0 = padding) restricts the
        attention to each token's document (persistent tokens stay visible); the memory
        carries over document boundaries (module docstring).
        """
        _check_input(x, self.embed_dim, self.segment_len, "segment_len")
        _check_segment_ids(segment_ids, x)
        if state is None:
            state = self.init_state(x.shape[0])
        return _scan_segments(self, x, state, self.segment_len, segment_ids)


class _WindowBlock(_TitansBlock):
    """Shared by MAG and MAL: sliding-window attention with an always-visible persistent prefix
    and a cache of the last ``window - 1`` attention inputs."""

    def __init__(self, embed_dim: int, *, num_heads: int, head_dim: int, window: int,
                 chunk_size: int, segment_len: int | None = None, num_kv_heads: int | None = None,
                 num_persistent: int = 4, memory_heads: int | None = None,
                 memory_head_dim: int | None = None, memory_depth: int = 2,
                 memory_hidden: int | None = None, max_lr: float = 0.1, conv_kernel: int = 4,
                 max_grad_norm: float | None = None, mlp_dim: int | None = None,
                 rope_base: float = 10_000.0, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        _check_int("window", window, 1)
        _check_int("chunk_size", chunk_size, 1)
        if segment_len is None:
            segment_len = chunk_size * max(1, -(-window // chunk_size))
        _check_int("segment_len", segment_len, 1)
        if segment_len % chunk_size:
            raise ValueError(f"segment_len ({segment_len}) must be a multiple of chunk_size "
                             f"({chunk_size})")
        self._init_common(embed_dim, mlp_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.window, self.segment_len, self.chunk_size = window, segment_len, chunk_size
        self.attn = self._attention(embed_dim, num_heads, num_kv_heads, head_dim, rope_base,
                                    window, window, rngs, dtype, param_dtype)
        self.persistent = PersistentMemory(num_persistent, embed_dim, rngs=rngs,
                                           param_dtype=param_dtype)
        self.memory = NeuralMemory(
            embed_dim, num_heads=memory_heads or num_heads, head_dim=memory_head_dim or head_dim,
            chunk_size=chunk_size, depth=memory_depth, hidden=memory_hidden, max_lr=max_lr,
            conv_kernel=conv_kernel, max_grad_norm=max_grad_norm, rngs=rngs, dtype=dtype,
            param_dtype=param_dtype)

    def init_state(self, batch: int) -> WindowState:
        past = max(self.window - 1, 1)
        cache = jnp.zeros((batch, past, self.embed_dim), self.dtype)
        return WindowState(self.memory.init_state(batch), cache, jnp.zeros((), jnp.int32),
                           jnp.ones((batch, past), jnp.int32))

    def _window_attention(self, x, cache, filled):
        """``_window_attend`` without segment ids: ``(out, new_cache, new_filled)``."""
        cache_ids = jnp.ones(cache.shape[:2], jnp.int32)
        out, cache, filled, _ = self._window_attend(x, cache, filled, cache_ids)
        return out, cache, filled

    def _window_attend(self, x, cache, filled, cache_ids, segment_ids=None):
        """``SW-Attn*([p || x])`` for ``x [B, S, E]`` after the cached tokens.

        Token ``i`` sees every persistent token and the real tokens ``j`` with
        ``i - W < j <= i``; with ``segment_ids [B, S]``, only those of its own document (the
        cached tokens' ids are ``cache_ids``). Returns ``(out [B, S, E], new_cache,
        new_filled, new_cache_ids)``; tokens fed without ids are cached with id 1.
        """
        batch, seg = x.shape[:2]
        past = self.window - 1
        num_p = self.persistent.num_tokens
        keys = jnp.concatenate([self.persistent(batch, x.dtype), _tail(cache, past).astype(x.dtype),
                                x], axis=1)
        index = jnp.arange(-past, seg, dtype=jnp.int32)  # of the cached and new tokens
        query = jnp.arange(seg, dtype=jnp.int32)[:, None]
        visible = (index[None] <= query) & (query - index[None] < self.window)
        visible = visible & (index[None] >= -filled)
        prefix = jnp.ones((seg, num_p), bool)
        if segment_ids is None:
            ids = jnp.ones((batch, seg), jnp.int32)
        else:
            ids = segment_ids.astype(jnp.int32)
            kv_ids = jnp.concatenate([_tail(cache_ids, past), ids], axis=1)
            visible = visible[None] & core.segment_mask(ids, kv_ids)
            prefix = jnp.broadcast_to(prefix[None], (batch, seg, num_p))
        mask = jnp.concatenate([prefix, visible], axis=-1)
        kv_pos = past + index
        out = _attend(self.attn, x, keys, kv_pos[past:], kv_pos, mask, num_p)
        new_cache = _tail(jnp.concatenate([cache, x.astype(cache.dtype)], axis=1), cache.shape[1])
        new_ids = _tail(jnp.concatenate([cache_ids, ids], axis=1), cache_ids.shape[1])
        new_filled = jnp.minimum(filled + seg, past).astype(jnp.int32)
        return out, new_cache, new_filled, new_ids

    def __call__(self, x: jnp.ndarray, state: WindowState | None = None, *,
                 segment_ids: jnp.ndarray | None = None):
        """``x [B, T, d_model]``, ``T`` a multiple of ``chunk_size`` -> ``(y, new_state)``.

        Processed ``segment_len`` tokens at a time (memory ``O(segment_len * (window +
        segment_len))`` for the attention); the outputs do not depend on ``segment_len``.
        Splitting a stream at multiples of ``chunk_size`` and carrying the state gives the same
        outputs as one call (up to float rounding). ``segment_ids [B, T]`` (optional, 0 =
        padding) restricts the window to each token's document, cached tokens included; the
        memory carries over document boundaries (module docstring).
        """
        _check_input(x, self.embed_dim, self.chunk_size, "chunk_size")
        _check_segment_ids(segment_ids, x)
        if state is None:
            state = self.init_state(x.shape[0])
        return _scan_segments(self, x, state, self.segment_len, segment_ids)


_WINDOW_ARGS = """
    Args:
      embed_dim: ``d_model``; num_heads, num_kv_heads, head_dim: the attention's.
      window: ``W``, token ``i`` attends ``i - W < j <= i`` (and the persistent tokens).
      segment_len: tokens per step of the internal scan (default: ``window`` rounded up to a
        multiple of ``chunk_size``); a compute/memory trade-off only.
      num_persistent: ``N_p`` persistent tokens, an always-visible prefix of every window.
""" + _MEMORY_ARGS


class MAGBlock(_WindowBlock):
    """Memory as a gate (paper §4.2, eqs. 26-28).

    ``y = SW-Attn*([p || x])`` (sliding window with the persistent prefix always visible),
    ``m = M(x)`` (the memory read and written over the tokens), and
    ``o = y * sigmoid(norm(m))``: normalisation with a learnable vector, then a sigmoid.
    The persistent tokens enter through the attention only: they are not written into the
    memory (the learned initial memory plays that role, and a stream has no single start to
    prepend them to once it is split).
    """ + _WINDOW_ARGS

    def __init__(self, embed_dim: int, *, param_dtype=jnp.float32, **kwargs):
        super().__init__(embed_dim, param_dtype=param_dtype, **kwargs)
        self.gate_norm = RMSNorm(embed_dim, param_dtype=param_dtype)

    def _segment(self, x, state, segment_ids=None):
        h_in = self.norm(x)
        y, cache, filled, ids = self._window_attend(h_in, state.cache, state.filled,
                                                    state.cache_ids, segment_ids)
        m, memory = self.memory(h_in, state.memory)
        o = y * jax.nn.sigmoid(self.gate_norm(m).astype(jnp.float32)).astype(y.dtype)
        return self._finish(x, o), WindowState(memory, cache, filled, ids)


class MALBlock(_WindowBlock):
    """Memory as a layer (paper §4.3, eqs. 29-31): ``m = M(x)``, then
    ``o = SW-Attn*([p || m])``.

    Unlike the paper, which writes ``[p || x]`` into the memory, the persistent tokens are the
    attention's always-visible prefix here, as in MAG (so that a stream splits freely).
    """ + _WINDOW_ARGS

    def _segment(self, x, state, segment_ids=None):
        h_in = self.norm(x)
        m, memory = self.memory(h_in, state.memory)
        o, cache, filled, ids = self._window_attend(m.astype(h_in.dtype), state.cache,
                                                    state.filled, state.cache_ids, segment_ids)
        return self._finish(x, o), WindowState(memory, cache, filled, ids)


class LMMBlock(_TitansBlock):
    """The long-term memory alone as a sequence model: ``x + NeuralMemory(norm(x))``.

    Args:
      embed_dim: ``d_model``; num_heads, head_dim: the memory's heads.
      chunk_size: memory mini-batch ``b``; ``T`` must be a multiple.
      depth, hidden, max_lr, conv_kernel, max_grad_norm: ``NeuralMemory``'s.
      mlp_dim: width of a SwiGLU MLP sub-block; ``None`` for none.
    """

    def __init__(self, embed_dim: int, *, num_heads: int, head_dim: int, chunk_size: int,
                 depth: int = 2, hidden: int | None = None, max_lr: float = 0.1,
                 conv_kernel: int = 4, max_grad_norm: float | None = None,
                 mlp_dim: int | None = None, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        self._init_common(embed_dim, mlp_dim, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.memory = NeuralMemory(embed_dim, num_heads=num_heads, head_dim=head_dim,
                                   chunk_size=chunk_size, depth=depth, hidden=hidden,
                                   max_lr=max_lr, conv_kernel=conv_kernel,
                                   max_grad_norm=max_grad_norm, rngs=rngs, dtype=dtype,
                                   param_dtype=param_dtype)

    def init_state(self, batch: int) -> NeuralMemoryState:
        return self.memory.init_state(batch)

    def __call__(self, x: jnp.ndarray, state: NeuralMemoryState | None = None, *,
                 segment_ids: jnp.ndarray | None = None):
        """``x [B, T, d_model]``, ``T`` a multiple of ``chunk_size`` -> ``(y, new_state)``;
        splitting at multiples of ``chunk_size`` with the state carried equals one call.

        ``segment_ids`` is accepted for a uniform interface and checked, but has no effect:
        without attention nothing is masked, and the memory is a recurrent state that carries
        over document boundaries (module docstring).
        """
        _check_input(x, self.embed_dim, self.memory.chunk_size, "chunk_size")
        _check_segment_ids(segment_ids, x)
        m, state = self.memory(self.norm(x), state)
        return self._finish(x, m), state


# Titans inside a TransformerLM.

ARCHS = ("mac", "mag", "mal", "lmm")
"""Architectures ``TitansConfig.arch`` accepts: memory as context, gate, layer, or alone."""


@dataclasses.dataclass(frozen=True)
class TitansConfig:
    """The Titans layers of a ``TransformerLM`` (``TransformerConfig.titans``).

    Every layer is a block of architecture ``arch`` (with the LM's ``mlp_dim`` SwiGLU after
    the mixer), attention heads and RoPE base from the ``TransformerConfig``:

    - ``"mac"``: ``MACBlock``, memory as context (paper §4.1), attention inside segments of
      ``segment_len`` tokens; inputs must be a multiple of ``segment_len``.
    - ``"mag"``: ``MAGBlock``, memory as gate (§4.2), sliding-window attention of ``window``.
    - ``"mal"``: ``MALBlock``, memory as layer (§4.3), sliding-window attention of ``window``.
    - ``"lmm"``: ``LMMBlock``, the memory alone (no attention).

    MAG, MAL and LMM take inputs that are a multiple of ``chunk_size`` (see ``multiple``).

    Attributes:
      arch: one of ``ARCHS``.
      chunk_size: memory mini-batch ``b`` (paper §3.2); ``segment_len`` must be a multiple.
      segment_len: MAC's attention segment ``C`` (required for MAC); for MAG and MAL the scan
        step only (default: ``window`` rounded up to a multiple of ``chunk_size``); not used
        by LMM (must stay ``None``).
      window: MAG's and MAL's attention window ``W`` (required for them, ``None`` otherwise).
      num_persistent: ``N_p`` persistent tokens of MAC, MAG, MAL (default 4; ``None`` for
        LMM).
      memory_depth, memory_hidden: memory MLP depth ``L_M`` and width (default ``4 * D``).
      memory_heads, memory_head_dim: memory heads and dimension (default: the attention's).
      max_lr: largest memory step size ``theta``.
      conv_kernel: kernel of the memory's causal depthwise convolutions.
      max_grad_norm: ``None`` (default, the paper's rule) or a float ``> 0``: clip every token's
        inner-loop gradient of every memory layer to this Frobenius norm (``neural_memory``).

    Defaults (our choice) favour a stable memory: the chunked update is heavy-ball gradient
    descent with every gradient of a chunk taken at the chunk's start, so ``b`` similar keys
    act like one step of roughly ``b * theta / (1 - eta)``, and a deep memory's curvature
    grows with its weights. On the byte corpus, chunks of 16 or ``max_lr=0.1`` let some
    layers' memories diverge within a few training steps (non-finite gradients, while the
    output normalisation still hid it in the loss); chunks of 8 with ``max_lr=0.01`` did not.
    The divergence is the chunked rule's, not rounding (``jaxattn.attention.titans``,
    "Stability"); ``max_grad_norm`` bounds it when larger chunks or step sizes are wanted.
    """

    arch: str
    chunk_size: int = 8
    segment_len: int | None = None
    window: int | None = None
    num_persistent: int | None = None
    memory_depth: int = 2
    memory_hidden: int | None = None
    memory_heads: int | None = None
    memory_head_dim: int | None = None
    max_lr: float = 0.01
    conv_kernel: int = 4
    max_grad_norm: float | None = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"model.titans.arch must be one of {', '.join(ARCHS)}, got "
                             f"{self.arch!r}")

        def positive(name, required=False):
            value = getattr(self, name)
            if value is None and not required:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                need = " (required for arch " + repr(self.arch) + ")" if required else ""
                raise ValueError(f"model.titans.{name} must be a positive int{need}, got "
                                 f"{value!r}")

        def unused(name):
            if getattr(self, name) is not None:
                raise ValueError(f"model.titans.{name} is not used by arch {self.arch!r}; "
                                 f"leave it unset (None), got {getattr(self, name)!r}")

        for name in ("chunk_size", "memory_depth", "conv_kernel"):
            positive(name, required=True)
        for name in ("memory_hidden", "memory_heads", "memory_head_dim"):
            positive(name)
        if not (isinstance(self.max_lr, (int, float)) and not isinstance(self.max_lr, bool)
                and math.isfinite(self.max_lr) and self.max_lr > 0):
            raise ValueError(f"model.titans.max_lr must be a positive finite float, got "
                             f"{self.max_lr!r}")
        try:
            check_max_grad_norm(self.max_grad_norm)
        except ValueError as e:
            raise ValueError(f"model.titans.{e}") from None
        if self.arch == "lmm":
            for name in ("segment_len", "window", "num_persistent"):
                unused(name)
            return
        if self.num_persistent is None:
            object.__setattr__(self, "num_persistent", 4)
        if not isinstance(self.num_persistent, int) or isinstance(self.num_persistent, bool) \
                or self.num_persistent < 0:
            raise ValueError(f"model.titans.num_persistent must be an int >= 0, got "
                             f"{self.num_persistent!r}")
        if self.arch == "mac":
            unused("window")
            positive("segment_len", required=True)
        else:
            positive("window", required=True)
            if self.segment_len is None:
                object.__setattr__(self, "segment_len",
                                   self.chunk_size * -(-self.window // self.chunk_size))
            positive("segment_len")
        if self.segment_len % self.chunk_size:
            raise ValueError(f"model.titans.segment_len ({self.segment_len}) must be a multiple "
                             f"of model.titans.chunk_size ({self.chunk_size})")

    @property
    def multiple_name(self) -> str:
        """The field whose value input lengths must be a multiple of."""
        return "segment_len" if self.arch == "mac" else "chunk_size"

    @property
    def multiple(self) -> int:
        """Input lengths (and stream pieces) must be multiples of this: ``segment_len`` for
        MAC, ``chunk_size`` otherwise."""
        return getattr(self, self.multiple_name)

    def check_length(self, name: str, length: int,
                     advice: str = "pad to {padded} or split the stream at multiples of it"
                     ) -> None:
        """Raises ``ValueError`` naming ``name`` unless ``length`` is a positive multiple of
        ``multiple``; ``advice`` (formatted with ``padded``, the next multiple) ends it."""
        m = self.multiple
        if length < 1 or length % m:
            padded = max(m, -(-length // m) * m)
            what = "segments" if self.arch == "mac" else "memory chunks"
            raise ValueError(
                f"{name}: sequence length {length} is not a positive multiple of "
                f"model.titans.{self.multiple_name}={m} (the {self.arch.upper()} layers "
                f"process whole {what}); " + advice.format(padded=padded))


def make_block(titans: TitansConfig, *, embed_dim: int, num_heads: int, num_kv_heads: int,
               head_dim: int, mlp_dim: int | None, rope_base: float, rngs: nnx.Rngs,
               dtype=jnp.float32, param_dtype=jnp.float32):
    """One Titans block of ``titans.arch`` with the attention shape of the LM around it."""
    if not isinstance(titans, TitansConfig):
        raise ValueError(f"titans must be a TitansConfig, got {type(titans).__name__}")
    common = dict(mlp_dim=mlp_dim, max_lr=titans.max_lr, conv_kernel=titans.conv_kernel,
                  max_grad_norm=titans.max_grad_norm, rngs=rngs, dtype=dtype,
                  param_dtype=param_dtype)
    if titans.arch == "lmm":
        return LMMBlock(embed_dim, num_heads=titans.memory_heads or num_heads,
                        head_dim=titans.memory_head_dim or head_dim,
                        chunk_size=titans.chunk_size, depth=titans.memory_depth,
                        hidden=titans.memory_hidden, **common)
    attention = dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                     chunk_size=titans.chunk_size, segment_len=titans.segment_len,
                     num_persistent=titans.num_persistent, memory_heads=titans.memory_heads,
                     memory_head_dim=titans.memory_head_dim, memory_depth=titans.memory_depth,
                     memory_hidden=titans.memory_hidden, rope_base=rope_base, **common)
    if titans.arch == "mac":
        return MACBlock(embed_dim, **attention)
    cls = MAGBlock if titans.arch == "mag" else MALBlock
    return cls(embed_dim, window=titans.window, **attention)
