r"""Passkey retrieval: train at 512 tokens on the landmark paper's passkey prompts, then test
far past that length (``experiments/passkey.py``).

  python -m experiments.train --config=configs/passkey.py:kind=landmark --workdir=/tmp/pk_lm
  python -m experiments.train --config=configs/passkey.py:kind=dense --workdir=/tmp/pk_dense
  python -m experiments.passkey --config=configs/passkey.py:kind=landmark --workdir=/tmp/pk_lm

Windows come from ``task:passkey`` (prompt, the key, EOS; a fresh key and depth per window,
loss on every token). Arguments: ``kind`` (``landmark``, ``dense`` or ``ssmax``), ``mem_freq``
(landmark block length less one, default 32: 16 blocks per window), ``steps`` (default 4000,
20 with ``smoke``), ``smoke`` (the tiny model at 320 tokens).
"""

from configs import common


def get_config(arg: str | None = None):
    args = common.parse_arg(arg, kind="landmark", mem_freq=32, steps=0, smoke=False)
    config = common.base_config()
    config.data.corpus = "task:passkey"
    config.data.seq_len = 512
    config.data.batch_size = 32
    config.model.num_layers = 6
    config.model.embed_dim = 256
    config.model.num_heads = 8
    config.model.num_kv_heads = 4
    config.model.head_dim = 32
    config.model.mlp_dim = 768
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 200
    config.train.steps = 4000
    config.train.eval_every = 500
    config.train.eval_batches = 4
    config.checkpoint.save_every = 1000
    if args.smoke:
        common.apply_smoke(config)
        config.data.seq_len = 320
    if args.steps:
        common.set_steps(config, args.steps)
    if args.kind not in ("landmark", "dense", "ssmax"):
        raise ValueError(f"kind must be landmark, dense or ssmax, got {args.kind!r}")
    config.attention.kind = args.kind
    if args.kind == "landmark":
        config.attention.mem_freq = args.mem_freq if not args.smoke else 16
    config.lock()
    return config
