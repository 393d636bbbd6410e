"""Timing, memory and scaling helpers behind ``experiments/bench.py``.

Performance is measured here, never asserted in unit tests: a sweep times every attention
kind next to a baseline in the same process on the same device and reports each time as a
ratio to the baseline at the same sequence length, plus a fitted scaling exponent per label.

Typical use::

    fn, args = attention_case("dense", batch=1, seq_len=4096, heads=8, head_dim=64,
                              options={"causal": True}, backward=True)
    stats = time_fn(fn, *args)            # {"median_ms", "min_ms", "max_ms", "compile_ms"}
    rows = run_sweep([("dense", "dense", {}), ("local", "local", {"block_size": 128})],
                     [1024, 2048, 4096], batch=1, heads=8, head_dim=64, baseline_label="dense")
    print(to_markdown(rows))

Besides attention kinds, a case may name a whole layer (``layer_case``): ``"layer:dense"``, a
pre-norm residual dense-attention layer (projections, RoPE, output projection), or
``"layer:mac"``, ``"layer:mag"``, ``"layer:mal"``, ``"layer:lmm"``, a Titans block
(``jaxattn.nn.titans``, no MLP) whose options are ``TitansConfig``'s fields. Layer cases take
``x [batch, seq_len, heads * head_dim]`` and, with ``backward``, differentiate with respect
to ``x`` and every parameter, so Titans is timed against dense attention layer for layer.

``run_decode_sweep`` times whole models decoding (``decode_case``): prefill and per-token
steps of ``KVCacheDecoder`` next to the per-token full forward of ``FullForwardGreedy``, the
baseline of each row being the same model at the same prompt length.
"""

import dataclasses
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from jaxattn.attention import dense
from jaxattn.attention import registry

LAYER_PREFIX = "layer:"
DECODE_VOCAB = 260
"""Vocabulary of ``decode_model`` (the byte tokenizer's)."""
LAYER_KINDS = ("layer:dense", "layer:mac", "layer:mag", "layer:mal", "layer:lmm")
"""Layer cases ``layer_case`` builds: dense attention, and the Titans architectures."""

SQRT = "sqrt"
"""Option value resolved per sequence length to ``sqrt_power_of_two(seq_len)``."""

_ACCELERATORS = ("gpu", "tpu")
_MAX_ERROR_CHARS = 300


def default_dtype():
    """bfloat16 on a GPU or TPU, float32 on CPU (where bfloat16 matmuls are emulated and slow)."""
    return jnp.bfloat16 if jax.default_backend() in _ACCELERATORS else jnp.float32


def resolve_dtype(dtype):
    """``None`` (backend default), a dtype name (``"bfloat16"``) or a dtype → ``np.dtype``."""
    if dtype is None:
        return np.dtype(default_dtype())
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as err:
        raise ValueError(f"dtype must be a floating dtype or its name, got {dtype!r}") from err
    if not jnp.issubdtype(resolved, jnp.floating):
        raise ValueError(f"dtype must be floating, got {resolved}")
    return resolved


def device_description():
    """The first device's kind (``"NVIDIA H100 80GB HBM3"``, ``"cpu"``), backend and count."""
    devices = jax.devices()
    return f"{devices[0].device_kind} ({jax.default_backend()}, {len(devices)} device(s))"


