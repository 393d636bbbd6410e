"""Perplexity against length: bucket edges, per-token losses, masking and bucket means on toy
cases computed by hand; the forward and landmark-decoder scorers against the training loss
and each other; the length sweep on the real validation split; forward cost rows."""

import functools
import math

import jax
import numpy as np
import pytest
from flax import nnx

from jaxattn.data import DataConfig, make_splits
from jaxattn.evaluation import perplexity as ppl
from jaxattn.inference import RetrievalConfig
from jaxattn.nn import AttentionSpec, TransformerConfig, TransformerLM
from jaxattn.training.losses import masked_cross_entropy

VOCAB = 40


@functools.lru_cache(maxsize=None)
def tiny_model(kind="dense", seed=0, **options):
    """A small ``TransformerLM`` with random weights drawn on the host (no initialiser
    programs to compile); cached, as tests only read it."""
    spec = AttentionSpec.create(kind, **options)
    cfg = TransformerConfig(vocab_size=VOCAB, num_layers=2, embed_dim=32, num_heads=4,
                            num_kv_heads=2, head_dim=8, mlp_dim=64, train_len=64,
                            attention=[spec, spec])
    graph, state = nnx.split(nnx.eval_shape(lambda: TransformerLM(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(size=leaf.shape)
        value = 1 + 0.1 * noise if "scale" in jax.tree_util.keystr(path) else 0.2 * noise
        return jax.numpy.asarray(value.astype(leaf.dtype))

    return nnx.merge(graph, jax.tree.map_with_path(draw, state))


def window(tokens, loss_mask=None, positions=None, segment_ids=None):
    tokens = np.asarray(tokens, np.int32)
    length = tokens.shape[0] - 1
    return {
        "inputs": tokens[:-1], "targets": tokens[1:],
        "loss_mask": (np.ones(length, np.float32) if loss_mask is None
                      else np.asarray(loss_mask, np.float32)),
        "positions": (np.arange(length, dtype=np.int32) if positions is None
                      else np.asarray(positions, np.int32)),
        "segment_ids": (np.ones(length, np.int32) if segment_ids is None
                        else np.asarray(segment_ids, np.int32)),
    }


# --------------------------------------------------------------------------- buckets


@pytest.mark.parametrize("length, spec, edges", [
    (1024, "pow2", [0, 256, 512, 1024]),
    (32768, "pow2:256", [0, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]),
    (64, "pow2:16", [0, 16, 32, 64]),
    (100, "pow2:16", [0, 16, 32, 64, 100]),
    (200, "pow2", [0, 200]),
    (100, "linear:4", [0, 25, 50, 75, 100]),
    (512, "linear:8", [0, 64, 128, 192, 256, 320, 384, 448, 512]),
    (3, "linear:8", [0, 1, 2, 3]),
    (64, [10, 0, 200, 10, 32], [0, 10, 32, 64]),
])
def test_bucket_edges(length, spec, edges):
    assert ppl.bucket_edges(length, spec) == edges


@pytest.mark.parametrize("spec", ["pow3", "pow2:0", "linear", "linear:x", "pow2:-4"])
def test_bucket_edges_rejects_bad_specs(spec):
    with pytest.raises(ValueError, match="bucket spec"):
        ppl.bucket_edges(64, spec)


# --------------------------------------------------------------------------- toy metrics


def test_token_nll_matches_log_softmax_and_uniform_is_log_vocab():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, VOCAB)).astype(np.float32) * 3
    targets = rng.integers(0, VOCAB, size=(2, 5))
    expected = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits.astype(np.float64))),
                                   targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(ppl.token_nll(logits, targets), expected, rtol=1e-6)
    uniform = ppl.token_nll(np.full((1, 3, VOCAB), 7.0), np.array([[0, 5, 39]]))
    np.testing.assert_allclose(uniform, np.log(VOCAB), rtol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        ppl.token_nll(logits, targets[:, :4])


def test_uniform_logits_give_perplexity_vocab_size():
    nll = ppl.token_nll(np.zeros((3, 16, VOCAB)), np.zeros((3, 16), np.int32))
    out = ppl.summarize_losses(nll, np.ones((3, 16)), buckets="pow2:4")
    assert out["perplexity"] == pytest.approx(VOCAB, rel=1e-6)
    assert out["bits_per_byte"] == pytest.approx(math.log2(VOCAB), rel=1e-6)
    assert out["tokens"] == 48 and out["windows"] == 3
    assert [b["perplexity"] for b in out["buckets"]] == pytest.approx([VOCAB] * 3, rel=1e-6)


def test_bucket_means_by_hand():
    # The loss of position t is t, so each bucket's mean is the mean of its positions.
    nll = np.tile(np.arange(8, dtype=np.float32), (2, 1))
    mask = np.ones((2, 8))
    mask[1, 5] = 0  # not counted: [4, 8) of row 1 holds 4, 6, 7
    out = ppl.summarize_losses(nll, mask, buckets=[2, 4])
    assert [(b["start"], b["stop"], b["tokens"]) for b in out["buckets"]] == [
        (0, 2, 4), (2, 4, 4), (4, 8, 7)]
    assert [b["loss"] for b in out["buckets"]] == pytest.approx(
        [0.5, 2.5, (4 + 5 + 6 + 7 + 4 + 6 + 7) / 7])
    assert out["loss"] == pytest.approx((28 + 23) / 15)
    assert out["window_mean_loss"] == pytest.approx((28 / 8 + 23 / 7) / 2)


def test_masked_targets_are_not_counted_even_when_infinite():
    nll = np.full((3, 6), 2.0)
    mask = np.ones((3, 6))
    nll[0, :2], mask[0, :2] = np.inf, 0   # e.g. a padding target of probability 0
    nll[2], mask[2] = np.nan, 0           # an all-padding row: no window, no tokens
    out = ppl.summarize_losses(nll, mask, buckets=[3])
    assert out["loss"] == pytest.approx(2.0) and out["tokens"] == 10
    assert out["windows"] == 2 and out["window_mean_loss"] == pytest.approx(2.0)
    assert [b["tokens"] for b in out["buckets"]] == [4, 6]


def test_buckets_follow_document_positions_and_empty_buckets_are_nan():
    # Two documents in one window: the second restarts at position 0.
    nll = np.array([[1.0, 1.0, 1.0, 5.0, 5.0, 5.0]])
    positions = np.array([[0, 1, 2, 0, 1, 2]])
    out = ppl.summarize_losses(nll, np.ones((1, 6)), positions, buckets=[1, 4])
    losses = [b["loss"] for b in out["buckets"]]
    assert losses[:2] == pytest.approx([3.0, 3.0]) and math.isnan(losses[2])
    assert out["buckets"][2]["tokens"] == 0 and math.isnan(out["buckets"][2]["perplexity"])


def test_summarize_checks_shapes():
    with pytest.raises(ValueError, match="windows, length"):
        ppl.summarize_losses(np.zeros((2, 4)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="positions"):
        ppl.summarize_losses(np.zeros((2, 4)), np.ones((2, 4)), np.zeros((2, 3)))


# --------------------------------------------------------------------------- scorers


def test_window_losses_pads_the_last_batch_and_caps_windows():
    windows = [window(np.arange(i, i + 9) % VOCAB) for i in range(5)]
    seen = []

    def nll_fn(batch):
        seen.append(batch["inputs"].shape)
        return batch["inputs"].astype(np.float32)

    out = ppl.window_losses(nll_fn, windows, batch_size=2, max_windows=3)
    assert seen == [(2, 8), (2, 8)]
    assert out["nll"].shape == (3, 8)
    np.testing.assert_array_equal(out["nll"][2], np.arange(2, 10))
    with pytest.raises(ValueError, match="batch_size"):
        ppl.window_losses(nll_fn, windows, batch_size=0)


def test_forward_scorer_matches_the_training_loss():
    model = tiny_model()
    rng = np.random.default_rng(1)
    mask = np.ones(16)
    mask[7] = 0
    batch = {k: np.stack([window(rng.integers(4, VOCAB, 17), mask, segment_ids=seg)[k]
                          for seg in (None, [1] * 7 + [2] * 9)])
             for k in ("inputs", "targets", "loss_mask", "positions", "segment_ids")}
    nll = ppl.forward_nll_fn(model)(batch)
    assert nll.shape == (2, 16) and nll.dtype == np.float32
    graph, state = nnx.split(model)

    @jax.jit
    def reference(state, batch):
        logits = nnx.merge(graph, state)(batch["inputs"], positions=batch["positions"],
                                         segment_ids=batch["segment_ids"])
        return masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])

    loss_sum, count = reference(state, batch)
    assert float((nll * batch["loss_mask"]).sum()) == pytest.approx(float(loss_sum), rel=1e-5)
    assert int(count) == 30


