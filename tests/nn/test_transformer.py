"""TransformerLM: shapes, causality through the whole model, packed documents, per-layer kinds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import example, given, settings, strategies as st

from jaxattn.nn import AttentionSpec, TransformerConfig, TransformerLM
from tests.model_helpers import perturb_params

SPECS = {
    "dense": lambda: AttentionSpec.create("dense"),
    "ssmax": lambda: AttentionSpec.create("ssmax"),
    "window": lambda: AttentionSpec.create("dense", window=5),
    "local": lambda: AttentionSpec.create("local", block_size=8),
    "routing": lambda: AttentionSpec.create("routing", num_clusters=4, local_heads=1,
                                            block_size=8),
    "lsg": lambda: AttentionSpec.create("lsg", block_size=4, sparse_block_size=2,
                                        sparsity_factor=2, sparsity_type="pooling",
                                        num_global_tokens=2),
    "lsg_norm": lambda: AttentionSpec.create("lsg", block_size=8, sparse_block_size=2,
                                             sparsity_factor=4, sparsity_type="norm",
                                             num_global_tokens=0),
}


def tiny_model(kinds, seed=0, **overrides):
    kv_heads = 4 if "routing" in kinds else 2  # routing shares queries and keys
    cfg = dict(vocab_size=50, num_layers=len(kinds), embed_dim=32, num_heads=4,
               num_kv_heads=kv_heads,
               head_dim=8, mlp_dim=64, train_len=32,
               attention=[SPECS[k]() for k in kinds])
    cfg.update(overrides)
    model = TransformerLM(TransformerConfig(**cfg), rngs=nnx.Rngs(seed))
    # Output projections start at zero; perturb every parameter so attention matters.
    return perturb_params(model, seed, 0.1)


@pytest.mark.parametrize("kind", ["dense", "ssmax", "window", "local", "lsg"])
def test_every_cpu_backend_gives_the_same_logits(kind):
    """``AttentionSpec.implementation`` reaches the attention call: each backend's logits."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, size=(2, 32)), jnp.int32)
    logits = {}
    for implementation in ("reference", "xla_chunked"):
        spec = SPECS[kind]()
        spec = AttentionSpec(spec.kind, spec.options, implementation)
        logits[implementation] = np.asarray(tiny_model([kind], attention=[spec])(tokens))
    np.testing.assert_allclose(logits["xla_chunked"], logits["reference"], atol=2e-5)
    spec = AttentionSpec(SPECS[kind]().kind, SPECS[kind]().options, "pallas")
    with pytest.raises(ValueError, match="no pallas implementation"):
        tiny_model([kind], attention=[spec])(tokens)


def test_shapes_and_dtype():
    model = tiny_model(["dense", "ssmax"])
    logits = model(jnp.zeros((3, 16), jnp.int32))
    assert logits.shape == (3, 16, 50)
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize("kinds", [["dense", "dense"], ["ssmax", "ssmax"], ["window", "dense"],
                                   ["local", "ssmax"], ["routing", "routing"], ["lsg", "lsg"],
                                   ["lsg_norm", "dense"]])
@pytest.mark.parametrize("train", [False, True])
@settings(max_examples=5, deadline=None)
@given(cut=st.integers(1, 31), seed=st.integers(0, 2**31 - 1))
@example(cut=7, seed=1023)  # routing, train: the second call once saw the first's centroids
def test_future_tokens_never_change_past_logits(kinds, train, cut, seed):
    """Through attention, and through routing's clustering: in training mode the centroids
    move after the attention that used them, so the future cannot reach the past.

    Each call merges its own copy of the state: a training call moves routing centroids in
    place, and the comparison needs both calls to start from the same ones.
    """
    model = tiny_model(kinds)
    seq = 32
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 50, size=(2, seq), dtype=np.int32)
    changed = tokens.copy()
    changed[:, cut:] = rng.integers(0, 50, size=(2, seq - cut), dtype=np.int32)
    graphdef, state = nnx.split(model)

    def logits(ids):
        fresh = nnx.merge(graphdef, state, copy=True)
        out, _ = nnx.capture(fresh, nnx.Intermediate)(jnp.asarray(ids), train=train)
        return np.asarray(out)

    a, b = logits(tokens), logits(changed)
    np.testing.assert_array_equal(a[:, :cut], b[:, :cut])
    assert not np.allclose(a[:, cut:], b[:, cut:])


