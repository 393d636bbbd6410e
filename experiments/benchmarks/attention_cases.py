"""One attention call of a registered kind to time: ``attention_case`` builds ``(fn, args)``.

``q``, ``k`` and ``v`` are standard normal ``[batch, seq_len, heads, head_dim]``. A
stateful kind (routing, whose state is its centroids) is timed as a training step runs it
(``jaxattn.nn.attention.Attention`` with ``train=True``): the attention with the current
state, then the variant's ``update_state`` (the new state and the auxiliary loss), whose
auxiliary loss the training loss adds.
"""

import jax
import jax.numpy as jnp

from experiments.benchmarks.case_inputs import check_sizes, resolve_dtype, resolve_options
from jaxattn.attention import registry


def attention_case(kind, *, batch, seq_len, heads, head_dim, dtype=None, options=None,
                   backward=False, seed=0):
    """One attention call to time: returns ``(fn, args)`` for ``time_fn(fn, *args)``.

    ``q``, ``k`` and ``v`` are standard normal ``[batch, seq_len, heads, head_dim]`` in
    ``dtype`` (default: ``default_dtype()``); ``args`` is ``(q, k, v, ssmax_s, state)``, with
    ``ssmax_s = ones([heads])`` when the options' softmax is ``"ssmax"`` (else ``None``) and
    ``state`` from the variant's ``init_state(options, num_heads=, head_dim=, key=)`` for a
    stateful kind (else ``None``). The call is
    ``registry.get_variant(kind).apply(q, k, v, make_options(kind, **options), ...)``; a
    stateful kind then runs ``update_state(q, k, state, options)`` as a training step does.

    Forward: ``fn`` returns the attention output ``out``, or ``(out, new_state, aux_loss)``
    for a stateful kind. Backward (``args`` gains a standard normal ``cotangent`` like ``q``):
    ``fn`` returns ``((dq, dk, dv), new_state)``, the gradients of ``sum(out * cotangent)``
    (plus ``aux_loss`` for a stateful kind, as the training loss adds it) with respect to
    ``q``, ``k`` and ``v``, and the new state (``None`` for a stateless kind).

    ``options`` may also hold ``"implementation"`` (a backend, ``jaxattn.attention.backends``),
    passed to the call rather than to the kind's options.

    Raises:
      ValueError: unknown kind, bad options, or a ``seq_len`` the kind cannot take (checked
        before any array is built).
    """
    variant = registry.get_variant(kind)
    options = dict(options or {})
    implementation = options.pop("implementation", None)
    opts = registry.make_options(kind, **resolve_options(options, seq_len))
    opts.check_seq_len(seq_len)
    check_sizes(batch=batch, heads=heads, head_dim=head_dim)
    dtype = resolve_dtype(dtype)

    key_q, key_k, key_v, key_cot, key_state = jax.random.split(jax.random.key(seed), 5)
    shape = (batch, seq_len, heads, head_dim)
    q = jax.random.normal(key_q, shape, dtype)
    k = jax.random.normal(key_k, shape, dtype)
    v = jax.random.normal(key_v, shape, dtype)
    ssmax_s = jnp.ones((heads,), jnp.float32) if getattr(opts, "softmax", None) == "ssmax" else None
    state = None
    if variant.stateful:
        state = variant.init_state(opts, num_heads=heads, head_dim=head_dim, key=key_state)

    def forward(q, k, v, ssmax_s, state):
        out = variant.apply(q, k, v, opts, ssmax_s=ssmax_s, state=state,
                            implementation=implementation)
        if not variant.stateful:
            return out
        new_state, aux_loss = variant.update_state(q, k, state, opts)
        return out, new_state, aux_loss

    if not backward:
        return forward, (q, k, v, ssmax_s, state)

    def loss(q, k, v, ssmax_s, state, cotangent):
        if variant.stateful:
            out, new_state, aux_loss = forward(q, k, v, ssmax_s, state)
        else:
            out, new_state, aux_loss = forward(q, k, v, ssmax_s, state), None, 0.0
        value = jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32))
        return value + aux_loss, new_state

    grad_fn = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    cotangent = jax.random.normal(key_cot, shape, dtype)
    return grad_fn, (q, k, v, ssmax_s, state, cotangent)
