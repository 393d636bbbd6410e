"""Attention kinds by name: each maps to a function and a frozen, validated options class.

The path from a config to a computation is ``make_options(kind, **config)`` then
``get_variant(kind).apply(q, k, v, options, ...)``. Each variant module defines its options
class (a subclass of ``Options``) and registers its kind(s) with ``register``; options that a
kind fixes (a kind that is another kind's function with one option pinned) go in ``forced``.
This module imports no variant: the package ``__init__`` imports them, so they are registered
once anything under the package is imported.
"""

import dataclasses
import types
from typing import Any, Callable, Mapping

from jaxattn.attention import backends as backends_lib
from jaxattn.attention import core


class Options:
    """Base of the options dataclasses: validation hooks run on construction.

    A variant module subclasses it with a frozen dataclass of its options and overrides
    ``validate`` (and ``check_seq_len`` when the variant constrains the sequence length).
    """

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raises ``ValueError`` naming the first bad option."""

    def check_seq_len(self, seq_len):
        """Raises ``ValueError`` when the variant cannot run on ``seq_len`` tokens."""
        core.check_positive_int("seq_len", seq_len)


def _same(a, b):
    return type(a) is type(b) and a == b


@dataclasses.dataclass(frozen=True)
class Variant:
    """A registered attention kind.

    ``fn(q, k, v, *, segment_ids, ssmax_s, implementation, **options)`` returns
    ``[B, Tq, H, D]``; ``forced`` holds the option values this kind fixes.

    Stateful kinds (e.g. learned cluster centroids) also give ``init_state(options, *, num_heads,
    head_dim, key) -> state`` and ``update_state(q, k, state, options, *, segment_ids) ->
    (state, aux_loss)``; their ``fn`` takes ``state=``. The state is updated only by
    ``update_state``, after the attention that used it.

    ``backends`` maps each backend the kind has (``backends.BACKENDS``) to its support check
    ``(pattern, platform) -> None or reason``; ``fn`` dispatches on ``implementation`` with
    ``backends.resolve`` over this table.
    """

    name: str
    options_cls: type
    fn: Callable
    doc: str
    forced: Mapping[str, Any]
    init_state: Callable | None = None
    update_state: Callable | None = None
    backends: Mapping[str, Callable] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType(dict(backends_lib.REFERENCE_ONLY)))

    @property
    def stateful(self) -> bool:
        return self.init_state is not None

    def check_options(self, options):
        if not isinstance(options, self.options_cls):
            raise ValueError(
                f"options for attention kind {self.name!r} must be {self.options_cls.__name__}, "
                f"got {type(options).__name__}"
            )
        for key, value in self.forced.items():
            if not _same(getattr(options, key), value):
                raise ValueError(
                    f"option {key!r} of attention kind {self.name!r} must be {value!r}, "
                    f"got {getattr(options, key)!r}"
                )

    def apply(self, q, k, v, options, *, segment_ids=None, ssmax_s=None, implementation=None,
              state=None):
        """Runs the variant: ``q [B, Tq, H, D]``, ``k``/``v`` ``[B, Tk, K, D]`` → ``[B, Tq, H, D]``."""
        self.check_options(options)
        extra = {}
        if self.stateful:
            if state is None:
                raise ValueError(f"attention kind {self.name!r} is stateful: pass state= "
                                 f"(from its init_state)")
            extra["state"] = state
        elif state is not None:
            raise ValueError(f"attention kind {self.name!r} takes no state, got state=")
        return self.fn(q, k, v, segment_ids=segment_ids, ssmax_s=ssmax_s,
                       implementation=implementation, **extra, **dataclasses.asdict(options))


_REGISTRY: dict[str, Variant] = {}


def register(name, fn, options_cls, *, doc, forced=None, init_state=None, update_state=None,
             backends=None):
    """Adds attention kind ``name``; returns its ``Variant``. ``backends``: the kind's backend
    table (default: the reference alone)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"attention kind {name!r} is already registered")
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {fn!r}")
    if not (isinstance(options_cls, type) and dataclasses.is_dataclass(options_cls)):
        raise ValueError(f"options_cls must be a dataclass type, got {options_cls!r}")
    for method in ("validate", "check_seq_len"):
        if not callable(getattr(options_cls, method, None)):
            raise ValueError(f"options_cls {options_cls.__name__} must define {method}()")
    if not isinstance(doc, str):
        raise ValueError(f"doc must be a str, got {doc!r}")
    forced = dict(forced or {})
    fields = [f.name for f in dataclasses.fields(options_cls)]
    unknown = [key for key in forced if key not in fields]
    if unknown:
        raise ValueError(
            f"forced option {unknown[0]!r} is not an option of {options_cls.__name__}; "
            f"valid options: {', '.join(fields)}"
        )
    options_cls(**forced)
    if (init_state is None) != (update_state is None):
        raise ValueError("init_state and update_state go together: give both or neither")
    backends = dict(backends_lib.REFERENCE_ONLY if backends is None else backends)
    unknown = [key for key in backends if key not in backends_lib.BACKENDS]
    if unknown or "reference" not in backends or not all(map(callable, backends.values())):
        raise ValueError(f"backends must map names among {', '.join(backends_lib.BACKENDS)}, "
                         f"\"reference\" included, to support checks, got {backends!r}")
    variant = Variant(name=name, options_cls=options_cls, fn=fn, doc=doc,
                      forced=types.MappingProxyType(forced), init_state=init_state,
                      update_state=update_state, backends=types.MappingProxyType(backends))
    _REGISTRY[name] = variant
    return variant


def list_variants():
    """Registered kind names, sorted."""
    return sorted(_REGISTRY)


def get_variant(name):
    """The ``Variant`` registered as ``name``; ``ValueError`` listing the valid kinds otherwise."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown attention kind {name!r}; valid kinds: {', '.join(list_variants())}")
    return _REGISTRY[name]


def make_options(name, **kwargs):
    """Validated options for kind ``name``: defaults, overridden by ``kwargs``, with forced values."""
    variant = get_variant(name)
    fields = [f.name for f in dataclasses.fields(variant.options_cls)]
    for key in kwargs:
        if key not in fields:
            raise ValueError(
                f"unknown option {key!r} for attention kind {name!r}; valid options: {', '.join(fields)}"
            )
    for key, value in variant.forced.items():
        if key in kwargs and not _same(kwargs[key], value):
            raise ValueError(
                f"option {key!r} is fixed to {value!r} for attention kind {name!r}, got {kwargs[key]!r}"
            )
    return variant.options_cls(**{**kwargs, **variant.forced})

