"""TransformerLM with landmark layers: landmark insertion (layout, targets, embedding), causality,
packed documents, config errors, and training/evaluation with and without landmark_in_loss."""

import dataclasses
import functools
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

from configs import landmark as landmark_config
from configs import lm_tiny
from jaxattn import sharding
from jaxattn.attention.landmark import (drop_landmarks, interleave_blocks, landmark_layout,
                                        landmark_lm_targets)
from jaxattn.data import make_eval_batches, make_train_iterator
from jaxattn.nn import AttentionSpec, TransformerConfig, TransformerLM
from jaxattn.training import builders
from jaxattn.training import trainer
from jaxattn.training.optimizer import make_optimizer
from jaxattn.training.state import merge_model
from jaxattn.training.steps import make_eval_step, make_train_step
from tests.model_helpers import perturb_params

VOCAB = 50
LANDMARK_ID = 3


def landmark_model(mem_freq=3, seed=0, **overrides):
    spec = AttentionSpec.create("landmark", mem_freq=mem_freq)
    cfg = dict(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
               head_dim=8, mlp_dim=64, train_len=48, attention=[spec, spec],
               landmark_id=LANDMARK_ID)
    cfg.update(overrides)
    model = TransformerLM(TransformerConfig(**cfg), rngs=nnx.Rngs(seed))
    return perturb_params(model, seed, 0.05)


_MODELS = {}


def jitted(mem_freq=3, **overrides):
    """``(model, forward)``; ``forward(tokens, **kw)`` runs the model under jit."""
    key = (mem_freq, tuple(sorted(overrides.items())))
    if key not in _MODELS:
        model = landmark_model(mem_freq, **overrides)
        graph, state = nnx.split(model)

        @jax.jit
        def run(state, tokens, positions, segment_ids):
            return nnx.merge(graph, state)(tokens, positions=positions, segment_ids=segment_ids)

        @jax.jit
        def run_kept(state, tokens, positions, segment_ids):
            return nnx.merge(graph, state)(tokens, positions=positions, segment_ids=segment_ids,
                                           keep_landmarks=True)

        def forward(tokens, positions=None, segment_ids=None, keep_landmarks=False):
            fn = run_kept if keep_landmarks else run
            return np.asarray(fn(state, jnp.asarray(tokens), positions, segment_ids))

        _MODELS[key] = (model, forward)
    return _MODELS[key]


def random_tokens(rng, shape):
    """Ordinary tokens, never the landmark id."""
    return rng.integers(LANDMARK_ID + 1, VOCAB, size=shape).astype(np.int32)


# Shapes and causality.

def test_logits_shapes_and_kept_landmarks():
    _, forward = jitted()
    tokens = random_tokens(np.random.default_rng(0), (2, 12))
    logits = forward(tokens)
    assert logits.shape == (2, 12, VOCAB) and logits.dtype == np.float32
    kept = forward(tokens, keep_landmarks=True)
    assert kept.shape == (2, 16, VOCAB)
    # The landmark-free logits are the kept ones at the normal positions.
    normal = np.arange(16) % 4 != 3
    np.testing.assert_allclose(kept[:, normal], logits, atol=1e-6)


@settings(max_examples=6, deadline=None)
@given(cut=st.integers(1, 23), seed=st.integers(0, 2**31 - 1))
def test_future_tokens_never_change_past_logits(cut, seed):
    _, forward = jitted()
    rng = np.random.default_rng(seed)
    tokens = random_tokens(rng, (2, 24))
    changed = tokens.copy()
    changed[:, cut:] = random_tokens(rng, (2, 24 - cut))
    changed[:, cut] = (tokens[:, cut] - LANDMARK_ID) % (VOCAB - LANDMARK_ID - 1) + LANDMARK_ID + 1
    a, b = forward(tokens), forward(changed)
    np.testing.assert_array_equal(a[:, :cut], b[:, :cut])
    assert not np.allclose(a[:, cut:], b[:, cut:])
    # With the landmarks kept: everything before the changed token's position.
    ka, kb = forward(tokens, keep_landmarks=True), forward(changed, keep_landmarks=True)
    kept_cut = cut + cut // 3
    np.testing.assert_array_equal(ka[:, :kept_cut], kb[:, :kept_cut])


def test_packed_aligned_documents_match_separate_runs():
    _, forward = jitted()
    rng = np.random.default_rng(1)
    lengths = [6, 12, 9]
    docs = [random_tokens(rng, (n,)) for n in lengths]
    padding = 3
    packed = np.concatenate(docs + [np.zeros(padding, np.int32)])[None]
    segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)]
                                 + [np.zeros(padding)]).astype(np.int32)[None]
    positions = np.concatenate([np.arange(n) for n in lengths] + [np.arange(padding)]).astype(
        np.int32)[None]
    out = forward(packed, jnp.asarray(positions), jnp.asarray(segment_ids))
    start = 0
    for doc in docs:
        alone = forward(doc[None])
        np.testing.assert_allclose(out[0, start:start + len(doc)], alone[0], atol=1e-5, rtol=1e-5)
        start += len(doc)
    assert np.all(np.isfinite(out))


