"""Whole layers to time (``layer_case``): a dense-attention layer against the Titans blocks.

``"layer:dense"`` is a pre-norm residual dense-attention layer (``x + Attention(RMSNorm(x))``:
projections, RoPE, output projection); ``"layer:mac"``, ``"layer:mag"``, ``"layer:mal"`` and
``"layer:lmm"`` are Titans blocks (``jaxattn.nn.titans``, no MLP) whose options are
``TitansConfig``'s fields. Layers take ``x [batch, seq_len, heads * head_dim]`` and, with
``backward``, are differentiated with respect to ``x`` and every parameter, so Titans is timed
against dense attention layer for layer.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from experiments.benchmarks.case_inputs import check_sizes, resolve_dtype, resolve_options
from jaxattn.attention import registry
from jaxattn.nn.attention import Attention, AttentionSpec
from jaxattn.nn.layers import RMSNorm
from jaxattn.nn.titans import TitansConfig, make_block

LAYER_PREFIX = "layer:"
LAYER_KINDS = ("layer:dense", "layer:mac", "layer:mag", "layer:mal", "layer:lmm")
"""Layer cases ``layer_case`` builds: dense attention, and the Titans architectures."""


def is_layer_kind(kind):
    """Whether ``kind`` names a layer (``"layer:..."``) rather than an attention kind."""
    return isinstance(kind, str) and kind.startswith(LAYER_PREFIX)


def layer_option_names(kind):
    """The options a layer kind accepts (``ValueError`` for an unknown layer kind)."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown layer kind {kind!r}; layer kinds: {', '.join(LAYER_KINDS)}")
    if kind == "layer:dense":
        return [field.name for field in dataclasses.fields(registry.get_variant("dense").options_cls)]
    return [field.name for field in dataclasses.fields(TitansConfig) if field.name != "arch"]


class _DenseLayer(nnx.Module):
    """``x + Attention(RMSNorm(x))`` with positions ``0 .. T-1``: the baseline layer."""

    def __init__(self, embed, *, heads, head_dim, spec, seq_len, rngs, dtype):
        self.norm = RMSNorm(embed)
        self.attn = Attention(embed, num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
                              spec=spec, train_len=seq_len, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32), x.shape[:2])
        return x + self.attn(self.norm(x), positions=positions)


def _build_layer(kind, options, *, seq_len, heads, head_dim, dtype, seed):
    """``(module, apply)``: the layer and ``apply(module, x) -> y``; checks ``seq_len``."""
    layer_option_names(kind)
    embed = heads * head_dim
    rngs = nnx.Rngs(seed)
    if kind == "layer:dense":
        spec = AttentionSpec.create("dense", **options)
        spec.options.check_seq_len(seq_len)
        layer = _DenseLayer(embed, heads=heads, head_dim=head_dim, spec=spec, seq_len=seq_len,
                            rngs=rngs, dtype=dtype)
        return layer, lambda module, x: module(x)
    config = TitansConfig(arch=kind[len(LAYER_PREFIX):], **options)
    config.check_length("seq_len", seq_len, "pick a seq_len that is a multiple")
    block = make_block(config, embed_dim=embed, num_heads=heads, num_kv_heads=heads,
                       head_dim=head_dim, mlp_dim=None, rope_base=10_000.0, rngs=rngs,
                       dtype=dtype)
    return block, lambda module, x: module(x)[0]


def layer_case(kind, *, batch, seq_len, heads, head_dim, dtype=None, options=None,
               backward=False, seed=0):
    """One layer call to time: ``(fn, args)`` for ``time_fn(fn, *args)``, like
    ``attention_case``.

    ``kind`` is one of ``LAYER_KINDS``: ``"layer:dense"`` (``x + Attention(RMSNorm(x))``,
    dense kind with ``options`` such as ``causal``) or a Titans block ``"layer:<arch>"``
    (``TitansConfig(arch, **options)``, no MLP), with ``heads`` heads of ``head_dim`` and
    ``d_model = heads * head_dim``. ``x`` is standard normal ``[batch, seq_len, d_model]``
    in ``dtype``; parameters are float32. Forward: ``fn(params, x)`` returns the layer output
    (a Titans block starts from its initial memory and its final state is dropped).
    Backward: ``fn`` returns the gradients of ``sum(out * cotangent)`` with respect to the
    parameters and ``x``.

    Raises:
      ValueError: unknown kind, bad options, or a ``seq_len`` the layer cannot take.
    """
    check_sizes(batch=batch, heads=heads, head_dim=head_dim, seq_len=seq_len)
    dtype = resolve_dtype(dtype)
    options = resolve_options(options or {}, seq_len)
    module, apply = _build_layer(kind, options, seq_len=seq_len, heads=heads,
                                 head_dim=head_dim, dtype=dtype, seed=seed)
    graphdef, params = nnx.split(module)
    key_x, key_cot = jax.random.split(jax.random.key(seed + 1))
    shape = (batch, seq_len, heads * head_dim)
    x = jax.random.normal(key_x, shape, dtype)

    def forward(params, x):
        return apply(nnx.merge(graphdef, params), x)

    if not backward:
        return forward, (params, x)

    def loss(params, x, cotangent):
        out = forward(params, x)
        return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32))

    cotangent = jax.random.normal(key_cot, shape, dtype)
    return jax.grad(loss, argnums=(0, 1)), (params, x, cotangent)
