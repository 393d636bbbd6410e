"""Attention and layer sweeps: every case at every sequence length, next to a baseline.

Performance is measured here, never asserted in unit tests: a sweep times every case next to
a baseline in the same process on the same device and reports each time (and compiled
memory) as a ratio to the baseline's at the same sequence length. A case is
``(label, kind, options)``, ``kind`` a registered attention kind (``attention_case``) or a
layer kind (``layer_case``). Typical use::

    rows = run_sweep([("dense", "dense", {}), ("local", "local", {"block_size": 128})],
                     [1024, 2048, 4096], batch=1, heads=8, head_dim=64, baseline_label="dense")
"""

import dataclasses

from absl import logging
from tqdm import tqdm

from experiments.benchmarks.attention_cases import attention_case
from experiments.benchmarks.case_inputs import resolve_dtype, resolve_options
from experiments.benchmarks.layer_cases import is_layer_kind, layer_case, layer_option_names
from jaxattn import profiling
from jaxattn.attention import registry


@dataclasses.dataclass
class Case:
    """One checked case of a sweep: its unique ``label``, ``kind`` and ``options``."""

    label: str
    kind: str
    options: dict


def check_seq_lens(seq_lens):
    """``seq_lens`` as a list; ``ValueError`` unless it is a non-empty list of ints ``>= 1``."""
    seq_lens = list(seq_lens)
    if not seq_lens or any(not isinstance(n, int) or isinstance(n, bool) or n < 1
                           for n in seq_lens):
        raise ValueError(f"seq_lens must be a non-empty list of ints >= 1, got {seq_lens!r}")
    return seq_lens


def check_cases(kinds_with_options):
    """Validates ``[(label, kind, options), ...]`` before anything runs; returns ``Case``s.

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
        cases.append(Case(label, kind, options))
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
            fields.append("implementation")  # the backend, passed to the call
        unknown = [key for key in case.options if key not in fields]
        if unknown:
            raise ValueError(
                f"case {case.label!r}: unknown option {unknown[0]!r} for attention kind "
                f"{case.kind!r}; valid options: {', '.join(fields)}"
            )
    return cases


def run_sweep(kinds_with_options, seq_lens, *, batch, heads, head_dim, dtype=None, backward=False,
              baseline_label=None, warmup=2, repeats=5, seed=0, progress=True,
              memory_only=False):
    """Times every ``(label, kind, options)`` at every sequence length.

    Args:
      kinds_with_options: ``[(label, kind, options), ...]``; option values may be ``"sqrt"``
        or callables of ``seq_len`` (see ``resolve_options``).
      seq_lens: sequence lengths; each is run for every case, baseline first.
      batch, heads, head_dim, dtype, backward, seed: as in ``attention_case``.
      baseline_label: label the ratios are taken against; default the first case's.
      warmup, repeats: as in ``jaxattn.profiling.time_fn``.
      progress: show a progress bar (a log line per case is always written).
      memory_only: compile every case and record its memory (``peak_bytes``) without
        running it, for programs too large to run here (a reference at 32k tokens).

    Returns:
      One dict per (seq_len, case): ``label, kind, seq_len, options`` (resolved), ``batch,
      heads, head_dim, dtype, backward, median_ms, min_ms, max_ms, compile_ms, peak_bytes``
      (see ``jaxattn.profiling.peak_memory_bytes``), ``ratio_to_baseline`` (this row's
      median / the baseline's at the same seq_len; ``None`` when either failed),
      ``tokens_per_s`` (``batch * seq_len`` over the median time), ``peak_ratio_to_baseline``
      (this row's ``peak_bytes`` / the baseline's at the same seq_len) and ``error``
      (``None``, or the text of the exception — a seq_len the kind cannot take, out of
      memory — in which case the timings are ``None``).

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
    seq_lens = check_seq_lens(seq_lens)
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
            compiled, row["compile_ms"] = profiling.compile_ahead(fn, args)
            row["peak_bytes"] = profiling.compiled_footprint(compiled)
            if not memory_only:
                row.update(profiling.time_compiled(compiled, args, warmup, repeats))
                row["tokens_per_s"] = batch * seq_len / (row["median_ms"] / 1e3)
            del compiled, fn, args
            logging.info("%s seq_len=%d: %s ms, %s bytes (compile %.0f ms)", case.label,
                         seq_len, row["median_ms"], row["peak_bytes"], row["compile_ms"])
        except Exception as err:  # pylint: disable=broad-except
            # One case failing (bad seq_len, out of memory) must not end the sweep.
            row.update(median_ms=None, min_ms=None, max_ms=None,
                       error=profiling.error_text(err))
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
