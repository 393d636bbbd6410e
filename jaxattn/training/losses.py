"""Next-token cross-entropy with a loss mask, and the metrics derived from it."""

import math

import jax.numpy as jnp
import optax


def masked_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray, mask: jnp.ndarray):
    """Sum of token losses and the token count.

    Args:
      logits: ``[batch, seq, vocab]`` float32.
      targets: ``[batch, seq]`` int.
      mask: ``[batch, seq]`` float, 1 where the target counts.

    Returns:
      ``(loss_sum, count)``: float32 scalars.
    """
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    mask = mask.astype(jnp.float32)
    return jnp.sum(losses * mask), jnp.sum(mask)


def summarize(loss_sum: float, count: float, byte_count: float | None = None) -> dict:
    """Mean loss (nats/token), perplexity and bits per byte from summed losses.

    ``byte_count`` is the number of UTF-8 bytes the counted targets stand for (equal to
    ``count`` for the byte tokenizer when no special tokens are counted).
    """
    count = max(float(count), 1.0)
    loss = float(loss_sum) / count
    bytes_ = count if byte_count is None else max(float(byte_count), 1.0)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_byte": float(loss_sum) / bytes_ / math.log(2.0),
    }
