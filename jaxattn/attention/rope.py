"""Rotary position embeddings (Su et al. 2021, RoFormer eq. 34), pure JAX.

Rotates each pair of channels ``(x[..., i], x[..., i + D/2])`` by the angle
``position * base ** (-2 i / D)`` (the "half" layout used by GPT-NeoX and LLaMA).
"""

import jax.numpy as jnp


def rope_frequencies(head_dim: int, base: float = 10_000.0) -> jnp.ndarray:
    """Inverse frequencies ``base ** (-2i / head_dim)``, float32 ``[head_dim // 2]``."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
    if base <= 1.0:
        raise ValueError(f"rope_base must be > 1, got {base}")
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return base ** (-exponents)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, base: float = 10_000.0) -> jnp.ndarray:
    """Applies RoPE to ``x`` ``[batch, seq, heads, head_dim]`` at ``positions`` ``[batch, seq]``.

    The rotation is computed in float32 (float64 for float64 inputs) and cast back to
    ``x.dtype``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [batch, seq, heads, head_dim], got shape {x.shape}")
    if positions.shape != x.shape[:2]:
        raise ValueError(
            f"positions must be [batch, seq] = {x.shape[:2]}, got shape {positions.shape}")
    return rotate(x, positions[:, :, None], base)


def rotate(x: jnp.ndarray, positions: jnp.ndarray, base: float = 10_000.0) -> jnp.ndarray:
    """RoPE for any layout: ``x [..., head_dim]`` at ``positions`` broadcastable to
    ``x.shape[:-1]`` (e.g. one position per retrieved key, query and head)."""
    dtype = jnp.promote_types(x.dtype, jnp.float32)  # float64 inputs stay float64
    inv_freq = rope_frequencies(x.shape[-1], base).astype(dtype)
    positions = jnp.asarray(positions, dtype)
    angles = positions[..., None] * inv_freq.reshape((1,) * positions.ndim + (-1,))
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(dtype), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