def _compile(fn, args):
    """Lowers and compiles ``jax.jit(fn)`` for ``args``; returns ``(compiled, compile_ms)``."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, (time.perf_counter() - start) * 1e3


def _time_compiled(compiled, args, warmup, repeats):
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def time_fn(fn, *args, warmup=2, repeats=5):
    """Wall-clock time of ``jax.jit(fn)(*args)`` in milliseconds.

    The function is lowered and compiled ahead of time (reported as ``compile_ms``, not part
    of the timings), run ``warmup`` times, then timed ``repeats`` times, each call followed by
    ``jax.block_until_ready`` on its outputs.

    Returns:
      ``{"median_ms", "min_ms", "max_ms", "compile_ms"}``.
    """
    compiled, compile_ms = _compile(fn, args)
    stats = _time_compiled(compiled, args, warmup, repeats)
    stats["compile_ms"] = compile_ms
    return stats


def _compiled_footprint(compiled):
    """``argument + output + temp - alias`` bytes from XLA's memory analysis, or ``None``."""
    try:
        analysis = compiled.memory_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if analysis is None:
        return None
    sizes = [getattr(analysis, f"{name}_size_in_bytes", None)
             for name in ("argument", "output", "temp", "alias")]
    if any(size is None for size in sizes[:3]):
        return None
    argument, output, temp, alias = (int(size or 0) for size in sizes)
    return argument + output + temp - alias


def _runtime_peak(fn, args):
    """The device's ``peak_bytes_in_use`` after running ``fn`` once, or ``None`` without stats."""
    device = jax.devices()[0]
    try:
        stats = device.memory_stats()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    jax.block_until_ready(jax.jit(fn)(*args))
    return int(device.memory_stats()["peak_bytes_in_use"])


def peak_memory_bytes(fn, *args):
    """Device memory needed by one call of ``jax.jit(fn)(*args)``, in bytes, or ``None``.

    The number is XLA's compile-time buffer assignment for that one program:
    ``argument + output + temp - alias`` sizes from ``compiled.memory_analysis()``. It is
    available on CPU, GPU and TPU, depends only on the program (not on what else the process
    holds), and is what decides whether a case fits, so it compares across kinds and
    sequence lengths. Only when the backend gives no memory analysis does it fall back to the
    device's ``memory_stats()["peak_bytes_in_use"]`` after one call, which is the process's
    high-water mark (an upper bound that includes earlier allocations); ``None`` when neither
    exists.
    """
    compiled, _ = _compile(fn, args)
    footprint = _compiled_footprint(compiled)
    return footprint if footprint is not None else _runtime_peak(fn, args)


def sqrt_power_of_two(seq_len):
    """``round(sqrt(seq_len))`` rounded to the nearest power of two that divides ``seq_len``.

    Rounding goes to the nearer power of two; if that does not divide ``seq_len`` the largest
    power of two that does is taken.

    E.g. 1024 → 32, 2048 → 32 (45 is nearer 32 than 64), 4096 → 64, 1000 → 8 (32 does not
    divide 1000; 8 is the largest power of two that does). ``sqrt(n)`` clusters is the usual
    choice for routing attention, whose cost is then ``O(n^1.5)``.
    """
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
    root = max(1, round(math.sqrt(seq_len)))
    lower = 1 << (root.bit_length() - 1)
    nearest = lower if root - lower <= 2 * lower - root else 2 * lower
    return min(nearest, seq_len & -seq_len)


def resolve_options(options, seq_len):
    """Options for one sequence length.

    A value equal to ``SQRT`` (``"sqrt"``) becomes ``sqrt_power_of_two(seq_len)``; a callable
    value is called with ``seq_len``; everything else is kept.
    """
    resolved = {}
    for key, value in dict(options).items():
        if isinstance(value, str) and value == SQRT:
            value = sqrt_power_of_two(seq_len)
        elif callable(value):
            value = value(seq_len)
        resolved[key] = value
    return resolved


def _first_output(result):
    """The attention output of ``apply``: a stateful variant returns ``(out, new_state)``."""
    if isinstance(result, (tuple, list)):
        return result[0], tuple(result[1:])
    return result, ()


