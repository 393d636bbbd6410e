r"""Trains the same small model on passkey prompts at 512 tokens with each attention kind and
tests passkey retrieval far past that length: the landmark paper's claim at small scale.

  python -m experiments.passkey_suite --workdir=/tmp/passkey_suite \
      --kinds=landmark,dense --steps=3000 --lengths=512,1024,2048,4096,8192 --trials=50

Each kind trains with ``configs/passkey.py:kind=KIND`` (``--config_args`` adds arguments, e.g.
``smoke``) in ``WORKDIR/KIND`` (an existing checkpoint is resumed, a finished run is only
evaluated), then ``jaxattn.evaluation.passkey_accuracy`` runs on identical prompts for every
kind: landmark models read them in windows with top-k block retrieval, the others with full
attention. Writes ``passkey_suite.json`` and ``passkey_suite.md`` (a length x kind table) to
``WORKDIR``.
"""

import json
import os
import time

import jax
from absl import app, flags, logging

from configs import passkey as passkey_config
from jaxattn.evaluation import passkey_accuracy
from jaxattn.inference import RetrievalConfig
from jaxattn.training import train_and_evaluate
from jaxattn.training.trainer import load_checkpoint, model_from_state

_WORKDIR = flags.DEFINE_string("workdir", None, "Root of the runs and the report.")
_KINDS = flags.DEFINE_list("kinds", ["landmark", "dense"], "Attention kinds to compare.")
_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps per kind.")
_CONFIG_ARGS = flags.DEFINE_string("config_args", "", "Extra configs/passkey.py arguments.")
_LENGTHS = flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096", "8192"],
                             "Prompt lengths in tokens.")
_TRIALS = flags.DEFINE_integer("trials", 50, "Prompts per length.")
_BATCH = flags.DEFINE_integer("batch_size", 10, "Prompts decoded together.")
_TOP_K = flags.DEFINE_integer("top_k", 4, "Landmark: blocks retrieved per head and token.")
_CHUNK = flags.DEFINE_integer("chunk_blocks", 8, "Landmark: blocks per window.")
flags.mark_flags_as_required(["workdir"])


def table(results, lengths):
    kinds = list(results)
    lines = ["| prompt tokens | " + " | ".join(kinds) + " |",
             "|---|" + "---|" * len(kinds)]
    for i, length in enumerate(lengths):
        cells = [f"{results[k]['passkey'][i]['accuracy']:.2f}" for k in kinds]
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    lengths = [int(x) for x in _LENGTHS.value]
    retrieval = RetrievalConfig(top_k=_TOP_K.value, chunk_blocks=_CHUNK.value)
    results = {}
    for kind in _KINDS.value:
        args = ",".join(a for a in (f"kind={kind}", f"steps={_STEPS.value}", _CONFIG_ARGS.value)
                        if a)
        config = passkey_config.get_config(args)
        workdir = os.path.join(_WORKDIR.value, kind)
        start = time.time()
        eval_metrics = train_and_evaluate(config, workdir)
        train_s = time.time() - start
        model_cfg, state, _ = load_checkpoint(config, workdir)
        start = time.time()
        rows = passkey_accuracy(model_from_state(model_cfg, state), lengths,
                                trials=_TRIALS.value, batch_size=_BATCH.value,
                                retrieval=retrieval)
        results[kind] = {"config_args": args, "train_seconds": train_s,
                         "eval_seconds": time.time() - start, "final_eval": eval_metrics,
                         "passkey": rows}
        logging.info("%s: %s", kind, rows)
    report = {"device": str(jax.devices()[0]), "retrieval": retrieval.__dict__,
              "results": results}
    with open(os.path.join(_WORKDIR.value, "passkey_suite.json"), "w") as f:
        json.dump(report, f, indent=2, default=float)
    markdown = table(results, lengths)
    with open(os.path.join(_WORKDIR.value, "passkey_suite.md"), "w") as f:
        f.write(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    app.run(main)
