"""Comparison reports across runs: one row per model, perplexity and retrieval against length
side by side, and one curve per model in each plot (``experiments/repro.py``).

A run is a dict (a "record"):

- ``kind``: its label (``"dense"``, ``"lsg_from_dense"``, ...);
- ``params``: parameter count;
- ``train``: ``{"steps", "seconds", "final_eval"}`` (``final_eval``: the trainer's last
  evaluation, ``{"loss", "perplexity", "bits_per_byte"}``; ``None`` for an untrained model),
  and for a converted model ``"converted_from"`` and ``"source_step"``;
- ``eval``: what ``experiments.eval.run`` returned (``eval.json``): ``meta``, and the parts
  present of ``ppl``, ``retrieval``, ``efficiency``;
- ``error`` (instead of the numbers): why the run failed.

``summarize_run`` flattens a record into the numbers of one table row; ``write_comparison``
writes ``repro.json``, ``repro.md`` and the PNGs. Any part may be missing: its cells read
"—" and its curve is left out.
"""

import math
import os

import numpy as np
from matplotlib.ticker import FuncFormatter, NullFormatter

from jaxattn.evaluation import report

# Kinds whose rows the claims section compares, by claim.
SOFTMAX_PAIR = ("dense", "ssmax")


# --------------------------------------------------------------------------- numbers


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def summarize_run(record: dict) -> dict:
    """The numbers of one table row of ``record``.

    Returns:
      ``{"kind", "params", "steps", "train_seconds", "final_loss", "converted_from",
      "source_step", "train_len", "ppl": {length: perplexity}, "loss": {length: loss},
      "retrieval": {prompt length: accuracy averaged over depths}, "retrieval_depths":
      {prompt length: [accuracy per depth]}, "eff_length", "tokens_per_s", "peak_mib",
      "eff_error", "error", "resumed_from"}``; lengths are ints, absent numbers ``None``;
      ``train_seconds`` counts the last training call only, which began at step
      ``resumed_from`` (0: from scratch). The efficiency numbers are
      those of the longest length measured (its ``error`` in ``eff_error`` when it failed).
    """
    results = record.get("eval") or {}
    meta = results.get("meta") or {}
    train = record.get("train") or {}
    final = train.get("final_eval") or {}
    row = {
        "kind": record["kind"],
        "params": record.get("params"),
        "steps": train.get("steps"),
        "train_seconds": _finite(train.get("seconds")),
        "final_loss": _finite(final.get("loss")),
        "converted_from": train.get("converted_from"),
        "source_step": train.get("source_step"),
        "resumed_from": train.get("resumed_from") or 0,
        "train_len": meta.get("train_len"),
        "ppl": {}, "loss": {}, "retrieval": {}, "retrieval_depths": {},
        "eff_length": None, "tokens_per_s": None, "peak_mib": None, "eff_error": None,
        "error": record.get("error"),
    }
    for r in results.get("ppl") or []:
        row["ppl"][int(r["length"])] = _finite(r.get("perplexity"))
        row["loss"][int(r["length"])] = _finite(r.get("loss"))
    grid = results.get("retrieval")
    if grid:
        accuracy = np.asarray(grid["accuracy"], dtype=float).reshape(len(grid["lengths"]), -1)
        for length, accs in zip(grid["lengths"], accuracy):
            row["retrieval"][int(length)] = float(np.mean(accs))
            row["retrieval_depths"][int(length)] = [float(a) for a in accs]
    efficiency = results.get("efficiency") or []
    if efficiency:
        last = max(efficiency, key=lambda r: r["length"])
        row["eff_length"] = int(last["length"])
        row["tokens_per_s"] = _finite(last.get("tokens_per_s"))
        peak = last.get("peak_bytes")
        row["peak_mib"] = None if peak is None else peak / 2**20
        row["eff_error"] = last.get("error")
    return row


def _lengths(rows, key) -> list[int]:
    return sorted({n for r in rows for n in r[key]})


