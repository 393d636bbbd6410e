"""From a config (``configs/*.py``) to the objects the trainer needs, with errors that name
the config field at fault."""

import itertools

from jaxattn.attention import registry
from jaxattn.data import DataConfig, get_tokenizer
from jaxattn.nn.attention import AttentionSpec
from jaxattn.nn.titans import ARCHS, TitansConfig
from jaxattn.nn.transformer import TransformerConfig

# Fields of ``config.attention`` that are not options of the attention function.
_MODULE_FIELDS = ("kind", "layers", "ssmax_init", "implementation")


def attention_specs(attention_cfg, *, num_layers: int, seq_len: int) -> list[AttentionSpec]:
    """One validated ``AttentionSpec`` per layer from the ``attention`` config block."""
    layer_kinds = ([k.strip() for k in attention_cfg.layers.split(",")]
                   if attention_cfg.layers else [attention_cfg.kind])
    options = {name: value for name, value in attention_cfg.items()
               if name not in _MODULE_FIELDS and value is not None}
    specs = {}
    for kind in set(layer_kinds):
        try:
            spec = AttentionSpec.create(kind, implementation=attention_cfg.get("implementation"),
                                        **options)
            spec.options.check_seq_len(seq_len)
        except ValueError as e:
            raise ValueError(f"config.attention (kind {kind!r}): {e}") from e
        specs[kind] = spec
    return [specs[kind] for kind in itertools.islice(itertools.cycle(layer_kinds), num_layers)]


def titans_config(config) -> TitansConfig | None:
    """The ``TitansConfig`` of ``config.model.titans``, or ``None`` when ``arch`` is unset.

    Unset fields take ``TitansConfig``'s defaults; ``data.seq_len`` must be a multiple of the
    architecture's ``segment_len`` (MAC) or ``chunk_size`` (the others).
    """
    block = config.model.get("titans")
    if block is None:
        return None
    values = {name: value for name, value in block.items() if value is not None}
    arch = values.pop("arch", None)
    if arch is None:
        if values:
            raise ValueError(
                f"config.model.titans.{', model.titans.'.join(sorted(values))} set but "
                f"model.titans.arch is not; set arch to one of {', '.join(ARCHS)} or unset them")
        return None
    titans = TitansConfig(arch=arch, **values)
    titans.check_length("data.seq_len", config.data.seq_len,
                        "use a multiple such as {padded}")
    return titans


def model_config(config) -> TransformerConfig:
    m = config.model
    tokenizer = get_tokenizer(config.data.tokenizer)
    return TransformerConfig(
        vocab_size=tokenizer.vocab_size, num_layers=m.num_layers, embed_dim=m.embed_dim,
        num_heads=m.num_heads, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
        mlp_dim=m.mlp_dim,
        attention=attention_specs(config.attention, num_layers=m.num_layers,
                                  seq_len=config.data.seq_len),
        train_len=config.data.seq_len, rope_base=m.rope_base,
        ssmax_init=config.attention.ssmax_init, tie_embeddings=m.tie_embeddings,
        dropout_rate=m.dropout_rate, dtype=m.dtype, titans=titans_config(config))


def data_config(config) -> DataConfig:
    """The data of ``config``; a landmark model gets documents aligned to its blocks."""
    d = config.data
    landmark = model_config(config).landmark
    return DataConfig(corpus=d.corpus, tokenizer=d.tokenizer, seq_len=d.seq_len,
                      batch_size=d.batch_size, valid_fraction=d.valid_fraction,
                      seed=config.seed, tfds_data_dir=d.tfds_data_dir,
                      align=1 if landmark is None else landmark.mem_freq)


def known_kinds() -> list[str]:
    return registry.list_variants()
