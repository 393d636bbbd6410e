"""Long-context task generators: determinism, exact lengths, needles, labels, scoring."""

import re
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxattn.data import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer
from jaxattn.data import tasks
from jaxattn.data.tasks import babilong, niah, passkey
from jaxattn.data.tasks.common import FILLER, WINDOW_KEYS, training_window
from jaxattn.data.tasks.scoring import (
    babilong_correct,
    masked_accuracy,
    passkey_correct,
    retrieval_correct,
    string_match_all,
)

TOK = ByteTokenizer()
FAST = settings(max_examples=15, deadline=None)
# Options that make each task cheap enough to fuzz near its minimum length.
SMALL_OPTIONS = {"mqar": {"num_kv_pairs": 4}, "selective_copy": {"num_data_tokens": 8}}


def _example(task, seed, length, **options):
    return tasks.make_example(task, seed, length, **{**SMALL_OPTIONS.get(task, {}), **options})


def _arrays(example):
    """The arrays that identify an example (prompt ids or the window dict)."""
    if isinstance(example, tasks.RetrievalExample):
        return {"prompt_ids": example.prompt_ids, "answer_ids": example.answer_ids}
    return example


def _min_length(task):
    return tasks.min_length(task, **SMALL_OPTIONS.get(task, {}))


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_same_seed_same_example_different_seed_differs(task):
    length = max(_min_length(task), 1024)
    state = np.random.get_state()
    first, again = _example(task, 3, length), _example(task, 3, length)
    other = _example(task, 4, length)
    # No global random state is read or consumed.
    assert np.array_equal(np.random.get_state()[1], state[1])
    for key, value in _arrays(first).items():
        np.testing.assert_array_equal(value, _arrays(again)[key], err_msg=key)
    assert any(
        not np.array_equal(value, _arrays(other)[key]) for key, value in _arrays(first).items()
    )
    if isinstance(first, tasks.RetrievalExample):
        assert (first.prompt, first.answer, first.needle_span, first.depth) == (
            again.prompt, again.answer, again.needle_span, again.depth)


@FAST
@given(st.sampled_from(sorted(tasks.TASKS)), st.integers(0, 2**32), st.integers(0, 3000))
def test_lengths_are_exact(task, seed, extra):
    length = _min_length(task) + extra
    example = _example(task, seed, length)
    if isinstance(example, tasks.RetrievalExample):
        assert example.prompt_ids.shape == (length,) and example.prompt_ids.dtype == np.int32
        assert example.prompt_ids[0] == BOS_ID
        assert TOK.decode(example.prompt_ids) == example.prompt
        assert example.answer_ids.dtype == np.int32
        assert TOK.decode(example.answer_ids) == " " + example.answer
    else:
        assert set(example) == set(WINDOW_KEYS)
        for key, value in example.items():
            assert value.shape == (length,), key
            assert value.dtype == (np.float32 if key == "loss_mask" else np.int32), key
        assert example["inputs"].min() >= 0 and example["inputs"].max() < TOK.vocab_size


# ---------------------------------------------------------------- retrieval tasks


@FAST
@given(st.sampled_from(tasks.RETRIEVAL_TASKS), st.integers(0, 2**32), st.integers(0, 4000))
def test_answer_is_inside_the_needle_span(task, seed, extra):
    example = _example(task, seed, _min_length(task) + extra)
    start, stop = example.needle_span
    assert 1 <= start < stop <= example.length
    needle = TOK.decode(example.prompt_ids[start:stop])
    assert needle == example.needle_text
    assert example.answer in needle
    assert 0.0 <= example.depth <= 1.0
    if task == "passkey":
        assert needle == passkey.info_line(int(example.answer))
    elif task.startswith("niah"):
        assert needle.startswith("One of the special magic ") and needle.endswith(
            f" is: {example.answer}.")
        # The answer occurs only in the needle.
        assert example.prompt.count(example.answer) == 1
    else:
        assert babilong.FACT_PATTERN.fullmatch(needle)