def attention_case(kind, *, batch, seq_len, heads, head_dim, dtype=None, options=None,
                   backward=False, seed=0):
    """One attention call to time: returns ``(fn, args)`` for ``time_fn(fn, *args)``.

    ``q``, ``k`` and ``v`` are standard normal ``[batch, seq_len, heads, head_dim]`` in
    ``dtype`` (default: ``default_dtype()``). The call is
    ``registry.get_variant(kind).apply(q, k, v, make_options(kind, **options), ...)``, with
    ``ssmax_s=ones([heads])`` when the options' softmax is ``"ssmax"`` and ``state=...`` from
    the variant's ``init_state(options, num_heads=, head_dim=, key=)`` when it has one.
    Forward: ``fn`` returns what ``apply`` returns. Backward: ``fn`` returns the gradients of
    ``sum(out * cotangent)`` with respect to ``q``, ``k`` and ``v`` (plus any new state, so
    a state update is timed as a training step would run it).

    Raises:
      ValueError: unknown kind, bad options, or a ``seq_len`` the kind cannot take (checked
        before any array is built).
    """
    variant = registry.get_variant(kind)
    opts = registry.make_options(kind, **resolve_options(options or {}, seq_len))
    opts.check_seq_len(seq_len)
    for name, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    dtype = resolve_dtype(dtype)

    key_q, key_k, key_v, key_cot, key_state = jax.random.split(jax.random.key(seed), 5)
    shape = (batch, seq_len, heads, head_dim)
    q = jax.random.normal(key_q, shape, dtype)
    k = jax.random.normal(key_k, shape, dtype)
    v = jax.random.normal(key_v, shape, dtype)
    ssmax_s = jnp.ones((heads,), jnp.float32) if getattr(opts, "softmax", None) == "ssmax" else None
    init_state = getattr(variant, "init_state", None)
    state = None
    if init_state is not None:
        state = init_state(opts, num_heads=heads, head_dim=head_dim, key=key_state)

    def apply(q, k, v, ssmax_s, state):
        kwargs = {}
        if ssmax_s is not None:
            kwargs["ssmax_s"] = ssmax_s
        if init_state is not None:
            kwargs["state"] = state
        return variant.apply(q, k, v, opts, **kwargs)

    if not backward:
        return apply, (q, k, v, ssmax_s, state)

    def loss(q, k, v, ssmax_s, state, cotangent):
        out, new_state = _first_output(apply(q, k, v, ssmax_s, state))
        value = jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32))
        return value, new_state

    grad_fn = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)
    cotangent = jax.random.normal(key_cot, shape, dtype)
    return grad_fn, (q, k, v, ssmax_s, state, cotangent)


def is_layer_kind(kind):
    return isinstance(kind, str) and kind.startswith(LAYER_PREFIX)


def layer_option_names(kind):
    """The options a layer kind accepts (``ValueError`` for an unknown layer kind)."""
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown layer kind {kind!r}; layer kinds: {', '.join(LAYER_KINDS)}")
    if kind == "layer:dense":
        return [field.name for field in dataclasses.fields(dense.DenseOptions)]
    from jaxattn.nn.titans import TitansConfig  # pylint: disable=import-outside-toplevel
    return [field.name for field in dataclasses.fields(TitansConfig) if field.name != "arch"]


def _build_layer(kind, options, *, seq_len, heads, head_dim, dtype, seed):
    """``(module, apply)``: the layer and ``apply(module, x) -> y``; checks ``seq_len``."""
    # Imported here: the attention-only harness does not need Flax modules.
    from flax import nnx  # pylint: disable=import-outside-toplevel
    from jaxattn.nn.attention import Attention, AttentionSpec  # pylint: disable=import-outside-toplevel
    from jaxattn.nn.layers import RMSNorm  # pylint: disable=import-outside-toplevel
    from jaxattn.nn import titans  # pylint: disable=import-outside-toplevel

    layer_option_names(kind)
    embed = heads * head_dim
    rngs = nnx.Rngs(seed)
    if kind == "layer:dense":
        spec = AttentionSpec.create("dense", **options)
        spec.options.check_seq_len(seq_len)

        class DenseLayer(nnx.Module):
            def __init__(self):
                self.norm = RMSNorm(embed)
                self.attn = Attention(embed, num_heads=heads, num_kv_heads=heads,
                                      head_dim=head_dim, spec=spec, train_len=seq_len,
                                      rngs=rngs, dtype=dtype)

            def __call__(self, x):
                positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32),
                                             x.shape[:2])
                return x + self.attn(self.norm(x), positions=positions)

        return DenseLayer(), lambda module, x: module(x)
    config = titans.TitansConfig(arch=kind[len(LAYER_PREFIX):], **options)
    config.check_length("seq_len", seq_len, "pick a seq_len that is a multiple")
    block = titans.make_block(config, embed_dim=embed, num_heads=heads, num_kv_heads=heads,
                              head_dim=head_dim, mlp_dim=None, rope_base=10_000.0, rngs=rngs,
                              dtype=dtype)
    return block, lambda module, x: module(x)[0]