# Errors.

def test_length_not_a_multiple_of_mem_freq_raises():
    model, _ = jitted()
    with pytest.raises(ValueError, match=r"tokens: length 10 .*mem_freq=3"):
        model(jnp.zeros((1, 10), jnp.int32))


def test_landmark_config_errors():
    base = dict(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                head_dim=8, mlp_dim=64, train_len=48)
    three = AttentionSpec.create("landmark", mem_freq=3)
    four = AttentionSpec.create("landmark", mem_freq=4)
    with pytest.raises(ValueError, match="landmark layers must share their options"):
        TransformerConfig(**base, attention=[three, four])
    # Landmarks mixed with other kinds are fine.
    TransformerConfig(**base, attention=[three, AttentionSpec.create("dense")])
    lsg = AttentionSpec.create("lsg", block_size=4, sparse_block_size=2, sparsity_factor=2,
                               sparsity_type="pooling", num_global_tokens=2)
    with pytest.raises(ValueError, match="num_global_tokens|LSG global tokens"):
        TransformerConfig(**base, attention=[three, lsg])
    for bad in (VOCAB, -1):
        with pytest.raises(ValueError, match="landmark_id"):
            TransformerConfig(**base, attention=[three, three], landmark_id=bad)


# The landmark token.

def test_landmark_embedding_is_the_landmark_id_row():
    model = landmark_model(tie_embeddings=False, seed=2)
    graph, state = nnx.split(model)
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(random_tokens(rng, (2, 12)))
    targets = jnp.asarray(random_tokens(rng, (2, 12)))
    forward = jax.jit(lambda state: nnx.merge(graph, state)(tokens))

    def loss(state):
        logits = nnx.merge(graph, state)(tokens)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

    grads = jax.jit(jax.grad(loss))(state)
    g = np.asarray(grads["embed"]["embedding"][...])
    used = set(np.asarray(tokens).ravel().tolist())
    assert np.abs(g[LANDMARK_ID]).sum() > 0
    for row in range(VOCAB):
        if row != LANDMARK_ID and row not in used:
            assert not np.any(g[row]), row
    # Changing that row changes every logit after the first block and none inside it (the
    # first block's queries never see a landmark: their own one is masked).
    before = np.asarray(forward(state))
    embedding = model.embed.embedding
    embedding[...] = embedding[...].at[LANDMARK_ID].add(1.0)
    after = np.asarray(forward(nnx.split(model)[1]))
    np.testing.assert_array_equal(after[:, :3], before[:, :3])
    assert np.all(np.abs(after[:, 3:] - before[:, 3:]).max(axis=-1) > 0)


@settings(max_examples=20, deadline=None)
@given(mem_freq=st.integers(1, 5), data=st.data())
def test_landmark_layout_matches_landmarks_in_the_data(mem_freq, data):
    """Aligned documents: positions and segment ids equal those of the documents with the
    landmarks written into the data (positions counting them)."""
    rows_pos, rows_seg, want_pos, want_seg = [], [], [], []
    num_blocks = data.draw(st.integers(1, 6), label="num_blocks")
    for _ in range(2):
        cuts = sorted(data.draw(st.sets(st.integers(1, num_blocks - 1)) if num_blocks > 1
                                else st.just(set()), label="document starts"))
        blocks = np.diff([0, *cuts, num_blocks])
        pad_last = len(blocks) > 1 and data.draw(st.booleans(), label="padding")
        pos, seg, wpos, wseg = [], [], [], []
        for i, b in enumerate(blocks):
            doc = 0 if pad_last and i == len(blocks) - 1 else i + 1
            n = b * mem_freq
            pos += list(range(n))
            seg += [doc] * n
            wpos += list(range(n + b))  # the document with its b landmarks in the data
            wseg += [doc] * (n + b)
        rows_pos.append(pos)
        rows_seg.append(seg)
        want_pos.append(wpos)
        want_seg.append(wseg)
    positions = jnp.asarray(rows_pos, jnp.int32)
    segment_ids = jnp.asarray(rows_seg, jnp.int32)
    got_pos, got_seg = landmark_layout(positions, segment_ids, mem_freq)
    np.testing.assert_array_equal(np.asarray(got_pos), want_pos)
    np.testing.assert_array_equal(np.asarray(got_seg), want_seg)
    got_pos_only, none = landmark_layout(positions, None, mem_freq)
    assert none is None
    np.testing.assert_array_equal(np.asarray(got_pos_only), want_pos)