@pytest.mark.parametrize("task", ["passkey", "niah_single_1", "niah_single_2", "niah_single_3"])
def test_depth_is_honoured(task):
    # Long enough that one KJV sentence is a small fraction of the haystack.
    length = 16384
    answers = set()
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        example = _example(task, 7, length, depth=depth)
        assert abs(example.depth - depth) < 0.05, (depth, example.depth)
        assert abs(example.needle_span[0] / length - depth) < 0.1
        answers.add(example.answer)
    # The position is drawn after the key and value, so a depth grid keeps them.
    assert len(answers) == 1


def test_niah_default_depth_comes_from_the_ruler_grid():
    assert len(niah.DEPTHS) == 40 and niah.DEPTHS[0] == 0.0 and niah.DEPTHS[-1] == 1.0
    for seed in range(5):
        example = _example("niah_single_2", seed, 20000)
        assert min(abs(example.depth - d) for d in niah.DEPTHS) < 0.03


def test_prompts_begin_and_end_with_the_papers_text():
    example = _example("passkey", 0, 1000)
    assert example.prompt.startswith(passkey.TASK + "\n" + FILLER[:40])
    assert example.prompt.endswith("\nWhat is the pass key? The pass key is")
    for task, kind in [("niah_single_1", "number"), ("niah_single_2", "number"),
                       ("niah_single_3", "uuid")]:
        example = _example(task, 0, 1000)
        head, _, rest = example.prompt.partition("\n")
        assert head == (f"A special magic {kind} is hidden within the following text. Make "
                        f"sure to memorize it. I will quiz you about the {kind} afterwards.")
        key = re.search(rf"magic {kind}s for ([a-z]+-[a-z]+) is:", rest).group(1)
        assert key in niah.KEYS
        assert example.prompt.endswith(
            f"\nWhat is the special magic {kind} for {key} mentioned in the provided text? "
            f"The special magic {kind} for {key} mentioned in the provided text is")
    example = _example("babilong_qa1", 0, 1000)
    assert example.prompt.startswith(babilong.INSTRUCTION + "\n\n<context>\n")
    assert re.search(r"\n</context>\n\nQuestion: Where is [A-Z][a-z]+\?\nAnswer:$", example.prompt)


def test_passkey_golden_sample():
    example = tasks.make_passkey(0, 300)
    lines = example.prompt.split("\n")
    assert len(lines) == 5
    task_line, prefix, info, suffix, question = lines
    assert task_line == passkey.TASK
    assert question == passkey.QUESTION
    # Pinned draws of seed 0 at 300 tokens (a change means the generator changed).
    assert example.answer == "11358"
    assert info == "The pass key is 11358. Remember it. 11358 is the pass key."
    assert (len(prefix), len(suffix)) == (44, 8)
    garbage = " ".join([FILLER] * 3)
    assert prefix == garbage[:44] and suffix == garbage[:8]
    assert prefix == "The grass is green. The sky is blue. The sun"
    # 1 BOS + 4 newlines + the three fixed lines + garbage = 300.
    assert 1 + 4 + len(task_line) + len(info) + len(question) + len(prefix) + len(suffix) == 300
    needle_start = 1 + len(task_line + "\n" + prefix + "\n")  # BOS first.
    assert example.needle_span == (needle_start, needle_start + len(info))
    assert example.depth == pytest.approx(44 / 52)
    np.testing.assert_array_equal(example.answer_ids, [36, 53, 53, 55, 57, 60])  # " 11358"


def test_passkey_key_options():
    for seed in range(20):
        assert 1 <= int(tasks.make_passkey(seed, 400).answer) <= 50000
        assert len(tasks.make_passkey(seed, 400, key_digits=7).answer) == 7
        assert 5 <= int(tasks.make_passkey(seed, 400, key_range=(5, 9)).answer) <= 9
    with pytest.raises(ValueError, match="key_range or key_digits"):
        tasks.make_passkey(0, 400, key_range=(1, 9), key_digits=3)
    with pytest.raises(ValueError, match="key_range"):
        tasks.make_passkey(0, 400, key_range=(9, 1))


