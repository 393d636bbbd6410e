r"""The ``lm_tiny`` model with LSG attention (Condevaux & Harispe 2022) in every layer.

  python -m experiments.train --config=configs/lsg.py --workdir=/tmp/lsg

Each query block of ``block_size`` tokens sees its own and the previous block (causal), the
``sparse_block_size`` compressed tokens left of that window (``sparsity_factor``-fold
pooling, or another ``sparsity_type``), and ``num_global_tokens`` learned global tokens.
Arguments: ``smoke``, ``sparsity_type=NAME``.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, smoke=False, sparsity_type="pooling")
    config = common.base_config()
    if args.smoke:
        common.apply_smoke(config)
    config.attention.kind = "lsg"
    config.attention.block_size = config.data.seq_len // 8
    config.attention.sparse_block_size = config.data.seq_len // 32
    config.attention.sparsity_factor = 4
    config.attention.sparsity_type = args.sparsity_type
    config.attention.num_global_tokens = 1
    config.lock()
    return config
