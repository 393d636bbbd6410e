"""``TransformerClassifier``: a bidirectional encoder with a classification head, the
LSG paper's use of converted encoders for long-document classification.

The encoder is a ``TransformerLM`` whose attention is bidirectional (``causal=False`` in
every layer's spec). The sequence representation is the first global token's output when
the model has global tokens (the paper's ``pool_with_global``), else the mean over real
(non-padding) tokens. ``tokens [batch, seq] -> logits [batch, num_classes]`` float32.
"""

import jax.numpy as jnp
from flax import nnx

from jaxattn.nn.init import partitioned
from jaxattn.nn.transformer import TransformerConfig, TransformerLM


class TransformerClassifier(nnx.Module):
    """Sequence classification with any bidirectional attention kind."""

    def __init__(self, cfg: TransformerConfig, num_classes: int, *, rngs: nnx.Rngs):
        causal = [spec.kind for spec in cfg.attention
                  if getattr(spec.options, "causal", False)]
        if causal:
            raise ValueError(f"a classifier encoder needs bidirectional attention "
                             f"(causal=False) in every layer; causal kinds: {causal}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.encoder = TransformerLM(cfg, rngs=rngs)
        self.head = nnx.Linear(cfg.embed_dim, num_classes, dtype=cfg.compute_dtype,
                               kernel_init=partitioned(("embed", None)), rngs=rngs)

    def __call__(self, tokens: jnp.ndarray, *, segment_ids: jnp.ndarray | None = None,
                 rng=None) -> jnp.ndarray:
        """``segment_ids [batch, seq]``: 1 for real tokens, 0 for padding (one document each)."""
        hidden = self.encoder.encode(tokens, segment_ids=segment_ids, rng=rng)
        num_global = self.encoder.cfg.num_global_tokens
        if num_global:
            pooled = hidden[:, 0]
        else:
            real = (jnp.ones(tokens.shape, hidden.dtype) if segment_ids is None
                    else (segment_ids != 0).astype(hidden.dtype))[:, :, None]
            pooled = jnp.sum(hidden * real, axis=1) / jnp.maximum(jnp.sum(real, axis=1), 1.0)
        return self.head(pooled).astype(jnp.float32)
