"""Passkey retrieval accuracy against prompt length (Mohtashami & Jaggi 2023, §4.2).

Each trial is a ``tasks.make_passkey`` prompt of exactly ``length`` tokens with the key at a
random depth; the model continues it greedily and the trial counts when the first integer of
the continuation is the key (``tasks.passkey_correct``). Landmark models read the prompt with
``LandmarkDecoder`` (chunks + top-k block retrieval); other models run the full forward over
the whole prompt and re-run it for each generated token.
"""

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxattn.data import tasks
from jaxattn.data.tokenizer import ByteTokenizer
from jaxattn.inference import LandmarkDecoder, RetrievalConfig


def _prompts(length, trials, seed):
    examples = [tasks.make_passkey(seed * 1_000_003 + trial, length) for trial in range(trials)]
    return examples, np.stack([e.prompt_ids for e in examples])


def _greedy_full(model, prompts, max_new_tokens):
    """Greedy continuation by re-running the full forward pass (any causal kind). The buffer
    has room for the new tokens from the start, so one compiled program serves every step:
    causal attention keeps the not-yet-written tail from reaching earlier positions."""

    @jax.jit
    def next_token(tokens, index):
        hidden = jax.lax.dynamic_index_in_dim(model.encode(tokens), index, axis=1,
                                              keepdims=False)
        return jnp.argmax(model.logits(hidden), axis=-1).astype(jnp.int32)

    batch, length = prompts.shape
    tokens = np.zeros((batch, length + max_new_tokens), np.int32)
    tokens[:, :length] = prompts
    for step in range(max_new_tokens):
        token = np.asarray(next_token(jnp.asarray(tokens), length - 1 + step))
        tokens[:, length + step] = token
    return tokens[:, length:]


def _greedy_landmark(decoder, prompts, max_new_tokens):
    decoder.reset()
    return decoder.generate(max_new_tokens, prompt=prompts)


def passkey_accuracy(model, lengths, *, trials=50, seed=0, batch_size=None,
                     retrieval: RetrievalConfig | None = None, max_new_tokens=8,
                     progress=True):
    """Accuracy per prompt length.

    Args:
      model: a ``TransformerLM``. A landmark model (every layer landmark) is decoded with
        ``LandmarkDecoder`` and ``retrieval`` (default ``RetrievalConfig()``); any other model
        with full attention over the whole prompt.
      lengths: prompt lengths in tokens (each at least ``tasks.min_length("passkey")``).
      trials: prompts per length (the paper uses 50).
      seed: picks the keys and their depths; the same for every model, so models compare on
        identical prompts.
      batch_size: prompts decoded together (default all ``trials``).
      max_new_tokens: greedy tokens generated (a 5-digit key needs 6, with its space).

    Returns:
      A list of dicts ``{"length", "accuracy", "trials", "correct", "method"}``.
    """
    landmark = model.cfg.landmark is not None
    method = "landmark retrieval" if landmark else "full attention"
    tokenizer = ByteTokenizer()
    batch_size = min(batch_size or trials, trials)
    if landmark:
        # One decoder (and one set of compiled functions) for every batch of prompts.
        decoder = LandmarkDecoder(model, retrieval or RetrievalConfig(), batch_size=batch_size)
    rows = []
    for length in tqdm.tqdm(lengths, desc=f"passkey ({method})", disable=not progress):
        examples, prompts = _prompts(length, trials, seed)
        correct = 0
        for start in range(0, trials, batch_size):
            chunk = prompts[start:start + batch_size]
            if landmark and chunk.shape[0] < batch_size:  # a last, smaller batch: pad it
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk),
                                                         axis=0)])
            if landmark:
                new = _greedy_landmark(decoder, chunk, max_new_tokens)
            else:
                new = _greedy_full(model, chunk, max_new_tokens)
            for example, ids in zip(examples[start:start + batch_size], new):
                correct += tasks.passkey_correct(tokenizer.decode(ids), example.answer)
        rows.append({"length": int(length), "accuracy": correct / trials, "trials": trials,
                     "correct": correct, "method": method})
    return rows
