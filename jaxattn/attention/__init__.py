"""Attention variants in pure JAX.

Every variant maps ``q [B, Tq, H, D]`` and ``k``/``v`` ``[B, Tk, K, D]`` (GQA: ``H % K == 0``)
to ``[B, Tq, H, D]``. Each variant module defines its options class and registers its kind(s)
with ``registry``; importing this package imports every variant module, so importing any
submodule (``registry`` included) leaves all kinds registered.
"""

from jaxattn.attention.dense import DenseOptions
from jaxattn.attention.dense import dense_attention
from jaxattn.attention.kv_cache import KVCache
from jaxattn.attention.kv_cache import cached_attention
from jaxattn.attention.landmark import LandmarkOptions
from jaxattn.attention.landmark import insert_landmarks
from jaxattn.attention.landmark import landmark_attention
from jaxattn.attention.local import LocalOptions
from jaxattn.attention.local import local_attention
from jaxattn.attention.local import local_block_schedule
from jaxattn.attention.lsg import LSGOptions
from jaxattn.attention.lsg import SPARSITY_TYPES
from jaxattn.attention.lsg import lsg_attention
from jaxattn.attention.lsg import lsg_key_schedule
from jaxattn.attention.registry import Options
from jaxattn.attention.registry import get_variant
from jaxattn.attention.registry import list_variants
from jaxattn.attention.registry import make_options
from jaxattn.attention.registry import register
from jaxattn.attention.routing import RoutingOptions
from jaxattn.attention.routing import assign_clusters
from jaxattn.attention.routing import commitment_loss
from jaxattn.attention.routing import init_centroids
from jaxattn.attention.routing import normalize_for_routing
from jaxattn.attention.routing import routing_attention
from jaxattn.attention.routing import update_centroids
from jaxattn.attention.ssmax import ssmax_init_value
from jaxattn.attention.ssmax import ssmax_logit_scale

__all__ = [
    "DenseOptions",
    "KVCache",
    "LSGOptions",
    "LandmarkOptions",
    "LocalOptions",
    "Options",
    "RoutingOptions",
    "SPARSITY_TYPES",
    "assign_clusters",
    "cached_attention",
    "commitment_loss",
    "dense_attention",
    "get_variant",
    "init_centroids",
    "insert_landmarks",
    "landmark_attention",
    "list_variants",
    "local_attention",
    "local_block_schedule",
    "lsg_attention",
    "lsg_key_schedule",
    "make_options",
    "normalize_for_routing",
    "register",
    "routing_attention",
    "ssmax_init_value",
    "ssmax_logit_scale",
    "update_centroids",
]
