"""Attention kinds by name: each maps to a function and a frozen, validated options class.

The path from a config to a computation is ``make_options(kind, **config)`` then
``get_variant(kind).apply(q, k, v, options, ...)``. A variant module registers itself with
``register``; options that a kind fixes (``"ssmax"`` is dense attention with
``softmax="ssmax"``) go in ``forced``.
"""

import dataclasses
import types
from typing import Any, Callable, Mapping

from jaxattn.attention import core
from jaxattn.attention import local as local_lib
from jaxattn.attention.dense import dense_attention
from jaxattn.attention.local import local_attention
from jaxattn.attention import landmark as landmark_lib
from jaxattn.attention import lsg as lsg_lib
from jaxattn.attention import routing as routing_lib


class _Options:
    """Validation hooks shared by the options dataclasses."""

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raises ``ValueError`` naming the first bad option."""

    def check_seq_len(self, seq_len):
        """Raises ``ValueError`` when the variant cannot run on ``seq_len`` tokens."""
        core.check_positive_int("seq_len", seq_len)


@dataclasses.dataclass(frozen=True)
class DenseOptions(_Options):
    """Options of ``dense_attention`` (kinds ``"dense"`` and ``"ssmax"``)."""

    causal: bool = True
    window: int | None = None
    softmax: str = "softmax"

    def validate(self):
        core.check_causal(self.causal)
        core.check_window(self.window)
        core.check_softmax(self.softmax)


@dataclasses.dataclass(frozen=True)
class LocalOptions(_Options):
    """Options of ``local_attention`` (kind ``"local"``)."""

    causal: bool = True
    block_size: int = 64
    softmax: str = "softmax"

    def validate(self):
        core.check_causal(self.causal)
        core.check_positive_int("block_size", self.block_size)
        core.check_softmax(self.softmax)

    def check_seq_len(self, seq_len):
        local_lib.check_seq_len(seq_len, self.block_size)


@dataclasses.dataclass(frozen=True)
class RoutingOptions(_Options):
    """Options of routing attention (kind ``"routing"``); see ``routing.py``.

    ``decay`` (k-means EMA) and ``commitment_weight`` (auxiliary loss) act in the training
    update of the centroids, the rest in the attention itself.
    """

    causal: bool = True
    num_clusters: int = 4
    cluster_size: int | None = None
    assignment: str | None = None
    shared_qk: bool = True
    local_heads: int = 0
    block_size: int = 64
    softmax: str = "softmax"
    decay: float = 0.999
    commitment_weight: float = 1e-4

    def validate(self):
        core.check_causal(self.causal)
        core.check_positive_int("num_clusters", self.num_clusters)
        if self.cluster_size is not None:
            core.check_positive_int("cluster_size", self.cluster_size)
        assignment = routing_lib.resolve_assignment(self.assignment, self.causal)
        if not isinstance(self.shared_qk, bool):
            raise ValueError(f"shared_qk must be a bool, got {self.shared_qk!r}")
        if assignment == "argmax" and not self.shared_qk:
            raise ValueError("shared_qk must be True with assignment='argmax' (each token is "
                             "routed once, by its query, which is also its key)")
        core.check_int("local_heads", self.local_heads, minimum=0)
        core.check_positive_int("block_size", self.block_size)
        core.check_softmax(self.softmax)
        if not (isinstance(self.decay, float) and 0.0 <= self.decay < 1.0):
            raise ValueError(f"decay must be a float in [0, 1), got {self.decay!r}")
        if not (isinstance(self.commitment_weight, (int, float))
                and not isinstance(self.commitment_weight, bool)
                and self.commitment_weight >= 0):
            raise ValueError(f"commitment_weight must be a non-negative float, got "
                             f"{self.commitment_weight!r}")

    def check_seq_len(self, seq_len):
        super().check_seq_len(seq_len)
        window = routing_lib.default_cluster_size(seq_len, self.num_clusters, self.cluster_size)
        if (routing_lib.resolve_assignment(self.assignment, self.causal) == "argmax"
                and seq_len % window):
            raise ValueError(f"sequence length {seq_len} is not a multiple of cluster_size="
                             f"{window}; choose num_clusters or cluster_size to divide it")
        if self.local_heads:
            local_lib.check_seq_len(seq_len, self.block_size)


@dataclasses.dataclass(frozen=True)
class LSGOptions(_Options):
    """Options of LSG attention (kind ``"lsg"``); see ``lsg.py``.

    The first ``num_global_tokens`` positions the function receives are the global tokens:
    ``TransformerLM`` prepends that many learned embeddings, so ``check_seq_len`` takes the
    length of the ordinary tokens.
    """

    causal: bool = True
    block_size: int = 128
    sparse_block_size: int = 128
    sparsity_factor: int = 2
    sparsity_type: str = "norm"
    num_global_tokens: int = 1
    softmax: str = "softmax"
    lsh_seed: int = 0

    def validate(self):
        core.check_causal(self.causal)
        lsg_lib.check_geometry(self.block_size, self.sparsity_factor, self.sparse_block_size)
        lsg_lib.check_sparsity_type(self.sparsity_type)
        core.check_int("num_global_tokens", self.num_global_tokens, minimum=0)
        core.check_softmax(self.softmax)
        core.check_int("lsh_seed", self.lsh_seed, minimum=0)

    def check_seq_len(self, seq_len):
        super().check_seq_len(seq_len)
        lsg_lib.check_seq_len(seq_len + self.num_global_tokens, block_size=self.block_size,
                              num_global_tokens=self.num_global_tokens)


@dataclasses.dataclass(frozen=True)
class LandmarkOptions(_Options):
    """Options of landmark attention (kind ``"landmark"``); see ``landmark.py``.

    ``TransformerLM`` inserts a landmark token after every ``mem_freq`` tokens (blocks of
    ``mem_freq + 1``), so ``check_seq_len`` takes the length of the ordinary tokens. With
    ``landmark_in_loss`` the training loss also counts the landmark positions (the token
    before a landmark predicts it, the landmark predicts the next block's first token), as
    in the paper's ``lm_benchmark``; evaluation always scores the ordinary tokens only.
    """

    causal: bool = True
    mem_freq: int = 50
    softmax: str = "softmax"
    landmark_in_loss: bool = False

    def validate(self):
        core.check_causal(self.causal)
        core.check_positive_int("mem_freq", self.mem_freq)
        core.check_softmax(self.softmax)
        if not isinstance(self.landmark_in_loss, bool):
            raise ValueError(f"landmark_in_loss must be a bool, got {self.landmark_in_loss!r}")

    def check_seq_len(self, seq_len):
        super().check_seq_len(seq_len)
        landmark_lib.check_mem_freq_multiple("seq_len", seq_len, self.mem_freq)

    @property
    def block_size(self) -> int:
        return self.mem_freq + 1


def _same(a, b):
    return type(a) is type(b) and a == b


@dataclasses.dataclass(frozen=True)
class Variant:
    """A registered attention kind.

    ``fn(q, k, v, *, segment_ids, ssmax_s, implementation, **options)`` returns
    ``[B, Tq, H, D]``; ``forced`` holds the option values this kind fixes.

    Stateful kinds (routing's centroids) also give ``init_state(options, *, num_heads,
    head_dim, key) -> state`` and ``update_state(q, k, state, options, *, segment_ids) ->
    (state, aux_loss)``; their ``fn`` takes ``state=``. The state is updated only by
    ``update_state``, after the attention that used it.
    """

    name: str
    options_cls: type
    fn: Callable
    doc: str
    forced: Mapping[str, Any]
    init_state: Callable | None = None
    update_state: Callable | None = None

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


def register(name, fn, options_cls, *, doc, forced=None, init_state=None, update_state=None):
    """Adds attention kind ``name``; returns its ``Variant``."""
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
    variant = Variant(name=name, options_cls=options_cls, fn=fn, doc=doc,
                      forced=types.MappingProxyType(forced), init_state=init_state,
                      update_state=update_state)
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


register(
    "dense",
    dense_attention,
    DenseOptions,
    doc="Dense softmax attention (causal or bidirectional, optional sliding window).",
)
register(
    "ssmax",
    dense_attention,
    DenseOptions,
    doc="Dense attention with Scalable-Softmax: logits scaled by s_h * log(n_i).",
    forced={"softmax": "ssmax"},
)
register(
    "local",
    local_attention,
    LocalOptions,
    doc="Block-local attention: each query block sees its own and the neighbouring key blocks.",
)
register(
    "lsg",
    lsg_lib.lsg_attention,
    LSGOptions,
    doc="LSG attention: local blocks, compressed sparse tokens and global tokens.",
)
register(
    "landmark",
    landmark_lib.apply_landmark,
    LandmarkOptions,
    doc="Landmark attention: a landmark token per block gates the block (grouped softmax).",
)
register(
    "routing",
    routing_lib.apply_routing,
    RoutingOptions,
    doc="Routing attention: online k-means clusters, attention inside each cluster.",
    init_state=routing_lib.init_routing_state,
    update_state=routing_lib.update_routing_state,
)
