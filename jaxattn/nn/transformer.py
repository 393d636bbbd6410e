"""``TransformerLM``: a decoder-only language model whose attention is chosen per layer.

Pre-norm blocks (RMSNorm), RoPE, SwiGLU MLPs, tied or untied embeddings
(the LLaMA recipe). ``tokens [batch, seq] -> logits [batch, seq, vocab]`` in float32.

With ``TransformerConfig.titans`` set, every layer is a Titans block of that architecture
(Behrouz, Zhong & Mirrokni 2025: memory as context, gate or layer, or the memory alone; see
``jaxattn.nn.titans``) instead of an attention ``Block``; embeddings, final norm and the
(tied) unembedding are shared. ``__call__`` runs each sequence from a fresh memory, for
training; ``stream`` carries every layer's memory (and window caches) across calls, so a
stream of any length runs in constant memory (``jaxattn.inference.titans.TitansStream`` wraps
it with buffering and generation).
"""

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxattn.attention import kv_cache as kv_cache_lib
from jaxattn.attention import landmark as landmark_lib
from jaxattn.data.tokenizer import RESERVED_ID
from jaxattn.nn.attention import Attention, AttentionSpec
from jaxattn.nn.init import logical_param, partitioned
from jaxattn.nn.layers import RMSNorm, SwiGLU
from jaxattn.nn.titans import TitansConfig, make_block

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Shape of a ``TransformerLM``; ``attention`` holds one ``AttentionSpec`` per layer.

    ``titans``: a ``TitansConfig`` makes every layer a Titans block of its architecture. Those
    blocks bring their own causal softmax attention (segment or sliding-window masks with
    persistent tokens), so ``attention`` must then hold plain causal dense specs (the
    builders' default), and ``dropout_rate`` must be 0.
    """

    vocab_size: int
    num_layers: int
    embed_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    attention: Sequence[AttentionSpec]
    train_len: int
    rope_base: float = 10_000.0
    ssmax_init: float | None = None
    tie_embeddings: bool = True
    dropout_rate: float = 0.0
    dtype: str = "float32"
    landmark_id: int = RESERVED_ID
    titans: TitansConfig | None = None

    def __post_init__(self):
        for name in ("vocab_size", "num_layers", "embed_dim", "num_heads", "num_kv_heads",
                     "head_dim", "mlp_dim", "train_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"model.{name} must be a positive int, got {value!r}")
        if len(self.attention) != self.num_layers:
            raise ValueError(f"attention must hold one AttentionSpec per layer "
                             f"({self.num_layers}), got {len(self.attention)}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"model.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        globals_per_layer = {getattr(spec.options, "num_global_tokens", 0)
                             for spec in self.attention}
        if len(globals_per_layer) > 1:
            raise ValueError(
                "num_global_tokens > 0 needs every layer to use the same number of global "
                f"tokens (LSG layers throughout), got {sorted(globals_per_layer)} across "
                "layers; use num_global_tokens=0 to mix LSG with other kinds")
        landmark = {spec.options for spec in self.attention if spec.kind == "landmark"}
        if len(landmark) > 1:
            raise ValueError(
                "landmark layers must share their options (one landmark token stream for the "
                f"whole model: mem_freq, causal, softmax, landmark_in_loss), got "
                f"{sorted(map(repr, landmark))}")
        if landmark and not 0 <= self.landmark_id < self.vocab_size:
            raise ValueError(f"model.landmark_id must be a token id in [0, {self.vocab_size}), "
                             f"got {self.landmark_id!r}")
        if self.titans is not None:
            self._check_titans()

    def _check_titans(self):
        if not isinstance(self.titans, TitansConfig):
            raise ValueError(f"model.titans must be a TitansConfig or None, got "
                             f"{type(self.titans).__name__}")
        plain = AttentionSpec.create("dense")
        odd = sorted({repr(spec) for spec in self.attention
                      if (spec.kind, spec.options) != (plain.kind, plain.options)})
        if odd:
            raise ValueError(
                f"model.titans (arch {self.titans.arch!r}) layers bring their own causal softmax "
                f"attention, so config.attention must stay the plain causal dense kind (no "
                f"window, softmax or other kinds; set the window with model.titans.window), "
                f"got {', '.join(odd)}")
        if self.dropout_rate:
            raise ValueError(f"model.dropout_rate must be 0 with model.titans (the Titans "
                             f"blocks have no dropout), got {self.dropout_rate}")

    @property
    def num_global_tokens(self) -> int:
        """Learned global tokens prepended to the sequence (LSG), 0 for other kinds."""
        return getattr(self.attention[0].options, "num_global_tokens", 0)

    @property
    def landmark(self):
        """The ``LandmarkOptions`` of the landmark layers, or ``None`` without any."""
        for spec in self.attention:
            if spec.kind == "landmark":
                return spec.options
        return None

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]


def _dropout(x, rate, rng):
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Block(nnx.Module):
    """``x + Attn(norm(x))`` then ``x + MLP(norm(x))``."""

    def __init__(self, cfg: TransformerConfig, spec: AttentionSpec, *, rngs: nnx.Rngs):
        dtype = cfg.compute_dtype
        self.dropout_rate = cfg.dropout_rate
        self.attn_norm = RMSNorm(cfg.embed_dim)
        self.attn = Attention(
            cfg.embed_dim, num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim, spec=spec, train_len=cfg.train_len, rope_base=cfg.rope_base,
            ssmax_init=cfg.ssmax_init, rngs=rngs, dtype=dtype)
        self.mlp_norm = RMSNorm(cfg.embed_dim)
        self.mlp = SwiGLU(cfg.embed_dim, cfg.mlp_dim, rngs=rngs, dtype=dtype)

    def __call__(self, x, *, positions, segment_ids, rng=None, train=False):
        rngs = (None, None) if rng is None else tuple(jax.random.split(rng))
        h = self.attn(self.attn_norm(x), positions=positions, segment_ids=segment_ids,
                      train=train)
        x = x + _dropout(h, self.dropout_rate, rngs[0])
        h = self.mlp(self.mlp_norm(x))
        return x + _dropout(h, self.dropout_rate, rngs[1])

    def decode(self, x, cache, *, positions):
        """The block on a chunk against its attention's ``KVCache`` (no dropout);
        ``(x [B, C, embed], cache)``, see ``Attention.decode``."""
        h, cache = self.attn.decode(self.attn_norm(x), cache, positions=positions)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), cache


class TransformerLM(nnx.Module):
    """Decoder-only LM. ``tokens [batch, seq] int32 -> logits [batch, seq, vocab] float32``."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(
            cfg.vocab_size, cfg.embed_dim, dtype=cfg.compute_dtype,
            embedding_init=partitioned(("vocab", "embed"), nnx.initializers.normal(0.02)),
            rngs=rngs)
        if cfg.num_global_tokens:
            self.global_tokens = logical_param(
                nnx.initializers.normal(0.02)(rngs.params(), (cfg.num_global_tokens,
                                                              cfg.embed_dim)),
                (None, "embed"))
        else:
            self.global_tokens = None
        if cfg.titans is None:
            self.blocks = nnx.List([Block(cfg, spec, rngs=rngs) for spec in cfg.attention])
        else:
            self.blocks = nnx.List([
                make_block(cfg.titans, embed_dim=cfg.embed_dim, num_heads=cfg.num_heads,
                           num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                           mlp_dim=cfg.mlp_dim, rope_base=cfg.rope_base, rngs=rngs,
                           dtype=cfg.compute_dtype)
                for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.embed_dim)
        if cfg.tie_embeddings:
            self.unembed = None
        else:
            self.unembed = nnx.Linear(
                cfg.embed_dim, cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                kernel_init=partitioned(("embed", "vocab")), rngs=rngs)

    def __call__(self, tokens: jnp.ndarray, *, positions: jnp.ndarray | None = None,
                 segment_ids: jnp.ndarray | None = None, rng: jax.Array | None = None,
                 train: bool = False, keep_landmarks: bool = False):
        """Logits for next-token prediction, ``[batch, seq, vocab]`` float32.

        Args:
          tokens: ``[batch, seq]`` int token ids.
          positions: ``[batch, seq]`` RoPE positions; default ``0 .. seq-1``.
          segment_ids: ``[batch, seq]`` document ids of packed sequences (0 = padding).
          rng: dropout key; ``None`` runs deterministically.
          train: update stateful attention (routing centroids) and sow auxiliary losses.
          keep_landmarks: with landmark layers, return the logits of the landmark positions
            too, ``[batch, seq + seq // mem_freq, vocab]`` (for ``landmark_lm_targets``).

        With Titans layers (``cfg.titans``) every sequence starts from the learned initial
        memory (use ``stream`` to carry it), ``seq`` must be a multiple of
        ``cfg.titans.multiple`` (``segment_len`` for MAC, ``chunk_size`` otherwise), and
        ``positions`` is not used: the blocks' RoPE positions are relative to the segment or
        the window, which gives the same logits for contiguous positions. With
        ``segment_ids`` the attention stays within each document, but the memory (a
        recurrent state) carries over document boundaries inside a sequence: a packed
        document reads what the documents before it wrote.
        """
        hidden = self.encode(tokens, positions=positions, segment_ids=segment_ids, rng=rng,
                             train=train, keep_landmarks=keep_landmarks)
        return self.logits(hidden[:, self.cfg.num_global_tokens:])

    def logits(self, hidden: jnp.ndarray) -> jnp.ndarray:
        """Final-normalised hidden states ``[..., embed]`` -> float32 logits ``[..., vocab]``."""
        if self.unembed is None:
            logits = self.embed.attend(hidden)
        else:
            logits = self.unembed(hidden)
        return logits.astype(jnp.float32)

    def encode(self, tokens: jnp.ndarray, *, positions: jnp.ndarray | None = None,
               segment_ids: jnp.ndarray | None = None, rng: jax.Array | None = None,
               train: bool = False, keep_landmarks: bool = False) -> jnp.ndarray:
        """Final-normalised hidden states ``[batch, num_global_tokens + seq, embed]``, the
        global tokens (if any) first. Arguments as in ``__call__``.

        With landmark layers (Mohtashami & Jaggi 2023) the model inserts the landmark token
        (``cfg.landmark_id``, its own embedding row) after every ``mem_freq`` tokens, at the
        positions and segments of ``landmark.landmark_layout``, so ``seq`` must be a multiple
        of ``mem_freq`` and documents must start at multiples of it; the landmark states are
        dropped again unless ``keep_landmarks``.
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
        if self.cfg.titans is not None:
            return self._titans_encode(tokens, None, segment_ids)[0]
        batch, seq = tokens.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        x = self.embed(tokens)
        landmark = self.cfg.landmark
        if landmark is not None:
            x, positions, segment_ids = self._insert_landmarks(x, positions, segment_ids,
                                                               landmark.mem_freq)
        if self.global_tokens is not None:
            x, positions, segment_ids = self._prepend_globals(x, positions, segment_ids)
        layer_rngs = [None] * len(self.blocks) if rng is None else list(
            jax.random.split(rng, len(self.blocks)))
        for block, layer_rng in zip(self.blocks, layer_rngs):
            x = block(x, positions=positions, segment_ids=segment_ids, rng=layer_rng,
                      train=train)
        x = self.final_norm(x)
        if landmark is not None and not keep_landmarks:
            x = landmark_lib.drop_landmarks(x, landmark.mem_freq)
        return x

    # KV-cache decoding.

    def check_kv_cache(self) -> None:
        """``ValueError`` unless every layer can decode from a ``KVCache``: causal dense,
        ssmax, local, LSG or routing (``assignment="argmax"``) attention (no Titans or
        landmark layers)."""
        if self.cfg.titans is not None:
            raise ValueError(f"a Titans model (model.titans arch {self.cfg.titans.arch!r}) "
                             f"decodes through TransformerLM.stream / TitansStream, not a "
                             f"KV cache")
        for index, spec in enumerate(self.cfg.attention):
            try:
                kv_cache_lib.check_decodable(spec.kind, spec.options)
            except ValueError as e:
                raise ValueError(f"layer {index}: {e}") from None

    def init_kv_cache(self, batch: int, capacity: int) -> tuple:
        """Per-layer ``KVCache``s with room for ``capacity`` ordinary tokens.

        With LSG global tokens the first ``num_global_tokens`` slots of every layer hold
        the global tokens' keys and values (at position 0, as in ``encode``); they are run
        through the model here, so the caches come back with ``length = num_global_tokens``.
        Routing layers' caches also keep each slot's cluster per routing head.
        """
        self.check_kv_cache()
        for name, value in (("batch", batch), ("capacity", capacity)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        cfg = self.cfg
        num_global = cfg.num_global_tokens
        caches = tuple(
            kv_cache_lib.init_cache(
                batch, num_global + capacity, cfg.num_kv_heads, cfg.head_dim,
                dtype=cfg.compute_dtype,
                bos_heads=cfg.num_heads if kv_cache_lib.needs_bos_query(spec.kind,
                                                                        spec.options) else 0,
                cluster_heads=kv_cache_lib.cluster_heads(spec.kind, spec.options,
                                                         cfg.num_heads))
            for spec in cfg.attention)
        if num_global:
            x = jnp.broadcast_to(self.global_tokens[...].astype(cfg.compute_dtype)[None],
                                 (batch, num_global, cfg.embed_dim))
            positions = jnp.zeros((batch, num_global), jnp.int32)
            _, caches = self._decode_hidden(x, positions, caches, num_global)
        return caches

    def decode_chunk(self, tokens: jnp.ndarray, caches: tuple, *, num_valid=None):
        """Runs the next ``C`` tokens of a sequence against per-layer caches.

        Args:
          tokens: ``[batch, C]`` int ids of ordinary positions ``[n, n + C)``, ``n`` the
            ordinary tokens already in the caches.
          caches: what ``init_kv_cache`` or the previous call returned.
          num_valid: how many of the ``C`` tokens are real (int or int32 scalar, default
            ``C``): the caches advance by that many, so trailing padding is overwritten by the
            next call and never seen by a real token.

        Returns:
          ``(logits [batch, C, vocab] float32, caches)``: the logits of the full forward at
          those positions (up to float rounding).
        """
        self.check_kv_cache()
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, chunk], got shape {tokens.shape}")
        if not isinstance(caches, (tuple, list)) or len(caches) != len(self.blocks):
            raise ValueError(f"caches must hold one KVCache per layer ({len(self.blocks)}), as "
                             f"init_kv_cache returns them, got {type(caches).__name__}")
        batch, chunk = tokens.shape
        start = caches[0].length - self.cfg.num_global_tokens
        positions = jnp.broadcast_to(start + jnp.arange(chunk, dtype=jnp.int32), (batch, chunk))
        hidden, caches = self._decode_hidden(self.embed(tokens), positions, caches,
                                             chunk if num_valid is None else num_valid)
        return self.logits(self.final_norm(hidden)), caches

    def _decode_hidden(self, x, positions, caches, num_valid):
        new_caches = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block.decode(x, cache, positions=positions)
            new_caches.append(kv_cache_lib.advance(cache, num_valid))
        return x, tuple(new_caches)

    # Titans.

    def init_stream_state(self, batch: int) -> tuple:
        """A Titans model's state at the start of a stream: one block state per layer (the
        learned initial memory, zero momentum, empty convolution and window caches)."""
        self._require_titans("init_stream_state")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        return tuple(block.init_state(batch) for block in self.blocks)

    def stream(self, tokens: jnp.ndarray, state: tuple | None = None, *,
               segment_ids: jnp.ndarray | None = None):
        """Runs the next piece of a stream through a Titans model.

        Args:
          tokens: ``[batch, seq]`` int ids, ``seq`` a multiple of ``cfg.titans.multiple``
            (``segment_len`` for MAC, ``chunk_size`` otherwise).
          state: what the previous call returned, or ``None`` (``init_stream_state``).
          segment_ids: optional ``[batch, seq]`` document ids (0 = padding): attention stays
            within a document (also across calls, through the window caches); the memory
            carries over boundaries. ``None``: one document.

        Returns:
          ``(logits [batch, seq, vocab] float32, new_state)``. Feeding a sequence in pieces
          (each a multiple of ``cfg.titans.multiple``) gives the logits of one call over the
          whole sequence (up to float rounding), with a state whose size does not depend on
          how many tokens were seen.
        """
        self._require_titans("stream")
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {tokens.shape}")
        hidden, state = self._titans_encode(tokens, state, segment_ids)
        return self.logits(hidden), state

    def _require_titans(self, what):
        if self.cfg.titans is None:
            raise ValueError(f"TransformerLM.{what} needs Titans layers (model.titans); this "
                             f"model has attention blocks of kinds "
                             f"{sorted({spec.kind for spec in self.cfg.attention})}")

    def _titans_encode(self, tokens, state, segment_ids):
        """``(final-normalised hidden [B, T, E], new per-layer states)``."""
        batch, seq = tokens.shape
        self.cfg.titans.check_length(
            "tokens", seq, "pad to {padded}, or feed a stream of any length through "
            "jaxattn.inference.titans.TitansStream, which buffers partial pieces")
        if state is None:
            state = self.init_stream_state(batch)
        if not isinstance(state, (tuple, list)) or len(state) != len(self.blocks):
            raise ValueError(f"state must hold one block state per layer ({len(self.blocks)}), "
                             f"as init_stream_state or stream returns it, got "
                             f"{type(state).__name__}")
        x = self.embed(tokens)
        new_state = []
        for block, layer_state in zip(self.blocks, state):
            x, layer_state = block(x, layer_state, segment_ids=segment_ids)
            new_state.append(layer_state)
        return self.final_norm(x), tuple(new_state)

    def _insert_landmarks(self, x, positions, segment_ids, mem_freq):
        landmark_lib.check_mem_freq_multiple("tokens", x.shape[1], mem_freq)
        batch, num_blocks = x.shape[0], x.shape[1] // mem_freq
        marks = self.embed(jnp.full((batch, num_blocks), self.cfg.landmark_id, jnp.int32))
        x = landmark_lib.interleave_blocks(x, marks, mem_freq)
        positions, segment_ids = landmark_lib.landmark_layout(positions, segment_ids, mem_freq)
        return x, positions, segment_ids

    def _prepend_globals(self, x, positions, segment_ids):
        """LSG's global tokens (Condevaux & Harispe 2022): learned embeddings before the
        sequence, at position 0; their segment ids are ignored by LSG attention."""
        batch, num_global = x.shape[0], self.cfg.num_global_tokens
        globals_ = jnp.broadcast_to(self.global_tokens[...].astype(x.dtype)[None],
                                    (batch, num_global, x.shape[-1]))
        x = jnp.concatenate([globals_, x], axis=1)
        positions = jnp.concatenate(
            [jnp.zeros((batch, num_global), positions.dtype), positions], axis=1)
        if segment_ids is not None:
            segment_ids = jnp.concatenate(
                [jnp.ones((batch, num_global), segment_ids.dtype), segment_ids], axis=1)
        return x, positions, segment_ids
