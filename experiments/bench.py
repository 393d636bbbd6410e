r"""Benchmarks attention kinds against a baseline measured in the same run.

  python -m experiments.bench --suite=attention --seq_lens=1024,2048,4096 --out=/tmp/bench
  python -m experiments.bench --suite=routing --backward --out=/tmp/bench_routing
  python -m experiments.bench --kinds=dense,ssmax --seq_lens=512,1024
  python -m experiments.bench --suite=titans --seq_lens=1024,2048,4096,8192 --out=/tmp/bench_titans
  python -m experiments.bench --suite=decode --seq_lens=512,1024,2048,4096 --out=/tmp/bench_decode
  python -m experiments.bench --suite=backends --backward --seq_lens=1024,4096
  python -m experiments.bench --suite=backends --backward --memory_only --seq_lens=8192,32768

Each suite is a list of ``(label, kind, options)``; its first entry is the baseline, and every
time is reported as a ratio to the baseline's at the same sequence length, with the fitted
scaling exponent per label (``time ~ seq_len^p``). ``--kinds`` runs the named kinds with their
default options instead (the first is the baseline). With ``--out`` the rows go to
``bench.json`` and the table to ``bench.md`` there; the table is always printed.

A stateful kind (``routing``, whose centroids are state) is timed as its training step runs
it: the attention with the current centroids, then the kind's ``update_state`` (the k-means
update and the commitment loss, which ``--backward`` differentiates with the attention).
The harness lives in ``experiments.benchmarks``; timing and memory measurement in
``jaxattn.profiling``.

The ``backends`` suite runs dense, SSMax, local and LSG attention through each CPU backend
(``implementation="reference"`` and ``"xla_chunked"``), with dense's reference as the
baseline; ``--memory_only`` compiles every case and reports its memory without running it,
so the references' memory at lengths they cannot run is still measured in the same run.

The ``titans`` suite times whole layers (``benchmarks.layer_case``, ``d_model = heads *
head_dim``): a pre-norm residual dense-attention layer as the baseline against Titans blocks
(Behrouz et al. 2025) without MLP: MAC (attention inside 512-token segments plus the memory),
MAG and MAL (512-token sliding window plus the memory) and LMM (the memory alone); memories
are 2-layer MLPs written in chunks of 64 tokens. Every row has tokens/s and the compiled
program's memory (arguments, parameters included, + outputs + temporaries), with both as
ratios to dense at the same length.

The ``decode`` suite times whole ``TransformerLM``s (``--layers`` layers of one kind, ``d_model
= heads * head_dim``; ``benchmarks.run_decode_sweep``) generating after a prompt of each
length: the prefill through ``KVCacheDecoder`` (chunks of ``--prefill_chunk``), and the
median time per token of ``--new_tokens`` one-token decode steps after ``1 + --warmup``
untimed ones. The baseline of each row is measured in the same run on the same model: the
per-token cost of ``FullForwardGreedy``, one full forward over a buffer for the prompt and the
new tokens; the ratio is decode / full forward, with the fitted exponents of both.
"""

import json
import os
import platform

import jax
from absl import app, flags, logging

import jaxattn.attention  # noqa: F401  (imports every variant module, which registers its kind)
from experiments import benchmarks
from jaxattn import profiling
from jaxattn.attention import registry

