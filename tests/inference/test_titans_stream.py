"""TitansStream: any cuts of a stream equal one pass, constant state, generation, orbax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxattn.inference.titans import TitansStream
from jaxattn.nn import TransformerLM
from tests.model_helpers import orbax_round_trip
from tests.nn.test_titans_lm import SEQ, VOCAB, call, lm, model_config, tokens


def feed_all(stream, x, cuts):
    bounds = [0, *cuts, x.shape[1]]
    return np.concatenate([stream.feed(x[:, lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])],
                          axis=1)


@pytest.mark.parametrize("arch,cuts", [("mac", [3, 4, 13]), ("mal", [1, 2, 9, 10])])
def test_any_cuts_equal_one_pass(arch, cuts):
    """Cuts off the segment/chunk grid: partial pieces stay pending and are run padded."""
    model = lm(arch)
    x = np.asarray(tokens(11))
    full = np.asarray(call(model, jnp.asarray(x)))
    stream = TitansStream(model, batch_size=2, max_piece_len=8)
    out = feed_all(stream, x, cuts)
    np.testing.assert_allclose(out, full, rtol=1e-5, atol=1e-5)
    assert stream.num_tokens == SEQ and stream.num_committed == SEQ
    assert stream.feed(x[:, :0]).shape == (2, 0, VOCAB)


def test_state_size_is_constant_and_reset_restarts():
    model = lm("mag")
    stream = TitansStream(model, batch_size=2, max_piece_len=8)
    initial = stream.state_bytes()
    first = stream.feed(np.asarray(tokens(12)))
    for seed in range(3):  # 4 x 16 tokens
        stream.feed(np.asarray(tokens(13 + seed)))
    assert stream.num_tokens == 4 * SEQ and stream.state_bytes() == initial
    assert [leaf.shape for leaf in jax.tree.leaves(stream.state)] == [
        leaf.shape for leaf in jax.tree.leaves(model.init_stream_state(2))]
    stream.reset()
    assert stream.num_tokens == 0
    np.testing.assert_allclose(stream.feed(np.asarray(tokens(12))), first, rtol=1e-6, atol=1e-6)


def test_generate_is_greedy_on_the_models_own_logits():
    model = lm("mac")
    prompt = np.asarray(tokens(14, length=5))
    stream = TitansStream(model, batch_size=2)
    new = stream.generate(6, prompt=prompt)
    assert new.shape == (2, 6) and stream.num_tokens == 11
    # Teacher-forced check: each generated token is the argmax after the tokens before it.
    seq = np.zeros((2, SEQ), np.int32)
    seq[:, :11] = np.concatenate([prompt, new], axis=1)
    logits = np.asarray(call(model, jnp.asarray(seq)))
    np.testing.assert_array_equal(np.argmax(logits[:, 4:10], axis=-1), new)


def test_streamed_state_round_trips_through_orbax(tmp_path):
    model = lm("mag")
    stream = TitansStream(model, batch_size=2)
    stream.feed(np.asarray(tokens(15)))
    saved = stream.state
    restored = orbax_round_trip(saved, tmp_path / "stream")
    more = np.asarray(tokens(16))
    expected = stream.feed(more)
    resumed = TitansStream(model, batch_size=2)
    resumed.state = restored
    np.testing.assert_array_equal(resumed.feed(more), expected)
    # The restored state matters: a fresh stream gives other logits.
    assert not np.allclose(TitansStream(model, batch_size=2).feed(more), expected)


def test_errors():
    dense = TransformerLM(model_config("mac", num_layers=1, titans=None), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs a TransformerLM with Titans layers"):
        TitansStream(dense)
    with pytest.raises(ValueError, match="model must be a TransformerLM"):
        TitansStream(object())
    stream = TitansStream(lm("lmm"), batch_size=2)
    with pytest.raises(ValueError, match=r"tokens must be \[batch_size=2, n\]"):
        stream.feed(np.zeros((1, 4), np.int32))
    with pytest.raises(ValueError, match=r"ids in \[0, 50\)"):
        stream.feed(np.full((2, 4), 50, np.int32))
    with pytest.raises(ValueError, match="feed a prompt first"):
        stream.generate(3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        stream.generate(0)
