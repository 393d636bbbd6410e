"""Dense softmax attention: the reference every other variant is checked against.

``out_i = sum_j p_ij v_j`` with ``p_i = softmax_j(z_ij)`` over the keys visible to query ``i``
and ``z_ij = scale * q_i·k_j`` (Vaswani et al. 2017, eq. 1). With ``softmax="ssmax"`` the
logits are ``z_ij * s_h * log(n_i)``: Scalable-Softmax (Nakanishi 2025, arXiv 2501.19399)
``SSMax(z)_j = n^(s z_j) / sum_l n^(s z_l)`` applied per query row, ``n_i`` the keys query ``i``
sees under the full mask.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxattn.attention import backends
from jaxattn.attention import core
from jaxattn.attention import layout as layout_lib
from jaxattn.attention import primitives
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


def _pattern(q, k, *, causal, window, segment_ids, softmax, q_offset):
    return {"causal": bool(causal), "window": window, "segment_ids": segment_ids is not None,
            "ssmax": softmax == "ssmax", "q_offset": q_offset,
            "gqa": q.shape[2] != k.shape[2], "dtype": jnp.dtype(q.dtype).name,
            "head_dim": q.shape[-1]}


def _cudnn_support(pattern, platform):
    if platform != "gpu":
        return f"it runs on gpu, this platform is {platform}"
    if pattern["dtype"] not in ("bfloat16", "float16"):
        return f"cuDNN attention takes bfloat16 or float16 inputs, got {pattern['dtype']}"
    if pattern["segment_ids"]:
        return "packed documents (segment_ids) are not in cuDNN's public attention API"
    if pattern["q_offset"]:
        return "its causal mask is aligned to query 0 (q_offset must be 0)"
    if pattern["window"] is not None and not pattern["causal"]:
        return "it runs left (causal) windows only"
    if pattern["head_dim"] % 8 or pattern["head_dim"] > 128:
        return "head_dim must be a multiple of 8 and at most 128"
    return None


BACKEND_TABLE = {
    "reference": backends.always,
    "xla_chunked": backends.always,
    "cudnn": _cudnn_support,
}

# Query and key block of the "xla_chunked" online softmax.
CHUNK = 256


def _reference(q, k, v, *, causal, segment_ids, kv_segment_ids, window, softmax, ssmax_s,
               scale, q_offset):
    mask = core.make_mask(q.shape[1], k.shape[1], causal=causal, window=window,
                          q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                          q_offset=q_offset)
    rows = None
    if softmax == "ssmax":
        rows = ssmax_lib.ssmax_row_scale(ssmax_s, core.visible_key_count(mask)[:, 0])
    return primitives.attend(q, k, v, mask, scale=scale, row_scale=rows)


def chunk_layout(q_len, kv_len, rule):
    """The ``xla_chunked`` layout of a position rule: blocks of ``CHUNK`` (or the whole
    length, rounded up to a multiple of 8, when shorter)."""
    block = lambda n: min(CHUNK, -(-n // 8) * 8)
    return layout_lib.position_layout(q_len, kv_len, rule, q_block=block(q_len),
                                      kv_block=block(kv_len))


def _xla_chunked(q, k, v, *, causal, segment_ids, kv_segment_ids, window, softmax, ssmax_s,
                 scale, q_offset):
    rule = layout_lib.PositionRule(causal=causal, window=window, q_offset=q_offset)
    layout = chunk_layout(q.shape[1], k.shape[1], rule)
    rows = None
    if softmax == "ssmax":
        counts = primitives.visible_counts(layout, rule, k.shape[1], q.shape[1],
                                           segment_ids=segment_ids,
                                           kv_segment_ids=kv_segment_ids)
        rows = ssmax_lib.ssmax_row_scale(ssmax_s, counts)
    return primitives.flash_attend(q, k, v, layout, rule, segment_ids=segment_ids,
                                   kv_segment_ids=kv_segment_ids, scale=scale, row_scale=rows)


def jax_nn_attention(q, k, v, *, causal, window, softmax, ssmax_s, scale, jax_implementation):
    """Dense attention through ``jax.nn.dot_product_attention`` (no segment ids, no
    ``q_offset``): SSMax enters as a scale of ``q`` by ``s_h * log(n_i)``, with ``n_i = i + 1``
    (causal), ``min(i + 1, window)`` (causal window) or ``Tk`` (full)."""
    q_len, kv_len, head_dim = q.shape[1], k.shape[1], q.shape[-1]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    if softmax == "ssmax":
        n = jnp.arange(1, q_len + 1, dtype=jnp.float32) if causal else jnp.full((q_len,), kv_len,
                                                                              jnp.float32)
        if window is not None:
            n = jnp.minimum(n, window)
        rows = ssmax_lib.ssmax_row_scale(ssmax_s, n[None])
        q = (q.astype(rows.dtype) * rows[..., None]).astype(q.dtype)
    local = None if window is None else (window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal,
                                        local_window_size=local,
                                        implementation=jax_implementation)


def _cudnn(q, k, v, *, causal, segment_ids, kv_segment_ids, window, softmax, ssmax_s, scale,
           q_offset):
    del segment_ids, kv_segment_ids, q_offset  # excluded by _cudnn_support
    return jax_nn_attention(q, k, v, causal=causal, window=window, softmax=softmax,
                            ssmax_s=ssmax_s, scale=scale, jax_implementation="cudnn")


_IMPLEMENTATIONS = {"reference": _reference, "xla_chunked": _xla_chunked, "cudnn": _cudnn}


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
      implementation: ``None`` (the platform's choice, ``backends.resolve``),
        ``"reference"``, ``"xla_chunked"`` (online softmax over blocks of ``CHUNK``, no
        ``[Tq, Tk]`` tensor) or ``"cudnn"`` (GPU, bf16/fp16, no segment ids or
        ``q_offset``, left windows only).

    Returns:
      ``[B, Tq, H, D]`` in ``q.dtype``; logits and softmax statistics are computed in float32
      (float64 for float64 inputs).
    """
    _check_options(q, k, v, causal=causal, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                   window=window, softmax=softmax, ssmax_s=ssmax_s, scale=scale, q_offset=q_offset,
                   implementation=implementation)
    if segment_ids is not None and kv_segment_ids is None:
        kv_segment_ids = segment_ids
    name = backends.resolve(
        implementation, kind="ssmax" if softmax == "ssmax" else "dense",
        pattern=_pattern(q, k, causal=causal, window=window, segment_ids=segment_ids,
                         softmax=softmax, q_offset=q_offset),
        table=BACKEND_TABLE, one_block=max(q.shape[1], k.shape[1]) <= CHUNK)
    return _IMPLEMENTATIONS[name](q, k, v, causal=causal, segment_ids=segment_ids,
                                  kv_segment_ids=kv_segment_ids, window=window, softmax=softmax,
                                  ssmax_s=ssmax_s, scale=scale, q_offset=q_offset)


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
    backends=BACKEND_TABLE,
)
registry.register(
    "ssmax",
    dense_attention,
    DenseOptions,
    doc="Dense attention with Scalable-Softmax: logits scaled by s_h * log(n_i).",
    backends=BACKEND_TABLE,
    forced={"softmax": "ssmax"},
)
