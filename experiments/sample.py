r"""Samples text from a trained checkpoint.

  python -m experiments.sample --config=configs/lm_tiny.py --workdir=/tmp/lm_tiny \
      --prompt="In the beginning" --max_new_tokens=200 --temperature=0.8 --top_k=40 \
      --seed=0 --num_samples=1

Loads the latest checkpoint in ``--workdir`` (the config must be the one the run trained
with), builds the model's decoder with ``jaxattn.inference.make_decoder`` (KV caches for
dense, SSMax, local, LSG and routing models, retrieval for landmark models, the memory
stream for Titans models), encodes the prompt (``--prompt``, or the text of
``--prompt_file``) with the run's tokenizer and prints ``--num_samples`` continuations, drawn
together as one batch. ``--temperature=0`` is greedy. A continuation stops at the first EOS
token. Runs on the first device.
"""

import os

import jax
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from experiments.eval import check_checkpoint_dir
from jaxattn.data import get_tokenizer
from jaxattn.inference import check_sampling, make_decoder
from jaxattn.training.trainer import load_checkpoint, model_from_state


def define_flags():
    """Defines the command-line flags (only when this file runs as a program)."""
    config_flags.DEFINE_config_file("config", None, "Config the model was trained with.")
    flags.DEFINE_string("workdir", None, "Workdir of the run (its checkpoints).")
    flags.DEFINE_string("prompt", "In the beginning", "Text to continue.")
    flags.DEFINE_string("prompt_file", None, "Read the prompt from this file instead.")
    flags.DEFINE_integer("max_new_tokens", 200, "Tokens to generate per sample.")
    flags.DEFINE_float("temperature", 0.8, "Sampling temperature (0: greedy).")
    flags.DEFINE_integer("top_k", 40, "Sample among the top_k most likely tokens (0: all).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_integer("num_samples", 1, "Continuations, drawn together as one batch.")
    flags.DEFINE_integer("prefill_chunk", 256, "KV-cache models: prompt tokens per call.")
    flags.mark_flags_as_required(["config", "workdir"])


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    """``prompt_file``'s text when given, else ``prompt``: ``FileNotFoundError`` for a
    missing file, ``ValueError`` for empty text."""
    if prompt_file:
        if not os.path.isfile(prompt_file):
            raise FileNotFoundError(f"prompt_file {prompt_file!r} does not exist")
        with open(prompt_file, encoding="utf-8") as f:
            prompt = f.read()
    if not prompt:
        raise ValueError("prompt must be non-empty text (--prompt or --prompt_file)")
    return prompt


def _on_first_device(model):
    graph, state = nnx.split(model)
    return nnx.merge(graph, jax.device_put(state, jax.devices()[0]))


def sample(config, workdir: str, prompt: str, *, max_new_tokens: int = 200,
           temperature: float = 0.8, top_k: int | None = 40, seed: int = 0,
           num_samples: int = 1, prefill_chunk: int = 256) -> list[str]:
    """``num_samples`` continuations of ``prompt`` by the latest checkpoint of ``workdir``.

    Arguments are checked before the checkpoint is loaded (``ValueError``; a workdir without
    checkpoint: ``FileNotFoundError``).
    """
    if not prompt:
        raise ValueError("prompt must be non-empty text")
    for name, value in (("max_new_tokens", max_new_tokens), ("num_samples", num_samples),
                        ("prefill_chunk", prefill_chunk)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    check_sampling(temperature, top_k, seed)
    tokenizer = get_tokenizer(config.data.tokenizer)
    ids = tokenizer.encode(prompt)
    check_checkpoint_dir(workdir)

    model_cfg, state, _ = load_checkpoint(config, workdir)
    model = _on_first_device(model_from_state(model_cfg, state))
    del state
    decoder = make_decoder(model, batch_size=num_samples,
                           capacity=ids.shape[0] + max_new_tokens, prefill_chunk=prefill_chunk)
    prompts = np.repeat(ids[None], num_samples, axis=0)
    new = decoder.generate(max_new_tokens, prompt=prompts, temperature=temperature,
                           top_k=top_k, seed=seed)
    texts = []
    for row in new:
        stop = np.flatnonzero(row == tokenizer.eos_id)
        texts.append(tokenizer.decode(row[:stop[0]] if stop.size else row))
    return texts


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    prompt = read_prompt(f.prompt, f.prompt_file)
    texts = sample(f.config, f.workdir, prompt, max_new_tokens=f.max_new_tokens,
                   temperature=f.temperature, top_k=f.top_k or None, seed=f.seed,
                   num_samples=f.num_samples, prefill_chunk=f.prefill_chunk)
    for index, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {index + 1} of {len(texts)} ---")
        print(prompt + text, flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
