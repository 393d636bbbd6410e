r"""The ``lm_tiny`` model with landmark attention (Mohtashami & Jaggi 2023) in every layer.

  python -m experiments.train --config=configs/landmark.py --workdir=/tmp/landmark

The model inserts a landmark token after every ``mem_freq`` tokens and trains with the grouped
softmax over the whole window (no retrieval in training, as in the paper); documents are padded
to multiples of ``mem_freq`` so that blocks never straddle two of them. At inference
``jaxattn.inference.landmark`` processes any length in chunks and retrieves the top-k cached
blocks per head and token. Arguments: ``smoke``, ``mem_freq=N`` (default ``seq_len / 16``: 16
at 256 tokens; the paper uses 50 at 512), ``landmark_in_loss``.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, smoke=False, mem_freq=0, landmark_in_loss=False)
    config = common.base_config()
    if args.smoke:
        common.apply_smoke(config)
    config.attention.kind = "landmark"
    config.attention.mem_freq = args.mem_freq or config.data.seq_len // 16
    config.attention.landmark_in_loss = args.landmark_in_loss
    config.lock()
    return config
