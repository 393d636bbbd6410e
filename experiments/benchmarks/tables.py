"""Markdown tables of benchmark rows: ``to_markdown`` for sweeps (``run_sweep``) and
``decode_to_markdown`` for the decode sweep (``run_decode_sweep``), one line per row in order,
with an ``error`` column last; missing numbers print as ``—``."""


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
