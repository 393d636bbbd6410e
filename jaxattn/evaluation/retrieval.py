"""Retrieval accuracy on a grid of prompt lengths x needle depths (passkey, RULER single NIAH
1/2/3, BABILong qa1; evals_data.md §1.1-1.3).

Each cell holds ``trials`` prompts of exactly ``length`` tokens from ``tasks.make_example(task,
seed, length, depth=depth)``; trial ``i`` uses the seed ``seed * 1_000_003 + i`` in every
cell, and the generators draw the needle (key, value) before its position, so a row of the
grid asks for the same needles at different depths. The model continues each prompt greedily
and the task's own metric (``tasks.retrieval_correct``) scores the continuation. Landmark
models read the prompt with ``LandmarkDecoder`` (windows of blocks and top-k retrieval);
Titans models with ``TitansStream`` (the prompt written into every layer's memory);
dense, SSMax, local, LSG and routing models with ``KVCacheDecoder`` (chunked prefill into
per-layer KV caches, then one token per step); any other model re-runs its full forward pass
over a buffer long enough for prompt + answer.

Tasks whose generator places the needle itself (``babilong_qa1`` scatters its facts at random
sentence boundaries) take no depth: their grid has one column, ``depth=None`` ("random"),
and each row reports the mean realised depth of its needles.
"""

import inspect
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx

from jaxattn.data import tasks
from jaxattn.data.tokenizer import ByteTokenizer
from jaxattn.inference import (KVCacheDecoder, LandmarkDecoder, RetrievalConfig, TitansStream,
                               decoder_kind)

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
METHODS = ("auto", "forward", "decoder", "kv_cache", "stream")

# decode(prompts [B, L] int32, max_new_tokens) -> greedy continuation [B, max_new_tokens].
DecodeFn = Callable[[np.ndarray, int], np.ndarray]


def check_task(task: str) -> str:
    """``task`` if it is a retrieval task, else ``ValueError`` listing the valid names."""
    if task not in tasks.RETRIEVAL_TASKS:
        raise ValueError(f"unknown retrieval task {task!r}; valid tasks: "
                         f"{', '.join(tasks.RETRIEVAL_TASKS)}")
    return task


def takes_depth(task: str) -> bool:
    """Whether the task's generator accepts ``depth=``."""
    return "depth" in inspect.signature(tasks.TASKS[check_task(task)]).parameters


def check_lengths(task: str, lengths: Sequence[int]) -> list[int]:
    """The lengths as ints; ``ValueError`` naming the task's minimum for any that is shorter."""
    minimum = tasks.min_length(check_task(task))
    lengths = [int(n) for n in lengths]
    if not lengths:
        raise ValueError("lengths must hold at least one prompt length")
    short = [n for n in lengths if n < minimum]
    if short:
        raise ValueError(f"length(s) {short} too short for task {task!r}: its prompts need at "
                         f"least {minimum} tokens")
    return lengths


def check_depths(task: str, depths: Sequence[float | None] | None) -> list[float | None]:
    """Depths as floats in [0, 1]; ``[None]`` for a task that takes no depth (which must then
    get ``None`` or only ``None`` entries)."""
    if not takes_depth(task):
        if depths is not None and any(d is not None for d in depths):
            raise ValueError(f"task {task!r} places its needle itself and takes no depth; pass "
                             "depths=None")
        return [None]
    if depths is None:
        return [None]
    out = []
    for d in depths:
        if d is not None and (isinstance(d, bool) or not 0.0 <= float(d) <= 1.0):
            raise ValueError(f"depths must be numbers in [0, 1] (or None for random), got {d!r}")
        out.append(None if d is None else float(d))
    if not out:
        raise ValueError("depths must hold at least one depth")
    return out


def runnable_length(cfg, needed: int, *, search: int = 1 << 16) -> int:
    """The smallest sequence length ``>= needed`` that every layer of a ``TransformerConfig``
    accepts (multiples of block sizes, of ``mem_freq``, of a Titans segment, ...)."""
    for n in range(needed, needed + search):
        try:
            for spec in cfg.attention:
                spec.options.check_seq_len(n)
            if getattr(cfg, "titans", None) is not None:
                cfg.titans.check_length("tokens", n)
        except ValueError:
            continue
        return n
    raise ValueError(f"no sequence length in [{needed}, {needed + search}) fits every layer")


