"""Block-local attention with an explicit, static block schedule.

The sequence is cut into blocks of ``block_size``. Query block ``b`` visits key blocks
``b-1, b`` (causal, triangular mask inside block ``b``) or ``b-1, b, b+1`` (bidirectional).
Each query block runs a masked softmax over its ``[block, 2 or 3 * block]`` logits, so memory
is ``O(T * block)``: this is the static-shape computation a block-sparse kernel reproduces.
"""

import dataclasses

import numpy as np

from jaxattn.attention import backends
from jaxattn.attention import checks
from jaxattn.attention import core
from jaxattn.attention import layout as layout_lib
from jaxattn.attention import primitives
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
        segment_ids=segment_ids, implementation=implementation, table=BACKEND_TABLE)
    check_seq_len(seq_len, block_size)


def block_layout(seq_len, block_size, *, causal):
    """The ``layout.BlockLayout`` of ``local_block_schedule``: blocks of ``block_size``."""
    schedule = local_block_schedule(seq_len // block_size, causal=causal)
    return layout_lib.schedule_layout(schedule, block_size=block_size, causal=causal)


BACKEND_TABLE = {"reference": backends.always, "xla_chunked": backends.always}


def local_attention(q, k, v, *, block_size, causal=True, segment_ids=None, softmax="softmax",
                    ssmax_s=None, scale=None, implementation=None):
    """Block-local softmax (or SSMax) attention.

    Args:
      q: ``[B, T, H, D]``; k, v: ``[B, T, K, D]`` with ``H % K == 0`` (GQA).
      block_size: int; ``T`` must be a multiple of it.
      causal: key blocks ``b-1, b`` with ``j <= i``; else ``b-1, b, b+1``.
      segment_ids: int ``[B, T]``; a query sees only keys of its own segment; id 0 is padding
        (output 0).
      softmax, ssmax_s, scale: as in ``dense_attention``; SSMax's ``n_i`` is the number of
        keys visible under the local, causal and segment mask.
      implementation: ``None`` (``backends.resolve``), ``"reference"`` (``attend_layout``:
        one softmax over the gathered blocks) or ``"xla_chunked"`` (``flash_attend``: an
        online softmax over the same blocks).

    Returns:
      ``[B, T, H, D]`` in ``q.dtype``; equal to ``dense_attention`` under the same block mask.
    """
    _check_options(q, k, v, block_size=block_size, causal=causal, segment_ids=segment_ids,
                   softmax=softmax, ssmax_s=ssmax_s, scale=scale, implementation=implementation)
    name = backends.resolve(
        implementation, kind="local", table=BACKEND_TABLE,
        pattern=checks.self_attention_pattern(q, k, causal=causal, softmax=softmax,
                                              segment_ids=segment_ids),
        one_block=q.shape[1] <= 2 * block_size)
    seq_len = q.shape[1]
    layout = block_layout(seq_len, block_size, causal=causal)
    rule = layout_lib.PositionRule(causal=causal)
    rows = None
    if softmax == "ssmax":
        counts = primitives.visible_counts(layout, rule, seq_len, seq_len,
                                           segment_ids=segment_ids)
        rows = ssmax_lib.ssmax_row_scale(ssmax_s, counts)
    attend = primitives.flash_attend if name == "xla_chunked" else primitives.attend_layout
    return attend(q, k, v, layout, rule, segment_ids=segment_ids, scale=scale, row_scale=rows)


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
    backends=BACKEND_TABLE,
)