def train_lengths(rows) -> list[int]:
    """The distinct training lengths of the rows (one, unless runs of different settings
    were mixed)."""
    return sorted({r["train_len"] for r in rows if r["train_len"]})


# --------------------------------------------------------------------------- Markdown


def _fmt(value, digits=3) -> str:
    """A number for a table cell: ``digits`` decimals, scientific notation from 10^5 on,
    "—" when absent."""
    if value is None:
        return "—"
    if abs(value) >= 1e5:
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def _count(value) -> str:
    return "—" if value is None else f"{value:.0f}"


def _cell_text(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _params(n) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _training(row) -> str:
    if row["converted_from"]:
        return f"0 (converted from {row['converted_from']} step {row['source_step']})"
    steps = "—" if row["steps"] is None else str(row["steps"])
    seconds = "—" if row["train_seconds"] is None else f"{row['train_seconds']:.0f} s"
    if row["train_seconds"] is not None and row["resumed_from"]:
        seconds += f" (from step {row['resumed_from']})"
    return f"{steps} / {seconds}"


def comparison_table(rows, missing=()) -> str:
    """One row per run: kind | params | train steps / time | final val loss | perplexity at
    each evaluation length | retrieval accuracy (mean over depths) at each prompt length |
    tokens/s and peak memory at the longest efficiency length. A failed run's row gives its
    error; ``missing`` kinds get a row saying they have no results."""
    ppl_lengths = _lengths(rows, "ppl")
    ret_lengths = _lengths(rows, "retrieval")
    header = (["kind", "params", "train steps / time", "final val loss"] +
              [f"ppl@{n}" for n in ppl_lengths] + [f"acc@{n}" for n in ret_lengths] +
              ["eff. length", "tokens/s", "peak MiB"])
    lines = ["| " + " | ".join(header) + " |",
             "|---|---:|---|---:|" + "---:|" * (len(header) - 4)]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['kind']} | failed: {_cell_text(r['error'])} | | |" +
                         " |" * (len(header) - 4))
            continue
        cells = [r["kind"], _params(r["params"]), _training(r), _fmt(r["final_loss"], 4)]
        cells += [_fmt(r["ppl"].get(n)) for n in ppl_lengths]
        cells += [_fmt(r["retrieval"].get(n), 2) for n in ret_lengths]
        if r["eff_error"]:
            eff = [str(r["eff_length"]), "error", "—"]
        else:
            eff = ["—" if r["eff_length"] is None else str(r["eff_length"]),
                   _count(r["tokens_per_s"]), _fmt(r["peak_mib"], 1)]
        lines.append("| " + " | ".join(cells + eff) + " |")
    for kind in missing:
        lines.append(f"| {kind} | no results | | |" + " |" * (len(header) - 4))
    return "\n".join(lines) + "\n"


def _longest_common(a: dict, b: dict, above: int):
    common = [n for n in a if n in b and n > above and a[n] is not None and b[n] is not None]
    return max(common) if common else None


def _retrieval_evidence(row, train_len) -> str | None:
    """``"within T: x; past T: y (per length ...)"`` for one row, ``None`` without data."""
    acc = {n: a for n, a in row["retrieval"].items() if a is not None}
    if not acc or train_len is None:
        return None
    within = [a for n, a in acc.items() if n < train_len]
    beyond = sorted((n, a) for n, a in acc.items() if n >= train_len)
    parts = []
    if within:
        parts.append(f"{np.mean(within):.2f} within T")
    if beyond:
        parts.append(f"{np.mean([a for _, a in beyond]):.2f} past T (" +
                     ", ".join(f"{a:.2f}@{n}" for n, a in beyond) + ")")
    return f"{row['kind']}: " + "; ".join(parts)


