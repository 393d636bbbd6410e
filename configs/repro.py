r"""The reproduction suite: one small LM trained with each attention kind on identical data.

  python -m experiments.repro --workdir=/tmp/repro_tiny --size=tiny     # CPU, minutes
  python -m experiments.repro --workdir=/tmp/repro_cpu --size=cpu       # CPU, ~1 hour
  python -m experiments.repro --workdir=/tmp/repro_small --size=small   # one GPU

or one kind alone:

  python -m experiments.train --config=configs/repro.py:kind=landmark,size=small \
      --workdir=/tmp/repro_small/landmark

Arguments after the colon:

- ``kind``: ``dense`` (softmax), ``ssmax`` (scalable softmax), ``landmark`` (``mem_freq=32``),
  ``lsg`` (blocks of ``T/8``, ``T/32`` pooled tokens of 4 each, one global token),
  ``routing`` (16 clusters; every token attends to the ``T/16`` most recent members of its
  cluster at every length, half of the heads block-local with blocks of ``T/16``) or
  ``titans_mac`` (every layer a Titans memory-as-context block, segments of ``T/8``).
- ``size``: ``tiny`` (the smoke model: 2 layers x 64 wide, 512 tokens, 20 steps; a sanity
  check), ``cpu`` (2 layers x 128 wide, 4 heads of 32, 512 tokens, batch 8, 600 steps; the
  whole suite runs on a 2-core CPU in about an hour; 0.46M parameters, 0.43M routing, 0.70M
  Titans-MAC) or ``small`` (6 layers x 256 wide, 8 heads of
  32, 1024 tokens, batch 16, 2000 steps; a few minutes per kind on one GPU). Parameters
  (small): 5.18M for dense, SSMax, landmark and LSG, 4.79M for routing (one shared query-key
  projection), 7.60M for Titans-MAC (its memories).
- ``steps``, ``seq_len`` (the training length ``T``: a multiple of 128), ``task``, ``seed``
  (initialisation and data order; 0 by default; repeat a run under other seeds to see how
  far its numbers move); ``smoke`` is ``size=tiny``.

Every kind shares the model size, data, optimizer, steps and seed; only the attention (or,
for ``titans_mac``, the Titans layers) differs. All kinds use as many key/value heads as
query heads, because routing's shared query-key projection needs it.

Data: ``task:niah_single_2`` by default, RULER's single needle in a haystack of King James
sentences (``jaxattn/data/tasks/niah.py``): each window is a prompt of exactly ``T`` tokens
minus the answer, its 7-digit answer and EOS, with the loss on every token. Most of a window
is contiguous KJV text, so the model learns the language of the text it is later scored on
for perplexity (the embedded corpus's validation split, ``experiments/repro.py``), and every
window ends with a retrieval question, so needle accuracy against length is meaningful.
``size=small`` trains at 1024 tokens rather than 512 because a niah prompt has about 330
tokens of fixed header and question: at 512 a window holds only ~150 tokens of haystack,
at 1024 about 680. ``task=passkey`` trains on the landmark paper's passkey prompts instead.

The geometry of every kind is a fixed number of tokens, set from ``T``, so each kind runs at
every multiple of ``T`` (``eval_lengths``): landmark blocks of 32, LSG blocks of ``T/8``,
routing windows of ``T/16``, Titans segments of ``T/8`` (memory chunks of 8).
"""

from configs import common
from jaxattn.data import tasks

KINDS = ("dense", "ssmax", "landmark", "lsg", "routing", "titans_mac")
SIZES = ("tiny", "cpu", "small")
DEFAULT_TASK = "niah_single_2"
# The training length must be a multiple of this (so T/8, T/16, T/32 and mem_freq divide it).
LENGTH_MULTIPLE = 128
LANDMARK_MEM_FREQ = 32
ROUTING_CLUSTERS = 16


