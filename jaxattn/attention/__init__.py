"""Attention variants in pure JAX.

Every variant maps ``q [B, Tq, H, D]`` and ``k``/``v`` ``[B, Tk, K, D]`` (GQA: ``H % K == 0``)
to ``[B, Tq, H, D]``. Each variant module defines its options class and registers its kind(s)
with ``registry``; importing this package imports every variant module, so importing any
submodule (``registry`` included) leaves all kinds registered.

The shared primitives (``attend``, ``attend_layout``, ``flash_attend``, ``merge_partials``),
the block layouts (``BlockLayout``, ``PositionRule``) and the backend resolution
(``BACKENDS``, ``FALLBACK_ORDER``, ``resolve_backend``) are what backends replace; Titans'
neural memory (``neural_memory``) and RoPE (``apply_rope``) are exported beside the kinds.
"""

from jaxattn.attention.backends import BACKENDS
from jaxattn.attention.backends import FALLBACK_ORDER
from jaxattn.attention.backends import resolve as resolve_backend
from jaxattn.attention.dense import DenseOptions
from jaxattn.attention.dense import dense_attention
from jaxattn.attention.kv_cache import KVCache
from jaxattn.attention.kv_cache import cached_attention
from jaxattn.attention.landmark import LandmarkOptions
from jaxattn.attention.landmark import RetrievedBlocks
from jaxattn.attention.landmark import insert_landmarks
from jaxattn.attention.landmark import landmark_attention
from jaxattn.attention.landmark_retrieval import select_blocks
from jaxattn.attention.layout import BlockLayout
from jaxattn.attention.layout import PositionRule
from jaxattn.attention.layout import position_layout
from jaxattn.attention.local import LocalOptions
from jaxattn.attention.local import local_attention
from jaxattn.attention.local import local_block_schedule
from jaxattn.attention.lsg import LSGOptions
from jaxattn.attention.lsg import SPARSITY_TYPES
from jaxattn.attention.lsg import lsg_attention
from jaxattn.attention.lsg import lsg_key_schedule
from jaxattn.attention.primitives import attend
from jaxattn.attention.primitives import attend_layout
from jaxattn.attention.primitives import flash_attend
from jaxattn.attention.primitives import merge_partials
from jaxattn.attention.registry import Options
from jaxattn.attention.registry import get_variant
from jaxattn.attention.registry import list_variants
from jaxattn.attention.registry import make_options
from jaxattn.attention.registry import register
from jaxattn.attention.rope import apply_rope
from jaxattn.attention.routing import RoutingOptions
from jaxattn.attention.routing import assign_clusters
from jaxattn.attention.routing import commitment_loss
from jaxattn.attention.routing import init_centroids
from jaxattn.attention.routing import normalize_for_routing
from jaxattn.attention.routing import routing_attention
from jaxattn.attention.routing import update_centroids
from jaxattn.attention.ssmax import ssmax_init_value
from jaxattn.attention.ssmax import ssmax_logit_scale
from jaxattn.attention.titans import MemoryState
from jaxattn.attention.titans import init_memory_state
from jaxattn.attention.titans import init_memory_weights
from jaxattn.attention.titans import neural_memory

__all__ = [
    "apply_rope",
    "assign_clusters",
    "attend",
    "attend_layout",
    "BACKENDS",
    "BlockLayout",
    "cached_attention",
    "commitment_loss",
    "dense_attention",
    "DenseOptions",
    "FALLBACK_ORDER",
    "flash_attend",
    "get_variant",
    "init_centroids",
    "init_memory_state",
    "init_memory_weights",
    "insert_landmarks",
    "KVCache",
    "landmark_attention",
    "LandmarkOptions",
    "list_variants",
    "local_attention",
    "local_block_schedule",
    "LocalOptions",
    "lsg_attention",
    "lsg_key_schedule",
    "LSGOptions",
    "make_options",
    "MemoryState",
    "merge_partials",
    "neural_memory",
    "normalize_for_routing",
    "Options",
    "position_layout",
    "PositionRule",
    "register",
    "resolve_backend",
    "RetrievedBlocks",
    "routing_attention",
    "RoutingOptions",
    "select_blocks",
    "SPARSITY_TYPES",
    "ssmax_init_value",
    "ssmax_logit_scale",
    "update_centroids",
]
