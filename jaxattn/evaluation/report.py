"""Reports of ``experiments/eval.py``: JSON with every number, Markdown tables and PNG plots.

Inputs are what the evaluation functions return: ``perplexity_by_length`` rows ("ppl"),
a ``retrieval_grid`` dict ("retrieval") and ``forward_efficiency`` rows ("efficiency").
Plots are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through
``pyplot``, so no display or global backend is touched.
"""

import json
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

# --------------------------------------------------------------------------- JSON


def to_jsonable(value):
    """``value`` with NumPy scalars and arrays as Python numbers and lists, tuples as lists,
    and NaN / infinity as ``None`` (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str, value) -> str:
    with open(path, "w") as f:
        json.dump(to_jsonable(value), f, indent=2, allow_nan=False)
        f.write("\n")
    return path


# --------------------------------------------------------------------------- Markdown


def _num(value, digits=4):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def _bucket_label(bucket):
    return f"[{bucket['start']}, {bucket['stop']})"


def perplexity_table(rows) -> str:
    """Length | windows | tokens | loss | perplexity | bits/byte | window-mean loss."""
    lines = ["| length | windows | tokens | loss | perplexity | bits/byte | window-mean loss "
             "| method |", "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['length']} | {r['windows']} | {r['tokens']} | {_num(r['loss'])} | "
                     f"{_num(r['perplexity'], 3)} | {_num(r['bits_per_byte'])} | "
                     f"{_num(r['window_mean_loss'])} | {r['method']} |")
    return "\n".join(lines) + "\n"


def bucket_table(rows, max_columns: int = 12) -> str:
    """Mean loss per position bucket: a length x bucket table when the buckets line up across
    lengths (at most ``max_columns`` distinct ones), else one line per (length, bucket)."""
    ranges = sorted({(b["start"], b["stop"]) for r in rows for b in r["buckets"]})
    if len(ranges) <= max_columns:
        header = "| length | " + " | ".join(f"[{a}, {b})" for a, b in ranges) + " |"
        lines = [header, "|---:|" + "---:|" * len(ranges)]
        for r in rows:
            by_range = {(b["start"], b["stop"]): b for b in r["buckets"]}
            cells = [_num(by_range[k]["loss"]) if k in by_range else "" for k in ranges]
            lines.append(f"| {r['length']} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    lines = ["| length | positions | tokens | loss |", "|---:|---|---:|---:|"]
    for r in rows:
        lines += [f"| {r['length']} | {_bucket_label(b)} | {b['tokens']} | {_num(b['loss'])} |"
                  for b in r["buckets"]]
    return "\n".join(lines) + "\n"


def _depth_label(depth):
    return "random" if depth is None else f"{depth:g}"


def retrieval_table(grid) -> str:
    """Accuracy, lengths as rows and depths as columns, plus the row mean."""
    depths = [_depth_label(d) for d in grid["depths"]]
    lines = ["| length | " + " | ".join(f"depth {d}" for d in depths) + " | mean |",
             "|---:|" + "---:|" * (len(depths) + 1)]
    accuracy = np.asarray(grid["accuracy"], dtype=float)
    for length, row in zip(grid["lengths"], accuracy):
        lines.append(f"| {length} | " + " | ".join(f"{a:.2f}" for a in row) +
                     f" | {row.mean():.2f} |")
    return "\n".join(lines) + "\n"


def efficiency_table(rows) -> str:
    lines = ["| length | batch | median ms | min ms | compile ms | peak MiB | tokens/s | error |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        peak = None if r["peak_bytes"] is None else r["peak_bytes"] / 2**20
        error = (r.get("error") or "").replace("|", "\\|")
        lines.append(f"| {r['length']} | {r['batch']} | {_num(r['median_ms'], 2)} | "
                     f"{_num(r['min_ms'], 2)} | {_num(r['compile_ms'], 0)} | {_num(peak, 1)} | "
                     f"{_num(r['tokens_per_s'], 0)} | {error} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _figure(ncols=1, width=6.0, height=4.0):
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig, path):
    fig.savefig(path, dpi=110)
    return path


def _log2_axis(ax, values, ticks=False):
    """A log2 x axis with plain-number labels when ``values`` span a factor of 4 or more;
    ``ticks``: one tick per value."""
    values = sorted({v for v in values if v and v > 0})
    if values and values[-1] / values[0] >= 4:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if ticks and values:
        ax.set_xticks(values, [f"{v:g}" for v in values])


def plot_needle_heatmap(grid, path: str, title: str | None = None) -> str:
    """Accuracy heatmap: lengths on the y axis, depths on the x axis, values annotated."""
    accuracy = np.asarray(grid["accuracy"], dtype=float)
    fig, ax = _figure(width=1.2 + 1.1 * max(accuracy.shape[1], 3),
                      height=1.2 + 0.55 * max(accuracy.shape[0], 3))
    image = ax.imshow(accuracy, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto",
                      origin="lower")
    ax.set_xticks(range(accuracy.shape[1]), [_depth_label(d) for d in grid["depths"]])
    ax.set_yticks(range(accuracy.shape[0]), [str(n) for n in grid["lengths"]])
    ax.set_xlabel("needle depth")
    ax.set_ylabel("prompt length (tokens)")
    for (i, j), value in np.ndenumerate(accuracy):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(title or f"{grid['task']} ({grid['method']}, {grid['trials']} trials/cell)")
    return _save(fig, path)


def plot_perplexity(rows, path: str, title: str | None = None) -> str:
    """Perplexity (and window-mean) against evaluation length."""
    fig, ax = _figure()
    lengths = [r["length"] for r in rows]
    ax.plot(lengths, [r["perplexity"] for r in rows], "o-", label="token-weighted")
    ax.plot(lengths, [math.exp(min(r["window_mean_loss"], 700.0)) for r in rows], "s--",
            alpha=0.7, label="exp(window-mean loss)")
    _log2_axis(ax, lengths, ticks=True)
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "perplexity against evaluation length")
    return _save(fig, path)


def plot_position_losses(rows, path: str, title: str | None = None) -> str:
    """Mean loss per position bucket, one curve per evaluation length; each point sits at its
    bucket's middle (log2 x axis for widely spread buckets)."""
    fig, ax = _figure()
    middles = []
    for r in rows:
        buckets = [b for b in r["buckets"] if b["tokens"]]
        x = [max((b["start"] + b["stop"]) / 2, 0.5) for b in buckets]
        middles += x
        ax.plot(x, [b["loss"] for b in buckets], "o-", label=f"L={r['length']}")
    _log2_axis(ax, middles)
    ax.set_xlabel("position in document within window (bucket middle)")
    ax.set_ylabel("mean loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "loss against position")
    return _save(fig, path)


def plot_efficiency(rows, path: str, title: str | None = None) -> str:
    """Forward time and peak memory against length (failed lengths left out)."""
    fig, (ax_time, ax_mem) = _figure(ncols=2, width=5.0)
    ok = [r for r in rows if r.get("error") is None and r["median_ms"] is not None]
    lengths = [r["length"] for r in ok]
    ax_time.plot(lengths, [r["median_ms"] for r in ok], "o-")
    ax_time.set_ylabel("forward time, median (ms)")
    mem = [(r["length"], r["peak_bytes"] / 2**20) for r in ok if r["peak_bytes"] is not None]
    if mem:
        ax_mem.plot(*zip(*mem), "o-", color="tab:orange")
    ax_mem.set_ylabel("peak memory (MiB, XLA buffer assignment)")
    for ax in (ax_time, ax_mem):
        _log2_axis(ax, lengths, ticks=True)
        if len(lengths) > 1:
            ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.grid(alpha=0.3)
    fig.suptitle(title or "forward pass cost against length")
    return _save(fig, path)


# --------------------------------------------------------------------------- all together


def write_report(results: dict, out_dir: str, *, title: str = "Evaluation") -> dict:
    """Writes ``eval.json`` (``results`` as given), ``eval.md`` (a section per part) and the
    PNGs of the parts present: ``ppl_vs_length.png``, ``loss_vs_position.png`` ("ppl"),
    ``needle_heatmap.png`` ("retrieval"), ``efficiency.png`` ("efficiency").

    Returns:
      ``{name: path}`` of every file written.
    """
    os.makedirs(out_dir, exist_ok=True)
    files = {"json": write_json(os.path.join(out_dir, "eval.json"), results)}
    sections = [f"# {title}\n"]
    meta = results.get("meta") or {}
    if meta:
        sections.append("\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n")
    if results.get("ppl"):
        rows = results["ppl"]
        sections += ["## Perplexity against evaluation length\n", perplexity_table(rows),
                     "## Mean loss per position bucket\n", bucket_table(rows)]
        files["ppl_vs_length"] = plot_perplexity(rows, os.path.join(out_dir,
                                                                    "ppl_vs_length.png"))
        files["loss_vs_position"] = plot_position_losses(
            rows, os.path.join(out_dir, "loss_vs_position.png"))
    if results.get("retrieval"):
        grid = results["retrieval"]
        sections += [f"## Retrieval: {grid['task']} ({grid['method']}, {grid['trials']} "
                     "trials per cell)\n", retrieval_table(grid)]
        files["needle_heatmap"] = plot_needle_heatmap(grid, os.path.join(out_dir,
                                                                         "needle_heatmap.png"))
    if results.get("efficiency"):
        rows = results["efficiency"]
        sections += ["## Forward pass cost\n", efficiency_table(rows)]
        files["efficiency"] = plot_efficiency(rows, os.path.join(out_dir, "efficiency.png"))
    markdown = "\n".join(sections)
    path = os.path.join(out_dir, "eval.md")
    with open(path, "w") as f:
        f.write(markdown)
    files["markdown"] = path
    return files