SUITES = {
    "attention": [
        ("dense", "dense", {"causal": True}),
        ("ssmax", "ssmax", {"causal": True}),
        ("local128", "local", {"causal": True, "block_size": 128}),
    ],
    "routing": [
        ("dense", "dense", {"causal": True}),
        ("routing", "routing", {"num_clusters": benchmarks.SQRT, "local_heads": 0}),
    ],
    "lsg": [
        ("dense", "dense", {"causal": True}),
        ("lsg_pooling", "lsg", {"causal": True, "block_size": 128, "sparse_block_size": 32,
                                "sparsity_factor": 4, "sparsity_type": "pooling",
                                "num_global_tokens": 0}),
        ("lsg_norm", "lsg", {"causal": True, "block_size": 128, "sparse_block_size": 32,
                             "sparsity_factor": 4, "sparsity_type": "norm",
                             "num_global_tokens": 0}),
    ],
    "backends": [
        (f"{label}_{short}", kind, {**options, "implementation": implementation})
        for label, kind, options in [
            ("dense", "dense", {"causal": True}),
            ("ssmax", "ssmax", {"causal": True}),
            ("local128", "local", {"causal": True, "block_size": 128}),
            ("lsg", "lsg", {"causal": True, "block_size": 128, "sparse_block_size": 32,
                            "sparsity_factor": 4, "sparsity_type": "pooling",
                            "num_global_tokens": 0}),
        ]
        for short, implementation in (("reference", "reference"), ("chunked", "xla_chunked"))
    ],
    "titans": [
        ("dense", "layer:dense", {"causal": True}),
        ("mac", "layer:mac", {"segment_len": 512, "chunk_size": 64, "memory_depth": 2}),
        ("mag", "layer:mag", {"window": 512, "chunk_size": 64, "memory_depth": 2}),
        ("mal", "layer:mal", {"window": 512, "chunk_size": 64, "memory_depth": 2}),
        ("lmm", "layer:lmm", {"chunk_size": 64, "memory_depth": 2}),
    ],
    "decode": [
        ("dense", "dense", {"causal": True}),
        ("ssmax", "ssmax", {"causal": True}),
        ("lsg", "lsg", {"causal": True, "block_size": 128, "sparse_block_size": 32,
                        "sparsity_factor": 4, "sparsity_type": "pooling",
                        "num_global_tokens": 1}),
        ("routing", "routing", {"causal": True, "num_clusters": 16, "cluster_size": 64}),
    ],
}
"""Suite name → ``[(label, kind, options), ...]``; the first entry is the baseline (in
``decode``, every kind's own full forward is its baseline).

``"sqrt"`` as an option value is resolved per sequence length (``benchmarks.sqrt_power_of_two``).
"""

_SUITE = flags.DEFINE_string("suite", "attention", f"Suite to run: one of {', '.join(SUITES)}.")
_KINDS = flags.DEFINE_list("kinds", None, "Attention kinds to run with default options instead of "
                           "--suite, e.g. dense,ssmax; the first is the baseline.")
_SEQ_LENS = flags.DEFINE_list("seq_lens", ["1024", "2048", "4096"], "Sequence lengths.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size.")
_HEADS = flags.DEFINE_integer("heads", 8, "Attention heads (q, k and v alike).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Head dimension.")
_DTYPE = flags.DEFINE_string("dtype", None,
                             "Input dtype; default bfloat16 on GPU/TPU, float32 on CPU.")