def test_niah_haystacks_and_values():
    example = _example("niah_single_1", 1, 2000)
    context = example.prompt.split("\n")[1:-1]
    needle_lines = [line for line in context if line.startswith("One of")]
    assert needle_lines == [example.needle_text]
    others = [line for line in context if line != example.needle_text]
    assert all(line == FILLER for line in others[:-1]) and FILLER.startswith(others[-1])
    assert re.fullmatch(r"[1-9]\d{6}", example.answer)
    uuid_example = _example("niah_single_3", 1, 2000)
    assert uuid.UUID(uuid_example.answer).version == 4
    assert str(uuid.UUID(uuid_example.answer)) == uuid_example.answer
    assert len(niah.ADJECTIVES) >= 45 and len(niah.NOUNS) >= 45
    assert list(niah.KEYS) == sorted(niah.KEYS)


@FAST
@given(st.integers(0, 2**32), st.integers(0, 3000), st.sampled_from([None, 4, (1, 3)]))
def test_babilong_answer_is_the_last_location_in_the_prompt(seed, extra, num_facts):
    length = tasks.min_length("babilong_qa1", num_facts=num_facts) + extra
    example = tasks.make_babilong_qa1(seed, length, num_facts=num_facts)
    facts = babilong.FACT_PATTERN.findall(example.prompt)
    low, high = {None: (2, 10), 4: (4, 4), (1, 3): (1, 3)}[num_facts]
    assert low <= len(facts) <= high
    actor = re.search(r"Question: Where is (\w+)\?\nAnswer:$", example.prompt).group(1)
    locations = [room for who, room in facts if who == actor]
    assert locations, "the question asks about an actor of the facts"
    assert example.answer == locations[-1]
    last = [m for m in babilong.FACT_PATTERN.finditer(example.prompt) if m.group(1) == actor][-1]
    assert example.needle_text == last.group(0)
    assert example.needle_span[0] == 1 + last.start()


# ---------------------------------------------------------------- sequence tasks


@pytest.mark.parametrize("random_non_queries", [False, True])
@pytest.mark.parametrize("query_values_in_inputs", [True, False])
@pytest.mark.parametrize("length,num_kv_pairs", [(64, 4), (128, 8), (257, 16)])
def test_mqar_label_structure(random_non_queries, query_values_in_inputs, length, num_kv_pairs):
    for seed in range(5):
        example = tasks.make_mqar(
            seed, length, num_kv_pairs=num_kv_pairs, random_non_queries=random_non_queries,
            query_values_in_inputs=query_values_in_inputs)
        inputs, targets, mask = example["inputs"], example["targets"], example["loss_mask"]
        context = 2 * num_kv_pairs
        keys, values = inputs[0:context:2], inputs[1:context:2]
        assert len(set(keys.tolist())) == num_kv_pairs and len(set(values.tolist())) == num_kv_pairs
        assert np.all((keys >= 4) & (keys < 4 + 128)) and np.all((values >= 132) & (values < 260))
        assert mask.sum() == num_kv_pairs
        queries = np.flatnonzero(mask)
        assert np.all(queries >= context) and np.all((queries - context) % 2 == 0)
        # Each key reappears once at a labelled position, whose target is its value.
        assert sorted(inputs[queries].tolist()) == sorted(keys.tolist())
        pairs = dict(zip(keys.tolist(), values.tolist()))
        for q in queries:
            assert targets[q] == pairs[int(inputs[q])]
        if not random_non_queries:
            region = inputs[context:]
            key_slots = np.isin(region, keys)
            np.testing.assert_array_equal(np.flatnonzero(key_slots) + context, queries)
            if not query_values_in_inputs:
                assert np.all(region[~key_slots] == PAD_ID)
        # Targets are the next inputs, except the labels when values are not in the inputs.
        next_ok = targets[:-1] == inputs[1:]
        if query_values_in_inputs:
            assert next_ok.all()
        else:
            # Only the labels can differ from the next input (random fill may match by chance).
            assert np.all(mask[:-1][~next_ok] == 1)
            if not random_non_queries:
                np.testing.assert_array_equal(~next_ok, mask[:-1] == 1)


