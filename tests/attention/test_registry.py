"""The attention registry: names, option validation, forced options, apply."""

import dataclasses
import inspect
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn.attention import (DenseOptions, LocalOptions, dense_attention, get_variant, list_variants,
                               local_attention, make_options, register)
from jaxattn.attention import registry

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry that the test may add to without leaking kinds into other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def _inputs():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 16, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 16, 2, 8)), jnp.float32)
    seg = jnp.asarray([[1] * 10 + [2] * 6, [1] * 12 + [0] * 4], jnp.int32)
    return q, k, v, seg


def test_builtin_kinds():
    kinds = list_variants()
    assert {"dense", "local", "ssmax"} <= set(kinds)
    assert kinds == sorted(kinds)
    assert get_variant("dense").fn is dense_attention
    assert get_variant("ssmax").fn is dense_attention
    assert get_variant("local").fn is local_attention
    assert dict(get_variant("ssmax").forced) == {"softmax": "ssmax"}
    assert all(get_variant(name).doc for name in kinds)


@pytest.mark.parametrize("name", ["foo", "", None, "Dense"])
def test_unknown_kind(name):
    kinds = r"valid kinds: (.*, )?dense, (.*, )?local, (.*, )?ssmax"
    with pytest.raises(ValueError, match=rf"unknown attention kind {name!r}; {kinds}"):
        get_variant(name)
    with pytest.raises(ValueError, match=r"unknown attention kind"):
        make_options(name)


def test_defaults():
    assert make_options("dense") == DenseOptions(causal=True, window=None, softmax="softmax")
    assert make_options("local") == LocalOptions(causal=True, block_size=64, softmax="softmax")
    assert make_options("ssmax") == DenseOptions(softmax="ssmax")
    expected = DenseOptions(causal=False, window=128, softmax="ssmax")
    assert make_options("ssmax", window=128, causal=False) == expected
    assert make_options("local", block_size=16, softmax="ssmax").block_size == 16


def test_forced_option_conflict():
    assert make_options("ssmax", softmax="ssmax").softmax == "ssmax"
    with pytest.raises(ValueError, match=r"option 'softmax' is fixed to 'ssmax' for attention kind 'ssmax'"):
        make_options("ssmax", softmax="softmax")


@pytest.mark.parametrize("name, option", [("dense", "block_size"), ("local", "window"), ("ssmax", "heads")])
def test_unknown_option(name, option):
    valid = ", ".join(f.name for f in dataclasses.fields(get_variant(name).options_cls))
    message = rf"unknown option '{option}' for attention kind '{name}'; valid options: {valid}"
    with pytest.raises(ValueError, match=message):
        make_options(name, **{option: 1})


BAD_OPTIONS = [
    ("local", dict(block_size="64"), r"block_size must be an int >= 1, got '64'"),
    ("local", dict(block_size=0), r"block_size must be an int >= 1, got 0"),
    ("local", dict(block_size=16.0), r"block_size must be an int >= 1"),
    ("local", dict(block_size=True), r"block_size must be an int >= 1"),
    ("local", dict(causal="yes"), r"causal must be a bool, got 'yes'"),
    ("local", dict(softmax="sparsemax"), r"softmax must be one of \('softmax', 'ssmax'\), got 'sparsemax'"),
    ("dense", dict(window=-1), r"window must be None or an int >= 1, got -1"),
    ("dense", dict(window=0), r"window must be None or an int >= 1, got 0"),
    ("dense", dict(window="256"), r"window must be None or an int >= 1"),
    ("dense", dict(causal=1), r"causal must be a bool"),
    ("dense", dict(softmax="sparsemax"), r"softmax must be one of"),
    ("ssmax", dict(window=1.5), r"window must be None or an int >= 1"),
]


