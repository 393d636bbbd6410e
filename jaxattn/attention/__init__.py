"""Attention variants in pure JAX.

Every variant maps ``q [B, Tq, H, D]`` and ``k``/``v`` ``[B, Tk, K, D]`` (GQA: ``H % K == 0``)
to ``[B, Tq, H, D]``; ``registry`` names them and validates their options.
"""

from jaxattn.attention.dense import dense_attention
from jaxattn.attention.kv_cache import KVCache
from jaxattn.attention.kv_cache import cached_attention
from jaxattn.attention.landmark import insert_landmarks
from jaxattn.attention.landmark import landmark_attention
from jaxattn.attention.local import local_attention
from jaxattn.attention.lsg import SPARSITY_TYPES
from jaxattn.attention.lsg import lsg_attention
from jaxattn.attention.lsg import lsg_key_schedule
from jaxattn.attention.local import local_block_schedule
from jaxattn.attention.registry import DenseOptions
from jaxattn.attention.registry import LandmarkOptions
from jaxattn.attention.registry import LocalOptions
from jaxattn.attention.registry import LSGOptions
from jaxattn.attention.registry import RoutingOptions
from jaxattn.attention.routing import assign_clusters
from jaxattn.attention.routing import commitment_loss
from jaxattn.attention.routing import init_centroids
from jaxattn.attention.routing import normalize_for_routing
from jaxattn.attention.routing import routing_attention
from jaxattn.attention.routing import update_centroids
from jaxattn.attention.registry import get_variant
from jaxattn.attention.registry import list_variants
from jaxattn.attention.registry import make_options
from jaxattn.attention.registry import register
from jaxattn.attention.ssmax import ssmax_init_value
from jaxattn.attention.ssmax import ssmax_logit_scale

__all__ = [
    "DenseOptions",
    "KVCache",
    "cached_attention",
    "LandmarkOptions",
    "LSGOptions",
    "LocalOptions",
    "SPARSITY_TYPES",
    "lsg_attention",
    "lsg_key_schedule",
    "RoutingOptions",
    "assign_clusters",
    "commitment_loss",
    "init_centroids",
    "insert_landmarks",
    "landmark_attention",
    "normalize_for_routing",
    "routing_attention",
    "update_centroids",
    "dense_attention",
    "get_variant",
    "list_variants",
    "local_attention",
    "local_block_schedule",
    "make_options",
    "register",
    "ssmax_init_value",
    "ssmax_logit_scale",
]
