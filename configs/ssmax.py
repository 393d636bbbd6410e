r"""The ``lm_tiny`` model with scalable softmax (Nakanishi 2025) in every layer.

  python -m experiments.train --config=configs/ssmax.py --workdir=/tmp/ssmax

``s`` starts at ``1 / log(seq_len)`` (equal to softmax at the training length) unless
``--config.attention.ssmax_init`` says otherwise. Arguments: ``smoke``.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, smoke=False)
    config = common.base_config()
    config.attention.kind = "ssmax"
    if args.smoke:
        common.apply_smoke(config)
    config.lock()
    return config
