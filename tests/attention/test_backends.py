"""Backend resolution per platform (passed in, not detected), its errors, and the cuDNN
path's argument mapping (checked through ``jax.nn.dot_product_attention``'s XLA form, which
takes the same arguments)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn.attention import backends
from jaxattn.attention import dense
from jaxattn.attention import dense_attention
from jaxattn.attention import local_attention
from jaxattn.attention import lsg_attention
from tests.naive_attention import naive_attention

PLAIN = {"causal": True, "window": None, "segment_ids": False, "ssmax": False, "q_offset": 0,
         "gqa": True, "dtype": "bfloat16", "head_dim": 128}


def _resolve(platform, table=dense.BACKEND_TABLE, implementation=None, **changes):
    return backends.resolve(implementation, kind="dense", pattern={**PLAIN, **changes},
                            table=table, platform=platform)


@pytest.mark.parametrize("platform, changes, expected", [
    ("cpu", {}, "xla_chunked"),
    ("cpu", {"dtype": "float32", "segment_ids": True}, "xla_chunked"),
    ("gpu", {}, "cudnn"),
    ("gpu", {"ssmax": True, "window": 256}, "cudnn"),
    ("gpu", {"dtype": "float32"}, "xla_chunked"),  # cuDNN: bf16/fp16 only; no Pallas yet
    ("gpu", {"segment_ids": True}, "xla_chunked"),
    ("gpu", {"causal": False, "window": 8}, "xla_chunked"),  # bidirectional window
    ("gpu", {"q_offset": 5}, "xla_chunked"),
    ("gpu", {"head_dim": 256}, "xla_chunked"),
    ("tpu", {}, "xla_chunked"),  # no Splash implementation yet
])
def test_dense_resolution_per_platform(platform, changes, expected):
    assert _resolve(platform, **changes) == expected


# Ids other than the bare platform names, which conftest reads as hardware markers.
@pytest.mark.parametrize("platform, expected", [("cpu", "reference"), ("gpu", "cudnn"),
                                                ("tpu", "reference")])
def test_calls_too_short_to_chunk_skip_xla_chunked(platform, expected):
    assert backends.resolve(None, kind="dense", pattern=PLAIN, table=dense.BACKEND_TABLE,
                            platform=platform, one_block=True) == expected
    assert backends.resolve("xla_chunked", kind="dense", pattern=PLAIN,
                            table=dense.BACKEND_TABLE, platform=platform,
                            one_block=True) == "xla_chunked"


def test_short_and_long_calls_on_cpu_pick_their_backends(monkeypatch):
    picked = []
    original = backends.resolve

    def spy(*args, **kwargs):
        picked.append(original(*args, **kwargs))
        return picked[-1]

    monkeypatch.setattr(backends, "resolve", spy)
    chosen = []
    for length, fn in [(dense.CHUNK, dense_attention), (dense.CHUNK + 8, dense_attention),
                       (16, lambda q, k, v: local_attention(q, k, v, block_size=8)),
                       (64, lambda q, k, v: local_attention(q, k, v, block_size=8))]:
        x = jnp.zeros((1, length, 2, 4))
        fn(x, x, x)
        chosen.append(picked[-1])  # the call's own resolution comes last
    assert chosen == ["reference", "xla_chunked", "reference", "xla_chunked"]


@pytest.mark.parametrize("platform", backends.PLATFORMS, ids=lambda p: f"on-{p}")
def test_reference_only_variants_resolve_to_the_reference(platform):
    assert _resolve(platform, table=backends.REFERENCE_ONLY) == "reference"


def test_fallback_orders_end_with_the_reference():
    assert set(backends.FALLBACK_ORDER) == set(backends.PLATFORMS)
    for order in backends.FALLBACK_ORDER.values():
        assert order[-1] == "reference" and set(order) <= set(backends.BACKENDS)


def test_explicit_backend_that_cannot_run_the_pattern_names_pattern_and_alternatives():
    with pytest.raises(ValueError, match=r"implementation='cudnn' cannot run dense attention "
                                         r"with causal, segment_ids.* on gpu: packed documents"
                                         r".*backends that can: reference, xla_chunked"):
        _resolve("gpu", implementation="cudnn", segment_ids=True)
    with pytest.raises(ValueError, match="dense attention has no splash implementation"):
        _resolve("tpu", implementation="splash")
    with pytest.raises(ValueError, match="it runs on gpu, this platform is cpu"):
        _resolve("cpu", implementation="cudnn")
    assert _resolve("gpu", implementation="reference") == "reference"


@pytest.mark.parametrize("bad", ["triton", "", 3])
def test_unknown_implementation_and_platform(bad):
    with pytest.raises(ValueError, match="implementation must be None or one of reference, "
                                         "xla_chunked, cudnn, splash, pallas"):
        _resolve("cpu", implementation=bad)
    with pytest.raises(ValueError, match="platform must be one of cpu, gpu, tpu"):
        _resolve("cuda")


def test_functions_report_backends_they_lack():
    x = jnp.zeros((1, 16, 2, 4))
    with pytest.raises(ValueError, match="local attention has no cudnn implementation"):
        local_attention(x, x, x, block_size=8, implementation="cudnn")
    with pytest.raises(ValueError, match="LSG attention has no pallas implementation"):
        lsg_attention(x, x, x, block_size=4, implementation="pallas")


@pytest.mark.parametrize("options", [
    dict(causal=True), dict(causal=False), dict(causal=True, window=5),
    dict(causal=True, softmax="ssmax"), dict(causal=True, window=7, softmax="ssmax"),
    dict(causal=False, softmax="ssmax"),
])
def test_cudnn_argument_mapping_matches_naive(options):
    """The cuDNN path's arguments (causal, left window, GQA, SSMax as a scale of q) run
    through the XLA form of the same ``jax.nn.dot_product_attention`` call."""
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 24, 4, 8)).astype(np.float32)
    k, v = (rng.normal(size=(2, 24, 2, 8)).astype(np.float32) for _ in range(2))
    s = rng.uniform(0.3, 1.0, size=4).astype(np.float32)
    softmax = options.get("softmax", "softmax")
    ssmax_s = s if softmax == "ssmax" else None
    got = dense.jax_nn_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v),
                                 causal=options["causal"], window=options.get("window"),
                                 softmax=softmax,
                                 ssmax_s=None if ssmax_s is None else jnp.asarray(s),
                                 scale=None, jax_implementation="xla")
    want = naive_attention(q, k, v, causal=options["causal"], window=options.get("window"),
                           softmax=softmax, ssmax_s=ssmax_s)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("options", [dict(causal=True), dict(causal=True, window=256),
                                     dict(causal=True, softmax="ssmax")])
def test_cudnn_matches_reference_on_gpu(options):
    """On a GPU: ``implementation="cudnn"`` (and ``None``, which picks it for bf16) against
    the reference, values and gradients, bf16 at 4k tokens with GQA."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(1, 4096, 8, 128)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.normal(size=(1, 4096, 2, 128)), jnp.bfloat16) for _ in range(2))
    s = jnp.full((8,), 0.3, jnp.float32) if options.get("softmax") == "ssmax" else None

    def loss(implementation):
        return lambda q, k, v: jnp.sum(dense_attention(
            q, k, v, ssmax_s=s, implementation=implementation, **options).astype(jnp.float32))

    for implementation in ("cudnn", None):
        for got, want in zip(jax.grad(loss(implementation), argnums=(0, 1, 2))(q, k, v),
                             jax.grad(loss("reference"), argnums=(0, 1, 2))(q, k, v)):
            np.testing.assert_allclose(np.asarray(got, np.float32),
                                       np.asarray(want, np.float32), atol=5e-2, rtol=5e-2)
        got = dense_attention(q, k, v, ssmax_s=s, implementation=implementation, **options)
        want = dense_attention(q, k, v, ssmax_s=s, implementation="reference", **options)
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   atol=2e-2, rtol=2e-2)
