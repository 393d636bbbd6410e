"""``TitansConfig``: the Titans layers of a ``TransformerLM`` (its ``titans`` field).

One architecture in every layer (``ARCHS``: memory as context, gate, layer, or alone), with
the LM's embeddings, final norm and unembedding around them; ``make_block``
(``jaxattn.nn.titans.blocks``) builds each layer from it. The config checks its fields on
construction and knows which input lengths the layers take (``multiple``,
``check_length``).
"""

import dataclasses
import math

from jaxattn.attention.titans import check_max_grad_norm


ARCHS = ("mac", "mag", "mal", "lmm")
"""Architectures ``TitansConfig.arch`` accepts: memory as context, gate, layer, or alone."""


@dataclasses.dataclass(frozen=True)
class TitansConfig:
    """The Titans layers of a ``TransformerLM`` (``TransformerConfig.titans``).

    Every layer is a block of architecture ``arch`` (with the LM's ``mlp_dim`` SwiGLU after
    the mixer), attention heads and RoPE base from the ``TransformerConfig``:

    - ``"mac"``: ``MACBlock``, memory as context (paper §4.1), attention inside segments of
      ``segment_len`` tokens; inputs must be a multiple of ``segment_len``.
    - ``"mag"``: ``MAGBlock``, memory as gate (§4.2), sliding-window attention of ``window``.
    - ``"mal"``: ``MALBlock``, memory as layer (§4.3), sliding-window attention of ``window``.
    - ``"lmm"``: ``LMMBlock``, the memory alone (no attention).

    MAG, MAL and LMM take inputs that are a multiple of ``chunk_size`` (see ``multiple``).

    Attributes:
      arch: one of ``ARCHS``.
      chunk_size: memory mini-batch ``b`` (paper §3.2); ``segment_len`` must be a multiple.
      segment_len: MAC's attention segment ``C`` (required for MAC); for MAG and MAL the scan
        step only (default: ``window`` rounded up to a multiple of ``chunk_size``); not used
        by LMM (must stay ``None``).
      window: MAG's and MAL's attention window ``W`` (required for them, ``None`` otherwise).
      num_persistent: ``N_p`` persistent tokens of MAC, MAG, MAL (default 4; ``None`` for
        LMM).
      memory_depth, memory_hidden: memory MLP depth ``L_M`` and width (default ``4 * D``).
      memory_heads, memory_head_dim: memory heads and dimension (default: the attention's).
      max_lr: largest memory step size ``theta``.
      conv_kernel: kernel of the memory's causal depthwise convolutions.
      max_grad_norm: ``None`` (default, the paper's rule) or a float ``> 0``: clip every token's
        inner-loop gradient of every memory layer to this Frobenius norm (``neural_memory``).

    Defaults (our choice) favour a stable memory: the chunked update is heavy-ball gradient
    descent with every gradient of a chunk taken at the chunk's start, so ``b`` similar keys
    act like one step of roughly ``b * theta / (1 - eta)``, and a deep memory's curvature
    grows with its weights. On the byte corpus, chunks of 16 or ``max_lr=0.1`` let some
    layers' memories diverge within a few training steps (non-finite gradients, while the
    output normalisation still hid it in the loss); chunks of 8 with ``max_lr=0.01`` did not.
    The divergence is the chunked rule's, not rounding (``jaxattn.attention.titans``,
    "Stability"); ``max_grad_norm`` bounds it when larger chunks or step sizes are wanted.
    """

    arch: str
    chunk_size: int = 8
    segment_len: int | None = None
    window: int | None = None
    num_persistent: int | None = None
    memory_depth: int = 2
    memory_hidden: int | None = None
    memory_heads: int | None = None
    memory_head_dim: int | None = None
    max_lr: float = 0.01
    conv_kernel: int = 4
    max_grad_norm: float | None = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"model.titans.arch must be one of {', '.join(ARCHS)}, got "
                             f"{self.arch!r}")

        def positive(name, required=False):
            value = getattr(self, name)
            if value is None and not required:
                return
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                need = " (required for arch " + repr(self.arch) + ")" if required else ""
                raise ValueError(f"model.titans.{name} must be a positive int{need}, got "
                                 f"{value!r}")

        def unused(name):
            if getattr(self, name) is not None:
                raise ValueError(f"model.titans.{name} is not used by arch {self.arch!r}; "
                                 f"leave it unset (None), got {getattr(self, name)!r}")

        for name in ("chunk_size", "memory_depth", "conv_kernel"):
            positive(name, required=True)
        for name in ("memory_hidden", "memory_heads", "memory_head_dim"):
            positive(name)
        if not (isinstance(self.max_lr, (int, float)) and not isinstance(self.max_lr, bool)
                and math.isfinite(self.max_lr) and self.max_lr > 0):
            raise ValueError(f"model.titans.max_lr must be a positive finite float, got "
                             f"{self.max_lr!r}")
        try:
            check_max_grad_norm(self.max_grad_norm)
        except ValueError as e:
            raise ValueError(f"model.titans.{e}") from None
        if self.arch == "lmm":
            for name in ("segment_len", "window", "num_persistent"):
                unused(name)
            return
        if self.num_persistent is None:
            object.__setattr__(self, "num_persistent", 4)
        if not isinstance(self.num_persistent, int) or isinstance(self.num_persistent, bool) \
                or self.num_persistent < 0:
            raise ValueError(f"model.titans.num_persistent must be an int >= 0, got "
                             f"{self.num_persistent!r}")
        if self.arch == "mac":
            unused("window")
            positive("segment_len", required=True)
        else:
            positive("window", required=True)
            if self.segment_len is None:
                object.__setattr__(self, "segment_len",
                                   self.chunk_size * -(-self.window // self.chunk_size))
            positive("segment_len")
        if self.segment_len % self.chunk_size:
            raise ValueError(f"model.titans.segment_len ({self.segment_len}) must be a multiple "
                             f"of model.titans.chunk_size ({self.chunk_size})")

    @property
    def multiple_name(self) -> str:
        """The field whose value input lengths must be a multiple of."""
        return "segment_len" if self.arch == "mac" else "chunk_size"

    @property
    def multiple(self) -> int:
        """Input lengths (and stream pieces) must be multiples of this: ``segment_len`` for
        MAC, ``chunk_size`` otherwise."""
        return getattr(self, self.multiple_name)

    def check_length(self, name: str, length: int,
                     advice: str = "pad to {padded} or split the stream at multiples of it"
                     ) -> None:
        """Raises ``ValueError`` naming ``name`` unless ``length`` is a positive multiple of
        ``multiple``; ``advice`` (formatted with ``padded``, the next multiple) ends it."""
        m = self.multiple
        if length < 1 or length % m:
            padded = max(m, -(-length // m) * m)
            what = "segments" if self.arch == "mac" else "memory chunks"
            raise ValueError(
                f"{name}: sequence length {length} is not a positive multiple of "
                f"model.titans.{self.multiple_name}={m} (the {self.arch.upper()} layers "
                f"process whole {what}); " + advice.format(padded=padded))