def test_landmark_decoder_scorer_equals_forward_when_every_block_is_retrieved():
    model = tiny_model("landmark", seed=2, mem_freq=3)
    windows = [window(np.random.default_rng(i).integers(4, VOCAB, 25)) for i in range(3)]
    assert ppl.resolve_method(model) == "decoder"
    forward = ppl.window_losses(ppl.forward_nll_fn(model), windows, batch_size=2)["nll"]
    decoder_fn = ppl.decoder_nll_fn(model, RetrievalConfig(top_k=8, chunk_blocks=2),
                                    batch_size=2, piece=10)
    decoded = ppl.window_losses(decoder_fn, windows, batch_size=2)["nll"]
    np.testing.assert_allclose(decoded, forward, atol=1e-4, rtol=1e-4)
    assert decoder_fn.decoder.num_cached > 0  # the stream really went through the cache


def test_method_checks():
    model = tiny_model()
    assert ppl.resolve_method(model) == "forward"
    with pytest.raises(ValueError, match="needs a landmark model"):
        ppl.resolve_method(model, "decoder")
    with pytest.raises(ValueError, match="method must be one of"):
        ppl.resolve_method(model, "cache")


# --------------------------------------------------------------------------- length sweep


def test_perplexity_by_length_on_the_validation_split_respects_loss_mask():
    data = DataConfig(seq_len=64, batch_size=8)

    def uniform(batch):  # uniform logits: log V at every position
        return np.full(batch["inputs"].shape, np.log(VOCAB), np.float32)

    rows = ppl.perplexity_by_length(None, data, [32, 128], batch_size=3, max_windows=4,
                                    buckets="pow2:32", nll_fn=uniform, progress=False)
    assert [r["length"] for r in rows] == [32, 128]
    for row in rows:
        _, valid = make_splits(DataConfig(seq_len=row["length"], batch_size=3))
        counted = sum(int(valid[i]["loss_mask"].sum()) for i in range(4))
        assert row["windows"] == 4 and row["available_windows"] == len(valid)
        assert row["tokens"] == counted
        assert row["perplexity"] == pytest.approx(VOCAB, rel=1e-5)
        assert sum(b["tokens"] for b in row["buckets"]) == counted
    assert [(b["start"], b["stop"]) for b in rows[1]["buckets"]] == [(0, 32), (32, 64),
                                                                      (64, 128)]
    with pytest.raises(ValueError, match="evaluation length 10000000"):
        ppl.perplexity_by_length(None, data, [10_000_000], nll_fn=uniform, progress=False)


def test_forward_efficiency_rows_and_error_rows():
    model = tiny_model("landmark", mem_freq=4)
    rows = ppl.forward_efficiency(model, [16, 30], repeats=2, progress=False)
    ok, bad = rows
    assert ok["length"] == 16 and ok["error"] is None
    assert ok["median_ms"] > 0 and ok["tokens_per_s"] > 0 and ok["compile_ms"] > 0
    assert ok["peak_bytes"] is None or ok["peak_bytes"] > 0
    assert bad["median_ms"] is None and "multiple" in bad["error"]