class FullForwardGreedy:
    """Greedy continuation by re-running the full forward pass (any causal kind).

    The buffer has room for the new tokens from the start (rounded up to a length every layer
    accepts), so one compiled program serves every step and every batch of a prompt length:
    causal attention keeps the not-yet-written tail from reaching earlier positions.
    """

    method = "full attention"

    def __init__(self, model):
        self.cfg = model.cfg
        graph, self._state = nnx.split(model)
        offset = model.cfg.num_global_tokens  # encode() puts LSG's global tokens first

        @jax.jit
        def next_token(state, tokens, index):
            m = nnx.merge(graph, state)
            hidden = jax.lax.dynamic_index_in_dim(m.encode(tokens), index + offset, axis=1,
                                                  keepdims=False)
            return jnp.argmax(m.logits(hidden), axis=-1).astype(jnp.int32)

        self._next = next_token

    def __call__(self, prompts, max_new_tokens: int) -> np.ndarray:
        prompts = np.asarray(prompts, np.int32)
        batch, length = prompts.shape
        total = runnable_length(self.cfg, length + max_new_tokens - 1)
        tokens = np.zeros((batch, total), np.int32)
        tokens[:, :length] = prompts
        new = np.zeros((batch, max_new_tokens), np.int32)
        for step in range(max_new_tokens):
            new[:, step] = np.asarray(self._next(self._state, jnp.asarray(tokens),
                                                 length - 1 + step))
            if length + step < total:
                tokens[:, length + step] = new[:, step]
        return new


def _generate_in_batches(decoder, prompts, max_new_tokens: int) -> np.ndarray:
    """Greedy continuations of ``prompts [n, L]`` by a stateful ``decoder`` of fixed
    ``batch_size``: ``batch_size`` prompts at a time from a reset decoder, a short last batch
    padded with copies of its last row."""
    prompts = np.asarray(prompts, np.int32)
    size, out = decoder.batch_size, []
    for start in range(0, prompts.shape[0], size):
        chunk = prompts[start:start + size]
        real = chunk.shape[0]
        if real < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, axis=0)])
        decoder.reset()
        out.append(decoder.generate(max_new_tokens, prompt=chunk)[:real])
    return np.concatenate(out)


class LandmarkGreedy:
    """Greedy continuation with ``LandmarkDecoder``: one decoder (and one set of compiled
    functions) for every prompt; prompts run ``batch_size`` at a time."""

    method = "landmark retrieval"

    def __init__(self, model, retrieval: RetrievalConfig | None = None, *, batch_size: int):
        self.decoder = LandmarkDecoder(model, retrieval or RetrievalConfig(),
                                       batch_size=batch_size)

    def __call__(self, prompts, max_new_tokens: int) -> np.ndarray:
        return _generate_in_batches(self.decoder, prompts, max_new_tokens)


class TitansGreedy:
    """Greedy continuation with ``TitansStream`` (Titans models): the prompt is written into
    every layer's neural memory piece by piece, then one token per step, so decoding holds
    the constant-size stream state rather than the prompt. Prompts run ``batch_size`` at a
    time, each batch from the learned initial memory."""

    method = "titans memory"

    def __init__(self, model, *, batch_size: int, max_piece_len: int = 512):
        self.stream = TitansStream(model, batch_size=batch_size, max_piece_len=max_piece_len)

    def __call__(self, prompts, max_new_tokens: int) -> np.ndarray:
        return _generate_in_batches(self.stream, prompts, max_new_tokens)


