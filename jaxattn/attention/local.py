"""Block-local attention with an explicit, static block schedule.

The sequence is cut into blocks of ``block_size``. Query block ``b`` visits key blocks
``b-1, b`` (causal, triangular mask inside block ``b``) or ``b-1, b, b+1`` (bidirectional).
Each query block runs a masked softmax over its ``[block, 2 or 3 * block]`` logits, so memory
is ``O(T * block)``: this is the static-shape computation a block-sparse kernel reproduces.
"""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from jaxattn.attention import checks
from jaxattn.attention import core
from jaxattn.attention import registry
from jaxattn.attention import ssmax as ssmax_lib


def local_block_schedule(num_blocks, *, causal):
    """Key blocks each query block visits: int32 ``[num_blocks, 2]`` (causal) or ``[num_blocks, 3]``.

    Row ``b`` is ``[b-1, b]`` or ``[b-1, b, b+1]``; a neighbour outside ``[0, num_blocks)`` is -1.
    """
    core.check_positive_int("num_blocks", num_blocks)
    core.check_causal(causal)
    offsets = np.array([-1, 0] if causal else [-1, 0, 1])
    schedule = np.arange(num_blocks)[:, None] + offsets[None, :]
    in_range = (schedule >= 0) & (schedule < num_blocks)
    return np.where(in_range, schedule, -1).astype(np.int32)


def check_seq_len(seq_len, block_size):
    """Raises ``ValueError`` unless ``seq_len`` is a positive multiple of ``block_size``."""
    core.check_positive_int("seq_len", seq_len)
    core.check_positive_int("block_size", block_size)
    if seq_len % block_size:
        padded = -(-seq_len // block_size) * block_size
        raise ValueError(
            f"sequence length {seq_len} is not a multiple of block_size={block_size}; pad to "
            f"{padded} or choose a block size that divides it"
        )


def _check_options(q, k, v, *, block_size, causal, segment_ids, softmax, ssmax_s, scale, implementation):
    _, seq_len, _, _ = checks.check_self_attention(
        "local", q, k, v, causal=causal, softmax=softmax, ssmax_s=ssmax_s, scale=scale,
        segment_ids=segment_ids, implementation=implementation)
    check_seq_len(seq_len, block_size)


def _static_block_mask(schedule, block_size, causal):
    """Bool ``[num_blocks, block, visits * block]``: schedule validity and causality."""
    num_blocks, visits = schedule.shape
    offsets = np.arange(block_size)
    q_pos = (np.arange(num_blocks) * block_size)[:, None, None] + offsets[None, :, None]
    k_pos = (np.maximum(schedule, 0) * block_size)[:, :, None] + offsets[None, None, :]
    k_pos = k_pos.reshape(num_blocks, 1, visits * block_size)
    valid = np.repeat(schedule >= 0, block_size, axis=1)[:, None, :]
    mask = np.broadcast_to(valid, (num_blocks, block_size, visits * block_size))
    if causal:
        mask = mask & (k_pos <= q_pos)
    return mask


def local_attention(q, k, v, *, block_size, causal=True, segment_ids=None, softmax="softmax",
                    ssmax_s=None, scale=None, implementation=None):
    """Block-local softmax (or SSMax) attention.

    Args:
      q: ``[B, T, H, D]``; k, v: ``[B, T, K, D]`` with ``H % K == 0`` (GQA).
      block_size: int; ``T`` must be a multiple of it.
      causal: key blocks ``b-1, b`` with ``j <= i``; else ``b-1, b, b+1``.
      segment_ids: int ``[B, T]``; a query sees only keys of its own segment; id 0 is padding
        (output 0).
      softmax, ssmax_s, scale, implementation: as in ``dense_attention``; SSMax's ``n_i`` is
        the number of keys visible under the local, causal and segment mask.

    Returns:
      ``[B, T, H, D]`` in ``q.dtype``; equal to ``dense_attention`` under the same block mask.
    """
    _check_options(q, k, v, block_size=block_size, causal=causal, segment_ids=segment_ids,
                   softmax=softmax, ssmax_s=ssmax_s, scale=scale, implementation=implementation)
    batch, seq_len, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    num_blocks = seq_len // block_size
    dtype = core.compute_dtype(q.dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)

    schedule = local_block_schedule(num_blocks, causal=causal)
    visits = schedule.shape[1]
    gather = np.maximum(schedule, 0)

    def gather_blocks(x):
        # [B, T, ...] -> [B, num_blocks, visits * block, ...] following the schedule.
        blocks = x.reshape(batch, num_blocks, block_size, *x.shape[2:])[:, gather]
        return blocks.reshape(batch, num_blocks, visits * block_size, *x.shape[2:])

    qb = core.group_query_heads(q, kv_heads)
    qb = qb.reshape(batch, num_blocks, block_size, kv_heads, group, head_dim)
    kb = gather_blocks(k)
    vb = gather_blocks(v)
    logits = jnp.einsum("bnqkgd,bnskd->bnkgqs", qb, kb, preferred_element_type=dtype)
    logits = logits * jnp.asarray(scale, dtype)

    mask = _static_block_mask(schedule, block_size, causal)[None]
    if segment_ids is not None:
        q_ids = segment_ids.reshape(batch, num_blocks, block_size)
        k_ids = gather_blocks(segment_ids)
        same = jnp.expand_dims(q_ids, 3) == jnp.expand_dims(k_ids, 2)
        mask = mask & same & jnp.expand_dims(q_ids != 0, 3)
    mask_batch = mask.shape[0]

    if softmax == "ssmax":
        n_visible = core.visible_key_count(mask).reshape(mask_batch, 1, seq_len)
        row_scale = ssmax_lib.ssmax_logit_scale(ssmax_s, n_visible)
        row_scale = row_scale.reshape(mask_batch, kv_heads, group, num_blocks, block_size, 1)
        logits = logits * jnp.transpose(row_scale, (0, 3, 1, 2, 4, 5)).astype(dtype)

    probs = core.masked_softmax(logits, mask[:, :, None, None])
    out = jnp.einsum("bnkgqs,bnskd->bnqkgd", probs, vb.astype(dtype))
    return out.reshape(batch, seq_len, heads, head_dim).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class LocalOptions(registry.Options):
    """Options of ``local_attention`` (kind ``"local"``)."""

    causal: bool = True
    block_size: int = 64
    softmax: str = "softmax"

    def validate(self):
        core.check_causal(self.causal)
        core.check_positive_int("block_size", self.block_size)
        core.check_softmax(self.softmax)

    def check_seq_len(self, seq_len):
        check_seq_len(seq_len, self.block_size)


registry.register(
    "local",
    local_attention,
    LocalOptions,
    doc="Block-local attention: each query block sees its own and the neighbouring key blocks.",
)
