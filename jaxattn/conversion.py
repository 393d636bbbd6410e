"""Turning a dense-attention ``TransformerLM`` into an LSG one without retraining
(Condevaux & Harispe 2022, Sec. 3.3: "extrapolate without additional training").

Every trained weight is reused unchanged; only the attention kind changes and the global
tokens are new. The paper initialises global token 0 as ``E[BOS] + pos[0]`` and the others
as ``E[MASK] + pos[perm(i)]``. Our models use RoPE (no position table to extend, so nothing
to copy there) and a byte vocabulary without a mask token, so global 0 is ``E[BOS]`` and
the others the mean of the token embeddings.
"""

import dataclasses

import jax.numpy as jnp

from jaxattn.data import BOS_ID
from jaxattn.nn.attention import AttentionSpec
from jaxattn.nn.transformer import TransformerConfig


def lsg_model_config(dense_cfg: TransformerConfig, **lsg_options) -> TransformerConfig:
    """``dense_cfg`` with every layer's attention replaced by LSG with ``lsg_options``
    (``causal`` follows the dense layers)."""
    causal = {getattr(spec.options, "causal", True) for spec in dense_cfg.attention}
    if len(causal) != 1:
        raise ValueError("all layers of the dense model must agree on causal to convert it")
    spec = AttentionSpec.create("lsg", causal=causal.pop(), **lsg_options)
    return dataclasses.replace(dense_cfg, attention=[spec] * dense_cfg.num_layers)


def global_token_init(embedding: jnp.ndarray, num_global_tokens: int) -> jnp.ndarray:
    """``[num_global_tokens, embed]``: row 0 the BOS embedding, the rest the mean embedding."""
    rows = [embedding[BOS_ID]] + [jnp.mean(embedding, axis=0)] * (num_global_tokens - 1)
    return jnp.stack(rows[:num_global_tokens]).astype(embedding.dtype)


def lsg_params_from_dense(params: dict, lsg_cfg: TransformerConfig) -> dict:
    """The dense model's parameters (a pure dict) plus the new global tokens."""
    if "global_tokens" in params:
        raise ValueError("params already hold global_tokens: convert a dense model")
    converted = dict(params)
    if lsg_cfg.num_global_tokens:
        converted["global_tokens"] = global_token_init(params["embed"]["embedding"],
                                                       lsg_cfg.num_global_tokens)
    return converted