def claim_rows(rows) -> list[tuple[str, str]]:
    """``(claim, evidence)`` pairs: the numbers of the table that bear on each claim of the
    suite, for the kinds present. Nothing is judged here; the evidence states the numbers.

    - SSMax: ``loss(L_max) - loss(T)`` of ssmax and of dense (nats per token).
    - Landmark and Titans: retrieval accuracy at prompts within the training length against
      past it (mean over depths), dense as the reference.
    - LSG: ``loss(L_max) - loss(T)`` of ``lsg_from_dense`` (the dense checkpoint converted)
      against dense, both measured from the dense model's loss at ``T``.
    """
    by_kind = {r["kind"]: r for r in rows}
    lengths = train_lengths(rows)
    train_len = lengths[0] if len(lengths) == 1 else None
    claims = []

    def loss_growth(kind, reference="same"):
        row = by_kind.get(kind)
        ref = row if reference == "same" else by_kind.get(reference)
        if row is None or ref is None or train_len is None:
            return None
        base = ref["loss"].get(train_len)
        longest = _longest_common(row["loss"], row["loss"], train_len)
        if base is None or longest is None:
            return None
        return f"{kind} {row['loss'][longest] - base:+.3f} at {longest}"

    ssmax = [e for e in (loss_growth(k) for k in SOFTMAX_PAIR) if e]
    if ssmax:
        claims.append(("SSMax keeps loss flat past the training length where softmax degrades",
                       "loss(L) - loss(T), nats/token: " + "; ".join(ssmax)))
    for kind, claim in (("landmark", "Landmark retrieves needles far past the training length"),
                        ("titans_mac", "Titans finds needles past the training length")):
        if kind in by_kind:
            evidence = [e for e in (_retrieval_evidence(by_kind[k], train_len)
                                    for k in (kind, "dense") if k in by_kind) if e]
            if evidence:
                claims.append((claim, "retrieval accuracy: " + "; ".join(evidence)))
    if "lsg_from_dense" in by_kind:
        lsg = [e for e in (loss_growth("lsg_from_dense", "dense"), loss_growth("dense")) if e]
        if lsg:
            claims.append(("LSG lets a dense-trained model run at longer lengths",
                           "loss(L) - dense loss(T), nats/token: " + "; ".join(lsg)))
    return claims


def claims_table(rows) -> str:
    claims = claim_rows(rows)
    if not claims:
        return ""
    lines = ["| claim | evidence |", "|---|---|"]
    lines += [f"| {claim} | {evidence} |" for claim, evidence in claims]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _log_y_if_wide(ax, values):
    """A log y axis with plain-number labels when positive ``values`` span a factor of 4 or
    more (a model that breaks past its length goes up by orders); else a linear one."""
    values = [v for v in values if v is not None and v > 0]
    if values and max(values) / min(values) >= 4:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _mark_train_len(ax, rows):
    for i, n in enumerate(train_lengths(rows)):
        ax.axvline(n, color="gray", linestyle=":", label="training length" if i == 0 else None)


def _curves_by_kind(rows, key: str, path: str, *, xlabel: str, ylabel: str, title: str,
                    log_y: bool = False, ylim=None) -> str:
    """One curve per run of ``row[key]`` (``{length: value or None}``) against length (log2 x
    axis), the training length marked."""
    fig, ax = report._figure(width=6.5)
    lengths, values = [], []
    for r in rows:
        points = sorted((n, v) for n, v in r[key].items() if v is not None)
        if points:
            ax.plot(*zip(*points), "o-", label=r["kind"])
            lengths += [n for n, _ in points]
            values += [v for _, v in points]
    _mark_train_len(ax, rows)
    report._log2_axis(ax, lengths, ticks=True)
    if log_y:
        _log_y_if_wide(ax, values)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return report._save(fig, path)


def plot_ppl_vs_length(rows, path: str, title: str | None = None) -> str:
    """Perplexity against evaluation length, one curve per run, the training length marked
    (log2 x axis; log y axis when the values span a factor of 4)."""
    return _curves_by_kind(rows, "ppl", path, xlabel="evaluation length (tokens)",
                           ylabel="perplexity", log_y=True,
                           title=title or "perplexity against evaluation length")


