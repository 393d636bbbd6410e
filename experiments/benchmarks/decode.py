"""Decoding benchmark: whole models generating with ``KVCacheDecoder`` after a prompt.

``run_decode_sweep`` times, for every case and prompt length, the prefill and the per-token
decode steps of ``KVCacheDecoder`` (``decode_case``) on a ``decode_model``, next to the
per-token full forward of ``FullForwardGreedy`` on the same model: the baseline of each row
is the same model at the same prompt length.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from experiments.benchmarks.case_inputs import check_sizes, resolve_dtype
from experiments.benchmarks.layer_cases import is_layer_kind
from experiments.benchmarks.sweep import check_cases, check_seq_lens
from jaxattn import profiling
from jaxattn.evaluation.retrieval import FullForwardGreedy, runnable_length
from jaxattn.inference import KVCacheDecoder
from jaxattn.nn import AttentionSpec, TransformerConfig, TransformerLM

DECODE_VOCAB = 260
"""Vocabulary of ``decode_model`` (the byte tokenizer's)."""


def decode_model(kind, options, *, layers, heads, head_dim, dtype=None, train_len, seed=0):
    """A ``TransformerLM`` of ``layers`` identical causal layers of attention ``kind``.

    ``d_model = heads * head_dim`` (multi-head, no GQA), SwiGLU ``mlp_dim = 4 * d_model``,
    the byte tokenizer's 260-token vocabulary, tied embeddings, computing in ``dtype``
    (float32 or bfloat16; parameters float32). ``ValueError`` for bad options or dtype.
    """
    spec = AttentionSpec.create(kind, **options)
    d_model = heads * head_dim
    cfg = TransformerConfig(vocab_size=DECODE_VOCAB, num_layers=layers, embed_dim=d_model,
                            num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
                            mlp_dim=4 * d_model, attention=[spec] * layers, train_len=train_len,
                            dtype=resolve_dtype(dtype).name)
    return TransformerLM(cfg, rngs=nnx.Rngs(seed))


def decode_case(model, *, seq_len, batch=1, new_tokens=16, prefill_chunk=512, warmup=2,
                repeats=5, seed=0):
    """KV-cache decoding of one prompt length, next to the full-forward baseline.

    A random prompt of ``seq_len`` tokens goes through ``KVCacheDecoder`` (capacity
    ``seq_len + generated``, ``generated = 1 + warmup + new_tokens``, chunks of
    ``min(prefill_chunk, seq_len)``): the prefill is timed ``repeats`` times after one
    compiling call (each from ``reset()``); then ``generated`` greedy tokens are drawn one
    ``generate(1)`` at a time, the first ``1 + warmup`` (the first compiles) untimed. The
    baseline is ``FullForwardGreedy``'s step, one full forward over its buffer for the same
    prompt and ``generated`` tokens, compiled ahead and timed like ``time_fn``.

    Returns:
      ``{prefill_ms, prefill_tokens_per_s, median_ms, min_ms, max_ms`` (per decoded token),
      ``compile_ms`` (first decode step, compile included), ``tokens_per_s`` (decoded, all
      rows of the batch), ``cache_bytes, capacity, cache_slots`` (slots per layer that every
      step attends over: capacity, slack for a padded prefill chunk and LSG's global tokens),
      ``baseline_ms, baseline_compile_ms, baseline_peak_bytes`` (see
      ``peak_memory_bytes``), ``baseline_len`` (buffer), ``ratio_to_baseline``
      (``median_ms / baseline_ms``)``}``.
    """
    # pylint: disable=protected-access
    check_sizes(seq_len=seq_len, batch=batch, new_tokens=new_tokens, prefill_chunk=prefill_chunk,
                repeats=repeats)
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    generated = 1 + warmup + new_tokens
    prompt = np.random.default_rng(seed).integers(
        0, model.cfg.vocab_size, (batch, seq_len)).astype(np.int32)
    decoder = KVCacheDecoder(model, batch_size=batch, capacity=seq_len + generated,
                             prefill_chunk=min(prefill_chunk, seq_len))
    decoder.feed(prompt)  # compiles the prefill programs
    prefill = []
    for _ in range(repeats):
        decoder.reset()
        jax.block_until_ready(decoder._caches)
        start = time.perf_counter()
        decoder.feed(prompt)  # NumPy logits: waits for the device
        prefill.append((time.perf_counter() - start) * 1e3)
    steps = []
    for _ in range(generated):
        start = time.perf_counter()
        decoder.generate(1)
        steps.append((time.perf_counter() - start) * 1e3)
    timed = steps[1 + warmup:]
    stats = {
        "prefill_ms": statistics.median(prefill), "median_ms": statistics.median(timed),
        "min_ms": min(timed), "max_ms": max(timed), "compile_ms": steps[0],
        "cache_bytes": decoder.cache_bytes(), "capacity": decoder.capacity,
        "cache_slots": decoder._caches[0].capacity,
    }
    del decoder

    greedy = FullForwardGreedy(model)
    total = runnable_length(model.cfg, seq_len + generated - 1)
    tokens = np.zeros((batch, total), np.int32)
    tokens[:, :seq_len] = prompt
    args = (greedy._state, jnp.asarray(tokens), jnp.asarray(seq_len - 1, jnp.int32))
    compiled, stats["baseline_compile_ms"] = profiling.compile_ahead(greedy._next, args)
    stats["baseline_peak_bytes"] = profiling.compiled_footprint(compiled)
    stats["baseline_ms"] = profiling.time_compiled(compiled, args, warmup, repeats)["median_ms"]
    stats["baseline_len"] = total
    stats["prefill_tokens_per_s"] = batch * seq_len / (stats["prefill_ms"] / 1e3)
    stats["tokens_per_s"] = batch / (stats["median_ms"] / 1e3)
    stats["ratio_to_baseline"] = stats["median_ms"] / stats["baseline_ms"]
    return stats


def run_decode_sweep(kinds_with_options, seq_lens, *, batch, layers, heads, head_dim,
                     dtype=None, new_tokens=16, prefill_chunk=512, warmup=2, repeats=5, seed=0,
                     progress=True):
    """``decode_case`` for every ``(label, kind, options)`` at every prompt length.

    Each case gets one ``decode_model`` (``train_len = max(seq_lens)``) for all lengths; the
    baseline of every row is that model's own full forward at that length. Returns one dict
    per (seq_len, case): ``label, kind, seq_len, options, batch, heads, head_dim, layers,
    dtype, new_tokens, prefill_chunk``, the ``decode_case`` numbers (``None`` on failure) and
    ``error`` (as in ``run_sweep``: a failing case becomes an error row).

    Raises:
      ValueError: bad cases (``check_cases``; layer kinds are not models), bad lengths.
    """
    cases = check_cases(kinds_with_options)
    layer_cases = [case.label for case in cases if is_layer_kind(case.kind)]
    if layer_cases:
        raise ValueError(f"the decode sweep runs attention kinds, not layers: {layer_cases}")
    seq_lens = check_seq_lens(seq_lens)
    dtype = resolve_dtype(dtype)
    keys = ("prefill_ms", "prefill_tokens_per_s", "median_ms", "min_ms", "max_ms", "compile_ms",
            "tokens_per_s", "cache_bytes", "capacity", "cache_slots", "baseline_ms",
            "baseline_compile_ms", "baseline_peak_bytes", "baseline_len", "ratio_to_baseline")
    models, rows = {}, []
    work = [(seq_len, case) for seq_len in seq_lens for case in cases]
    bar = tqdm(work, desc="decode", unit="case", disable=not progress)
    for seq_len, case in bar:
        bar.set_postfix_str(f"{case.label} @ {seq_len}")
        row = {"label": case.label, "kind": case.kind, "seq_len": seq_len,
               "options": case.options, "batch": batch, "heads": heads, "head_dim": head_dim,
               "layers": layers, "dtype": dtype.name, "new_tokens": new_tokens,
               "prefill_chunk": min(prefill_chunk, seq_len), **dict.fromkeys(keys), "error": None}
        try:
            if case.label not in models:
                models[case.label] = decode_model(
                    case.kind, case.options, layers=layers, heads=heads, head_dim=head_dim,
                    dtype=dtype, train_len=max(seq_lens), seed=seed)
            row.update(decode_case(models[case.label], seq_len=seq_len, batch=batch,
                                   new_tokens=new_tokens, prefill_chunk=prefill_chunk,
                                   warmup=warmup, repeats=repeats, seed=seed))
            logging.info("%s seq_len=%d: prefill %.1f ms, decode %.3f ms/token, full forward "
                         "%.3f ms/token", case.label, seq_len, row["prefill_ms"],
                         row["median_ms"], row["baseline_ms"])
        except Exception as err:  # pylint: disable=broad-except
            row.update(dict.fromkeys(keys), error=profiling.error_text(err))
            logging.warning("%s seq_len=%d failed: %s", case.label, seq_len, row["error"])
        rows.append(row)
    bar.close()
    return rows