def layer_case(kind, *, batch, seq_len, heads, head_dim, dtype=None, options=None,
               backward=False, seed=0):
    """One layer call to time: ``(fn, args)`` for ``time_fn(fn, *args)``, like
    ``attention_case``.

    ``kind`` is one of ``LAYER_KINDS``: ``"layer:dense"`` (``x + Attention(RMSNorm(x))``,
    dense kind with ``options`` such as ``causal``) or a Titans block ``"layer:<arch>"``
    (``TitansConfig(arch, **options)``, no MLP), with ``heads`` heads of ``head_dim`` and
    ``d_model = heads * head_dim``. ``x`` is standard normal ``[batch, seq_len, d_model]``
    in ``dtype``; parameters are float32. Forward: ``fn(params, x)`` returns the layer output
    (a Titans block starts from its initial memory and its final state is dropped).
    Backward: ``fn`` returns the gradients of ``sum(out * cotangent)`` with respect to the
    parameters and ``x``.

    Raises:
      ValueError: unknown kind, bad options, or a ``seq_len`` the layer cannot take.
    """
    for name, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim),
                        ("seq_len", seq_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    from flax import nnx  # pylint: disable=import-outside-toplevel

    dtype = resolve_dtype(dtype)
    options = resolve_options(options or {}, seq_len)
    module, apply = _build_layer(kind, options, seq_len=seq_len, heads=heads,
                                 head_dim=head_dim, dtype=dtype, seed=seed)
    graphdef, params = nnx.split(module)
    key_x, key_cot = jax.random.split(jax.random.key(seed + 1))
    shape = (batch, seq_len, heads * head_dim)
    x = jax.random.normal(key_x, shape, dtype)

    def forward(params, x):
        return apply(nnx.merge(graphdef, params), x)

    if not backward:
        return forward, (params, x)

    def loss(params, x, cotangent):
        out = forward(params, x)
        return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32))

    cotangent = jax.random.normal(key_cot, shape, dtype)
    return jax.grad(loss, argnums=(0, 1)), (params, x, cotangent)


@dataclasses.dataclass
class _Case:
    label: str
    kind: str
    options: dict


def check_cases(kinds_with_options):
    """Validates ``[(label, kind, options), ...]`` before anything runs.

    Labels must be unique strings, every kind registered and every option name one the kind
    accepts. Raises ``ValueError`` naming the problem (and listing the registered kinds or
    the kind's options).
    """
    cases = []
    for entry in kinds_with_options:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 3):
            raise ValueError(f"each case must be (label, kind, options), got {entry!r}")
        label, kind, options = entry
        if not isinstance(label, str) or not label:
            raise ValueError(f"case label must be a non-empty str, got {label!r}")
        if any(case.label == label for case in cases):
            raise ValueError(f"duplicate case label {label!r}")
        options = dict(options or {})
        cases.append(_Case(label, kind, options))
    if not cases:
        raise ValueError("no cases to run")
    missing = sorted({case.kind for case in cases if not is_layer_kind(case.kind)}
                     - set(registry.list_variants()), key=str)
    if missing:
        names = ", ".join(repr(kind) for kind in missing)
        raise ValueError(
            f"attention kind(s) {names} not registered; registered kinds: "
            f"{', '.join(registry.list_variants())}"
        )
    for case in cases:
        if is_layer_kind(case.kind):
            fields = layer_option_names(case.kind)
        else:
            options_cls = registry.get_variant(case.kind).options_cls
            fields = [field.name for field in dataclasses.fields(options_cls)]
        unknown = [key for key in case.options if key not in fields]
        if unknown:
            raise ValueError(
                f"case {case.label!r}: unknown option {unknown[0]!r} for attention kind "
                f"{case.kind!r}; valid options: {', '.join(fields)}"
            )
    return cases


