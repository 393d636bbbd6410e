"""Benchmark helpers and the ``experiments.bench`` entry point, on tiny CPU sizes.

These check that the measuring machinery works (positive times, ratios, error rows, exponent
fitting, reports); they never assert how fast anything is.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import app, flags
from absl.testing import flagsaver

from experiments import bench, benchmarks
from jaxattn import profiling
from jaxattn.attention import registry
from jaxattn.inference.kv_decoder import SLOT_MULTIPLE

TINY = dict(batch=1, heads=2, head_dim=16)


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry that a test may change without leaking into other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


@pytest.fixture
def parsed_flags():
    """Marks the absl flags parsed (pytest does not run ``app.run``) for ``flagsaver``."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return flags.FLAGS


def test_time_fn_positive():
    x = jnp.ones((64, 64), jnp.float32)
    stats = profiling.time_fn(lambda a: a @ a, x, warmup=1, repeats=3)
    assert set(stats) == {"median_ms", "min_ms", "max_ms", "compile_ms"}
    assert all(value > 0 for value in stats.values())
    assert stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"repeats": 1.5}])
def test_time_fn_rejects_bad_counts(kwargs):
    with pytest.raises(ValueError, match="warmup|repeats"):
        profiling.time_fn(lambda a: a + 1, jnp.ones(3), **kwargs)


def test_peak_memory_bytes_grows_with_seq_len():
    sizes = []
    for seq_len in (64, 128):
        fn, args = benchmarks.attention_case("dense", seq_len=seq_len, options={}, **TINY)
        sizes.append(profiling.peak_memory_bytes(fn, *args))
    # memory_analysis() exists on CPU, so the number is there; dense logits grow as T^2.
    assert all(isinstance(size, int) and size > 0 for size in sizes)
    assert sizes[1] > sizes[0]


def test_attention_case_forward_and_backward():
    fn, args = benchmarks.attention_case("ssmax", seq_len=64, options={"causal": True}, **TINY)
    q = args[0]
    assert q.shape == (1, 64, 2, 16) and q.dtype == benchmarks.default_dtype()
    assert args[3].shape == (2,)  # ssmax_s, ones per head
    out = jax.jit(fn)(*args)
    assert out.shape == q.shape

    fn, args = benchmarks.attention_case("local", seq_len=64, options={"block_size": 32},
                                           backward=True, dtype="float32", **TINY)
    assert args[3] is None
    grads, _ = jax.jit(fn)(*args)
    assert [g.shape for g in grads] == [args[0].shape] * 3
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_attention_case_rejects_bad_seq_len_before_building():
    with pytest.raises(ValueError, match="not a multiple of block_size=128"):
        benchmarks.attention_case("local", seq_len=64, options={"block_size": 128}, **TINY)
    with pytest.raises(ValueError, match="unknown attention kind 'nope'"):
        benchmarks.attention_case("nope", seq_len=64, options={}, **TINY)