def test_mqar_gaps_favour_early_queries():
    offsets = []
    for seed in range(40):
        example = tasks.make_mqar(seed, 512, num_kv_pairs=8)
        offsets += ((np.flatnonzero(example["loss_mask"]) - 16) // 2).tolist()
    # Uniform gaps over 248 slots would average ~124; a = 0.01 puts them far earlier.
    assert np.mean(offsets) < 90


@FAST
@given(st.integers(0, 2**32), st.integers(0, 500), st.integers(1, 16), st.booleans())
def test_selective_copy_targets_are_the_data_in_order(seed, extra, num_data_tokens, variable):
    length = 2 * num_data_tokens + extra
    example = tasks.make_selective_copy(
        seed, length, num_data_tokens=num_data_tokens, vocab_size=16, variable=variable)
    inputs, targets, mask = example["inputs"], example["targets"], example["loss_mask"]
    region = length - num_data_tokens
    noise, marker = 4, 4 + 15
    np.testing.assert_array_equal(mask, np.r_[np.zeros(region), np.ones(num_data_tokens)])
    assert np.all(inputs[region:] == marker)
    data_positions = np.flatnonzero(inputs[:region] != noise)
    data = inputs[data_positions]
    assert data.shape == (num_data_tokens,) and np.all((data >= 5) & (data <= 18))
    np.testing.assert_array_equal(targets[region:], data)
    if not variable:
        np.testing.assert_array_equal(data_positions, np.arange(num_data_tokens))
    np.testing.assert_array_equal(targets[:region - 1], inputs[1:region])


# ---------------------------------------------------------------- windows and batches


@pytest.mark.parametrize("task", tasks.RETRIEVAL_TASKS)
def test_training_window_masks_only_the_answer(task):
    example = _example(task, 2, 1200)
    window = training_window(example)
    n_answer = example.answer_ids.shape[0]
    natural = example.length + n_answer
    assert set(window) == set(WINDOW_KEYS)
    assert all(value.shape == (natural,) for value in window.values())
    np.testing.assert_array_equal(window["inputs"][:example.length], example.prompt_ids)
    labelled = np.flatnonzero(window["loss_mask"])
    np.testing.assert_array_equal(labelled, np.arange(example.length - 1, natural))
    np.testing.assert_array_equal(window["targets"][labelled[:-1]], example.answer_ids)
    assert window["targets"][-1] == EOS_ID
    assert TOK.decode(window["targets"][labelled]) == " " + example.answer

    padded = training_window(example, natural + 5, loss_on_prompt=True)
    assert padded["loss_mask"].sum() == natural
    assert np.all(padded["inputs"][natural:] == PAD_ID)
    assert np.all(padded["segment_ids"][natural:] == 0)
    np.testing.assert_array_equal(padded["positions"][:natural], np.arange(natural))
    with pytest.raises(ValueError, match="seq_len"):
        training_window(example, natural - 1)


def test_make_batch_stacks_windows():
    batch = tasks.make_batch("passkey", [0, 1, 2], 300)
    assert batch["inputs"].shape[0] == 3 and len({v.shape for v in batch.values()}) == 1
    assert np.all(batch["loss_mask"].sum(axis=1) >= 2)
    batch = tasks.make_batch("mqar", [0, 1], 64, num_kv_pairs=4)
    assert batch["inputs"].shape == (2, 64) and np.all(batch["loss_mask"].sum(axis=1) == 4)
    with pytest.raises(ValueError, match="seq_len"):
        tasks.make_batch("mqar", [0], 64, seq_len=32)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_too_short_lengths_raise(task):
    shortest = _min_length(task)
    _example(task, 0, shortest)
    with pytest.raises(ValueError, match=f"length={shortest - 1} tokens is too short"):
        _example(task, 0, shortest - 1)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="Unknown task 'passkey2'; valid names"):
        tasks.make_example("passkey2", 0, 1000)
    with pytest.raises(ValueError, match="Unknown task"):
        tasks.min_length("nope")
    with pytest.raises(ValueError, match="Unknown option"):
        tasks.make_example("passkey", 0, 1000, dpeth=0.5)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        tasks.make_example("passkey", -1, 1000)
    with pytest.raises(ValueError, match="length must be an integer"):
        tasks.make_example("passkey", 0, 1000.0)
    with pytest.raises(ValueError, match="depth must be a number in"):
        tasks.make_example("niah_single_2", 0, 1000, depth=1.5)
    with pytest.raises(ValueError, match="vocab_size must be even"):
        tasks.make_mqar(0, 64, vocab_size=255)
    with pytest.raises(ValueError, match="num_facts"):
        tasks.make_babilong_qa1(0, 2000, num_facts=(5, 2))
    assert tasks.min_length("passkey", depth=0.5) == tasks.min_length("passkey")


