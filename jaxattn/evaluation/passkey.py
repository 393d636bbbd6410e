"""Passkey retrieval accuracy against prompt length (Mohtashami & Jaggi 2023, §4.2).

Each trial is a ``tasks.make_passkey`` prompt of exactly ``length`` tokens with the key at a
random depth; the model continues it greedily and the trial counts when the first integer of
the continuation is the key (``tasks.passkey_correct``). It is ``retrieval_grid`` with one
random-depth column: landmark models read the prompt with ``LandmarkDecoder`` (chunks + top-k
block retrieval), dense, SSMax, local and LSG models with ``KVCacheDecoder``; other models run
the full forward over the whole prompt.
"""

from jaxattn.evaluation.retrieval import retrieval_grid
from jaxattn.inference import RetrievalConfig


def passkey_accuracy(model, lengths, *, trials=50, seed=0, batch_size=None,
                     retrieval: RetrievalConfig | None = None, max_new_tokens=8,
                     progress=True):
    """Accuracy per prompt length.

    Args:
      model: a ``TransformerLM``. A landmark model is decoded with ``LandmarkDecoder`` and
        ``retrieval`` (default ``RetrievalConfig()``), a dense, SSMax, local or LSG model with
        ``KVCacheDecoder``, any other model by re-running its full forward.
      lengths: prompt lengths in tokens (each at least ``tasks.min_length("passkey")``).
      trials: prompts per length (the paper uses 50).
      seed: picks the keys and their depths; the same for every model, so models compare on
        identical prompts.
      batch_size: prompts decoded together (default all ``trials``).
      max_new_tokens: greedy tokens generated (a 5-digit key needs 6, with its space).

    Returns:
      A list of dicts ``{"length", "accuracy", "trials", "correct", "method"}``.
    """
    grid = retrieval_grid(model, "passkey", lengths, depths=None, trials=trials, seed=seed,
                          batch_size=batch_size, retrieval=retrieval,
                          max_new_tokens=max_new_tokens, progress=progress)
    return [{"length": row["length"], "accuracy": row["accuracy"], "trials": row["trials"],
             "correct": row["correct"], "method": grid["method"]} for row in grid["rows"]]
