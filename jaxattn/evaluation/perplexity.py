"""Perplexity against evaluation length, with the loss per position bucket, and the cost of a
forward pass against length (evals_data.md §1.6).

Protocol: for each evaluation length ``L`` the validation token stream (the run's
``DataConfig`` with ``seq_len=L``, so ``make_splits`` cuts it exactly as the trainer's
evaluation does) is cut into non-overlapping windows of ``L`` tokens; the model scores every
next-token target of each window, giving a per-token loss ``[windows, L]``. Targets outside
their input's document (``loss_mask == 0``: document boundaries, block padding, padding rows)
never count. Reported per length: the token-weighted loss, perplexity and bits per byte (as
the trainer's ``evaluate``), the mean over windows of each window's mean loss (the landmark
repository's aggregation) and the mean loss in position buckets. Only the bucket curve shows
whether extra context helps: a model that ignores distant tokens has a flat curve past its
effective context, one that uses them keeps falling.

The position of a target is the ``positions`` entry of its input token: its offset from the
start of its document, or from the window start for the document the window cuts. It is the
number of earlier tokens the model can attend to, so documents that begin inside a window
restart at position 0 rather than counting as long-context tokens. (For a corpus that is one
long document it is simply the index in the window.)

Two ways to score a window:

- ``"forward"``: one full forward pass over the window (any kind; a landmark model runs its
  grouped softmax over the whole window, as in training).
- ``"decoder"`` (landmark models): ``LandmarkDecoder.feed`` reads the window as one stream, in
  chunks of ``chunk_blocks`` blocks with top-k retrieval of cached blocks, and returns the
  logits of every token (the landmark paper's protocol). The decoder has no document
  boundaries, so a document that starts inside a window may attend to the one before it.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from jaxattn import profiling
from jaxattn.data.pipeline import DataConfig, make_splits
from jaxattn.inference import LandmarkDecoder, RetrievalConfig
from jaxattn.training.losses import summarize

METHODS = ("auto", "forward", "decoder")
DEFAULT_BUCKETS = "pow2:256"

# Per-token NLL of a batch: batch dict of [B, L] arrays -> [B, L] float32 NumPy.
NllFn = Callable[[dict], np.ndarray]


# --------------------------------------------------------------------------- buckets


def bucket_edges(length: int, spec: str | Sequence[int] = DEFAULT_BUCKETS) -> list[int]:
    """Edges ``[0, e1, ..., length]`` of the position buckets ``[e_i, e_{i+1})``.

    Args:
      length: the evaluation length ``L``.
      spec: ``"pow2"`` or ``"pow2:N"``: ``[0, N), [N, 2N), [2N, 4N), ...`` up to ``L``
        (``N`` defaults to 256; buckets line up across lengths, so curves overlay);
        ``"linear:N"``: ``N`` equal buckets ``[0, L/N), [L/N, 2L/N), ...`` (edges rounded
        down); or a sequence of interior edges (those outside ``(0, L)`` are dropped).

    Raises:
      ValueError: a bad ``length`` or ``spec``.
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    if isinstance(spec, str):
        name, _, arg = spec.partition(":")
        if name not in ("pow2", "linear"):
            raise ValueError(f"bucket spec must be 'pow2[:N]', 'linear:N' or a list of edges, "
                             f"got {spec!r}")
        default = "256" if name == "pow2" else ""
        try:
            n = int(arg or default)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"bucket spec {spec!r}: N must be a positive int")
        if name == "pow2":
            interior, edge = [], n
            while edge < length:
                interior.append(edge)
                edge *= 2
        else:
            interior = [length * i // n for i in range(1, n)]
    else:
        interior = [int(e) for e in spec]
    return sorted({0, length, *(e for e in interior if 0 < e < length)})


def token_nll(logits, targets) -> np.ndarray:
    """Per-token negative log-likelihood ``[..., T]`` (float32, NumPy) of integer ``targets``
    under ``logits [..., T, V]``, computed on the host in float64."""
    logits = np.asarray(logits, np.float64)
    targets = np.asarray(targets)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits [..., T, V] and targets [..., T] do not match: "
                         f"{logits.shape} and {targets.shape}")
    top = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
    picked = np.take_along_axis(logits, targets[..., None].astype(np.int64), axis=-1)[..., 0]
    return (lse - picked).astype(np.float32)