def test_landmark_layout_hand_written():
    positions = jnp.asarray([[0, 1, 2, 3, 4, 5, 0, 1, 2]], jnp.int32)
    segment_ids = jnp.asarray([[1, 1, 1, 1, 1, 1, 2, 2, 2]], jnp.int32)
    pos, seg = landmark_layout(positions, segment_ids, 3)
    np.testing.assert_array_equal(np.asarray(pos), [[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]])
    np.testing.assert_array_equal(np.asarray(seg), [[1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2]])


def test_interleave_and_drop_landmarks():
    x = jnp.arange(2 * 6 * 2).reshape(2, 6, 2)
    fill = -jnp.arange(2 * 3 * 2).reshape(2, 3, 2) - 1
    out = np.asarray(interleave_blocks(x, fill, 2))
    assert out.shape == (2, 9, 2)
    for b in range(3):
        np.testing.assert_array_equal(out[:, 3 * b:3 * b + 2], np.asarray(x)[:, 2 * b:2 * b + 2])
        np.testing.assert_array_equal(out[:, 3 * b + 2], np.asarray(fill)[:, b])
    np.testing.assert_array_equal(np.asarray(drop_landmarks(jnp.asarray(out), 2)), np.asarray(x))
    with pytest.raises(ValueError, match="fill must be"):
        interleave_blocks(x, fill[:, :2], 2)
    with pytest.raises(ValueError, match="not a multiple of mem_freq"):
        drop_landmarks(jnp.zeros((1, 8)), 2)


def test_landmark_lm_targets_hand_written():
    """Blocks [x0 x1 x2 L]: targets [t0, t1, LANDMARK, t2]; the landmark target counts unless
    the block is padding (segment id 0)."""
    targets = jnp.asarray([[10, 11, 12, 13, 14, 15, 16, 17, 18]], jnp.int32)
    loss_mask = jnp.asarray([[1, 1, 0, 1, 1, 1, 0, 0, 0]], jnp.float32)
    segment_ids = jnp.asarray([[1, 1, 1, 2, 2, 2, 0, 0, 0]], jnp.int32)
    new_targets, new_mask = landmark_lm_targets(targets, loss_mask, segment_ids, 3, 99)
    np.testing.assert_array_equal(np.asarray(new_targets),
                                  [[10, 11, 99, 12, 13, 14, 99, 15, 16, 17, 99, 18]])
    np.testing.assert_array_equal(np.asarray(new_mask), [[1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0]])
    assert new_mask.dtype == jnp.float32 and new_targets.dtype == jnp.int32
    _, no_segments = landmark_lm_targets(targets, loss_mask, None, 3, 99)
    np.testing.assert_array_equal(np.asarray(no_segments), [[1, 1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 0]])
    with pytest.raises(ValueError, match=r"targets: length 9 .*mem_freq=4"):
        landmark_lm_targets(targets, loss_mask, segment_ids, 4, 99)