def plot_retrieval_vs_length(rows, path: str, title: str | None = None) -> str:
    """Retrieval accuracy (mean over needle depths) against prompt length, one curve per run,
    the training length marked."""
    return _curves_by_kind(rows, "retrieval", path, xlabel="prompt length (tokens)",
                           ylabel="accuracy (mean over depths)", ylim=(-0.05, 1.05),
                           title=title or "retrieval accuracy against prompt length")


def plot_loss_vs_position(records, path: str, length: int, title: str | None = None) -> str:
    """Mean loss per position bucket at evaluation length ``length``, one curve per run (the
    runs evaluated at that length), the training length marked."""
    fig, ax = report._figure(width=6.5)
    middles, train = [], set()
    for record in records:
        results = record.get("eval") or {}
        rows = [r for r in results.get("ppl") or [] if r["length"] == length]
        if not rows:
            continue
        buckets = [b for b in rows[0]["buckets"]
                   if b["tokens"] and b["loss"] is not None and math.isfinite(b["loss"])]
        x = [max((b["start"] + b["stop"]) / 2, 0.5) for b in buckets]
        middles += x
        ax.plot(x, [b["loss"] for b in buckets], "o-", label=record["kind"])
        train_len = (results.get("meta") or {}).get("train_len")
        if train_len:
            train.add(train_len)
    for i, n in enumerate(sorted(train)):
        ax.axvline(n, color="gray", linestyle=":", label="training length" if i == 0 else None)
    report._log2_axis(ax, middles)
    ax.set_xlabel("position (bucket middle)")
    ax.set_ylabel("mean loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"loss against position at {length} tokens")
    return report._save(fig, path)


# --------------------------------------------------------------------------- all together


def write_comparison(records, out_dir: str, *, title: str = "Comparison", meta=None,
                     missing=(), notes=()) -> dict:
    """Writes the comparison of ``records`` (in the order given) to ``out_dir``.

    Files: ``repro.json`` (``meta``, ``missing`` and the ``summarize_run`` row of every
    record), ``repro.md`` (``meta`` as a list, ``notes``, the table and the claims section),
    ``ppl_vs_length.png``, ``retrieval_vs_length.png`` and ``loss_vs_position.png`` (at the
    longest length evaluated), each plot only when some run has the numbers it draws.

    Returns:
      ``{"json", "markdown", "ppl_vs_length", "retrieval_vs_length", "loss_vs_position"}``
      (the keys of the files written) -> path.
    """
    os.makedirs(out_dir, exist_ok=True)
    rows = [summarize_run(r) for r in records]
    missing = list(missing)
    files = {}
    if any(r["ppl"] for r in rows):
        files["ppl_vs_length"] = plot_ppl_vs_length(rows,
                                                    os.path.join(out_dir, "ppl_vs_length.png"))
        longest = max(n for r in rows for n in r["ppl"])
        files["loss_vs_position"] = plot_loss_vs_position(
            records, os.path.join(out_dir, "loss_vs_position.png"), longest)
    if any(r["retrieval"] for r in rows):
        files["retrieval_vs_length"] = plot_retrieval_vs_length(
            rows, os.path.join(out_dir, "retrieval_vs_length.png"))
    lengths = train_lengths(rows)
    if len(lengths) > 1:
        notes = list(notes) + [f"Warning: the runs were trained at different lengths "
                               f"{lengths}; they do not compare like for like."]
    sections = [f"# {title}\n"]
    if meta:
        sections.append("\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n")
    if notes:
        sections.append("\n".join(notes) + "\n")
    sections += ["## Results\n", comparison_table(rows, missing)]
    claims = claims_table(rows)
    if claims:
        sections += ["## Claims\n", claims]
    plots = [name for name in ("ppl_vs_length", "retrieval_vs_length", "loss_vs_position")
             if name in files]
    if plots:
        sections.append("\n".join(f"![{name}]({name}.png)" for name in plots) + "\n")
    path = os.path.join(out_dir, "repro.md")
    with open(path, "w") as f:
        f.write("\n".join(sections))
    files["markdown"] = path
    files["json"] = report.write_json(os.path.join(out_dir, "repro.json"), {
        "meta": meta or {}, "missing": missing, "rows": rows})
    return files
