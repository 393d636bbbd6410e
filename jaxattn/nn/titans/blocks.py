"""Titans blocks as Flax NNX modules (Behrouz, Zhong & Mirrokni 2025, arXiv 2501.00663).

Blocks ``[B, T, d_model] -> [B, T, d_model]``, pre-norm and residual
(``x + mixer(norm(x))``, then ``x + SwiGLU(norm(x))`` when ``mlp_dim`` is set), each carrying
an explicit state pytree in and out so that a stream runs segment by segment in constant
memory: ``MACBlock`` (memory as context, §4.1), ``MAGBlock`` (memory as gate, §4.2),
``MALBlock`` (memory as layer, §4.3) and ``LMMBlock`` (the memory alone). ``make_block``
builds the block a ``TitansConfig`` names, with the attention shape of the LM around it.

Causality: every output depends only on the current and past tokens. The memory reads the
memory at the start of the token's chunk (``neural_memory``), the convolutions are causal,
and the attention masks are causal; in MAC a segment token sees the retrieved token ``h_j``
only for ``j <= i`` (``h_j`` is read with token ``j``'s query, so it carries token ``j``).

The attention of the blocks uses the projections, RoPE and output projection of an
``Attention`` module (kind ``"dense"``), with the masks the architectures need (an always
visible persistent prefix; retrieved tokens aligned with the segment) built here and applied
by ``masked_attention.attend``, since the registry's options cannot express them. Softmax
only (no SSMax). Persistent tokens carry no RoPE position, so what a query reads from them
does not depend on its place in the stream; the other tokens' positions are relative to the
segment (MAC) or to the cached window (MAG, MAL).

Packed documents (``segment_ids``, as ``jaxattn.data`` builds them, 0 = padding): the
attention of every block masks by segment id (a token sees the tokens of its own document,
and the always-visible persistent tokens; the window caches of MAG and MAL carry the ids of
the cached tokens across calls; a padding query, id 0, sees only the persistent tokens). The
memory, its causal convolutions and its gates are a recurrent state and are *not* reset at a
document boundary: a document starting inside a sequence (or a stream) reads and writes the
memory left by the documents before it, exactly as a stream does across calls. Reset it by
starting a new state (``init_state``).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxattn.attention import core
from jaxattn.nn.attention import Attention, AttentionSpec
from jaxattn.nn.layers import RMSNorm, SwiGLU
from jaxattn.nn.titans.config import TitansConfig
from jaxattn.nn.titans.masked_attention import attend
from jaxattn.nn.titans.memory import NeuralMemory, NeuralMemoryState, PersistentMemory
from jaxattn.nn.titans.sequence import (check_input, check_int, check_segment_ids,
                                        scan_segments, tail)


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


class _TitansBlock(nnx.Module):
    """Pre-norm residual block around a Titans mixer; subclasses define ``_segment``."""

    def _init_common(self, embed_dim, mlp_dim, *, rngs, dtype, param_dtype):
        check_int("embed_dim", embed_dim, 1)
        self.embed_dim = embed_dim
        self.dtype = dtype
        self.norm = RMSNorm(embed_dim, param_dtype=param_dtype)
        if mlp_dim is None:
            self.mlp_norm, self.mlp = None, None
        else:
            check_int("mlp_dim", mlp_dim, 1)
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
        check_int("segment_len", segment_len, 1)
        check_int("chunk_size", chunk_size, 1)
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
        y = attend(self.attn, h_in, context, kv_pos[seg:], kv_pos, mask, num_p)
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
        check_input(x, self.embed_dim, self.segment_len, "segment_len")
        check_segment_ids(segment_ids, x)
        if state is None:
            state = self.init_state(x.shape[0])
        return scan_segments(self, x, state, self.segment_len, segment_ids)


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
        check_int("window", window, 1)
        check_int("chunk_size", chunk_size, 1)
        if segment_len is None:
            segment_len = chunk_size * max(1, -(-window // chunk_size))
        check_int("segment_len", segment_len, 1)
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
        keys = jnp.concatenate([self.persistent(batch, x.dtype), tail(cache, past).astype(x.dtype),
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
            kv_ids = jnp.concatenate([tail(cache_ids, past), ids], axis=1)
            visible = visible[None] & core.segment_mask(ids, kv_ids)
            prefix = jnp.broadcast_to(prefix[None], (batch, seg, num_p))
        mask = jnp.concatenate([prefix, visible], axis=-1)
        kv_pos = past + index
        out = attend(self.attn, x, keys, kv_pos[past:], kv_pos, mask, num_p)
        new_cache = tail(jnp.concatenate([cache, x.astype(cache.dtype)], axis=1), cache.shape[1])
        new_ids = tail(jnp.concatenate([cache_ids, ids], axis=1), cache_ids.shape[1])
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
        check_input(x, self.embed_dim, self.chunk_size, "chunk_size")
        check_segment_ids(segment_ids, x)
        if state is None:
            state = self.init_state(x.shape[0])
        return scan_segments(self, x, state, self.segment_len, segment_ids)


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
        check_input(x, self.embed_dim, self.memory.chunk_size, "chunk_size")
        check_segment_ids(segment_ids, x)
        m, state = self.memory(self.norm(x), state)
        return self._finish(x, m), state


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