def check_kind(kind: str) -> str:
    """``kind`` if it is one of ``KINDS``, else ``ValueError`` listing them."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return kind


def _tiny(config) -> None:
    common.apply_smoke(config)
    config.data.seq_len = 512
    config.model.num_kv_heads = config.model.num_heads
    config.train.steps = 20
    config.train.log_every = 5
    config.train.eval_every = 20
    config.train.eval_batches = 2
    config.checkpoint.save_every = 20


def _model_and_schedule(*, seq_len, batch_size, num_layers, embed_dim, num_heads, mlp_dim,
                        learning_rate, warmup_steps, steps, eval_every, eval_batches):
    """A size's settings as ``config.update_from_flattened_dict`` takes them (heads of 32,
    as many key/value heads as query heads, a checkpoint at every evaluation)."""
    return {"data.seq_len": seq_len, "data.batch_size": batch_size,
            "model.num_layers": num_layers, "model.embed_dim": embed_dim,
            "model.num_heads": num_heads, "model.num_kv_heads": num_heads,
            "model.head_dim": 32, "model.mlp_dim": mlp_dim,
            "optim.learning_rate": learning_rate, "optim.warmup_steps": warmup_steps,
            "train.steps": steps, "train.log_every": 50, "train.eval_every": eval_every,
            "train.eval_batches": eval_batches, "checkpoint.save_every": eval_every}


_PRESETS = {
    "cpu": _model_and_schedule(
        seq_len=512, batch_size=8, num_layers=2, embed_dim=128, num_heads=4, mlp_dim=384,
        learning_rate=2e-3, warmup_steps=60, steps=600, eval_every=200, eval_batches=4),
    "small": _model_and_schedule(
        seq_len=1024, batch_size=16, num_layers=6, embed_dim=256, num_heads=8, mlp_dim=768,
        learning_rate=1e-3, warmup_steps=100, steps=2000, eval_every=500, eval_batches=8),
}


def _set_kind(config, kind: str) -> None:
    """The attention (or Titans) settings of ``kind`` for the training length."""
    length = config.data.seq_len
    attention = config.attention
    if kind in ("dense", "ssmax"):
        attention.kind = kind
    elif kind == "landmark":
        attention.kind = "landmark"
        attention.mem_freq = LANDMARK_MEM_FREQ
    elif kind == "lsg":
        attention.kind = "lsg"
        attention.block_size = length // 8
        attention.sparse_block_size = length // 32
        attention.sparsity_factor = 4
        attention.sparsity_type = "pooling"
        attention.num_global_tokens = 1
    elif kind == "routing":
        attention.kind = "routing"
        attention.num_clusters = ROUTING_CLUSTERS
        # A fixed window, so a token attends to as many keys at every length as in training.
        attention.cluster_size = length // ROUTING_CLUSTERS
        attention.local_heads = config.model.num_heads // 2
        attention.block_size = length // ROUTING_CLUSTERS
        attention.decay = 0.999
        attention.commitment_weight = 1e-4
    else:  # titans_mac: the Titans blocks bring their own attention; config.attention stays dense.
        titans = config.model.titans
        titans.arch = "mac"
        titans.segment_len = length // 8
        titans.chunk_size = 8
        titans.memory_depth = 2
        titans.max_lr = 0.01
        titans.num_persistent = 4


def lsg_options(config) -> dict:
    """The LSG options of ``config`` (a ``kind=lsg`` config) as keyword arguments of
    ``jaxattn.conversion.lsg_model_config``; ``lsg_from_dense`` converts with these."""
    a = config.attention
    return dict(block_size=a.block_size, sparse_block_size=a.sparse_block_size,
                sparsity_factor=a.sparsity_factor, sparsity_type=a.sparsity_type,
                num_global_tokens=a.num_global_tokens)


def eval_lengths(config, factors=(1, 2, 4, 8)) -> list[int]:
    """Evaluation lengths: the training length times each of ``factors``."""
    return [config.data.seq_len * int(f) for f in factors]


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, kind="dense", size="tiny", steps=0, seq_len=0, seed=0,
                            task=DEFAULT_TASK, smoke=False)
    if args.smoke:  # every config's CPU smoke setting; here it is the tiny size
        args.size = "tiny"
    check_kind(args.kind)
    if args.size not in SIZES:
        raise ValueError(f"unknown size {args.size!r}; valid sizes: {', '.join(SIZES)}")
    if args.task not in tasks.RETRIEVAL_TASKS:
        raise ValueError(f"task must be a retrieval task, one of "
                         f"{', '.join(tasks.RETRIEVAL_TASKS)}; got {args.task!r}")
    if args.steps < 0:
        raise ValueError(f"steps must be a positive int (0: the size's default), got "
                         f"{args.steps}")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {args.seed}")
    config = common.base_config()
    config.seed = args.seed
    if args.size == "tiny":
        _tiny(config)
    else:
        config.update_from_flattened_dict(_PRESETS[args.size])
    config.data.corpus = f"task:{args.task}"
    if args.steps:
        common.set_steps(config, args.steps)
    if args.seq_len:
        minimum = tasks.min_length(args.task) + 8
        if args.seq_len < minimum or args.seq_len % LENGTH_MULTIPLE:
            raise ValueError(f"seq_len must be a multiple of {LENGTH_MULTIPLE} and at least "
                             f"{minimum} (task {args.task!r}), got {args.seq_len}")
        config.data.seq_len = args.seq_len
    if config.data.seq_len < tasks.min_length(args.task) + 8:
        raise ValueError(f"size {args.size!r} trains at {config.data.seq_len} tokens, too short "
                         f"for task {args.task!r}; pass seq_len=")
    _set_kind(config, args.kind)
    config.lock()
    return config
