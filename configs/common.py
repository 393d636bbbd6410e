"""Shared config pieces: strict ``:arg`` parsing and the base LM config every experiment edits.

Config files expose ``get_config(arg: str | None)``; ``arg`` is what follows the colon in
``--config=configs/lm_tiny.py:smoke,steps=50``.
"""

import ml_collections
from ml_collections import config_dict


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
    """Parses ``"a=1,b,c=x"`` against ``spec`` (name -> default), strictly and with types.

    A bare ``name`` means ``True``. Unknown names raise listing the valid ones; values are
    converted to the type of their default (bool accepts true/false/1/0).
    """
    result = ml_collections.ConfigDict(dict(spec))
    if not arg:
        return result
    for item in arg.split(","):
        name, sep, raw = item.partition("=")
        name = name.strip()
        if name not in spec:
            raise ValueError(f"unknown config argument {name!r}; valid arguments: "
                             f"{', '.join(sorted(spec))}")
        default = spec[name]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {name!r} needs a value: {name}=...")
            result[name] = True
        elif isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument {name!r} must be true or false, got {raw!r}")
            result[name] = raw.lower() in ("true", "1")
        else:
            try:
                result[name] = type(default)(raw)
            except ValueError as e:
                raise ValueError(f"config argument {name!r} must be a {type(default).__name__}, "
                                 f"got {raw!r}") from e
    return result


def attention_config(kind: str = "dense") -> ml_collections.ConfigDict:
    """The ``attention`` block. Options left ``None`` take the variant's own defaults; an
    option set for a kind that does not take it is an error, never silently dropped."""
    return ml_collections.ConfigDict({
        "kind": kind,
        # Comma-separated kinds, cycled over the layers (e.g. "local,local,local,dense");
        # empty: every layer uses `kind`.
        "layers": "",
        "causal": True,
        # Backend of every layer's attention: None (the platform's choice), "reference",
        # "xla_chunked", "cudnn", "splash" or "pallas" (jaxattn.attention.backends).
        "implementation": config_dict.placeholder(str),
        "softmax": config_dict.placeholder(str),
        "ssmax_init": config_dict.placeholder(float),  # default 1 / log(data.seq_len)
        "window": config_dict.placeholder(int),
        "block_size": config_dict.placeholder(int),
        # LSG attention (kind "lsg"); block_size above is its local block.
        "sparse_block_size": config_dict.placeholder(int),
        "sparsity_factor": config_dict.placeholder(int),
        "sparsity_type": config_dict.placeholder(str),
        "num_global_tokens": config_dict.placeholder(int),
        "lsh_seed": config_dict.placeholder(int),
        # Landmark attention (kind "landmark").
        "mem_freq": config_dict.placeholder(int),
        "landmark_in_loss": config_dict.placeholder(bool),
        # Routing attention (kind "routing").
        "num_clusters": config_dict.placeholder(int),
        "cluster_size": config_dict.placeholder(int),
        "assignment": config_dict.placeholder(str),
        "shared_qk": config_dict.placeholder(bool),
        "local_heads": config_dict.placeholder(int),
        "decay": config_dict.placeholder(float),
        "commitment_weight": config_dict.placeholder(float),
    })


def titans_config() -> ml_collections.ConfigDict:
    """The ``model.titans`` block: all unset (no Titans layers) unless ``arch`` is set. Fields
    are ``jaxattn.nn.titans.TitansConfig``'s; setting one without ``arch`` is an error."""
    return ml_collections.ConfigDict({
        "arch": config_dict.placeholder(str),
        "chunk_size": config_dict.placeholder(int),
        "segment_len": config_dict.placeholder(int),
        "window": config_dict.placeholder(int),
        "num_persistent": config_dict.placeholder(int),
        "memory_depth": config_dict.placeholder(int),
        "memory_hidden": config_dict.placeholder(int),
        "memory_heads": config_dict.placeholder(int),
        "memory_head_dim": config_dict.placeholder(int),
        "max_lr": config_dict.placeholder(float),
        "conv_kernel": config_dict.placeholder(int),
        # Inner-loop gradient clipping of the memory (None: the paper's rule, no clipping).
        "max_grad_norm": config_dict.placeholder(float),
    })


def base_config() -> ml_collections.ConfigDict:
    """A small byte-level LM on the embedded corpus; experiments override fields."""
    return ml_collections.ConfigDict({
        "seed": 0,
        "data": {
            "corpus": "builtin:kjv",
            "tokenizer": "byte",
            "seq_len": 256,
            "batch_size": 16,
            "valid_fraction": 0.02,
            "tfds_data_dir": config_dict.placeholder(str),
        },
        "model": {
            "num_layers": 4,
            "embed_dim": 128,
            "num_heads": 4,
            "num_kv_heads": 2,
            "head_dim": 32,
            "mlp_dim": 384,
            "rope_base": 10_000.0,
            "tie_embeddings": True,
            "dropout_rate": 0.0,
            "dtype": "float32",
            # Titans layers (configs/titans.py): `arch` (mac, mag, mal, lmm) set makes every
            # layer a Titans block; unset fields take TitansConfig's defaults.
            "titans": titans_config(),
        },
        "attention": attention_config(),
        "optim": {
            "learning_rate": 3e-3,
            "warmup_steps": 50,
            "final_lr_fraction": 0.1,
            "b1": 0.9,
            "b2": 0.95,
            "eps": 1e-8,
            "weight_decay": 0.1,
            "grad_clip_norm": 1.0,
        },
        "train": {
            "steps": 500,
            "log_every": 20,
            "eval_every": 100,
            "eval_batches": 8,
            "progress": True,
        },
        "checkpoint": {
            "save_every": 100,
            "keep": 3,
        },
        # Mesh axis sizes; -1 takes the remaining devices.
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1, "sequence": 1},
    })


def set_steps(config: ml_collections.ConfigDict, steps: int) -> None:
    """Sets ``train.steps`` to ``steps`` and shortens the schedule's other lengths to fit it:
    evaluation and checkpoint intervals at most ``steps``, warmup at most a tenth of it (a
    preset's warmup of 100 steps would otherwise reject ``steps=30``)."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    config.train.steps = steps
    config.train.eval_every = min(config.train.eval_every, steps)
    config.checkpoint.save_every = min(config.checkpoint.save_every, steps)
    config.optim.warmup_steps = min(config.optim.warmup_steps, steps // 10)


def apply_smoke(config: ml_collections.ConfigDict) -> None:
    """Shrinks ``config`` in place to a seconds-long CPU run (tests, notebooks, CI)."""
    config.data.seq_len = 64
    config.data.batch_size = 8
    config.model.num_layers = 2
    config.model.embed_dim = 64
    config.model.num_heads = 4
    config.model.num_kv_heads = 2
    config.model.head_dim = 16
    config.model.mlp_dim = 128
    config.optim.warmup_steps = 2
    config.train.steps = 20
    config.train.log_every = 5
    config.train.eval_every = 10
    config.train.eval_batches = 2
    config.checkpoint.save_every = 10
