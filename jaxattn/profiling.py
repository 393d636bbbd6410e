"""Time and memory of compiled JAX programs, for the evaluations and the benchmarks.

A program is lowered and compiled ahead of time (``compile_ahead``: the compile time is
reported apart and never mixed into the timings), run ``warmup`` untimed times, then timed
``repeats`` times, each call waited for with ``jax.block_until_ready``
(``time_compiled``; ``time_fn`` does both). Its memory is XLA's compile-time buffer
assignment (``compiled_footprint``, ``peak_memory_bytes``). ``error_text`` shortens an
exception to the one line a result row keeps when a measurement fails (a length a kind
cannot take, out of memory), and ``device_description`` names where the numbers were taken.

Typical use::

    stats = time_fn(fn, *args)            # {"median_ms", "min_ms", "max_ms", "compile_ms"}
    compiled, compile_ms = compile_ahead(fn, args)
    footprint = compiled_footprint(compiled)
"""

import statistics
import time

import jax

_MAX_ERROR_CHARS = 300


def device_description():
    """The first device's kind (``"NVIDIA H100 80GB HBM3"``, ``"cpu"``), backend and count."""
    devices = jax.devices()
    return f"{devices[0].device_kind} ({jax.default_backend()}, {len(devices)} device(s))"


def compile_ahead(fn, args):
    """Lowers and compiles ``jax.jit(fn)`` for ``args``; returns ``(compiled, compile_ms)``."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, (time.perf_counter() - start) * 1e3


def time_compiled(compiled, args, warmup, repeats):
    """Runs ``compiled(*args)`` ``warmup`` times untimed, then ``repeats`` timed times.

    Returns:
      ``{"median_ms", "min_ms", "max_ms"}`` of the timed calls.

    Raises:
      ValueError: ``warmup`` not an int ``>= 0`` or ``repeats`` not an int ``>= 1``.
    """
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def time_fn(fn, *args, warmup=2, repeats=5):
    """Wall-clock time of ``jax.jit(fn)(*args)`` in milliseconds.

    The function is lowered and compiled ahead of time (reported as ``compile_ms``, not part
    of the timings), run ``warmup`` times, then timed ``repeats`` times, each call followed by
    ``jax.block_until_ready`` on its outputs.

    Returns:
      ``{"median_ms", "min_ms", "max_ms", "compile_ms"}``.
    """
    compiled, compile_ms = compile_ahead(fn, args)
    stats = time_compiled(compiled, args, warmup, repeats)
    stats["compile_ms"] = compile_ms
    return stats


def compiled_footprint(compiled):
    """``argument + output + temp - alias`` bytes from XLA's memory analysis, or ``None``."""
    try:
        analysis = compiled.memory_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if analysis is None:
        return None
    sizes = [getattr(analysis, f"{name}_size_in_bytes", None)
             for name in ("argument", "output", "temp", "alias")]
    if any(size is None for size in sizes[:3]):
        return None
    argument, output, temp, alias = (int(size or 0) for size in sizes)
    return argument + output + temp - alias


def _runtime_peak(fn, args):
    """The device's ``peak_bytes_in_use`` after running ``fn`` once, or ``None`` without stats."""
    device = jax.devices()[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    jax.block_until_ready(jax.jit(fn)(*args))
    return int(device.memory_stats()["peak_bytes_in_use"])


def peak_memory_bytes(fn, *args):
    """Device memory needed by one call of ``jax.jit(fn)(*args)``, in bytes, or ``None``.

    The number is XLA's compile-time buffer assignment for that one program:
    ``argument + output + temp - alias`` sizes from ``compiled.memory_analysis()``. It is
    available on CPU, GPU and TPU, depends only on the program (not on what else the process
    holds), and is what decides whether a case fits, so it compares across kinds and
    sequence lengths. Only when the backend gives no memory analysis does it fall back to the
    device's ``memory_stats()["peak_bytes_in_use"]`` after one call, which is the process's
    high-water mark (an upper bound that includes earlier allocations); ``None`` when neither
    exists.
    """
    compiled, _ = compile_ahead(fn, args)
    footprint = compiled_footprint(compiled)
    return footprint if footprint is not None else _runtime_peak(fn, args)


def error_text(err):
    """``"ExceptionType: first line of the message"``, at most 300 characters."""
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS - 3] + "..."
