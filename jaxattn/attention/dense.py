"""Dense softmax attention: the reference every other variant is checked against.

``out_i = sum_j p_ij v_j`` with ``p_i = softmax_j(z_ij)`` over the keys visible to query ``i``
and ``z_ij = scale * q_i·k_j`` (Vaswani et al. 2017, eq. 1). With ``softmax="ssmax"`` the
logits are ``z_ij * s_h * log(n_i)``: Scalable-Softmax (Nakanishi 2025, arXiv 2501.19399)
``SSMax(z)_j = n^(s z_j) / sum_l n^(s z_l)`` applied per query row, ``n_i`` the keys query ``i``
sees under the full mask.
"""

import dataclasses
import math

import jax.numpy as jnp

from jaxattn.attention import core
from jaxattn.attention import registry
from jaxattn.attention import ssmax as ssmax_lib


def _check_options(q, k, v, *, causal, segment_ids, kv_segment_ids, window, softmax, ssmax_s,
                   scale, q_offset, implementation):
    batch, q_len, kv_len, heads, _, _ = core.check_qkv(q, k, v)
    core.check_implementation(implementation)
    core.check_causal(causal)
    core.check_window(window)
    core.check_softmax(softmax)
    core.check_scale(scale)
    core.check_q_offset(q_offset)
    ssmax_lib.check_ssmax_s(ssmax_s, softmax, heads)
    if causal and kv_len < q_len + q_offset:
        raise ValueError(
            f"causal attention needs kv_len >= q_len + q_offset (every query's own position "
            f"among the keys), got kv_len={kv_len}, q_len={q_len}, q_offset={q_offset}"
        )
    if segment_ids is None:
        if kv_segment_ids is not None:
            raise ValueError("kv_segment_ids was given without segment_ids; pass both or neither")
        return
    core.check_segment_ids("segment_ids", segment_ids, batch, q_len)
    if kv_segment_ids is None:
        if kv_len != q_len:
            raise ValueError(
                f"kv_segment_ids [batch, kv_len] is required when kv_len ({kv_len}) differs from "
                f"q_len ({q_len})"
            )
    else:
        core.check_segment_ids("kv_segment_ids", kv_segment_ids, batch, kv_len)


def dense_attention(q, k, v, *, causal=True, segment_ids=None, kv_segment_ids=None, window=None,
                    softmax="softmax", ssmax_s=None, scale=None, q_offset=0, implementation=None):
    """Softmax (or SSMax) attention over the explicit mask.

    Args:
      q: ``[B, Tq, H, D]``.
      k, v: ``[B, Tk, K, D]`` with ``H % K == 0``; query head ``h`` reads kv head ``h // (H//K)``.
      causal: query ``i`` sees keys ``j <= i + q_offset``.
      segment_ids: int ``[B, Tq]``; a query sees only keys of its own segment; id 0 is
        padding, whose outputs are 0.
      kv_segment_ids: int ``[B, Tk]``; defaults to ``segment_ids`` when ``Tq == Tk``.
      window: ``None`` or int ``w >= 1``: causal ``i - w < j <= i``, else ``|i - j| < w``
        (positions include ``q_offset``).
      softmax: ``"softmax"`` or ``"ssmax"``.
      ssmax_s: ``[H]`` SSMax ``s`` per head; required with ``softmax="ssmax"``.
      scale: logit scale, default ``1/sqrt(D)``.
      q_offset: absolute position of query 0 relative to key 0 (decoding with a cache).
      implementation: ``None`` or ``"reference"``.

    Returns:
      ``[B, Tq, H, D]`` in ``q.dtype``; logits and softmax statistics are computed in float32
      (float64 for float64 inputs).
    """
    _check_options(q, k, v, causal=causal, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                   window=window, softmax=softmax, ssmax_s=ssmax_s, scale=scale, q_offset=q_offset,
                   implementation=implementation)
    batch, q_len, heads, head_dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    dtype = core.compute_dtype(q.dtype)
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    if segment_ids is not None and kv_segment_ids is None:
        kv_segment_ids = segment_ids

    qg = core.group_query_heads(q, kv_heads)
    logits = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=dtype)
    logits = logits * jnp.asarray(scale, dtype)

    mask = core.make_mask(q_len, kv_len, causal=causal, window=window, q_segment_ids=segment_ids,
                          kv_segment_ids=kv_segment_ids, q_offset=q_offset)
    if softmax == "ssmax":
        row_scale = ssmax_lib.ssmax_logit_scale(ssmax_s, core.visible_key_count(mask))
        row_scale = row_scale.reshape(row_scale.shape[0], kv_heads, group, q_len, 1)
        logits = logits * row_scale.astype(dtype)

    probs = core.masked_softmax(logits, jnp.expand_dims(mask, 1))
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v.astype(dtype))
    return out.reshape(batch, q_len, heads, head_dim).astype(q.dtype)


@dataclasses.dataclass(frozen=True)
class DenseOptions(registry.Options):
    """Options of ``dense_attention`` (kinds ``"dense"`` and ``"ssmax"``)."""

    causal: bool = True
    window: int | None = None
    softmax: str = "softmax"

    def validate(self):
        core.check_causal(self.causal)
        core.check_window(self.window)
        core.check_softmax(self.softmax)


# Kind "ssmax" is registered here, not in ssmax.py: it is this module's function with
# softmax="ssmax" forced, and ssmax.py (imported above) holds the SSMax helpers that every
# softmax-based variant uses, so it cannot import this module back.
registry.register(
    "dense",
    dense_attention,
    DenseOptions,
    doc="Dense softmax attention (causal or bidirectional, optional sliding window).",
)
registry.register(
    "ssmax",
    dense_attention,
    DenseOptions,
    doc="Dense attention with Scalable-Softmax: logits scaled by s_h * log(n_i).",
    forced={"softmax": "ssmax"},
)
