"""Titans as Flax NNX modules (Behrouz, Zhong & Mirrokni 2025, arXiv 2501.00663).

- ``memory``: ``NeuralMemory``, the long-term memory module (LMM, §3.1 and §4.4) around
  ``jaxattn.attention.titans.neural_memory``, and ``PersistentMemory``, ``N_p`` learnable
  input-independent tokens (§3.3).
- ``blocks``: pre-norm residual blocks ``[B, T, d_model] -> [B, T, d_model]`` carrying an
  explicit state so that a stream runs segment by segment in constant memory: ``MACBlock``
  (memory as context, §4.1), ``MAGBlock`` (memory as gate, §4.2), ``MALBlock`` (memory as
  layer, §4.3), ``LMMBlock`` (the memory alone), and ``make_block``.
- ``config``: ``TitansConfig`` and ``ARCHS``, the Titans layers of a ``TransformerLM``.
- ``masked_attention`` and ``sequence``: the masked softmax attention of the blocks, and the
  input checks and segment scan they share.
"""

from jaxattn.nn.titans.blocks import (LMMBlock, MACBlock, MACState, MAGBlock, MALBlock,
                                      WindowState, make_block)
from jaxattn.nn.titans.config import ARCHS, TitansConfig
from jaxattn.nn.titans.memory import NeuralMemory, NeuralMemoryState, PersistentMemory

__all__ = ["ARCHS", "LMMBlock", "MACBlock", "MACState", "MAGBlock", "MALBlock", "NeuralMemory",
           "NeuralMemoryState", "PersistentMemory", "TitansConfig", "WindowState", "make_block"]