@pytest.mark.parametrize("name, kwargs, match", BAD_OPTIONS)
def test_bad_option_values(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_options(name, **kwargs)


def test_options_validate_on_construction_and_are_frozen():
    with pytest.raises(ValueError, match="window"):
        DenseOptions(window=0)
    with pytest.raises(ValueError, match="block_size"):
        LocalOptions(block_size=-4)
    options = make_options("local", block_size=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.block_size = 16
    assert hash(options) == hash(LocalOptions(block_size=8))


def test_check_seq_len():
    make_options("dense").check_seq_len(1)
    make_options("dense").check_seq_len(100)
    with pytest.raises(ValueError, match="seq_len"):
        make_options("dense").check_seq_len(0)
    local = make_options("local", block_size=64)
    local.check_seq_len(128)
    with pytest.raises(ValueError, match=r"sequence length 100 is not a multiple of block_size=64; pad to 128"):
        local.check_seq_len(100)


def test_apply_matches_direct_calls():
    q, k, v, seg = _inputs()
    s = jnp.full((4,), 0.5, jnp.float32)
    cases = [
        ("dense", dict(window=5), dict(window=5), None),
        ("ssmax", dict(causal=False), dict(causal=False, softmax="ssmax"), s),
        ("local", dict(block_size=4), dict(block_size=4), None),
        ("local", dict(block_size=8, softmax="ssmax"), dict(block_size=8, softmax="ssmax"), s),
    ]
    for name, options, direct, ssmax_s in cases:
        variant = get_variant(name)
        out = variant.apply(q, k, v, make_options(name, **options), segment_ids=seg, ssmax_s=ssmax_s)
        expected = variant.fn(q, k, v, segment_ids=seg, ssmax_s=ssmax_s, **direct)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_apply_under_jit_with_static_options():
    q, k, v, seg = _inputs()
    options = make_options("local", block_size=4, causal=False)
    fn = jax.jit(lambda q, k, v, seg, options: get_variant("local").apply(q, k, v, options, segment_ids=seg),
                 static_argnums=4)
    np.testing.assert_allclose(
        np.asarray(fn(q, k, v, seg, options)),
        np.asarray(local_attention(q, k, v, block_size=4, causal=False, segment_ids=seg)),
        atol=1e-6,
    )


def test_apply_rejects_wrong_options():
    q, k, v, _ = _inputs()
    message = r"options for attention kind 'local' must be LocalOptions, got DenseOptions"
    with pytest.raises(ValueError, match=message):
        get_variant("local").apply(q, k, v, make_options("dense"))
    with pytest.raises(ValueError, match=r"option 'softmax' of attention kind 'ssmax' must be 'ssmax'"):
        get_variant("ssmax").apply(q, k, v, DenseOptions(), ssmax_s=jnp.ones((4,)))
    with pytest.raises(ValueError, match=r"sequence length 16 is not a multiple of block_size=64"):
        get_variant("local").apply(q, k, v, make_options("local"))


@dataclasses.dataclass(frozen=True)
class _ScaledOptions(registry.Options):
    causal: bool = True
    factor: int = 2

    def validate(self):
        if not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"factor must be an int >= 1, got {self.factor!r}")


def _scaled_attention(q, k, v, *, causal, factor, segment_ids, ssmax_s, implementation):
    del factor
    return dense_attention(q, k, v, causal=causal, segment_ids=segment_ids, ssmax_s=ssmax_s,
                           implementation=implementation)


def test_register_new_kind(scratch_registry):
    variant = register("scaled", _scaled_attention, _ScaledOptions, doc="test kind", forced={"factor": 3})
    assert get_variant("scaled") is variant
    assert "scaled" in list_variants()
    assert make_options("scaled") == _ScaledOptions(factor=3)
    with pytest.raises(ValueError, match="option 'factor' is fixed to 3"):
        make_options("scaled", factor=2)
    message = r"unknown option 'window' for attention kind 'scaled'; valid options: causal, factor"
    with pytest.raises(ValueError, match=message):
        make_options("scaled", window=2)
    q, k, v, seg = _inputs()
    out = variant.apply(q, k, v, make_options("scaled", causal=False), segment_ids=seg)
    expected = dense_attention(q, k, v, causal=False, segment_ids=seg)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


def test_register_rejects_bad_arguments(scratch_registry):
    with pytest.raises(ValueError, match="attention kind 'dense' is already registered"):
        register("dense", dense_attention, DenseOptions, doc="again")
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        register("", dense_attention, DenseOptions, doc="x")
    with pytest.raises(ValueError, match="fn must be callable"):
        register("x", 3, DenseOptions, doc="x")
    with pytest.raises(ValueError, match="options_cls must be a dataclass type"):
        register("x", dense_attention, dict, doc="x")
    with pytest.raises(ValueError, match="doc must be a str"):
        register("x", dense_attention, DenseOptions, doc=None)
    with pytest.raises(ValueError, match="forced option 'heads' is not an option of DenseOptions"):
        register("x", dense_attention, DenseOptions, doc="x", forced={"heads": 2})
    with pytest.raises(ValueError, match="softmax must be one of"):
        register("x", dense_attention, DenseOptions, doc="x", forced={"softmax": "sparsemax"})
    assert "x" not in list_variants()


def test_registry_names_no_kind():
    """The registry is generic: every kind lives in (and registers from) its own module."""
    # ``ssmax_s`` is the per-head SSMax scale of the calling convention every variant's
    # function takes; it names a softmax option, not a kind.
    source = inspect.getsource(registry).replace("ssmax_s", "").lower()
    kinds = set(list_variants()) | {"titans"}
    assert {"dense", "local", "ssmax"} <= kinds
    for kind in sorted(kinds):
        assert kind.lower() not in source, f"registry.py names attention kind {kind!r}"


def test_options_live_with_their_variant():
    for name in list_variants():
        variant = get_variant(name)
        assert issubclass(variant.options_cls, registry.Options), name
        assert variant.options_cls.__module__ == variant.fn.__module__, name
        assert variant.options_cls.__module__.startswith("jaxattn.attention."), name
        if variant.stateful:
            assert variant.init_state.__module__ == variant.fn.__module__, name
            assert variant.update_state.__module__ == variant.fn.__module__, name


@pytest.mark.parametrize("statement", [
    "import jaxattn.attention.registry as r; v = r.get_variant",
    "from jaxattn.attention.registry import get_variant as v",
    "from jaxattn.attention import registry as r; v = r.get_variant",
])
def test_importing_registry_alone_registers_every_kind(statement):
    code = f"{statement}; print(v('dense').name, v('ssmax').name, v('routing').stateful)"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["dense", "ssmax", "True"]
