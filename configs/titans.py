r"""The ``lm_tiny`` model with Titans layers (Behrouz, Zhong & Mirrokni 2025) in every layer.

  python -m experiments.train --config=configs/titans.py:arch=mac --workdir=/tmp/titans

Arguments after the colon: ``arch`` (``mac``: memory as context, the default; ``mag``:
memory as gate; ``mal``: memory as layer; ``lmm``: the memory alone) and ``smoke`` (a
seconds-long run), e.g. ``--config=configs/titans.py:arch=mag,smoke``.

Every layer is a Titans block with the lm_tiny attention heads and SwiGLU MLP; each training
sequence starts from the learned initial memory. MAC attends inside segments of 64 tokens
(4 per 256-token sequence) with the memory carrying the earlier segments; MAG and MAL use a
64-token sliding window. The memory is a 2-layer MLP per head written in chunks of 8 tokens
with step sizes up to ``max_lr=0.01`` (smoke: segments and windows of 16). Tune any field
from the command line, e.g. ``--config.model.titans.memory_depth=3``; ``data.seq_len`` must
stay a multiple of ``segment_len`` (MAC) or ``chunk_size`` (the others).
"""

from configs import common

ARCHS = ("mac", "mag", "mal", "lmm")


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, smoke=False, arch="mac")
    if args.arch not in ARCHS:
        raise ValueError(f"unknown titans arch {args.arch!r}; valid archs: {', '.join(ARCHS)}")
    config = common.base_config()
    if args.smoke:
        common.apply_smoke(config)
    span = 16 if args.smoke else 64  # MAC segment / MAG and MAL window
    titans = config.model.titans
    titans.arch = args.arch
    # Stability: the chunked update is heavy-ball gradient descent with every gradient of a
    # chunk taken at its start, so a chunk of b similar keys acts like one step of about
    # b / (1 - eta) times theta; a deep (MLP) memory's curvature also grows with its weights.
    # Chunks of 8 with theta <= 0.01 kept every layer's memory bounded on the corpus, where
    # chunks of 16 or max_lr 0.1 let some diverge (NaN gradients). That is the chunked rule's
    # own divergence, not rounding; --config.model.titans.max_grad_norm=1.0 (inner-loop
    # gradient clipping, off by default) keeps larger chunks or step sizes finite.
    titans.chunk_size = 8
    titans.memory_depth = 2
    titans.max_lr = 0.01
    if args.arch == "mac":
        titans.segment_len = span
    elif args.arch in ("mag", "mal"):
        titans.window = span
    if args.arch != "lmm":
        titans.num_persistent = 4
    # The Titans blocks bring their own attention; config.attention stays plain dense.
    config.attention.kind = "dense"
    config.lock()
    return config
