"""Input checks shared by the self-attention kinds (queries and keys from one sequence)."""

from jaxattn.attention import backends
from jaxattn.attention import core
from jaxattn.attention import ssmax as ssmax_lib


def check_self_attention(name, q, k, v, *, causal, softmax, ssmax_s, scale, segment_ids,
                         implementation, table=None):
    """Validates what every self-attention kind takes, with errors naming the argument.

    ``name`` is the kind, for messages; ``table`` its backends (``backends.resolve``; default
    the reference alone), so an ``implementation`` it cannot run is reported here. Returns
    ``(batch, seq_len, heads, head_dim)``.
    """
    batch, q_len, kv_len, heads, _, head_dim = core.check_qkv(q, k, v)
    core.check_implementation(implementation)
    core.check_causal(causal)
    core.check_softmax(softmax)
    core.check_scale(scale)
    ssmax_lib.check_ssmax_s(ssmax_s, softmax, heads)
    if q_len != kv_len:
        raise ValueError(f"{name} attention needs q and k of the same sequence length, got "
                         f"q_len={q_len}, kv_len={kv_len}")
    if segment_ids is not None:
        core.check_segment_ids("segment_ids", segment_ids, batch, q_len)
    backends.resolve(implementation, kind=name, table=table or backends.REFERENCE_ONLY,
                     pattern=self_attention_pattern(q, k, causal=causal, softmax=softmax,
                                                    segment_ids=segment_ids))
    return batch, q_len, heads, head_dim


def self_attention_pattern(q, k, *, causal, softmax, segment_ids):
    """The features of a self-attention call that decide its backend (``backends.describe``)."""
    return {"causal": bool(causal), "segment_ids": segment_ids is not None,
            "ssmax": softmax == "ssmax", "gqa": q.shape[2] != k.shape[2]}
