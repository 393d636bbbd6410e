"""grain pipelines: determinism, exact resume, epochs, eval order, per-process shards."""

import json
import random

import numpy as np
import pytest

from jaxattn.data import (
    ByteTokenizer,
    DataConfig,
    get_iterator_state,
    load_corpus,
    make_eval_batches,
    make_splits,
    make_train_iterator,
    pack_documents,
    set_iterator_state,
)

KEYS = {"inputs", "targets", "segment_ids", "positions", "loss_mask"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A "text:" spec over 30 small files (about 6k tokens).

    Every word is unique and 8 bytes long, so every 16-token window is unique.
    """
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(30):
        text = " ".join(f"{i:02d}{j:03d}é" for j in range(rng.randint(10, 40)))
        (root / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return f"text:{root}/*.txt"


def _config(corpus, **overrides):
    return DataConfig(**{"corpus": corpus, "seq_len": 16, "batch_size": 4, "valid_fraction": 0.1, **overrides})


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _window_keys(train):
    """Maps each window's input bytes to its index (windows of the corpus are distinct)."""
    keys = {train[i]["inputs"].tobytes(): i for i in range(len(train))}
    assert len(keys) == len(train)
    return keys


def test_batch_format(corpus):
    batch = next(make_train_iterator(_config(corpus)))
    assert set(batch) == KEYS
    for key, value in batch.items():
        assert value.shape == (4, 16), key
        assert value.dtype == (np.float32 if key == "loss_mask" else np.int32), key
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_deterministic_given_seed(corpus):
    cfg = _config(corpus, seed=3)
    _assert_same(_take(make_train_iterator(cfg), 5), _take(make_train_iterator(cfg), 5))


def test_different_seeds_differ(corpus):
    a = _take(make_train_iterator(_config(corpus, seed=0)), 3)
    b = _take(make_train_iterator(_config(corpus, seed=1)), 3)
    assert any(not np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))


def test_epochs_are_permutations_reshuffled(corpus):
    cfg = _config(corpus, batch_size=1)
    train, _ = make_splits(cfg)
    keys = _window_keys(train)
    n = len(train)
    order = [keys[b["inputs"][0].tobytes()] for b in _take(make_train_iterator(cfg), 2 * n)]
    first, second = order[:n], order[n:]
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert first != second
    assert first != list(range(n))


@pytest.mark.parametrize("consumed", [0, 3, 100])
def test_exact_resume_from_state(corpus, consumed):
    cfg = _config(corpus)
    if consumed == 100:
        assert 100 * cfg.batch_size > len(make_splits(cfg)[0]), "should cross an epoch"
    iterator = make_train_iterator(cfg)
    _take(iterator, consumed)
    state = get_iterator_state(iterator)
    state = json.loads(json.dumps(state))
    expected = _take(iterator, 7)

    fresh = make_train_iterator(cfg)
    next(fresh)
    set_iterator_state(fresh, state)
    _assert_same(_take(fresh, 7), expected)


def test_state_is_a_snapshot(corpus):
    iterator = make_train_iterator(_config(corpus))
    state = get_iterator_state(iterator)
    before = json.dumps(state)
    _take(iterator, 2)
    assert json.dumps(state) == before
    assert get_iterator_state(iterator) != state


def test_eval_batches_cover_valid_split_in_order(corpus):
    cfg = _config(corpus, batch_size=3)
    _, valid = make_splits(cfg)
    batches = list(make_eval_batches(cfg))
    assert len(batches) == -(-len(valid) // 3)
    rows = [{key: batch[key][r] for key in batch} for batch in batches for r in range(3)]
    for i, row in enumerate(rows):
        if i < len(valid):
            for key in KEYS:
                np.testing.assert_array_equal(row[key], valid[i][key], err_msg=key)
        else:
            assert not row["loss_mask"].any() and not row["segment_ids"].any()
    assert len(rows) - len(valid) < 3
    _assert_same(batches, list(make_eval_batches(cfg)))
    assert len(list(make_eval_batches(cfg, max_batches=2))) == min(2, len(batches))


def test_valid_split_is_end_of_stream_and_disjoint_from_train(corpus):
    cfg = _config(corpus)
    train, valid = make_splits(cfg)
    full = pack_documents(load_corpus(corpus), ByteTokenizer()).tokens
    n_valid = round(0.1 * len(full))
    train_targets = np.concatenate([train[i]["targets"] for i in range(len(train))])
    valid_inputs = np.concatenate([valid[i]["inputs"] for i in range(len(valid))])
    # Train windows never reach into the last n_valid tokens; valid windows start there.
    assert len(train_targets) <= len(full) - n_valid - 1
    np.testing.assert_array_equal(train_targets, full[1 : 1 + len(train_targets)])
    start = len(full) - n_valid
    np.testing.assert_array_equal(valid_inputs, full[start : start + len(valid_inputs)])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_partition_the_global_batch(corpus, process_count):
    cfg = _config(corpus, batch_size=8)
    global_batches = _take(make_train_iterator(cfg), 12)
    shards = [
        _take(make_train_iterator(cfg, process_index=p, process_count=process_count), 12)
        for p in range(process_count)
    ]
    for step, global_batch in enumerate(global_batches):
        parts = [shard[step] for shard in shards]
        assert all(part["inputs"].shape == (8 // process_count, 16) for part in parts)
        rows = [row.tobytes() for part in parts for row in part["inputs"]]
        assert len(set(rows)) == len(rows)
        for key in KEYS:
            np.testing.assert_array_equal(
                np.concatenate([part[key] for part in parts]), global_batch[key]
            )

    eval_global = list(make_eval_batches(cfg))
    eval_shards = [
        list(make_eval_batches(cfg, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    for step, global_batch in enumerate(eval_global):
        np.testing.assert_array_equal(
            np.concatenate([shard[step]["inputs"] for shard in eval_shards]),
            global_batch["inputs"],
        )


def test_builtin_kjv_pipeline():
    cfg = DataConfig(seq_len=64, batch_size=2)
    batch = next(make_train_iterator(cfg))
    assert batch["inputs"].shape == (2, 64)
    assert next(make_eval_batches(cfg, max_batches=1))["inputs"].shape == (2, 64)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seq_len", 0, "seq_len"),
        ("seq_len", 2.5, "seq_len"),
        ("batch_size", 0, "batch_size"),
        ("valid_fraction", 0.0, "valid_fraction"),
        ("valid_fraction", 1.0, "valid_fraction"),
        ("seed", -1, "seed"),
        ("seed", 2**32, "seed"),
        ("tokenizer", "sentencepiece", "sentencepiece.*byte"),
        ("corpus", "wikipedia", "wikipedia.*builtin:"),
        ("corpus", "builtin:nope", "nope.*kjv"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**{field: value})


def test_process_count_validation(corpus):
    cfg = _config(corpus, batch_size=6)
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by process_count=4"):
        make_train_iterator(cfg, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        make_train_iterator(cfg, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="batch_size"):
        make_eval_batches(cfg, process_count=4)


def test_corpus_too_short(tmp_path):
    (tmp_path / "tiny.txt").write_text("x" * 100)
    cfg = DataConfig(corpus=f"text:{tmp_path}/tiny.txt", seq_len=32, valid_fraction=0.1)
    with pytest.raises(ValueError, match=r"valid split has 10 tokens.*needs 33"):
        make_train_iterator(cfg)