# ---------------------------------------------------------------- scoring


def test_passkey_correct():
    assert passkey_correct(" 12345. Remember", "12345")
    assert passkey_correct("The key is 12345", 12345)
    assert passkey_correct("012345", "12345")  # Compared as integers, like the original.
    assert not passkey_correct(" 1234 5", "12345")  # Only the first integer counts.
    assert not passkey_correct(" 54321", "12345")
    assert not passkey_correct("no digits here", "12345")
    assert not passkey_correct("", "1")


def test_string_match_all():
    assert string_match_all(["The number is 1234567."], [["1234567"]]) == 100.0
    assert string_match_all(["ABC-def"], [["abc-DEF"]]) == 100.0
    assert string_match_all(["1234567", "nothing"], [["1234567"], ["7654321"]]) == 50.0
    assert string_match_all(["x1 and x2"], [["x1", "X2", "x3", "x4"]]) == pytest.approx(50.0)
    assert string_match_all(["x"], ["x"]) == 100.0  # A bare string is one reference.
    with pytest.raises(ValueError, match="same length"):
        string_match_all(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="at least one sample"):
        string_match_all([], [])


def test_babilong_correct():
    assert babilong_correct(" kitchen.", "kitchen")
    assert babilong_correct("The most recent location of Mary is Kitchen. Then garden", "kitchen")
    assert not babilong_correct("Mary went to the garden. Then kitchen.", "kitchen")
    assert not babilong_correct(".kitchen", "kitchen")
    assert babilong_correct("kitchen or garden", "kitchen")
    assert not babilong_correct("kitchen or garden", "kitchen", labels=babilong.ROOMS)
    assert babilong_correct("kitchen", "kitchen", labels=babilong.ROOMS)


def test_masked_accuracy():
    targets = np.array([[1, 2, 3, 4]])
    mask = np.array([[0, 1, 1, 0]], np.float32)
    assert masked_accuracy(np.array([[9, 2, 0, 9]]), targets, mask) == 0.5
    logits = np.eye(5)[[[0, 2, 3, 0]]]  # argmax = [0, 2, 3, 0]
    assert masked_accuracy(logits, targets, mask) == 1.0
    assert np.isnan(masked_accuracy(targets, targets, np.zeros_like(mask)))
    with pytest.raises(ValueError, match="expected logits"):
        masked_accuracy(np.zeros([1, 3]), targets, mask)


def test_retrieval_correct_dispatches_per_task():
    for task in tasks.RETRIEVAL_TASKS:
        example = _example(task, 5, 1000)
        assert retrieval_correct(example, " " + example.answer + ".")
        assert not retrieval_correct(example, " nothing.")
