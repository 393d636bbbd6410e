"""``Attention``: the Flax NNX module around every attention variant of the registry.

Projects ``x [batch, seq, embed]`` to ``q [batch, seq, heads, head_dim]`` and
``k, v [batch, seq, kv_heads, head_dim]`` (GQA when ``kv_heads < heads``), applies RoPE,
calls the variant's pure function chosen by ``spec.kind`` and projects back to ``embed``.
SSMax variants own a learnable per-head ``s`` (Nakanishi 2025, eq. 1).
"""

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxattn.attention import backends
from jaxattn.attention import kv_cache as kv_cache_lib
from jaxattn.attention import registry
from jaxattn.attention.rope import apply_rope
from jaxattn.attention.ssmax import ssmax_init_value
from jaxattn.nn.init import logical_param, partitioned, zeros_init


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """A variant name, its validated options (``registry.make_options``) and the backend
    that runs it (``implementation``: ``None`` for the platform's choice, or one of
    ``backends.BACKENDS``; see ``jaxattn.attention.backends``)."""

    kind: str
    options: Any
    implementation: str | None = None

    def __post_init__(self):
        backends.check_implementation(self.implementation)

    @classmethod
    def create(cls, kind: str, *, implementation: str | None = None,
               **options) -> "AttentionSpec":
        return cls(kind, registry.make_options(kind, **options), implementation)

    @property
    def uses_ssmax(self) -> bool:
        return getattr(self.options, "softmax", "softmax") == "ssmax"


class AttentionState(nnx.Variable):
    """Non-trainable state of a stateful attention kind (e.g. routing centroids).

    Updated in training forward passes, never by the optimizer; saved in checkpoints with the
    rest of the train state.
    """


