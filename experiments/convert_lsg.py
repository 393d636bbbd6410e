r"""Converts a dense-attention checkpoint to LSG attention and compares perplexity at
lengths past the training length, with no retraining.

  python -m experiments.train --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny
  python -m experiments.convert_lsg --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny \
      --eval_lens=256,1024,2048,4096 --eval_batches=100

The LSG geometry comes from ``--block_size``, ``--sparse_block_size``, ``--sparsity_factor``,
``--sparsity_type`` and ``--num_global_tokens``. Writes ``convert_lsg.json`` and
``convert_lsg.md`` to ``--report_dir`` (default ``WORKDIR/lsg``).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from jaxattn.conversion import compare_with_dense

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config the dense model was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of the dense run (its checkpoints).")
_REPORT_DIR = flags.DEFINE_string("report_dir", None, "Where to write the report (default WORKDIR/lsg).")
_EVAL_LENS = flags.DEFINE_list("eval_lens", ["256", "1024", "2048"], "Evaluation lengths.")
_EVAL_BATCHES = flags.DEFINE_integer("eval_batches", 8, "Validation batches per length.")
_BLOCK = flags.DEFINE_integer("block_size", 64, "LSG local block.")
_SPARSE = flags.DEFINE_integer("sparse_block_size", 16, "Compressed tokens per side.")
_FACTOR = flags.DEFINE_integer("sparsity_factor", 4, "Compression factor.")
_TYPE = flags.DEFINE_string("sparsity_type", "pooling", "LSG sparsity type.")
_GLOBALS = flags.DEFINE_integer("num_global_tokens", 1, "Global tokens.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    lsg_options = dict(block_size=_BLOCK.value, sparse_block_size=_SPARSE.value,
                       sparsity_factor=_FACTOR.value, sparsity_type=_TYPE.value,
                       num_global_tokens=_GLOBALS.value)
    _, markdown = compare_with_dense(
        _CONFIG.value, _WORKDIR.value, eval_lens=[int(x) for x in _EVAL_LENS.value],
        eval_batches=_EVAL_BATCHES.value, lsg_options=lsg_options,
        out=_REPORT_DIR.value or os.path.join(_WORKDIR.value, "lsg"))
    print(markdown)


if __name__ == "__main__":
    app.run(main)
