"""Input checks and segment scanning shared by the Titans memory and blocks.

Sequences are ``x [B, T, d_model]`` with optional packed-document ``segment_ids [B, T]``
(0 = padding). ``scan_segments`` runs a block's ``_segment`` over consecutive segments of
``x`` with ``jax.lax.scan``, carrying the block's state, so a long input costs the memory of
one segment.
"""

import jax
import jax.numpy as jnp

from jaxattn.attention import core


def check_int(name, value, minimum):
    """``ValueError`` naming ``name`` unless ``value`` is an int (not a bool) ``>= minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_input(x, embed_dim, multiple, what):
    """``ValueError`` unless ``x`` is ``[B, T, embed_dim]`` with ``T`` a positive multiple of
    ``multiple`` (named ``what`` in the message, with the length to pad to)."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 3 or shape[-1] != embed_dim:
        raise ValueError(
            f"x must be [batch, seq, {embed_dim}], got "
            f"{'shape ' + str(tuple(shape)) if shape is not None else type(x).__name__}")
    if shape[1] == 0 or shape[1] % multiple:
        padded = max(multiple, -(-shape[1] // multiple) * multiple)
        raise ValueError(
            f"sequence length {shape[1]} is not a positive multiple of {what}={multiple}; pad "
            f"to {padded} or split the stream at multiples of it")


def check_segment_ids(segment_ids, x):
    """``None`` or an int array ``[B, T]`` matching ``x [B, T, E]``."""
    if segment_ids is not None:
        core.check_segment_ids("segment_ids", segment_ids, x.shape[0], x.shape[1])


def tail(x, n):
    """The last ``n`` rows of ``x [B, L, E]`` (``n = 0`` gives ``[B, 0, E]``)."""
    return x[:, x.shape[1] - n:]


def scan_segments(module, x, state, segment_len, segment_ids=None):
    """Runs ``module._segment(x_seg, state, ids_seg)`` over the segments of ``x [B, T, E]``
    (and of ``segment_ids [B, T]`` or ``None``) with ``jax.lax.scan``; a trailing shorter
    segment (``T % segment_len``) runs last."""
    batch, seq_len, embed = x.shape
    full = seq_len // segment_len
    outputs = []

    def segments(a):  # [B, full * S, ...] -> [full, B, S, ...]
        a = a[:, :full * segment_len]
        return jnp.swapaxes(a.reshape(batch, full, segment_len, *a.shape[2:]), 0, 1)

    if full:
        # The body reads the module's parameters as closed-over values (no nnx.split/merge:
        # under nnx.capture the modules carry capture slots whose keys do not sort with the
        # integer keys of nnx.List).
        def body(carry, xs):
            x_seg, ids = xs
            return tuple(reversed(module._segment(x_seg, carry, ids)))

        xs = (segments(x), None if segment_ids is None else segments(segment_ids))
        state, ys = jax.lax.scan(body, state, xs)
        outputs.append(jnp.swapaxes(ys, 0, 1).reshape(batch, full * segment_len, embed))
    if seq_len % segment_len:
        rest = None if segment_ids is None else segment_ids[:, full * segment_len:]
        y, state = module._segment(x[:, full * segment_len:], state, rest)
        outputs.append(y)
    return jnp.concatenate(outputs, axis=1) if len(outputs) > 1 else outputs[0], state