class Attention(nnx.Module):
    """Multi-head (grouped-query) self-attention with a variant chosen by ``spec``."""

    def __init__(self, embed_dim: int, *, num_heads: int, num_kv_heads: int, head_dim: int,
                 spec: AttentionSpec, train_len: int, rope_base: float = 10_000.0,
                 ssmax_init: float | None = None, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        variant = registry.get_variant(spec.kind)  # fails early, listing the valid kinds
        self.spec = spec
        self.shared_qk = bool(getattr(spec.options, "shared_qk", False))
        if self.shared_qk and num_kv_heads != num_heads:
            raise ValueError(f"attention kind {spec.kind!r} with shared_qk=True needs "
                             f"num_kv_heads == num_heads ({num_heads}), got {num_kv_heads}")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_base = rope_base
        self.train_len = train_len
        dense = lambda i, o, names, init=None: nnx.Linear(
            i, o, use_bias=False, dtype=dtype, param_dtype=param_dtype,
            kernel_init=partitioned(names, init), rngs=rngs)
        self.query = dense(embed_dim, num_heads * head_dim, ("embed", "heads"))
        # With shared QK (routing attention's causal setting) the keys are the queries.
        self.key = None if self.shared_qk else dense(embed_dim, num_kv_heads * head_dim,
                                                     ("embed", "kv_heads"))
        self.value = dense(embed_dim, num_kv_heads * head_dim, ("embed", "kv_heads"))
        self.out = dense(num_heads * head_dim, embed_dim, ("heads", "embed"), zeros_init())
        if spec.uses_ssmax:
            s0 = ssmax_init if ssmax_init is not None else ssmax_init_value(train_len)
            if not (isinstance(s0, (int, float)) and math.isfinite(s0) and s0 > 0):
                raise ValueError(f"ssmax_init must be a positive finite float, got {s0!r}")
            self.ssmax_s = logical_param(jnp.full((num_heads,), s0, param_dtype), ("heads",))
        else:
            self.ssmax_s = None
        if variant.stateful:
            self.state = AttentionState(variant.init_state(
                spec.options, num_heads=num_heads, head_dim=head_dim, key=rngs.params()))
        else:
            self.state = None

    def __call__(self, x: jnp.ndarray, *, positions: jnp.ndarray,
                 segment_ids: jnp.ndarray | None = None, train: bool = False) -> jnp.ndarray:
        """``x [batch, seq, embed]``, ``positions``/``segment_ids [batch, seq]`` -> ``[batch, seq, embed]``.

        With ``train=True`` a stateful kind updates its state after the attention (which used
        the old state) and sows its auxiliary loss as ``nnx.Intermediate`` ``"aux_loss"``.
        """
        q, k, v = self.rotated_qkv(x, positions)
        variant = registry.get_variant(self.spec.kind)
        ssmax_s = None if self.ssmax_s is None else self.ssmax_s[...]
        state = None if self.state is None else self.state[...]
        out = variant.apply(q, k, v, self.spec.options, segment_ids=segment_ids,
                            ssmax_s=ssmax_s, state=state,
                            implementation=self.spec.implementation)
        if train and variant.stateful:
            new_state, aux_loss = variant.update_state(q, k, state, self.spec.options,
                                                       segment_ids=segment_ids)
            self.state[...] = new_state
            self.sow(nnx.Intermediate, "aux_loss", aux_loss)
        return self.output(out)

    def decode(self, x: jnp.ndarray, cache: kv_cache_lib.KVCache, *,
               positions: jnp.ndarray):
        """Attention of a chunk against this layer's cache (``jaxattn.attention.kv_cache``).

        ``x [B, C, embed]`` are the inputs of slots ``[cache.length, cache.length + C)`` at
        RoPE ``positions [B, C]``. Returns ``(out [B, C, embed], cache)`` with the chunk's
        keys and values written; ``cache.length`` is left for the caller to advance.

        Routing: the chunk's clusters (nearest centroid of each routing head's query after
        RoPE, the state read but never updated) are written with it; with shared QK the keys
        are the queries. ``cluster_size=None`` takes the window ``train_len // num_clusters``,
        the one the model trained with (the full forward's default at ``train_len``).
        """
        spec = self.spec
        kv_cache_lib.check_decodable(spec.kind, spec.options)
        q, k, v = self.rotated_qkv(x, positions)
        clusters = None
        if kv_cache_lib.cluster_heads(spec.kind, spec.options, self.num_heads):
            clusters = kv_cache_lib.chunk_clusters(q, self.state[...],
                                                   local_heads=spec.options.local_heads)
        cache = kv_cache_lib.write_chunk(
            cache, k, v, q=q, clusters=clusters,
            num_global_tokens=getattr(spec.options, "num_global_tokens", 0))
        ssmax_s = None if self.ssmax_s is None else self.ssmax_s[...]
        out = kv_cache_lib.cached_attention_for(spec, q, cache, ssmax_s=ssmax_s,
                                                seq_len=self.train_len)
        return self.output(out), cache

    def rotated_qkv(self, x: jnp.ndarray, positions: jnp.ndarray):
        """``project`` then RoPE at ``positions [B, T]``: ``(q, k, v)``, ``k`` the rotated
        queries with shared QK."""
        q, k, v = self.project(x)
        q = apply_rope(q, positions, self.rope_base)
        k = q if self.key is None else apply_rope(k, positions, self.rope_base)
        return q, k, v

    def project(self, x: jnp.ndarray):
        """``(q [B, T, H, D], k [B, T, K, D], v [B, T, K, D])`` before RoPE (``k`` is ``q``
        with shared QK)."""
        batch, seq, _ = x.shape
        q = self.query(x).reshape(batch, seq, self.num_heads, self.head_dim)
        k = q if self.key is None else self.key(x).reshape(batch, seq, self.num_kv_heads,
                                                           self.head_dim)
        v = self.value(x).reshape(batch, seq, self.num_kv_heads, self.head_dim)
        return q, k, v

    def output(self, out: jnp.ndarray) -> jnp.ndarray:
        """Attention output ``[B, T, H, D]`` -> ``[B, T, embed]``."""
        batch, seq = out.shape[:2]
        return self.out(out.reshape(batch, seq, self.num_heads * self.head_dim))
