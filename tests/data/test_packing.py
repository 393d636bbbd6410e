"""Packing: token stream, train/valid split, windows against a per-token reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxattn.data import BOS_ID, ByteTokenizer, PackedWindows, TokenStream, pack_documents, split_stream

TOK = ByteTokenizer()
KEYS = {"inputs", "targets", "segment_ids", "positions", "loss_mask"}

documents_strategy = st.lists(st.text(max_size=40), min_size=1, max_size=12)


def _reference_stream(documents):
    """Token-by-token stream and document ids, the slow obvious way."""
    tokens, doc_ids = [], []
    kept = 0
    for document in documents:
        if not document:
            continue
        body = [b + 4 for b in document.encode("utf-8")]
        tokens += [BOS_ID] + body
        doc_ids += [kept] * (1 + len(body))
        kept += 1
    return tokens, doc_ids


def _reference_window(tokens, doc_ids, index, seq_len):
    start = index * seq_len
    segment, position = 0, 0
    expected = {key: [] for key in KEYS}
    for t in range(seq_len):
        i = start + t
        if t == 0 or doc_ids[i] != doc_ids[i - 1]:
            segment, position = segment + 1, 0
        else:
            position += 1
        expected["inputs"].append(tokens[i])
        expected["targets"].append(tokens[i + 1])
        expected["segment_ids"].append(segment)
        expected["positions"].append(position)
        expected["loss_mask"].append(1.0 if doc_ids[i + 1] == doc_ids[i] else 0.0)
    return expected


@given(documents_strategy)
def test_pack_documents_matches_reference(documents):
    stream = pack_documents(documents, TOK)
    tokens, doc_ids = _reference_stream(documents)
    assert stream.tokens.dtype == np.int32 and stream.doc_ids.dtype == np.int32
    np.testing.assert_array_equal(stream.tokens, np.array(tokens, dtype=np.int32))
    np.testing.assert_array_equal(stream.doc_ids, np.array(doc_ids, dtype=np.int32))


@settings(max_examples=150)
@given(documents_strategy, st.integers(1, 17))
def test_windows_match_per_token_reference(documents, seq_len):
    stream = pack_documents(documents, TOK)
    tokens, doc_ids = _reference_stream(documents)
    if len(tokens) < seq_len + 1:
        with pytest.raises(ValueError, match=f"{len(tokens)} tokens"):
            PackedWindows(stream, seq_len)
        return
    windows = PackedWindows(stream, seq_len)
    assert len(windows) == (len(tokens) - 1) // seq_len
    for index in range(len(windows)):
        window = windows[index]
        assert set(window) == KEYS
        expected = _reference_window(tokens, doc_ids, index, seq_len)
        for key in KEYS:
            assert window[key].shape == (seq_len,)
            assert window[key].dtype == (np.float32 if key == "loss_mask" else np.int32)
            np.testing.assert_array_equal(window[key], expected[key], err_msg=key)
        assert window["segment_ids"].min() == 1


@given(documents_strategy, st.integers(1, 9))
def test_windows_tile_the_stream(documents, seq_len):
    stream = pack_documents(documents, TOK)
    if len(stream) < seq_len + 1:
        return
    windows = PackedWindows(stream, seq_len)
    n = len(windows)
    inputs = np.concatenate([windows[i]["inputs"] for i in range(n)])
    targets = np.concatenate([windows[i]["targets"] for i in range(n)])
    np.testing.assert_array_equal(inputs, stream.tokens[: n * seq_len])
    np.testing.assert_array_equal(targets, stream.tokens[1 : n * seq_len + 1])
    # What is left over is shorter than one more window.
    assert len(stream) - n * seq_len < seq_len + 1


def test_window_cut_inside_document_restarts_positions():
    stream = pack_documents(["abcdef", "xy"], TOK)  # [B a b c d e f B x y]
    window = PackedWindows(stream, 4)[1]  # inputs [d e f B], targets [e f B x]
    np.testing.assert_array_equal(window["segment_ids"], [1, 1, 1, 2])
    np.testing.assert_array_equal(window["positions"], [0, 1, 2, 0])
    np.testing.assert_array_equal(window["loss_mask"], [1, 1, 0, 1])


def test_window_indexing_and_errors():
    stream = pack_documents(["hello world"], TOK)
    windows = PackedWindows(stream, 3)
    assert len(windows) == 3
    np.testing.assert_array_equal(windows[-1]["inputs"], windows[2]["inputs"])
    with pytest.raises(IndexError):
        windows[3]
    with pytest.raises(ValueError, match="seq_len"):
        PackedWindows(stream, 0)
    with pytest.raises(ValueError, match=r"valid split has 12 tokens.*needs 13"):
        PackedWindows(stream, 12, split="valid")


def test_window_is_a_copy():
    stream = pack_documents(["hello world"], TOK)
    PackedWindows(stream, 4)[0]["inputs"][:] = 0
    assert stream.tokens[0] == BOS_ID


@given(st.integers(2, 500), st.floats(0.001, 0.999))
def test_split_is_contiguous_and_disjoint(n, valid_fraction):
    stream = TokenStream(np.arange(n, dtype=np.int32), np.zeros(n, dtype=np.int32))
    train, valid = split_stream(stream, valid_fraction)
    assert len(valid) == round(valid_fraction * n)
    np.testing.assert_array_equal(np.concatenate([train.tokens, valid.tokens]), stream.tokens)
    np.testing.assert_array_equal(valid.tokens, np.arange(n - len(valid), n))
    assert not set(train.tokens.tolist()) & set(valid.tokens.tolist())


def test_split_rejects_bad_fraction():
    stream = pack_documents(["abc"], TOK)
    for fraction in (0.0, 1.0, -0.5, 2.0):
        with pytest.raises(ValueError, match="valid_fraction"):
            split_stream(stream, fraction)


def test_empty_documents_are_dropped():
    stream = pack_documents(["", "ab", "", "c"], TOK)
    np.testing.assert_array_equal(stream.tokens, [BOS_ID, 101, 102, BOS_ID, 103])
    np.testing.assert_array_equal(stream.doc_ids, [0, 0, 0, 1, 1])
    assert len(pack_documents([], TOK)) == 0