def _error_text(err):
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS - 3] + "..."


def run_sweep(kinds_with_options, seq_lens, *, batch, heads, head_dim, dtype=None, backward=False,
              baseline_label=None, warmup=2, repeats=5, seed=0, progress=True):
    """Times every ``(label, kind, options)`` at every sequence length.

    Args:
      kinds_with_options: ``[(label, kind, options), ...]``; option values may be ``"sqrt"``
        or callables of ``seq_len`` (see ``resolve_options``).
      seq_lens: sequence lengths; each is run for every case, baseline first.
      batch, heads, head_dim, dtype, backward, seed: as in ``attention_case``.
      baseline_label: label the ratios are taken against; default the first case's.
      warmup, repeats: as in ``time_fn``.
      progress: show a progress bar (a log line per case is always written).

    Returns:
      One dict per (seq_len, case): ``label, kind, seq_len, options`` (resolved), ``batch,
      heads, head_dim, dtype, backward, median_ms, min_ms, max_ms, compile_ms, peak_bytes``
      (see ``peak_memory_bytes``), ``ratio_to_baseline`` (this row's median / the
      baseline's at the same seq_len; ``None`` when either failed), ``tokens_per_s``
      (``batch * seq_len`` over the median time), ``peak_ratio_to_baseline`` (this row's
      ``peak_bytes`` / the baseline's at the same seq_len) and ``error`` (``None``,
      or the text of the exception — a seq_len the kind cannot take, out of memory — in
      which case the timings are ``None``).

    Raises:
      ValueError: bad cases (see ``check_cases``), an unknown ``baseline_label`` or bad
        sequence lengths; failures of single cases become error rows instead.
    """
    cases = check_cases(kinds_with_options)
    labels = [case.label for case in cases]
    if baseline_label is None:
        baseline_label = labels[0]
    if baseline_label not in labels:
        raise ValueError(f"baseline_label {baseline_label!r} is not a case label; labels: "
                         f"{', '.join(labels)}")
    seq_lens = list(seq_lens)
    if not seq_lens or any(not isinstance(n, int) or isinstance(n, bool) or n < 1
                           for n in seq_lens):
        raise ValueError(f"seq_lens must be a non-empty list of ints >= 1, got {seq_lens!r}")
    dtype = resolve_dtype(dtype)
    cases = sorted(cases, key=lambda case: case.label != baseline_label)

    rows = []
    work = [(seq_len, case) for seq_len in seq_lens for case in cases]
    bar = tqdm(work, desc="bench", unit="case", disable=not progress)
    for seq_len, case in bar:
        bar.set_postfix_str(f"{case.label} @ {seq_len}")
        row = {
            "label": case.label, "kind": case.kind, "seq_len": seq_len, "options": None,
            "batch": batch, "heads": heads, "head_dim": head_dim, "dtype": dtype.name,
            "backward": bool(backward), "median_ms": None, "min_ms": None, "max_ms": None,
            "compile_ms": None, "peak_bytes": None, "ratio_to_baseline": None,
            "tokens_per_s": None, "peak_ratio_to_baseline": None, "error": None,
        }
        try:
            row["options"] = resolve_options(case.options, seq_len)
            make_case = layer_case if is_layer_kind(case.kind) else attention_case
            fn, args = make_case(case.kind, batch=batch, seq_len=seq_len, heads=heads,
                                 head_dim=head_dim, dtype=dtype, options=row["options"],
                                 backward=backward, seed=seed)
            compiled, row["compile_ms"] = _compile(fn, args)
            row["peak_bytes"] = _compiled_footprint(compiled)
            row.update(_time_compiled(compiled, args, warmup, repeats))
            row["tokens_per_s"] = batch * seq_len / (row["median_ms"] / 1e3)
            del compiled, fn, args
            logging.info("%s seq_len=%d: %.3f ms (compile %.0f ms)", case.label, seq_len,
                         row["median_ms"], row["compile_ms"])
        except Exception as err:  # pylint: disable=broad-except
            # One case failing (bad seq_len, out of memory) must not end the sweep.
            row.update(median_ms=None, min_ms=None, max_ms=None, error=_error_text(err))
            logging.warning("%s seq_len=%d failed: %s", case.label, seq_len, row["error"])
        rows.append(row)
    bar.close()

    baseline = {row["seq_len"]: row for row in rows if row["label"] == baseline_label}
    for row in rows:
        base = baseline.get(row["seq_len"], {})
        if row["median_ms"] is not None and base.get("median_ms"):
            row["ratio_to_baseline"] = row["median_ms"] / base["median_ms"]
        if row["peak_bytes"] is not None and base.get("peak_bytes"):
            row["peak_ratio_to_baseline"] = row["peak_bytes"] / base["peak_bytes"]
    return rows


