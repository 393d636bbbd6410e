"""The benchmark harness behind ``experiments/bench.py``, one module per job.

- ``case_inputs``: dtype, sizes and per-length options of a case (``SQRT``).
- ``attention_cases``: one attention call of a registered kind (``attention_case``); a
  stateful kind (routing) is timed as its training step, attention then ``update_state``.
- ``layer_cases``: whole layers, dense attention against the Titans blocks (``layer_case``).
- ``sweep``: every case at every length next to a baseline (``run_sweep``).
- ``decode``: whole models decoding with a KV cache against the full forward
  (``run_decode_sweep``).
- ``scaling``: fitted exponents ``p`` in ``time ~ seq_len^p``.
- ``tables``: Markdown tables of the rows.

Timing and memory measurement itself is the library's (``jaxattn.profiling``). Performance is
measured here, never asserted in unit tests. Typical use::

    fn, args = attention_case("dense", batch=1, seq_len=4096, heads=8, head_dim=64,
                              options={"causal": True}, backward=True)
    stats = profiling.time_fn(fn, *args)  # {"median_ms", "min_ms", "max_ms", "compile_ms"}
    rows = run_sweep([("dense", "dense", {}), ("local", "local", {"block_size": 128})],
                     [1024, 2048, 4096], batch=1, heads=8, head_dim=64, baseline_label="dense")
    print(to_markdown(rows))
"""

from experiments.benchmarks.attention_cases import attention_case
from experiments.benchmarks.case_inputs import (SQRT, default_dtype, resolve_dtype,
                                                resolve_options, sqrt_power_of_two)
from experiments.benchmarks.decode import (DECODE_VOCAB, decode_case, decode_model,
                                           run_decode_sweep)
from experiments.benchmarks.layer_cases import (LAYER_KINDS, is_layer_kind, layer_case,
                                                layer_option_names)
from experiments.benchmarks.scaling import fit_exponent, fit_exponents
from experiments.benchmarks.sweep import check_cases, run_sweep
from experiments.benchmarks.tables import decode_to_markdown, to_markdown

__all__ = ["DECODE_VOCAB", "LAYER_KINDS", "SQRT", "attention_case", "check_cases",
           "decode_case", "decode_model", "decode_to_markdown", "default_dtype",
           "fit_exponent", "fit_exponents", "is_layer_kind", "layer_case", "layer_option_names",
           "resolve_dtype", "resolve_options", "run_decode_sweep", "run_sweep",
           "sqrt_power_of_two", "to_markdown"]