_BACKWARD = flags.DEFINE_bool("backward", False, "Time forward+backward (grads wrt q, k, v).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compiling.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls; the median is reported.")
_LAYERS = flags.DEFINE_integer("layers", 4, "decode suite: layers of the model.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 16, "decode suite: timed decode steps.")
_PREFILL_CHUNK = flags.DEFINE_integer("prefill_chunk", 512,
                                      "decode suite: prefill chunk (at most the prompt length).")
_OUT = flags.DEFINE_string("out", None, "Directory for bench.json and bench.md.")
_MEMORY_ONLY = flags.DEFINE_bool("memory_only", False, "Compile every case and report its "
                                 "memory without running it (attention suites).")


def suite_cases(suite, kinds=None):
    """``(name, cases)`` for ``--suite``/``--kinds``; ``ValueError`` naming what is unknown.

    ``kinds`` (a list of kind names) overrides ``suite``: each kind with its default options,
    labelled by its name, the first as baseline. Every kind must be registered.
    """
    if kinds:
        name, cases = "kinds", [(kind, kind, {}) for kind in kinds]
    elif suite in SUITES:
        name, cases = suite, SUITES[suite]
    else:
        raise ValueError(f"unknown suite {suite!r}; valid suites: {', '.join(SUITES)}")
    missing = [kind for _, kind, _ in cases
               if kind not in registry.list_variants() and kind not in benchmarks.LAYER_KINDS]
    if missing:
        raise ValueError(
            f"suite {name!r} needs attention kind(s) {', '.join(map(repr, missing))}, not "
            f"registered in this checkout; registered kinds: {', '.join(registry.list_variants())}"
        )
    return name, cases


def render_markdown(report):
    """The printed/written report: a header with device and versions, the table, the exponents."""
    meta = report["meta"]
    if meta["suite"] == "decode":
        return _render_decode(report)
    pass_name = "forward+backward" if meta["backward"] else "forward"
    layers = any(benchmarks.is_layer_kind(kind) for _, kind, _ in meta["cases"])
    what = "Layer" if layers else "Attention"
    lines = [
        f"## {what} benchmark: suite `{meta['suite']}`, {pass_name}",
        "",
        f"Device: {meta['device']}; jax {meta['jax_version']}; dtype {meta['dtype']}; "
        f"batch={meta['batch']} heads={meta['heads']} head_dim={meta['head_dim']}"
        f"{' (d_model=' + str(meta['heads'] * meta['head_dim']) + ')' if layers else ''}; median of "
        f"{meta['repeats']} after {meta['warmup']} warm-up call(s); baseline `{meta['baseline']}`.",
        "",
        benchmarks.to_markdown(report["rows"]).rstrip("\n"),
        "",
        "Fitted exponent p in time ~ seq_len^p:",
        "",
        "| label | p |",
        "|---|---:|",
    ]
    for label, exponent in report["exponents"].items():
        lines.append(f"| {label} | {'—' if exponent is None else f'{exponent:.2f}'} |")
    return "\n".join(lines) + "\n"


def _render_decode(report):
    meta = report["meta"]
    lines = [
        "## Decode benchmark: suite `decode`, KV-cache decoding against the full forward",
        "",
        f"Device: {meta['device']}; jax {meta['jax_version']}; dtype {meta['dtype']}; "
        f"TransformerLM layers={meta['layers']} d_model={meta['heads'] * meta['head_dim']} "
        f"(heads={meta['heads']} head_dim={meta['head_dim']}), batch={meta['batch']}; prefill "
        f"in chunks of min({meta['prefill_chunk']}, seq_len), median of {meta['repeats']}; "
        f"decode: median of {meta['new_tokens']} one-token steps after {1 + meta['warmup']} "
        f"untimed; baseline: each model's own full forward (`FullForwardGreedy`) per token, "
        f"median of {meta['repeats']} after {meta['warmup']} warm-up call(s), same run.",
        "",
        benchmarks.decode_to_markdown(report["rows"]).rstrip("\n"),
        "",
        "Fitted exponent p in time per token ~ seq_len^p:",
        "",
        "| label | p decode | p full forward |",
        "|---|---:|---:|",
    ]
    for label, exponent in report["exponents"].items():
        lines.append(f"| {label} | {_exponent(exponent)} | "
                     f"{_exponent(report['baseline_exponents'].get(label))} |")
    return "\n".join(lines) + "\n"


def _exponent(p):
    return "—" if p is None else f"{p:.2f}"


def run(suite, *, seq_lens, batch=1, heads=8, head_dim=64, dtype=None, backward=False, out=None,
        kinds=None, warmup=2, repeats=5, progress=True, layers=4, new_tokens=16,
        prefill_chunk=512, memory_only=False):
    """Runs a suite (or ``kinds``); returns ``{"meta", "rows", "exponents", "markdown"}``.

    ``memory_only`` (attention and layer suites): compile and measure memory, no timing.
    The ``decode`` suite (also with ``kinds``: those kinds decoding) takes ``layers``,
    ``new_tokens`` and ``prefill_chunk`` and adds ``"baseline_exponents"`` (full forward).

    With ``out`` the report is written to ``out/bench.json`` (everything but the markdown) and
    ``out/bench.md``. Raises ``ValueError`` for an unknown suite or unregistered kind.
    """
    name, cases = suite_cases(suite, kinds)
    decode = suite == "decode"
    if decode and memory_only:
        raise ValueError("memory_only applies to the attention and layer suites, not decode")
    name = "decode" if decode else name
    dtype = benchmarks.resolve_dtype(dtype)
    baseline = "full forward" if decode else cases[0][0]
    logging.info("suite %s on %s: %s at seq_lens %s", name, profiling.device_description(),
                 ", ".join(label for label, _, _ in cases), seq_lens)
    if decode:
        rows = benchmarks.run_decode_sweep(
            cases, seq_lens, batch=batch, layers=layers, heads=heads, head_dim=head_dim,
            dtype=dtype, new_tokens=new_tokens, prefill_chunk=prefill_chunk, warmup=warmup,
            repeats=repeats, progress=progress)
    else:
        rows = benchmarks.run_sweep(cases, seq_lens, batch=batch, heads=heads,
                                      head_dim=head_dim, dtype=dtype, backward=backward,
                                      baseline_label=baseline, warmup=warmup, repeats=repeats,
                                      progress=progress, memory_only=memory_only)
    report = {
        "meta": {
            "suite": name, "cases": [list(case) for case in cases], "baseline": baseline,
            "device": profiling.device_description(), "jax_version": jax.__version__,
            "python": platform.python_version(), "dtype": dtype.name, "batch": batch,
            "heads": heads, "head_dim": head_dim, "backward": bool(backward),
            "seq_lens": list(seq_lens), "warmup": warmup, "repeats": repeats,
            "memory_only": bool(memory_only),
        },
        "rows": rows,
        "exponents": benchmarks.fit_exponents(rows),
    }
    if decode:
        report["meta"].update(layers=layers, new_tokens=new_tokens, prefill_chunk=prefill_chunk,
                              vocab_size=benchmarks.DECODE_VOCAB)
        report["baseline_exponents"] = benchmarks.fit_exponents(rows, key="baseline_ms")
    report["markdown"] = render_markdown(report)
    if out:
        os.makedirs(out, exist_ok=True)
        data = {key: value for key, value in report.items() if key != "markdown"}
        with open(os.path.join(out, "bench.json"), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
        with open(os.path.join(out, "bench.md"), "w", encoding="utf-8") as f:
            f.write(report["markdown"])
        logging.info("wrote bench.json and bench.md to %s", out)
    return report


def _parse_seq_lens(values):
    try:
        seq_lens = [int(value) for value in values]
    except ValueError as err:
        raise app.UsageError(
            f"--seq_lens must be comma-separated ints, got {','.join(values)}") from err
    if not seq_lens or min(seq_lens) < 1:
        raise app.UsageError(f"--seq_lens must be positive ints, got {','.join(values)}")
    return seq_lens


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    seq_lens = _parse_seq_lens(_SEQ_LENS.value)
    try:
        report = run(_SUITE.value, seq_lens=seq_lens, batch=_BATCH.value, heads=_HEADS.value,
                     head_dim=_HEAD_DIM.value, dtype=_DTYPE.value, backward=_BACKWARD.value,
                     out=_OUT.value, kinds=_KINDS.value, warmup=_WARMUP.value,
                     repeats=_REPEATS.value, layers=_LAYERS.value, new_tokens=_NEW_TOKENS.value,
                     prefill_chunk=_PREFILL_CHUNK.value, memory_only=_MEMORY_ONLY.value)
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    print(report["markdown"], end="", flush=True)


if __name__ == "__main__":
    app.run(main)
