"""TransformerClassifier: a bidirectional (LSG or dense) encoder with a classification head."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxattn.nn import AttentionSpec, TransformerClassifier, TransformerConfig

LSG = dict(block_size=8, sparse_block_size=2, sparsity_factor=2, sparsity_type="pooling",
           causal=False)


def classifier(kind="lsg", num_global_tokens=1, seed=0, **options):
    if kind == "lsg":
        spec = AttentionSpec.create("lsg", num_global_tokens=num_global_tokens, **LSG, **options)
    else:
        spec = AttentionSpec.create(kind, causal=False, **options)
    cfg = TransformerConfig(vocab_size=20, num_layers=2, embed_dim=32, num_heads=4,
                            num_kv_heads=2, head_dim=8, mlp_dim=64, train_len=32,
                            attention=[spec, spec])
    return TransformerClassifier(cfg, 2, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("kind,num_global", [("lsg", 1), ("lsg", 0), ("dense", 0)])
def test_every_token_reaches_the_prediction_and_padding_does_not(kind, num_global):
    model = classifier(kind, num_global)
    params = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    nnx.update(model, jax.tree.unflatten(
        treedef, [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 20, (2, 32), dtype=np.int32)
    segment_ids = np.ones((2, 32), np.int32)
    segment_ids[:, 24:] = 0
    out = model(jnp.asarray(tokens), segment_ids=jnp.asarray(segment_ids))
    assert out.shape == (2, 2) and out.dtype == jnp.float32
    padded = tokens.copy()
    padded[:, 24:] = rng.integers(0, 20, (2, 8))
    np.testing.assert_allclose(model(jnp.asarray(padded), segment_ids=jnp.asarray(segment_ids)),
                               out, atol=1e-5)
    for position in (0, 23):  # the first and the last real token both matter
        changed = tokens.copy()
        changed[:, position] = (changed[:, position] + 1) % 20
        assert not np.allclose(model(jnp.asarray(changed), segment_ids=jnp.asarray(segment_ids)),
                               out)


@pytest.mark.slow  # trains a classifier to >90% accuracy
def test_learns_a_task_that_needs_the_whole_sequence():
    """Label: does token 1 occur anywhere? Only a bidirectional summary can tell."""
    model = classifier("lsg", 1)
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    rng = np.random.default_rng(0)

    def batch(n=64):
        tokens = rng.integers(2, 20, (n, 32), dtype=np.int32)
        labels = rng.integers(0, 2, n)
        where = rng.integers(0, 32, n)
        tokens[labels == 1, where[labels == 1]] = 1
        return jnp.asarray(tokens), jnp.asarray(labels)

    @nnx.jit
    def step(model, optimizer, tokens, labels):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(tokens), labels).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(150):
        step(model, optimizer, *batch())
    tokens, labels = batch(256)
    accuracy = float(jnp.mean(jnp.argmax(model(tokens), -1) == labels))
    assert accuracy > 0.9, accuracy


def test_rejects_causal_attention_and_bad_classes():
    spec = AttentionSpec.create("dense", causal=True)
    cfg = TransformerConfig(vocab_size=20, num_layers=1, embed_dim=32, num_heads=4,
                            num_kv_heads=2, head_dim=8, mlp_dim=64, train_len=32,
                            attention=[spec])
    with pytest.raises(ValueError, match="bidirectional"):
        TransformerClassifier(cfg, 2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes"):
        classifier().__class__(classifier().encoder.cfg, 1, rngs=nnx.Rngs(0))
