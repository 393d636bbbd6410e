r"""Converts a dense-attention checkpoint to LSG attention and compares perplexity at
lengths past the training length, with no retraining.

  python -m experiments.train --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny
  python -m experiments.convert_lsg --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny \
      --eval_lens=256,1024,2048 --out=/tmp/lm_tiny/lsg

The LSG geometry comes from ``--block_size``, ``--sparse_block_size``, ``--sparsity_factor``,
``--sparsity_type`` and ``--num_global_tokens``. Writes ``convert_lsg.json`` and
``convert_lsg.md`` to ``--out``.
"""

import dataclasses
import json
import os

import jax
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from jaxattn import conversion, sharding
from jaxattn.nn.transformer import TransformerLM
from jaxattn.training import builders
from jaxattn.training.checkpoint import Checkpointer, abstract_like
from jaxattn.training.optimizer import make_optimizer
from jaxattn.training.state import TrainState
from jaxattn.training.steps import make_eval_step
from jaxattn.training.trainer import create_train_state, evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config the dense model was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of the dense run (its checkpoints).")
_OUT = flags.DEFINE_string("out", None, "Where to write the report (default WORKDIR/lsg).")
_EVAL_LENS = flags.DEFINE_list("eval_lens", ["256", "1024", "2048"], "Evaluation lengths.")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 8, "Validation batches per length.")
_BLOCK = flags.DEFINE_integer("block_size", 64, "LSG local block.")
_SPARSE = flags.DEFINE_integer("sparse_block_size", 16, "Compressed tokens per side.")
_FACTOR = flags.DEFINE_integer("sparsity_factor", 4, "Compression factor.")
_TYPE = flags.DEFINE_string("sparsity_type", "pooling", "LSG sparsity type.")
_GLOBALS = flags.DEFINE_integer("num_global_tokens", 1, "Global tokens.")
flags.mark_flags_as_required(["config", "workdir"])


def load_dense(config, workdir):
    """``(model_cfg, state)`` of the latest checkpoint in ``workdir``."""
    model_cfg = builders.model_config(config)
    mesh = sharding.make_mesh(dict(config.mesh))
    optimizer = make_optimizer(config.optim, total_steps=config.train.steps)
    _, fresh = create_train_state(model_cfg, optimizer, mesh, config.seed)
    restored = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1,
                            keep=1).restore(abstract_like(fresh))
    if restored is None:
        raise FileNotFoundError(f"no checkpoint under {os.path.join(workdir, 'checkpoints')}; "
                                f"train the dense model first")
    return model_cfg, restored[0], mesh


def perplexities(model_cfg, params, variables, data_cfg, mesh, eval_lens, eval_batches):
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: TransformerLM(model_cfg, rngs=nnx.Rngs(0))))
    eval_step = jax.jit(make_eval_step(graphdef))
    state = TrainState(step=None, params=params, variables=variables, opt_state=None, rng=None)
    results = {}
    for length in eval_lens:
        cfg = dataclasses.replace(data_cfg, seq_len=length)
        results[length] = evaluate(eval_step, state, cfg, sharding.batch_sharding(mesh),
                                   max_batches=eval_batches)
    return results


def run(config, workdir, *, eval_lens, eval_batches, lsg_options, out):
    dense_cfg, state, mesh = load_dense(config, workdir)
    data_cfg = builders.data_config(config)
    lsg_cfg = conversion.lsg_model_config(dense_cfg, **lsg_options)
    for length in eval_lens:
        lsg_cfg.attention[0].options.check_seq_len(length)
    lsg_params = conversion.lsg_params_from_dense(state.params, lsg_cfg)
    rows = []
    for label, cfg, params in (("dense", dense_cfg, state.params), ("lsg", lsg_cfg, lsg_params)):
        logging.info("evaluating %s at %s", label, eval_lens)
        for length, metrics in perplexities(cfg, params, state.variables, data_cfg, mesh,
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    lsg_options = dict(block_size=_BLOCK.value, sparse_block_size=_SPARSE.value,
                       sparsity_factor=_FACTOR.value, sparsity_type=_TYPE.value,
                       num_global_tokens=_GLOBALS.value)
    _, markdown = run(_CONFIG.value, _WORKDIR.value, eval_lens=[int(x) for x in _EVAL_LENS.value],
                      eval_batches=_EVAL_BATCHES.value, lsg_options=lsg_options,
                      out=_OUT.value or os.path.join(_WORKDIR.value, "lsg"))
    print(markdown)


if __name__ == "__main__":
    app.run(main)
