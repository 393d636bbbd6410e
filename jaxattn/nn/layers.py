"""Small Flax NNX building blocks of the Transformer: RMSNorm and the SwiGLU MLP.

Parameters carry logical axis names (``embed``, ``mlp``, ...) that ``jaxattn.sharding``
maps onto mesh axes.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxattn.nn.init import logical_param, partitioned, zeros_init


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm (Zhang & Sennrich 2019): ``x / rms(x) * scale``.

    Statistics are computed in float32; the output has the input's dtype.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, param_dtype=jnp.float32):
        self.eps = eps
        # Stored as an offset from one, so weight decay pulls the scale towards identity.
        self.scale = logical_param(jnp.zeros((dim,), param_dtype), ("embed",))

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        scale = 1.0 + self.scale[...].astype(jnp.float32)
        return (normed * scale.reshape((1,) * (x.ndim - 1) + scale.shape)).astype(x.dtype)


class SwiGLU(nnx.Module):
    """Gated MLP (Shazeer 2020): ``W_down (silu(x W_gate) * (x W_up))``. ``[..., embed] -> [..., embed]``."""

    def __init__(self, embed_dim: int, mlp_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32):
        dense = lambda i, o, names, init=None: nnx.Linear(
            i, o, use_bias=False, dtype=dtype, param_dtype=param_dtype,
            kernel_init=partitioned(names, init), rngs=rngs)
        self.gate = dense(embed_dim, mlp_dim, ("embed", "mlp"))
        self.up = dense(embed_dim, mlp_dim, ("embed", "mlp"))
        self.down = dense(mlp_dim, embed_dim, ("mlp", "embed"), zeros_init())

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))