def test_training_call_moves_routing_centroids_after_use():
    """The in-place update the causality test guards against: a training call changes the
    centroids it was merged from, and a second call from them routes differently."""
    model = tiny_model(["routing"])
    graphdef, state = nnx.split(model)
    before = np.asarray(nnx.merge(graphdef, state, copy=True).blocks[0].attn.state[...])
    nnx.merge(graphdef, state)(jnp.zeros((2, 32), jnp.int32) + 5, train=True)
    after = np.asarray(nnx.merge(graphdef, state, copy=True).blocks[0].attn.state[...])
    assert not np.array_equal(before, after)


@pytest.mark.parametrize("kind", ["dense", "ssmax"])
def test_packed_documents_match_separate_runs(kind):
    """With segment ids and per-document positions, a packed row equals its documents alone."""
    model = tiny_model([kind, kind])
    rng = np.random.default_rng(0)
    doc_a = rng.integers(0, 50, size=11, dtype=np.int32)
    doc_b = rng.integers(0, 50, size=21, dtype=np.int32)
    packed = jnp.asarray(np.concatenate([doc_a, doc_b])[None])
    segment_ids = jnp.asarray(np.array([1] * 11 + [2] * 21, np.int32)[None])
    positions = jnp.asarray(np.concatenate([np.arange(11), np.arange(21)]).astype(np.int32)[None])
    out = model(packed, positions=positions, segment_ids=segment_ids)
    alone_a = model(jnp.asarray(doc_a[None]))
    alone_b = model(jnp.asarray(doc_b[None]))
    np.testing.assert_allclose(out[0, :11], alone_a[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out[0, 11:], alone_b[0], atol=1e-5, rtol=1e-5)


def test_per_layer_attention_kinds_and_ssmax_params():
    model = tiny_model(["dense", "ssmax", "local"])
    assert [b.attn.spec.kind for b in model.blocks] == ["dense", "ssmax", "local"]
    assert model.blocks[0].attn.ssmax_s is None
    assert model.blocks[1].attn.ssmax_s[...].shape == (4,)


def test_ssmax_parameter_gets_gradient():
    model = tiny_model(["ssmax"])
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 16), dtype=np.int32))

    def loss(m):
        return jnp.mean(m(tokens) ** 2)

    grads = nnx.grad(loss)(model)
    g = grads["blocks"][0]["attn"]["ssmax_s"][...]
    assert g.shape == (4,) and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


def test_bfloat16_compute_keeps_float32_logits():
    model = tiny_model(["dense", "ssmax"], dtype="bfloat16")
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 16), dtype=np.int32))
    out = model(tokens)
    ref = tiny_model(["dense", "ssmax"])(tokens)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("field,value,match", [
    ("num_layers", 0, "num_layers"),
    ("dropout_rate", 1.5, "dropout_rate"),
    ("dtype", "float16", "dtype"),
])
def test_bad_model_config(field, value, match):
    cfg = dict(vocab_size=50, num_layers=1, embed_dim=32, num_heads=4, num_kv_heads=2,
               head_dim=8, mlp_dim=64, train_len=32, attention=[SPECS["dense"]()])
    cfg[field] = value
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**cfg)


def test_heads_must_group():
    with pytest.raises(ValueError, match="num_kv_heads"):
        tiny_model(["dense"], num_kv_heads=3)


def test_routing_state_updates_only_in_training():
    model = tiny_model(["routing"])
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 32), dtype=np.int32))
    before = np.asarray(model.blocks[0].attn.state[...])
    model(tokens)
    np.testing.assert_array_equal(model.blocks[0].attn.state[...], before)
    _, sown = nnx.capture(model, nnx.Intermediate)(tokens, train=True)
    after = np.asarray(model.blocks[0].attn.state[...])
    assert after.shape == (3, 4, 8)
    assert not np.allclose(after, before)
    np.testing.assert_allclose(np.linalg.norm(after, axis=-1), 1.0, rtol=1e-5)
    aux = jax.tree.leaves(sown)
    assert len(aux) == 1 and float(aux[0]) > 0


def test_routing_shared_qk_needs_full_kv_heads():
    with pytest.raises(ValueError, match="shared_qk"):
        tiny_model(["routing"], num_kv_heads=2)


def test_lsg_global_tokens_are_a_learned_prefix():
    model = tiny_model(["lsg", "lsg"])
    assert model.global_tokens[...].shape == (2, 32)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (2, 32), dtype=np.int32))
    logits = model(tokens)
    assert logits.shape == (2, 32, 50)
    grads = nnx.grad(lambda m: jnp.mean(m(tokens) ** 2))(model)
    assert float(jnp.abs(grads["global_tokens"][...]).sum()) > 0


def test_lsg_global_tokens_cannot_mix_with_other_kinds():
    with pytest.raises(ValueError, match="num_global_tokens"):
        tiny_model(["lsg", "dense"])
