r"""Passkey retrieval accuracy of a trained model against prompt length.

  python -m experiments.passkey --config=configs/passkey.py:kind=landmark \
      --workdir=/tmp/pk_lm --lengths=512,1024,2048,4096,8192 --trials=50

Loads the latest checkpoint in ``--workdir``. A landmark model reads each prompt in windows
of ``--chunk_blocks`` blocks and retrieves ``--top_k`` cached blocks per head and token
(``--selection``); ``--offload`` keeps the block cache in host memory. Any other model
attends to the whole prompt. Writes ``passkey.json`` and ``passkey.md`` to ``--out``
(default ``WORKDIR/passkey``).
"""

import json
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from jaxattn.evaluation import passkey_accuracy
from jaxattn.inference import RetrievalConfig
from jaxattn.training.trainer import load_checkpoint, model_from_state

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config the model was trained with.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of the run (its checkpoints).")
_OUT = flags.DEFINE_string("out", None, "Report directory (default WORKDIR/passkey).")
_LENGTHS = flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096"], "Prompt lengths.")
_TRIALS = flags.DEFINE_integer("trials", 50, "Prompts per length.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Prompts decoded together (default all).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the keys and their depths.")
_TOP_K = flags.DEFINE_integer("top_k", 4, "Landmark: blocks retrieved per head and token.")
_CHUNK = flags.DEFINE_integer("chunk_blocks", 8, "Landmark: blocks per window.")
_SELECTION = flags.DEFINE_string("selection", "per_token_and_head", "Landmark: block selection.")
_OFFLOAD = flags.DEFINE_bool("offload", False, "Landmark: keep the block cache in host memory.")
flags.mark_flags_as_required(["config", "workdir"])


def markdown(rows):
    lines = ["| length | accuracy | correct / trials | method |", "|---|---|---|---|"]
    lines += [f"| {r['length']} | {r['accuracy']:.2f} | {r['correct']} / {r['trials']} | "
              f"{r['method']} |" for r in rows]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    model_cfg, state, _ = load_checkpoint(_CONFIG.value, _WORKDIR.value)
    model = model_from_state(model_cfg, state)
    retrieval = RetrievalConfig(top_k=_TOP_K.value, chunk_blocks=_CHUNK.value,
                                selection=_SELECTION.value, offload=_OFFLOAD.value)
    rows = passkey_accuracy(model, [int(x) for x in _LENGTHS.value], trials=_TRIALS.value,
                            seed=_SEED.value, batch_size=_BATCH.value, retrieval=retrieval)
    for row in rows:
        row.update(step=int(state.step), device=jax.devices()[0].platform)
        if model_cfg.landmark is not None:
            row.update(top_k=retrieval.top_k, chunk_blocks=retrieval.chunk_blocks,
                       selection=retrieval.selection, offload=retrieval.offload)
    out = _OUT.value or os.path.join(_WORKDIR.value, "passkey")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "passkey.json"), "w") as f:
        json.dump(rows, f, indent=2)
    table = markdown(rows)
    with open(os.path.join(out, "passkey.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
