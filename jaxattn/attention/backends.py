"""Backends: which implementation runs an attention call, chosen per platform and pattern.

Every attention function takes ``implementation``:

- ``"reference"``: the readable pure-JAX code, the oracle; runs every pattern everywhere.
- ``"xla_chunked"``: memory-efficient pure JAX (``primitives.flash_attend``: online softmax
  over key blocks, memory-bounded backward; LSG streams its query blocks); no ``[T, T]``
  tensor. The long-sequence path on CPU and the fallback on every platform.
- ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")`` on a GPU, for the
  patterns cuDNN runs (bf16/fp16, causal or full, left windows, GQA; SSMax as a scale of q).
- ``"splash"``: TPU Splash attention. ``"pallas"``: this project's Pallas kernels.
- ``None``: the first backend of the platform's fallback order that runs the pattern; a
  call too small for chunking to save memory (``one_block``) skips ``"xla_chunked"``.

A variant declares, per backend it has, a check ``(pattern, platform) -> None or reason``;
a backend it does not list cannot run it. Asking explicitly for a backend that cannot run a
pattern is a ``ValueError`` naming the pattern, the reason and the backends that can.
"""

from typing import Callable, Mapping

import jax

BACKENDS = ("reference", "xla_chunked", "cudnn", "splash", "pallas")
PLATFORMS = ("cpu", "gpu", "tpu")

# Tried in this order by implementation=None; "reference" runs everything, so the search
# always ends. On CPU the chunked online softmax is also the faster one (it never builds the
# [Tq, Tk] logits and mask; docs/benchmarks.md), so it comes first there too.
FALLBACK_ORDER = {
    "cpu": ("xla_chunked", "reference"),
    "gpu": ("cudnn", "pallas", "xla_chunked", "reference"),
    "tpu": ("splash", "pallas", "xla_chunked", "reference"),
}

Support = Callable[[Mapping, str], "str | None"]


def current_platform() -> str:
    """``"cpu"``, ``"gpu"`` or ``"tpu"``: the default backend of this process."""
    name = jax.default_backend()
    return "gpu" if name in ("gpu", "cuda", "rocm") else name


def check_implementation(implementation) -> None:
    """``ValueError`` unless ``implementation`` is ``None`` or one of ``BACKENDS``."""
    if implementation is not None and (not isinstance(implementation, str)
                                       or implementation not in BACKENDS):
        raise ValueError(f"implementation must be None or one of {', '.join(BACKENDS)}, got "
                         f"{implementation!r}")


def describe(pattern: Mapping) -> str:
    """``"causal, window=8, segment_ids"``: the features a call uses (falsy ones left out)."""
    parts = [name if value is True else f"{name}={value}"
             for name, value in pattern.items() if value not in (None, False, 0)]
    return ", ".join(parts) or "no options"


def always(pattern, platform):
    """The support check of a backend that runs every pattern on every platform."""
    del pattern, platform
    return None


REFERENCE_ONLY = {"reference": always}


def needs_platform(name: str) -> Support:
    """A support check that only asks for platform ``name``."""
    def check(pattern, platform):
        del pattern
        return None if platform == name else f"it runs on {name}, this platform is {platform}"
    return check


def _reason(kind, name, table, pattern, platform):
    if name not in table:
        return f"{kind} attention has no {name} implementation"
    return table[name](pattern, platform)


def resolve(implementation, *, kind: str, pattern: Mapping, table: Mapping[str, Support],
            platform: str | None = None, one_block: bool = False) -> str:
    """The backend that runs this call.

    Args:
      implementation: ``None`` or one of ``BACKENDS``.
      kind: the variant's name, for messages.
      pattern: the features of the call (``describe``).
      table: the variant's backends, name -> support check.
      platform: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default ``current_platform()``.
      one_block: the call spans at most a block or two of ``xla_chunked``, whose loop then
        saves no memory; ``None`` takes the reference for it (the same numbers up to
        rounding, a simpler program that compiles faster).

    Raises:
      ValueError: ``implementation`` is not a backend, or cannot run the pattern.
    """
    check_implementation(implementation)
    platform = current_platform() if platform is None else platform
    if platform not in PLATFORMS:
        raise ValueError(f"platform must be one of {', '.join(PLATFORMS)}, got {platform!r}")
    if implementation is not None:
        reason = _reason(kind, implementation, table, pattern, platform)
        if reason is not None:
            able = [name for name in BACKENDS
                    if _reason(kind, name, table, pattern, platform) is None]
            raise ValueError(
                f"implementation={implementation!r} cannot run {kind} attention with "
                f"{describe(pattern)} on {platform}: {reason}; backends that can: "
                f"{', '.join(able)}")
        return implementation
    order = FALLBACK_ORDER[platform]
    if one_block:
        order = tuple(name for name in order if name != "xla_chunked")
    for name in order:
        if _reason(kind, name, table, pattern, platform) is None:
            return name
    raise AssertionError(f"{kind} attention lists no backend that runs {describe(pattern)}")
