"""Turning a dense-attention ``TransformerLM`` into an LSG one without retraining
(Condevaux & Harispe 2022, Sec. 3.3: "extrapolate without additional training").

Every trained weight is reused unchanged; only the attention kind changes and the global
tokens are new. The paper initialises global token 0 as ``E[BOS] + pos[0]`` and the others
as ``E[MASK] + pos[perm(i)]``. Our models use RoPE (no position table to extend, so nothing
to copy there) and a byte vocabulary without a mask token, so global 0 is ``E[BOS]`` and
the others the mean of the token embeddings.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from jaxattn import sharding
from jaxattn.data import BOS_ID
from jaxattn.nn.attention import AttentionSpec
from jaxattn.nn.transformer import TransformerConfig, TransformerLM
from jaxattn.training import builders
from jaxattn.training.state import TrainState
from jaxattn.training.steps import make_eval_step
from jaxattn.training.trainer import evaluate, load_checkpoint


def lsg_model_config(dense_cfg: TransformerConfig, **lsg_options) -> TransformerConfig:
    """``dense_cfg`` with every layer's attention replaced by LSG with ``lsg_options``
    (``causal`` follows the dense layers)."""
    causal = {getattr(spec.options, "causal", True) for spec in dense_cfg.attention}
    if len(causal) != 1:
        raise ValueError("all layers of the dense model must agree on causal to convert it")
    spec = AttentionSpec.create("lsg", causal=causal.pop(), **lsg_options)
    return dataclasses.replace(dense_cfg, attention=[spec] * dense_cfg.num_layers)


def global_token_init(embedding: jnp.ndarray, num_global_tokens: int) -> jnp.ndarray:
    """``[num_global_tokens, embed]``: row 0 the BOS embedding, the rest the mean embedding."""
    rows = [embedding[BOS_ID]] + [jnp.mean(embedding, axis=0)] * (num_global_tokens - 1)
    return jnp.stack(rows[:num_global_tokens]).astype(embedding.dtype)


def lsg_params_from_dense(params: dict, lsg_cfg: TransformerConfig) -> dict:
    """The dense model's parameters (a pure dict) plus the new global tokens."""
    if "global_tokens" in params:
        raise ValueError("params already hold global_tokens: convert a dense model")
    converted = dict(params)
    if lsg_cfg.num_global_tokens:
        converted["global_tokens"] = global_token_init(params["embed"]["embedding"],
                                                       lsg_cfg.num_global_tokens)
    return converted


def load_dense(config, workdir):
    """``(model_cfg, state, mesh)``: the latest checkpoint of the dense run in ``workdir``."""
    return load_checkpoint(config, workdir)


def _perplexities(model_cfg, params, variables, data_cfg, mesh, eval_lens, eval_batches):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: TransformerLM(model_cfg, rngs=nnx.Rngs(0))))
    eval_step = jax.jit(make_eval_step(graphdef))
    state = TrainState(step=None, params=params, variables=variables, opt_state=None, rng=None)
    results = {}
    for length in eval_lens:
        cfg = dataclasses.replace(data_cfg, seq_len=length)
        results[length] = evaluate(eval_step, state, cfg, sharding.batch_sharding(mesh),
                                   max_batches=eval_batches)
    return results


def compare_with_dense(config, workdir, *, eval_lens, eval_batches, lsg_options, out):
    """Evaluates the dense checkpoint in ``workdir`` and its LSG conversion at ``eval_lens``;
    writes ``convert_lsg.json`` and ``convert_lsg.md`` to ``out``. Returns ``(rows, markdown)``."""
    dense_cfg, state, mesh = load_dense(config, workdir)
    data_cfg = builders.data_config(config)
    lsg_cfg = lsg_model_config(dense_cfg, **lsg_options)
    for length in eval_lens:
        lsg_cfg.attention[0].options.check_seq_len(length)
    lsg_params = lsg_params_from_dense(state.params, lsg_cfg)
    rows = []
    for label, cfg, params in (("dense", dense_cfg, state.params), ("lsg", lsg_cfg, lsg_params)):
        logging.info("evaluating %s at %s", label, eval_lens)
        for length, metrics in _perplexities(cfg, params, state.variables, data_cfg, mesh,
                                            eval_lens, eval_batches).items():
            rows.append({"model": label, "eval_len": length, **metrics})
    train_len = config.data.seq_len
    lines = [f"Dense model trained at {train_len} tokens, converted to LSG {lsg_options} "
             f"without retraining; {eval_batches} validation batches per length.", "",
             "| eval length | x train | dense ppl | LSG ppl | dense bits/byte | LSG bits/byte |",
             "|---:|---:|---:|---:|---:|---:|"]
    by = {(r["model"], r["eval_len"]): r for r in rows}
    for length in eval_lens:
        d, g = by[("dense", length)], by[("lsg", length)]
        lines.append(f"| {length} | {length / train_len:g} | {d['perplexity']:.3f} | "
                     f"{g['perplexity']:.3f} | {d['bits_per_byte']:.3f} | "
                     f"{g['bits_per_byte']:.3f} |")
    markdown = "\n".join(lines)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "convert_lsg.json"), "w", encoding="utf-8") as f:
        json.dump({"train_len": train_len, "lsg_options": lsg_options, "rows": rows}, f, indent=2)
    with open(os.path.join(out, "convert_lsg.md"), "w", encoding="utf-8") as f:
        f.write(markdown + "\n")
    return rows, markdown
