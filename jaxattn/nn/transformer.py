"""``TransformerLM``: a decoder-only language model whose attention is chosen per layer.

Pre-norm blocks (RMSNorm), RoPE, SwiGLU MLPs, tied or untied embeddings
(the LLaMA recipe). ``tokens [batch, seq] -> logits [batch, seq, vocab]`` in float32.
"""

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxattn.attention import landmark as landmark_lib
from jaxattn.data.tokenizer import RESERVED_ID
from jaxattn.nn.attention import Attention, AttentionSpec
from jaxattn.nn.init import logical_param, partitioned
from jaxattn.nn.layers import RMSNorm, SwiGLU

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Shape of a ``TransformerLM``; ``attention`` holds one ``AttentionSpec`` per layer."""

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
        self.blocks = nnx.List([Block(cfg, spec, rngs=rngs) for spec in cfg.attention])
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
