"""One entry point for stateful decoding: the right decoder for a model, one interface.

Every decoder ``make_decoder`` returns holds a stream and offers

- ``feed(tokens [batch_size, n]) -> logits [batch_size, n, vocab]`` (float32, NumPy),
- ``generate(max_new_tokens, *, prompt=None, temperature=0.0, top_k=None, seed=0)
  -> [batch_size, max_new_tokens]`` (greedy at temperature 0),
- ``reset()``, ``cache_bytes()``, and the attributes ``batch_size``, ``vocab_size`` and
  ``num_tokens``.
"""

from typing import Protocol, runtime_checkable

import numpy as np

from jaxattn.inference.kv_decoder import KVCacheDecoder
from jaxattn.inference.landmark import LandmarkDecoder, RetrievalConfig
from jaxattn.inference.titans import TitansStream
from jaxattn.nn.transformer import TransformerLM


@runtime_checkable
class Decoder(Protocol):
    """What ``KVCacheDecoder``, ``LandmarkDecoder`` and ``TitansStream`` have in common."""

    batch_size: int
    vocab_size: int
    num_tokens: int

    def feed(self, tokens) -> np.ndarray: ...

    def generate(self, max_new_tokens: int, *, prompt=None, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0) -> np.ndarray: ...

    def reset(self) -> None: ...

    def cache_bytes(self) -> int: ...


def decoder_kind(model) -> str:
    """``"landmark"``, ``"titans"`` or ``"kv_cache"``: which decoder serves ``model``;
    ``ValueError`` naming the attention kind for a model none serves (a bidirectional
    layer)."""
    if not isinstance(model, TransformerLM):
        raise ValueError(f"model must be a TransformerLM, got {type(model).__name__}")
    if model.cfg.titans is not None:
        return "titans"
    if model.cfg.landmark is not None:
        return "landmark"
    try:
        model.check_kv_cache()
    except ValueError as e:
        raise ValueError(f"no stateful decoder for this model ({e}); decode it by re-running "
                         f"the full forward pass: jaxattn.evaluation.retrieval."
                         f"FullForwardGreedy") from None
    return "kv_cache"


def make_decoder(model, *, batch_size: int = 1, capacity: int | None = None,
                 retrieval: RetrievalConfig | None = None, prefill_chunk: int = 256,
                 max_piece_len: int = 512) -> Decoder:
    """The stateful decoder of ``model``.

    - landmark models: ``LandmarkDecoder(model, retrieval or RetrievalConfig())``;
    - Titans models: ``TitansStream(model, max_piece_len=max_piece_len)``;
    - models whose every layer is causal dense, ssmax, local, LSG or routing attention:
      ``KVCacheDecoder(model, capacity=capacity, prefill_chunk=prefill_chunk)``, ``capacity``
      defaulting to the model's ``train_len``;
    - anything else (a bidirectional layer): ``ValueError`` naming the kind.

    ``batch_size`` is the rows of every call. Arguments that do not apply to the chosen
    decoder are ignored.
    """
    kind = decoder_kind(model)
    if kind == "landmark":
        return LandmarkDecoder(model, retrieval or RetrievalConfig(), batch_size=batch_size)
    if kind == "titans":
        return TitansStream(model, batch_size=batch_size, max_piece_len=max_piece_len)
    return KVCacheDecoder(model, batch_size=batch_size,
                          capacity=model.cfg.train_len if capacity is None else capacity,
                          prefill_chunk=prefill_chunk)
