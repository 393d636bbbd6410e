"""Jitting for the attention tests: every hypothesis example brings new (tiny) shapes, so
compilation dominates; compile without the backend's optimisation passes."""

import functools

import jax

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def fast_jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


def jit_with_static_options(fn, static_options):
    """``attend(q, k, v, **options)``: ``fn`` under ``fast_jit``, compiled once per set of the
    options named in ``static_options`` (the others are passed as traced arguments)."""

    @functools.lru_cache(maxsize=None)
    def compiled(static_items):
        return fast_jit(functools.partial(fn, **dict(static_items)))

    def attend(q, k, v, **options):
        static = tuple(sorted((key, val) for key, val in options.items()
                              if key in static_options))
        arrays = {key: val for key, val in options.items() if key not in static_options}
        return compiled(static)(q, k, v, **arrays)

    return attend