class KVCacheGreedy:
    """Greedy continuation with ``KVCacheDecoder`` (dense, SSMax, local, LSG and routing
    models): the prompt is prefilled in chunks of ``prefill_chunk`` tokens, then one token
    per step.

    The caches hold prompt + answer rounded up to a multiple of ``prefill_chunk``; one
    decoder (and its compiled functions) is kept per such capacity, so every prompt length
    of a grid compiles once. Prompts run ``batch_size`` at a time.
    """

    method = "kv cache"

    def __init__(self, model, *, batch_size: int, prefill_chunk: int = 256):
        model.check_kv_cache()
        self.model, self.batch_size, self.prefill_chunk = model, batch_size, prefill_chunk
        self.decoders = {}

    def _decoder(self, needed):
        capacity = -(-needed // self.prefill_chunk) * self.prefill_chunk
        if capacity not in self.decoders:
            self.decoders[capacity] = KVCacheDecoder(
                self.model, batch_size=self.batch_size, capacity=capacity,
                prefill_chunk=self.prefill_chunk)
        return self.decoders[capacity]

    def __call__(self, prompts, max_new_tokens: int) -> np.ndarray:
        prompts = np.asarray(prompts, np.int32)
        return _generate_in_batches(self._decoder(prompts.shape[1] + max_new_tokens), prompts,
                                    max_new_tokens)


def greedy_decoder(model, *, method: str = "auto", retrieval: RetrievalConfig | None = None,
                   batch_size: int = 1) -> DecodeFn:
    """A ``DecodeFn`` for ``model``. ``"auto"``: ``LandmarkGreedy`` for landmark models,
    ``TitansGreedy`` for Titans models, ``KVCacheGreedy`` for models whose every layer is
    causal dense, ssmax, local, LSG or routing attention, ``FullForwardGreedy`` otherwise.
    ``"forward"``, ``"decoder"`` (landmark), ``"stream"`` (Titans) and ``"kv_cache"`` force
    one.

    Routing with ``cluster_size=None``: the KV cache keeps the training window
    ``train_len // num_clusters``, while ``FullForwardGreedy``'s window follows its buffer
    length (``buffer // num_clusters``); they agree when ``cluster_size`` is set."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        try:
            kind = decoder_kind(model)
        except ValueError:
            kind = "forward"
        method = {"landmark": "decoder", "titans": "stream", "kv_cache": "kv_cache"}.get(
            kind, "forward")
    if method == "decoder":
        return LandmarkGreedy(model, retrieval, batch_size=batch_size)
    if method == "stream":
        return TitansGreedy(model, batch_size=batch_size)
    if method == "kv_cache":
        return KVCacheGreedy(model, batch_size=batch_size)
    return FullForwardGreedy(model)


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def retrieval_grid(model, task: str, lengths: Sequence[int],
                   depths: Sequence[float | None] | None = DEFAULT_DEPTHS, *, trials: int = 10,
                   seed: int = 0, batch_size: int | None = None,
                   retrieval: RetrievalConfig | None = None, method: str = "auto",
                   max_new_tokens: int | None = None, decode: DecodeFn | None = None,
                   progress: bool = True) -> dict:
    """Accuracy of greedy retrieval at every (length, depth).

    Args:
      model: a ``TransformerLM`` (may be ``None`` when ``decode`` is given).
      task: one of ``tasks.RETRIEVAL_TASKS``.
      lengths: prompt lengths in tokens (each at least ``tasks.min_length(task)``).
      depths: needle depths in [0, 1] (``None``: a random depth per trial). Ignored, with a
        single ``None`` column, for a task that takes no depth if left at the default.
      trials: prompts per cell.
      seed: picks the needles; the same for every model, so models compare on identical
        prompts.
      batch_size: prompts decoded together (default all ``trials`` of a cell).
      retrieval, method: how the model decodes (``greedy_decoder``).
      max_new_tokens: greedy tokens per prompt (default: the longest answer of the cell + 2).
      decode: decode with this instead of ``greedy_decoder(model, ...)``.

    Returns:
      ``{"task", "lengths", "depths", "trials", "seed", "method", "accuracy"`` (float array
      ``[len(lengths), len(depths)]``)``, "rows"}``; a row per cell holds ``length, depth,
      accuracy, correct, trials, realised_depth`` (mean over the trials), ``max_new_tokens``
      and the first trial's ``answer`` and ``output`` text.
    """
    check_task(task)
    lengths = check_lengths(task, lengths)
    if depths is DEFAULT_DEPTHS and not takes_depth(task):
        depths = None
    depths = check_depths(task, depths)
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}")
    batch_size = min(batch_size or trials, trials)
    if decode is None:
        decode = greedy_decoder(model, method=method, retrieval=retrieval,
                                batch_size=batch_size)
    method_name = getattr(decode, "method", "custom")
    tokenizer = ByteTokenizer()
    accuracy = np.zeros((len(lengths), len(depths)))
    rows = []
    cells = [(i, length, j, depth) for i, length in enumerate(lengths)
             for j, depth in enumerate(depths)]
    for i, length, j, depth in tqdm.tqdm(cells, desc=f"{task} ({method_name})",
                                         disable=not progress):
        options = {} if depth is None else {"depth": depth}
        examples = [tasks.make_example(task, seed * 1_000_003 + trial, length, **options)
                    for trial in range(trials)]
        new_tokens = max_new_tokens or max(e.answer_ids.shape[0] for e in examples) + 2
        outputs = []
        for chunk in _chunks(examples, batch_size):
            new = np.asarray(decode(np.stack([e.prompt_ids for e in chunk]), new_tokens))
            outputs += [tokenizer.decode(ids) for ids in new]
        correct = sum(tasks.retrieval_correct(e, text) for e, text in zip(examples, outputs))
        accuracy[i, j] = correct / trials
        rows.append({"length": length, "depth": depth, "accuracy": correct / trials,
                     "correct": int(correct), "trials": trials,
                     "realised_depth": float(np.mean([e.depth for e in examples])),
                     "max_new_tokens": int(new_tokens), "answer": examples[0].answer,
                     "output": outputs[0]})
    return {"task": task, "lengths": lengths, "depths": depths, "trials": trials, "seed": seed,
            "method": method_name, "accuracy": accuracy, "rows": rows}
