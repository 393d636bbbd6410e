"""Softmax attention with an explicit mask for the Titans blocks (``jaxattn.nn.titans``).

The blocks use the projections, RoPE and output projection of an ``Attention`` module (kind
``"dense"``) with masks the registry's options cannot express: an always-visible prefix of
persistent tokens, and MAC's retrieved tokens aligned with its segment. Softmax only (no
SSMax). The persistent prefix carries no RoPE position (its logits use unrotated queries and
keys), so what a query reads from it does not depend on the query's place in the stream: the
prefix and the rest are two ``primitives.attend`` calls merged through their log-sum-exps
(``primitives.merge_partials``), one softmax over both.
"""

import jax.numpy as jnp

from jaxattn.attention import primitives
from jaxattn.attention.rope import apply_rope


def attend(attn, x_q, x_kv, q_pos, kv_pos, mask, num_prefix=0):
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
    if mask.ndim == 2:
        mask = mask[None]
    mask = mask[:, None]  # [B or 1, 1, Tq, Tk]
    out = primitives.attend(q_rot, k_rot, v[:, num_prefix:], mask[..., num_prefix:],
                            return_lse=bool(num_prefix))
    if num_prefix:
        prefix = primitives.attend(q, k[:, :num_prefix], v[:, :num_prefix],
                                   mask[..., :num_prefix], return_lse=True)
        out, _ = primitives.merge_partials([prefix[0], out[0]], [prefix[1], out[1]])
    return attn.out(out.reshape(batch, q_len, heads * head_dim).astype(x_q.dtype))
