r"""A tiny byte-level Transformer LM on the embedded King James text (the main job).

Trains in a few minutes on a CPU (faster on a GPU, used automatically when present):

  python -m experiments.train --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny

Switch the attention with a flag, e.g. scalable softmax:

  python -m experiments.train --config=configs/lm_tiny.py --workdir=/tmp/lm_ssmax \
      --config.attention.kind=ssmax

Arguments after the colon: ``smoke`` (a seconds-long run), ``kind=NAME`` (attention kind),
e.g. ``--config=configs/lm_tiny.py:smoke,kind=ssmax``.
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, smoke=False, kind="dense")
    config = common.base_config()
    config.attention.kind = args.kind
    if args.smoke:
        common.apply_smoke(config)
    config.lock()
    return config