# Training.

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("landmark_corpus")
    rng = random.Random(0)
    for i in range(20):
        text = " ".join(f"w{i:02d}{j:02d}" for j in range(rng.randint(3, 30)))
        (root / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return f"text:{root}/*.txt"


def small_landmark_config(corpus, landmark_in_loss):
    config = landmark_config.get_config(f"smoke,landmark_in_loss={landmark_in_loss}")
    with config.unlocked():
        config.data.corpus = corpus
        config.data.seq_len = 32
        config.data.valid_fraction = 0.2
        config.model.embed_dim = 32
        config.model.head_dim = 8
        config.model.mlp_dim = 64
        config.train.progress = False
    return config


def expected_targets(batch, mem_freq, with_landmarks):
    """Targets and mask of the sequence the loss scores, built block by block."""
    if not with_landmarks:
        return batch["targets"], batch["loss_mask"]
    targets, mask = [], []
    for row_t, row_m, row_s in zip(batch["targets"], batch["loss_mask"], batch["segment_ids"]):
        t_out, m_out = [], []
        for b in range(0, len(row_t), mem_freq):
            t_out += list(row_t[b:b + mem_freq - 1]) + [LANDMARK_ID, row_t[b + mem_freq - 1]]
            m_out += list(row_m[b:b + mem_freq - 1]) + [float(row_s[b + mem_freq - 1] != 0),
                                                        row_m[b + mem_freq - 1]]
        targets.append(t_out), mask.append(m_out)
    return np.array(targets), np.array(mask)


def cross_entropy(logits, targets, mask):
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    losses = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    return float((losses * mask).sum()), float(np.sum(mask))


@pytest.mark.parametrize("landmark_in_loss", [False, True])
def test_training_steps_and_eval_count_the_right_targets(corpus, landmark_in_loss):
    config = small_landmark_config(corpus, landmark_in_loss)
    model_cfg = builders.model_config(config)
    data_cfg = builders.data_config(config)
    mem_freq = model_cfg.landmark.mem_freq
    assert mem_freq == 4 and data_cfg.align == 4
    assert model_cfg.landmark.landmark_in_loss is landmark_in_loss
    assert model_cfg.landmark_id == LANDMARK_ID
    optimizer = make_optimizer(config.optim, total_steps=3)
    mesh = sharding.make_mesh(dict(config.mesh))
    batch_sharding = sharding.batch_sharding(mesh)
    graphdef, state = trainer.create_train_state(model_cfg, optimizer, mesh, config.seed)
    train_step = jax.jit(make_train_step(graphdef, optimizer, dropout=False))
    eval_step = jax.jit(make_eval_step(graphdef))

    @functools.partial(jax.jit, static_argnames="keep_landmarks")
    def logits_of(params, variables, batch, keep_landmarks):
        model = merge_model(graphdef, params, variables)
        return model(batch["inputs"], positions=batch["positions"],
                     segment_ids=batch["segment_ids"], keep_landmarks=keep_landmarks)

    iterator = make_train_iterator(data_cfg)
    losses = []
    for step in range(3):
        batch = next(iterator)
        targets, mask = expected_targets(batch, mem_freq, landmark_in_loss)
        device_batch = trainer._device_batch(batch, batch_sharding, model_cfg)
        logits = logits_of(state.params, state.variables, device_batch,
                           keep_landmarks=landmark_in_loss)
        assert logits.shape[1] == (40 if landmark_in_loss else 32)
        want_sum, want_count = cross_entropy(logits, targets, mask)
        state, metrics = train_step(state, device_batch)
        assert float(metrics["tokens"]) == want_count
        if landmark_in_loss:
            # Every landmark of a non-padding block is a target: L + L/m per full row.
            assert want_count == float(batch["loss_mask"].sum()) + float(
                (batch["segment_ids"][:, mem_freq - 1::mem_freq] != 0).sum())
            assert want_count > float(batch["loss_mask"].sum())
        np.testing.assert_allclose(float(metrics["loss"]), want_sum / want_count, rtol=2e-5)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 3 and np.all(np.isfinite(losses))

    # Evaluation scores the ordinary tokens only, with or without landmark_in_loss.
    batch = next(make_eval_batches(data_cfg, max_batches=1))
    device_batch = trainer._device_batch(batch, batch_sharding, model_cfg)
    out = eval_step(state, device_batch)
    logits = logits_of(state.params, state.variables, device_batch, keep_landmarks=False)
    want_sum, want_count = cross_entropy(logits, batch["targets"], batch["loss_mask"])
    assert float(out["count"]) == want_count == float(batch["loss_mask"].sum())
    np.testing.assert_allclose(float(out["loss_sum"]), want_sum, rtol=2e-5)


def test_train_and_evaluate_runs_a_landmark_model(corpus, tmp_path):
    config = small_landmark_config(corpus, True)
    with config.unlocked():
        config.train.steps = 4
        config.train.eval_every = 4
        config.train.log_every = 2
        config.checkpoint.save_every = 4
    final = trainer.train_and_evaluate(config, str(tmp_path))
    assert set(final) == {"loss", "perplexity", "bits_per_byte"}
    assert np.isfinite(final["loss"])


def test_trainer_rejects_misaligned_batches():
    config = lm_tiny.get_config("smoke")
    model_cfg = TransformerConfig(
        vocab_size=VOCAB, num_layers=1, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
        mlp_dim=64, train_len=8, attention=[AttentionSpec.create("landmark", mem_freq=4)])
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    batch_sharding = sharding.batch_sharding(mesh)
    aligned = np.array([[1, 1, 1, 1, 2, 2, 2, 2]], np.int32)
    misaligned = np.array([[1, 1, 1, 2, 2, 2, 2, 2]], np.int32)

    def batch(segment_ids):
        zeros = np.zeros_like(segment_ids)
        return {"inputs": zeros, "targets": zeros, "segment_ids": segment_ids,
                "positions": zeros, "loss_mask": zeros.astype(np.float32)}

    out = trainer._device_batch(batch(aligned), batch_sharding, model_cfg)
    np.testing.assert_array_equal(np.asarray(out["segment_ids"]), aligned)
    with pytest.raises(ValueError, match=r"mem_freq=4.*align=4.*position 3"):
        trainer._device_batch(batch(misaligned), batch_sharding, model_cfg)
    # Without a landmark model nothing is checked.
    trainer._device_batch(batch(misaligned), batch_sharding, builders.model_config(config))
    trainer._device_batch(batch(misaligned), batch_sharding, None)
    # Blocks of one token always align (mem_freq=1).
    one = dataclasses.replace(model_cfg, attention=[AttentionSpec.create("landmark", mem_freq=1)])
    trainer._device_batch(batch(misaligned), batch_sharding, one)