def decode_model(kind, options, *, layers, heads, head_dim, dtype=None, train_len, seed=0):
    """A ``TransformerLM`` of ``layers`` identical causal layers of attention ``kind``.

    ``d_model = heads * head_dim`` (multi-head, no GQA), SwiGLU ``mlp_dim = 4 * d_model``,
    the byte tokenizer's 260-token vocabulary, tied embeddings, computing in ``dtype``
    (float32 or bfloat16; parameters float32). ``ValueError`` for bad options or dtype.
    """
    # Imported here: the attention-only harness does not need Flax modules.
    from flax import nnx  # pylint: disable=import-outside-toplevel
    # pylint: disable-next=import-outside-toplevel
    from jaxattn.nn import AttentionSpec, TransformerConfig, TransformerLM

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
    # pylint: disable=import-outside-toplevel,protected-access
    from jaxattn.evaluation.retrieval import FullForwardGreedy, runnable_length
    from jaxattn.inference import KVCacheDecoder

    for name, value in (("seq_len", seq_len), ("batch", batch), ("new_tokens", new_tokens),
                        ("prefill_chunk", prefill_chunk), ("repeats", repeats)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
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
    compiled, stats["baseline_compile_ms"] = _compile(greedy._next, args)
    stats["baseline_peak_bytes"] = _compiled_footprint(compiled)
    stats["baseline_ms"] = _time_compiled(compiled, args, warmup, repeats)["median_ms"]
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
    seq_lens = list(seq_lens)
    if not seq_lens or any(not isinstance(n, int) or isinstance(n, bool) or n < 1
                           for n in seq_lens):
        raise ValueError(f"seq_lens must be a non-empty list of ints >= 1, got {seq_lens!r}")
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
            row.update(dict.fromkeys(keys), error=_error_text(err))
            logging.warning("%s seq_len=%d failed: %s", case.label, seq_len, row["error"])
        rows.append(row)
    bar.close()
    return rows


def fit_exponent(seq_lens, times):
    """Least-squares slope of ``log(time)`` against ``log(seq_len)``.

    About 2 for dense attention, 1.5 for routing with ``sqrt(n)`` clusters, 1 for local
    attention (at sizes large enough that fixed costs do not dominate).
    """
    n = np.asarray(seq_lens, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    if n.ndim != 1 or n.shape != t.shape:
        raise ValueError(f"seq_lens and times must be 1-D of the same length, got {n.shape} "
                         f"and {t.shape}")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(t)) and np.all(n > 0) and np.all(t > 0)):
        raise ValueError("seq_lens and times must be finite and positive")
    if np.unique(n).size < 2:
        raise ValueError(f"need at least two distinct sequence lengths, got "
                         f"{sorted(set(n.tolist()))}")
    slope, _ = np.polyfit(np.log(n), np.log(t), 1)
    return float(slope)


