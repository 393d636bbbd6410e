r"""The ``lm_tiny`` model with routing attention (Roy et al. 2021) in every layer.

  python -m experiments.train --config=configs/routing.py --workdir=/tmp/routing

Causal routing: queries and keys share one projection, each token joins its nearest of
``num_clusters`` online k-means centroids (``sqrt(seq_len)`` by default: 16 at 256 tokens)
and attends to the ``seq_len / num_clusters`` most recent members of its cluster; half of the
heads are block-local attention heads, as in the paper's mix. Arguments: ``smoke``.
"""

import math

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, smoke=False)
    config = common.base_config()
    if args.smoke:
        common.apply_smoke(config)
    config.attention.kind = "routing"
    config.attention.num_clusters = int(math.isqrt(config.data.seq_len))
    config.attention.local_heads = config.model.num_heads // 2
    config.attention.block_size = config.data.seq_len // config.attention.num_clusters
    config.attention.decay = 0.999
    config.attention.commitment_weight = 1e-4
    # Shared QK needs as many key heads as query heads.
    config.model.num_kv_heads = config.model.num_heads
    config.lock()
    return config