@pytest.mark.skipif("routing" not in registry.list_variants(), reason="routing not registered")
def test_attention_case_times_the_routing_training_step():
    """The routing kind runs as in training: attention with the centroids, then
    ``update_state`` (new centroids and the commitment loss, which the backward pass adds)."""
    variant = registry.get_variant("routing")
    options = {"num_clusters": 4, "local_heads": 0, "decay": 0.5, "commitment_weight": 1.0}
    opts = registry.make_options("routing", **options)
    fn, args = benchmarks.attention_case("routing", seq_len=32, options=options,
                                         dtype="float32", **TINY)
    q, k, v, ssmax_s, state = args
    assert ssmax_s is None and state.shape == (2, 4, 16)  # [heads, clusters, head_dim]
    out, new_state, aux_loss = jax.jit(fn)(*args)
    want_state, want_aux = variant.update_state(q, k, state, opts)
    np.testing.assert_allclose(out, variant.apply(q, k, v, opts, state=state), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(new_state, want_state, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux_loss, want_aux, rtol=1e-5)
    assert not np.allclose(new_state, state) and float(aux_loss) > 0

    fn, args = benchmarks.attention_case("routing", seq_len=32, options=options,
                                         dtype="float32", backward=True, **TINY)
    cotangent = args[5]
    grads, new_state = jax.jit(fn)(*args)
    np.testing.assert_allclose(new_state, want_state, rtol=1e-5, atol=1e-6)

    def attention_loss(q, k, v):
        return jnp.sum(variant.apply(q, k, v, opts, state=state) * cotangent)

    def training_loss(q, k, v):
        return attention_loss(q, k, v) + variant.update_state(q, k, state, opts)[1]

    want = jax.grad(training_loss, argnums=(0, 1, 2))(q, k, v)
    for got, expected in zip(grads, want):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    attention_only = jax.grad(attention_loss)(q, k, v)
    assert not np.allclose(grads[0], attention_only, rtol=1e-4, atol=1e-5)


def test_run_sweep_ratios_and_error_rows():
    cases = [("base", "dense", {"causal": True}), ("loc", "local", {"block_size": 128})]
    rows = benchmarks.run_sweep(cases, [64, 128], dtype="float32", warmup=1, repeats=2,
                                  progress=False, baseline_label="base", **TINY)
    assert [(row["label"], row["seq_len"]) for row in rows] == [
        ("base", 64), ("loc", 64), ("base", 128), ("loc", 128)]
    by_key = {(row["label"], row["seq_len"]): row for row in rows}
    for seq_len in (64, 128):
        base = by_key[("base", seq_len)]
        assert base["error"] is None and base["ratio_to_baseline"] == 1.0
        assert base["median_ms"] > 0 and base["compile_ms"] > 0 and base["peak_bytes"] > 0
    bad = by_key[("loc", 64)]
    assert "not a multiple of block_size=128" in bad["error"]
    assert bad["median_ms"] is None and bad["ratio_to_baseline"] is None
    good = by_key[("loc", 128)]
    assert good["error"] is None
    base_ms = by_key[("base", 128)]["median_ms"]
    assert good["ratio_to_baseline"] == pytest.approx(good["median_ms"] / base_ms)
    assert good["options"] == {"block_size": 128}


def test_run_sweep_resolves_sqrt_options_per_seq_len():
    cases = [("loc", "local", {"block_size": benchmarks.SQRT})]
    rows = benchmarks.run_sweep(cases, [64, 128], dtype="float32", warmup=0, repeats=1,
                                  progress=False, **TINY)
    assert [row["options"]["block_size"] for row in rows] == [8, 8]
    assert all(row["error"] is None and row["ratio_to_baseline"] == 1.0 for row in rows)


@pytest.mark.parametrize("cases, baseline, match", [
    ([("a", "nope", {})], None, r"'nope' not registered; registered kinds: .*dense"),
    ([("a", "dense", {"block": 2})], None, r"unknown option 'block' .* valid options: causal"),
    ([("a", "dense", {}), ("a", "ssmax", {})], None, "duplicate case label 'a'"),
    ([("a", "dense", {})], "b", "baseline_label 'b' is not a case label"),
    ([], None, "no cases"),
])
def test_run_sweep_rejects_bad_config(cases, baseline, match):
    with pytest.raises(ValueError, match=match):
        benchmarks.run_sweep(cases, [64], baseline_label=baseline, progress=False, **TINY)


def test_fit_exponent_recovers_known_exponents():
    seq_lens = [512, 1024, 2048, 4096]
    for power in (1.0, 1.5, 2.0):
        times = [3e-4 * n**power for n in seq_lens]
        assert benchmarks.fit_exponent(seq_lens, times) == pytest.approx(power, abs=1e-9)
    with pytest.raises(ValueError, match="two distinct"):
        benchmarks.fit_exponent([64, 64], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        benchmarks.fit_exponent([64, 128], [1.0, 0.0])


def test_fit_exponents_skips_errors_and_single_points():
    rows = [{"label": "a", "seq_len": n, "median_ms": n**1.5, "error": None}
            for n in (64, 128, 256)]
    rows += [{"label": "b", "seq_len": 64, "median_ms": 1.0, "error": None},
             {"label": "b", "seq_len": 128, "median_ms": None, "error": "ValueError: no"}]
    exponents = benchmarks.fit_exponents(rows)
    assert exponents["a"] == pytest.approx(1.5)
    assert exponents["b"] is None


def test_sqrt_power_of_two():
    got = {n: benchmarks.sqrt_power_of_two(n) for n in (1, 64, 1000, 1024, 2048, 4096, 16384)}
    assert got == {1: 1, 64: 8, 1000: 8, 1024: 32, 2048: 32, 4096: 64, 16384: 128}
    for n in (96, 1000, 2048, 3 * 4096):
        p = benchmarks.sqrt_power_of_two(n)
        assert n % p == 0 and p & (p - 1) == 0


def test_to_markdown_has_every_label():
    rows = [
        {"label": "dense", "kind": "dense", "seq_len": 64, "median_ms": 1.25, "min_ms": 1.0,
         "compile_ms": 200.0, "peak_bytes": 2**20, "ratio_to_baseline": 1.0, "error": None},
        {"label": "local|128", "kind": "local", "seq_len": 64, "median_ms": None, "min_ms": None,
         "compile_ms": None, "peak_bytes": None, "ratio_to_baseline": None,
         "error": "ValueError: bad"},
    ]
    table = benchmarks.to_markdown(rows)
    assert "| dense | dense | 64 | 1.250 |" in table
    assert "local|128" in table and "ValueError: bad" in table
    assert len(table.strip().splitlines()) == 2 + len(rows)


def test_run_writes_report(tmp_path):
    report = bench.run("attention", seq_lens=[128, 256], out=str(tmp_path), warmup=0, repeats=1,
                       progress=False, **TINY)
    saved = json.loads((tmp_path / "bench.json").read_text())
    labels = [label for label, _, _ in bench.SUITES["attention"]]
    assert [row["label"] for row in saved["rows"]] == labels * 2
    assert all(row["error"] is None for row in saved["rows"])
    assert saved["meta"]["baseline"] == "dense" and saved["meta"]["jax_version"] == jax.__version__
    assert set(saved["exponents"]) == set(labels)
    assert all(math.isfinite(p) for p in saved["exponents"].values())
    markdown = (tmp_path / "bench.md").read_text()
    assert markdown == report["markdown"]
    assert "Fitted exponent" in markdown and all(f"| {label} |" in markdown for label in labels)


def test_run_rejects_unknown_suite_and_missing_kind(scratch_registry):
    with pytest.raises(ValueError, match="unknown suite 'nope'; valid suites: "
                                         + ", ".join(bench.SUITES)):
        bench.run("nope", seq_lens=[64])
    scratch_registry.pop("routing", None)
    remaining = ", ".join(sorted(scratch_registry))
    with pytest.raises(ValueError, match=r"needs attention kind\(s\) 'routing', not registered .* "
                                         r"registered kinds: " + remaining + "$"):
        bench.run("routing", seq_lens=[64])
    with pytest.raises(ValueError, match="'nope'.*registered kinds"):
        bench.run("attention", kinds=["dense", "nope"], seq_lens=[64])


@pytest.mark.skipif("routing" not in registry.list_variants(), reason="routing not registered")
def test_routing_suite_runs():
    report = bench.run("routing", seq_lens=[64], warmup=0, repeats=1, progress=False, **TINY)
    routing_row = report["rows"][1]
    assert routing_row["error"] is None, routing_row["error"]
    assert routing_row["options"]["num_clusters"] == 8


def test_main_end_to_end(tmp_path, parsed_flags, capsys):
    del parsed_flags
    with flagsaver.flagsaver(kinds=["dense", "local"], seq_lens=["64", "128"], heads=2, head_dim=16,
                             warmup=0, repeats=1, out=str(tmp_path)):
        bench.main(["bench"])
    printed = capsys.readouterr().out
    assert jax.devices()[0].device_kind in printed and jax.__version__ in printed
    assert "| dense | dense | 64 |" in printed and "| local | local | 128 |" in printed
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert len(rows) == 4 and rows[0]["ratio_to_baseline"] == 1.0

    with flagsaver.flagsaver(suite="nope"):
        with pytest.raises(app.UsageError, match="valid suites"):
            bench.main(["bench"])
    with flagsaver.flagsaver(seq_lens=["64", "x"]):
        with pytest.raises(app.UsageError, match="--seq_lens"):
            bench.main(["bench"])


def test_titans_suite_reports_tokens_per_second_and_memory_against_dense():
    report = bench.run("titans", seq_lens=[512], warmup=0, repeats=1, progress=False, **TINY)
    rows = report["rows"]
    assert [row["label"] for row in rows] == [label for label, _, _ in bench.SUITES["titans"]]
    assert all(row["error"] is None for row in rows), [row["error"] for row in rows]
    dense = rows[0]
    assert dense["kind"] == "layer:dense" and dense["peak_ratio_to_baseline"] == 1.0
    for row in rows:
        assert row["tokens_per_s"] == pytest.approx(512 / (row["median_ms"] / 1e3))
        assert row["peak_bytes"] > 0
        assert row["peak_ratio_to_baseline"] == pytest.approx(row["peak_bytes"]
                                                              / dense["peak_bytes"])
        assert row["ratio_to_baseline"] == pytest.approx(row["median_ms"] / dense["median_ms"])
    assert "| tokens/s | peak × baseline |" in report["markdown"]
    assert "Layer benchmark: suite `titans`" in report["markdown"]


def test_layer_case_backward_and_errors():
    fn, (params, x, cotangent) = benchmarks.layer_case(
        "layer:lmm", seq_len=32, options={"chunk_size": 8, "memory_depth": 1}, backward=True,
        dtype="float32", **TINY)
    assert x.shape == (1, 32, 32)
    grads, dx = jax.jit(fn)(params, x, cotangent)
    assert dx.shape == x.shape and jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match=r"seq_len: sequence length 96 is not a positive "
                                         r"multiple of model.titans.segment_len=64"):
        benchmarks.layer_case("layer:mac", seq_len=96, options={"segment_len": 64,
                                                                  "chunk_size": 32}, **TINY)
    with pytest.raises(ValueError, match=r"unknown layer kind 'layer:xl'; layer kinds: "
                                         r"layer:dense, layer:mac"):
        benchmarks.run_sweep([("a", "layer:xl", {})], [64], progress=False, **TINY)
    with pytest.raises(ValueError, match=r"unknown option 'windw' .*'layer:mag'.*window"):
        benchmarks.run_sweep([("a", "layer:mag", {"windw": 8})], [64], progress=False, **TINY)


def test_decode_suite_reports_decode_against_the_full_forward(tmp_path):
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)  # a dozen tiny programs
    try:
        report = bench.run("decode", seq_lens=[24, 40], layers=1, new_tokens=2, prefill_chunk=16,
                           warmup=0, repeats=1, progress=False, out=str(tmp_path), **TINY)
    finally:
        jax.config.update("jax_disable_most_optimizations", old)
    labels = [label for label, _, _ in bench.SUITES["decode"]]
    rows = report["rows"]
    assert [(row["label"], row["seq_len"]) for row in rows] == [
        (label, n) for n in (24, 40) for label in labels]
    assert all(row["error"] is None for row in rows), [row["error"] for row in rows]
    for row in rows:
        for key in ("prefill_ms", "median_ms", "baseline_ms", "tokens_per_s",
                    "prefill_tokens_per_s", "cache_bytes", "ratio_to_baseline"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["label"], key, row[key])
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["ratio_to_baseline"] == pytest.approx(row["median_ms"] / row["baseline_ms"])
        assert row["tokens_per_s"] == pytest.approx(1e3 / row["median_ms"])
        assert row["prefill_tokens_per_s"] == pytest.approx(row["seq_len"] * 1e3
                                                            / row["prefill_ms"])
        assert row["capacity"] == row["seq_len"] + 3 and row["prefill_chunk"] == 16
        global_tokens = 1 if row["kind"] == "lsg" else 0
        slots = global_tokens + row["capacity"] + 15
        assert row["cache_slots"] == -(-slots // SLOT_MULTIPLE) * SLOT_MULTIPLE
        assert row["baseline_len"] >= row["seq_len"] + 2
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["meta"]["suite"] == "decode" and saved["meta"]["layers"] == 1
    assert saved["rows"] == json.loads(json.dumps(rows))
    for exponents in (saved["exponents"], saved["baseline_exponents"]):
        assert set(exponents) == set(labels) and all(math.isfinite(p) for p in exponents.values())
    markdown = report["markdown"]
    assert "Decode benchmark: suite `decode`" in markdown
    assert "| p decode | p full forward |" in markdown
    assert all(f"| {label} | {row_kind} | 40 |" in markdown
               for label, row_kind, _ in bench.SUITES["decode"])