def fit_exponents(rows, key="median_ms"):
    """``{label: fit_exponent of row[key] over its successful rows}``; ``None`` with fewer than
    two lengths."""
    exponents = {}
    for label in dict.fromkeys(row["label"] for row in rows):
        points = [(row["seq_len"], row[key]) for row in rows
                  if row["label"] == label and row["error"] is None]
        if len({seq_len for seq_len, _ in points}) < 2:
            exponents[label] = None
        else:
            exponents[label] = fit_exponent(*zip(*points))
    return exponents


def _format_ms(value):
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _format_bytes(value):
    return "—" if value is None else f"{value / 2**20:.1f}"


def _format_rate(value):
    if value is None:
        return "—"
    if value < 1e3:
        return f"{value:.1f}"
    return f"{value / 1e3:.1f}k" if value < 1e6 else f"{value / 1e6:.2f}M"


def _format_ratio(value):
    return "—" if value is None else f"{value:.2f}"


def _markdown_table(rows, columns):
    """A Markdown table, one line per row in order; ``columns`` are ``(header, alignment,
    cell)`` with ``cell(row) -> str``. A last ``error`` column is always added."""
    error = lambda row: (row.get("error") or "").replace("|", "\\|")
    columns = [*columns, ("error", "---", error)]
    lines = ["| " + " | ".join(header for header, _, _ in columns) + " |",
             "|" + "|".join(align for _, align, _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row) for _, _, cell in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _text(key):
    return lambda row: str(row[key])


def _cell(key, fmt):
    return lambda row: fmt(row.get(key))


def to_markdown(rows):
    """A Markdown table of ``run_sweep`` rows, one line per row, in order."""
    return _markdown_table(rows, [
        ("label", "---", _text("label")), ("kind", "---", _text("kind")),
        ("seq_len", "---:", _text("seq_len")),
        ("median ms", "---:", _cell("median_ms", _format_ms)),
        ("min ms", "---:", _cell("min_ms", _format_ms)),
        ("compile ms", "---:", _cell("compile_ms", _format_ms)),
        ("peak MiB", "---:", _cell("peak_bytes", _format_bytes)),
        ("× baseline", "---:", _cell("ratio_to_baseline", _format_ratio)),
        ("tokens/s", "---:", _cell("tokens_per_s", _format_rate)),
        ("peak × baseline", "---:", _cell("peak_ratio_to_baseline", _format_ratio)),
    ])


def decode_to_markdown(rows):
    """A Markdown table of ``run_decode_sweep`` rows, one line per row, in order."""
    return _markdown_table(rows, [
        ("label", "---", _text("label")), ("kind", "---", _text("kind")),
        ("seq_len", "---:", _text("seq_len")),
        ("prefill ms", "---:", _cell("prefill_ms", _format_ms)),
        ("prefill tokens/s", "---:", _cell("prefill_tokens_per_s", _format_rate)),
        ("decode ms/token", "---:", _cell("median_ms", _format_ms)),
        ("decode tokens/s", "---:", _cell("tokens_per_s", _format_rate)),
        ("full forward ms/token", "---:", _cell("baseline_ms", _format_ms)),
        ("decode × full forward", "---:", _cell("ratio_to_baseline", _format_ratio)),
        ("cache MiB", "---:", _cell("cache_bytes", _format_bytes)),
        ("cache slots", "---:", lambda row: str(row.get("cache_slots") or "—")),
    ])
