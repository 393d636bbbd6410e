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

from jaxattn.attention import registry
from jaxattn.attention.rope import apply_rope
from jaxattn.attention.ssmax import ssmax_init_value
from jaxattn.nn.init import logical_param, partitioned, zeros_init


@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """A variant name and its validated options (``registry.make_options``)."""

    kind: str
    options: Any

    @classmethod
    def create(cls, kind: str, **options) -> "AttentionSpec":
        return cls(kind, registry.make_options(kind, **options))

    @property
    def uses_ssmax(self) -> bool:
        return getattr(self.options, "softmax", "softmax") == "ssmax"


class Attention(nnx.Module):
    """Multi-head (grouped-query) self-attention with a variant chosen by ``spec``."""

    def __init__(self, embed_dim: int, *, num_heads: int, num_kv_heads: int, head_dim: int,
                 spec: AttentionSpec, train_len: int, rope_base: float = 10_000.0,
                 ssmax_init: float | None = None, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        registry.get_variant(spec.kind)  # fails early, listing the valid kinds
        self.spec = spec
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.rope_base = rope_base
        dense = lambda i, o, names, init=None: nnx.Linear(
            i, o, use_bias=False, dtype=dtype, param_dtype=param_dtype,
            kernel_init=partitioned(names, init), rngs=rngs)
        self.query = dense(embed_dim, num_heads * head_dim, ("embed", "heads"))
        self.key = dense(embed_dim, num_kv_heads * head_dim, ("embed", "kv_heads"))
        self.value = dense(embed_dim, num_kv_heads * head_dim, ("embed", "kv_heads"))
        self.out = dense(num_heads * head_dim, embed_dim, ("heads", "embed"), zeros_init())
        if spec.uses_ssmax:
            s0 = ssmax_init if ssmax_init is not None else ssmax_init_value(train_len)
            if not (isinstance(s0, (int, float)) and math.isfinite(s0) and s0 > 0):
                raise ValueError(f"ssmax_init must be a positive finite float, got {s0!r}")
            self.ssmax_s = logical_param(jnp.full((num_heads,), s0, param_dtype), ("heads",))
        else:
            self.ssmax_s = None

    def __call__(self, x: jnp.ndarray, *, positions: jnp.ndarray,
                 segment_ids: jnp.ndarray | None = None) -> jnp.ndarray:
        """``x [batch, seq, embed]``, ``positions``/``segment_ids [batch, seq]`` -> ``[batch, seq, embed]``."""
        batch, seq, _ = x.shape
        q = self.query(x).reshape(batch, seq, self.num_heads, self.head_dim)
        k = self.key(x).reshape(batch, seq, self.num_kv_heads, self.head_dim)
        v = self.value(x).reshape(batch, seq, self.num_kv_heads, self.head_dim)
        q = apply_rope(q, positions, self.rope_base)
        k = apply_rope(k, positions, self.rope_base)
        ssmax_s = None if self.ssmax_s is None else self.ssmax_s[...]
        out = registry.get_variant(self.spec.kind).apply(
            q, k, v, self.spec.options, segment_ids=segment_ids, ssmax_s=ssmax_s)
        return self.out(out.reshape(batch, seq, self.num_heads * self.head_dim))
