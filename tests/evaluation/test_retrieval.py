"""Retrieval grids: a fake decoder that answers right only at some depths gives the expected
accuracy array; tasks without depth; argument errors; greedy decoding of a real model matches
a step-by-step argmax."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxattn.data import tasks
from jaxattn.data.tokenizer import ByteTokenizer
from jaxattn.evaluation import retrieval as rl
from tests.evaluation.test_perplexity import VOCAB, tiny_model

TOKENIZER = ByteTokenizer()


class LookupDecoder:
    """Knows every example of the grid (by its prompt) and answers with its answer when
    ``right(example, trial)`` holds, else with "nothing"."""

    method = "lookup"

    def __init__(self, task, lengths, depths, trials, right, seed=0):
        self.right, self.calls, self.by_prompt = right, [], {}
        for length in lengths:
            for depth in depths:
                options = {} if depth is None else {"depth": depth}
                for trial in range(trials):
                    e = tasks.make_example(task, seed * 1_000_003 + trial, length, **options)
                    self.by_prompt[e.prompt_ids.tobytes()] = (e, trial)

    def __call__(self, prompts, max_new_tokens):
        self.calls.append((prompts.shape, max_new_tokens))
        out = []
        for row in prompts:
            example, trial = self.by_prompt[np.asarray(row, np.int32).tobytes()]
            text = " " + example.answer if self.right(example, trial) else " nothing."
            ids = TOKENIZER.encode(text)[:max_new_tokens]
            out.append(np.pad(ids, (0, max_new_tokens - ids.shape[0])))
        return np.stack(out)


@pytest.mark.parametrize("task", ["passkey", "niah_single_1", "niah_single_3"])
def test_grid_with_a_decoder_right_in_the_first_half(task):
    lengths = [tasks.min_length(task) + 500, tasks.min_length(task) + 1000]
    depths = [0.0, 0.3, 0.7, 1.0]
    decoder = LookupDecoder(task, lengths, depths, 3, lambda e, _: e.depth < 0.5)
    grid = rl.retrieval_grid(None, task, lengths, depths, trials=3, batch_size=2,
                             decode=decoder, progress=False)
    np.testing.assert_array_equal(grid["accuracy"], [[1, 1, 0, 0], [1, 1, 0, 0]])
    assert grid["accuracy"].shape == (2, 4) and grid["method"] == "lookup"
    assert grid["lengths"] == lengths and grid["depths"] == depths
    assert [(r["length"], r["depth"]) for r in grid["rows"]] == [
        (n, d) for n in lengths for d in depths]
    first = grid["rows"][0]
    assert first["correct"] == 3 and first["trials"] == 3
    assert first["output"].strip() == first["answer"]
    assert grid["rows"][0]["realised_depth"] == 0.0 and grid["rows"][-1]["realised_depth"] > 0.8
    # Batches of two prompts, then the rest; room for the answer and two more tokens.
    answer_len = max(len(" " + r["answer"]) for r in grid["rows"])
    assert decoder.calls[0][0] == (2, lengths[0]) and decoder.calls[1][0] == (1, lengths[0])
    assert all(n <= answer_len + 2 for _, n in decoder.calls)


def test_task_without_depth_gets_one_random_column():
    task = "babilong_qa1"
    lengths = [tasks.min_length(task)]
    decoder = LookupDecoder(task, lengths, [None], 4, lambda e, trial: trial % 2 == 0)
    grid = rl.retrieval_grid(None, task, lengths, trials=4, decode=decoder, progress=False)
    assert grid["depths"] == [None]
    np.testing.assert_array_equal(grid["accuracy"], [[0.5]])
    with pytest.raises(ValueError, match="takes no depth"):
        rl.retrieval_grid(None, task, lengths, [0.5], decode=decoder, progress=False)


def test_argument_errors():
    with pytest.raises(ValueError, match="valid tasks: passkey, niah_single_1"):
        rl.retrieval_grid(None, "mqar", [512], decode=lambda p, n: p)
    with pytest.raises(ValueError, match=r"too short for task 'passkey'.*at least 248"):
        rl.retrieval_grid(None, "passkey", [512, 100], decode=lambda p, n: p)
    with pytest.raises(ValueError, match=r"depths must be numbers in \[0, 1\]"):
        rl.retrieval_grid(None, "passkey", [512], [0.5, 1.5], decode=lambda p, n: p)
    with pytest.raises(ValueError, match="trials"):
        rl.retrieval_grid(None, "passkey", [512], trials=0, decode=lambda p, n: p)
    with pytest.raises(ValueError, match="method must be one of"):
        rl.greedy_decoder(tiny_model(), method="beam")


def test_runnable_length_rounds_up_to_what_every_layer_takes():
    assert rl.runnable_length(tiny_model().cfg, 37) == 37
    assert rl.runnable_length(tiny_model("landmark", mem_freq=4).cfg, 37) == 40
    assert rl.runnable_length(tiny_model("local", block_size=8).cfg, 40) == 40


@pytest.mark.parametrize("method, decoder_cls", [("forward", rl.FullForwardGreedy),
                                                 ("auto", rl.KVCacheGreedy)])
@pytest.mark.parametrize("kind, options", [("dense", {}), ("local", {"block_size": 8})])
def test_greedy_decoders_match_stepwise_argmax(kind, options, method, decoder_cls):
    model = tiny_model(kind, seed=4, **options)
    prompts = np.random.default_rng(0).integers(4, VOCAB, size=(2, 13)).astype(np.int32)
    decode = rl.greedy_decoder(model, method=method)
    assert isinstance(decode, decoder_cls)
    new = decode(prompts, 4)
    assert new.shape == (2, 4) and new.dtype == np.int32
    graph, state = nnx.split(model)
    forward = jax.jit(lambda state, tokens: nnx.merge(graph, state)(tokens))
    tokens = prompts
    for step in range(4):
        width = rl.runnable_length(model.cfg, tokens.shape[1])
        logits = forward(state, np.pad(tokens, ((0, 0), (0, width - tokens.shape[1]))))
        expected = np.asarray(logits[:, tokens.shape[1] - 1]).argmax(-1)
        np.testing.assert_array_equal(new[:, step], expected)
        tokens = np.concatenate([tokens, expected[:, None].astype(np.int32)], axis=1)


@pytest.mark.parametrize("arch", ["mac", "mal"])
def test_titans_decode_through_the_memory_stream_like_the_full_forward(arch):
    """Titans models decode with ``TitansStream`` (the prompt written into the memories);
    batches of 2 over 3 prompts pad the last one; the greedy tokens equal the full forward's,
    whose buffer rounds prompt + answer up to the layers' multiple."""
    from tests.nn.test_titans_lm import VOCAB as TITANS_VOCAB, lm

    model = lm(arch, seed=3)
    prompts = np.random.default_rng(1).integers(1, TITANS_VOCAB, size=(3, 13)).astype(np.int32)
    stream = rl.greedy_decoder(model, batch_size=2)
    assert isinstance(stream, rl.TitansGreedy) and stream.method == "titans memory"
    forward = rl.greedy_decoder(model, method="forward")
    assert isinstance(forward, rl.FullForwardGreedy)
    new = stream(prompts, 5)
    assert new.shape == (3, 5) and new.dtype == np.int32
    np.testing.assert_array_equal(new, forward(prompts, 5))
    assert stream.stream.num_tokens == 13 + 5  # the last batch: its prompt and its answer
    np.testing.assert_array_equal(stream(prompts[2:], 5), new[2:])
    with pytest.raises(ValueError, match="Titans"):
        rl.greedy_decoder(tiny_model(), method="stream")