def summarize_losses(nll, loss_mask, positions=None, *,
                     buckets: str | Sequence[int] = DEFAULT_BUCKETS) -> dict:
    """Total and per-bucket statistics of per-token losses.

    Args:
      nll: ``[N, L]`` per-token losses (nats).
      loss_mask: ``[N, L]``, nonzero where the target counts.
      positions: ``[N, L]`` positions that pick the bucket (default ``0 .. L-1`` per row).
      buckets: a ``bucket_edges`` spec.

    Returns:
      ``{"loss", "perplexity", "bits_per_byte"`` (``training.losses.summarize`` of the
      counted tokens; one byte per token, as for the byte tokenizer), ``"tokens"``,
      ``"windows"`` (rows with at least one counted token), ``"window_mean_loss"`` (mean over
      those rows of their mean loss), ``"buckets"``: a list of ``{"start", "stop", "tokens",
      "loss", "perplexity"}`` (``loss`` and ``perplexity`` NaN for an empty bucket)``}``.
    """
    nll = np.asarray(nll, np.float64)
    mask = np.asarray(loss_mask) != 0
    if nll.ndim != 2 or mask.shape != nll.shape:
        raise ValueError(f"nll and loss_mask must both be [windows, length], got {nll.shape} "
                         f"and {mask.shape}")
    length = nll.shape[1]
    if positions is None:
        positions = np.broadcast_to(np.arange(length), nll.shape)
    positions = np.asarray(positions)
    if positions.shape != nll.shape:
        raise ValueError(f"positions must be {nll.shape}, got {positions.shape}")
    # Masked tokens may carry garbage (inf for a zero-probability padding target): drop them.
    counted = np.where(mask, nll, 0.0)
    loss_sum, count = float(counted.sum()), int(mask.sum())
    result = summarize(loss_sum, count) if count else {
        "loss": math.nan, "perplexity": math.nan, "bits_per_byte": math.nan}
    per_row = mask.sum(axis=1)
    rows = per_row > 0
    result["tokens"] = count
    result["windows"] = int(rows.sum())
    result["window_mean_loss"] = (float(np.mean(counted.sum(axis=1)[rows] / per_row[rows]))
                                  if rows.any() else math.nan)
    edges = bucket_edges(length, buckets)
    result["buckets"] = []
    for start, stop in zip(edges[:-1], edges[1:]):
        inside = mask & (positions >= start) & (positions < stop)
        tokens = int(inside.sum())
        loss = float(counted[inside].sum() / tokens) if tokens else math.nan
        result["buckets"].append({
            "start": int(start), "stop": int(stop), "tokens": tokens, "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)) if tokens else math.nan})
    return result


# --------------------------------------------------------------------------- scoring


def _is_landmark(model) -> bool:
    return getattr(model.cfg, "landmark", None) is not None


def resolve_method(model, method: str = "auto") -> str:
    """``"forward"`` or ``"decoder"``; ``"auto"`` is the decoder for landmark models."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        return "decoder" if _is_landmark(model) else "forward"
    if method == "decoder" and not _is_landmark(model):
        raise ValueError("method='decoder' needs a landmark model (model.cfg.landmark); this "
                         f"model has attention kinds "
                         f"{sorted({spec.kind for spec in model.cfg.attention})}")
    return method


def forward_nll_fn(model) -> NllFn:
    """Per-token losses by one jitted forward pass over each window (any kind); compiled once
    per batch shape."""
    graph, state = nnx.split(model)

    @jax.jit
    def nll(state, inputs, targets, positions, segment_ids):
        logits = nnx.merge(graph, state)(inputs, positions=positions, segment_ids=segment_ids)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets)

    def fn(batch):
        return np.asarray(nll(state, *(np.asarray(batch[k]) for k in (
            "inputs", "targets", "positions", "segment_ids"))), np.float32)

    return fn


def decoder_nll_fn(model, retrieval: RetrievalConfig | None = None, *, batch_size: int,
                   piece: int = 4096) -> NllFn:
    """Per-token losses of a landmark model read by ``LandmarkDecoder`` (fed ``piece`` tokens
    at a time, so the logits held on the host stay small); every batch must have
    ``batch_size`` rows."""
    decoder = LandmarkDecoder(model, retrieval or RetrievalConfig(), batch_size=batch_size)

    def fn(batch):
        inputs, targets = np.asarray(batch["inputs"]), np.asarray(batch["targets"])
        decoder.reset()
        out = [token_nll(decoder.feed(inputs[:, s:s + piece]), targets[:, s:s + piece])
               for s in range(0, inputs.shape[1], piece)]
        return np.concatenate(out, axis=1)

    fn.decoder = decoder
    return fn


def window_losses(nll_fn: NllFn, windows, *, batch_size: int, max_windows: int | None = None
                  ) -> dict[str, np.ndarray]:
    """Per-token losses of the first ``max_windows`` items of ``windows`` (a random-access
    source of window dicts, such as ``PackedWindows``), scored ``batch_size`` at a time (the
    last batch is filled with all-zero rows, which count nothing, so one compiled program
    serves every batch).

    Returns:
      ``{"nll", "loss_mask", "positions"}``, each ``[n, L]``.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_windows is not None and (not isinstance(max_windows, int) or max_windows < 1):
        raise ValueError(f"max_windows must be a positive int or None, got {max_windows!r}")
    count = len(windows) if max_windows is None else min(len(windows), max_windows)
    if count == 0:
        raise ValueError("no windows to evaluate")
    keys = ("inputs", "targets", "loss_mask", "positions", "segment_ids")
    nll, masks, positions = [], [], []
    for start in range(0, count, batch_size):
        rows = [windows[i] for i in range(start, min(start + batch_size, count))]
        real = len(rows)
        rows += [{k: np.zeros_like(v) for k, v in rows[0].items()}] * (batch_size - real)
        batch = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in keys}
        nll.append(np.asarray(nll_fn(batch))[:real])
        masks.append(batch["loss_mask"][:real])
        positions.append(batch["positions"][:real])
    return {"nll": np.concatenate(nll), "loss_mask": np.concatenate(masks),
            "positions": np.concatenate(positions)}


def perplexity_by_length(model, data_cfg: DataConfig, lengths: Sequence[int], *,
                         batch_size: int = 1, max_windows: int | None = 16,
                         buckets: str | Sequence[int] = DEFAULT_BUCKETS, method: str = "auto",
                         retrieval: RetrievalConfig | None = None, nll_fn: NllFn | None = None,
                         progress: bool = True) -> list[dict]:
    """Loss, perplexity, bits per byte and loss per position bucket at each length.

    Args:
      model: a ``TransformerLM`` (may be ``None`` when ``nll_fn`` is given).
      data_cfg: the run's data (``builders.data_config``); ``seq_len`` and ``batch_size``
        are replaced per length. A landmark run's ``align`` makes every length a multiple of
        ``mem_freq``.
      lengths: evaluation lengths in tokens.
      batch_size: windows scored together.
      max_windows: cap on the windows per length (``None``: the whole validation split).
      buckets: position buckets (``bucket_edges``).
      method: ``"auto"`` (decoder for landmark models, else forward), ``"forward"`` or
        ``"decoder"`` (see the module doc).
      retrieval: the decoder's ``RetrievalConfig`` (default ``RetrievalConfig()``).
      nll_fn: score windows with this instead of the model (tests, other scorers).

    Returns:
      One dict per length: ``length``, ``method``, ``available_windows`` and the keys of
      ``summarize_losses``.

    Raises:
      ValueError: a length the data config or the validation split cannot give.
    """
    lengths = [int(n) for n in lengths]
    if not lengths:
        raise ValueError("lengths must hold at least one evaluation length")
    if nll_fn is None:
        method = resolve_method(model, method)
        nll_fn = (forward_nll_fn(model) if method == "forward" else
                  decoder_nll_fn(model, retrieval, batch_size=batch_size))
    else:
        method = "custom"
    rows = []
    for length in tqdm.tqdm(lengths, desc=f"perplexity ({method})", disable=not progress):
        try:
            cfg = dataclasses.replace(data_cfg, seq_len=length, batch_size=batch_size)
            _, valid = make_splits(cfg)
        except ValueError as e:
            raise ValueError(f"evaluation length {length}: {e}") from e
        losses = window_losses(nll_fn, valid, batch_size=batch_size, max_windows=max_windows)
        row = {"length": length, "method": method, "available_windows": len(valid)}
        row.update(summarize_losses(losses["nll"], losses["loss_mask"], losses["positions"],
                                    buckets=buckets))
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- efficiency


def forward_efficiency(model, lengths: Sequence[int], *, batch_size: int = 1, warmup: int = 1,
                       repeats: int = 3, seed: int = 0, progress: bool = True) -> list[dict]:
    """Time and memory of one jitted forward pass (``tokens [batch, L] -> logits``) at each
    length, measured as the benchmarks measure attention (``jaxattn.profiling``): compiled
    ahead of time, ``warmup`` calls, then the median (and min, max) of ``repeats`` timed
    calls; ``peak_bytes`` is XLA's buffer assignment of the program (arguments, parameters
    included, + outputs + temporaries; ``None`` when the backend has no memory analysis).

    A length the model cannot run (not a multiple of a block size, out of memory) gives a row
    with ``error`` set and no timings, so one failure does not end the sweep.
    """
    graph, state = nnx.split(model)

    def forward(state, tokens):
        return nnx.merge(graph, state)(tokens)

    vocab = model.cfg.vocab_size
    rows = []
    for length in tqdm.tqdm([int(n) for n in lengths], desc="efficiency", disable=not progress):
        row = {"length": length, "batch": batch_size, "median_ms": None, "min_ms": None,
               "max_ms": None, "compile_ms": None, "peak_bytes": None, "tokens_per_s": None,
               "error": None}
        try:
            tokens = np.random.default_rng([seed, length]).integers(
                0, vocab, size=(batch_size, length)).astype(np.int32)
            args = (state, jnp.asarray(tokens))
            compiled, row["compile_ms"] = profiling.compile_ahead(forward, args)
            row["peak_bytes"] = profiling.compiled_footprint(compiled)
            row.update(profiling.time_compiled(compiled, args, warmup, repeats))
            row["tokens_per_s"] = batch_size * length / (row["median_ms"] / 1e3)
            del compiled, args
        except Exception as err:  # pylint: disable=broad-except
            row.update(median_ms=None, min_ms=None, max_ms=None, tokens_per_s=None,
                       error=profiling.error_text(err))
        rows.append(row)
    return rows
