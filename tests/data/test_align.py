"""Documents aligned to landmark blocks: padded packing, aligned splits, PAD-free targets and the
pipeline's ``DataConfig.align``."""

import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from configs import landmark as landmark_config
from configs import lm_tiny
from jaxattn.attention.landmark import check_segment_alignment
from jaxattn.data import ByteTokenizer, DataConfig, make_splits, pack_documents
from jaxattn.data.packing import PackedWindows, TokenStream, split_stream
from jaxattn.training import builders

TOKENIZER = ByteTokenizer()
documents = st.lists(st.text(alphabet="abcdé xyz", max_size=12), max_size=8)


def naive_pack(docs, align):
    """Each kept document: BOS, its bytes, PAD up to the next multiple of ``align``."""
    tokens, doc_ids = [], []
    for doc in (d for d in docs if d):
        ids = [TOKENIZER.bos_id] + [b + 4 for b in doc.encode("utf-8")]
        while len(ids) % align:
            ids.append(TOKENIZER.pad_id)
        doc_ids += [len(set(doc_ids))] * len(ids)
        tokens += ids
    return np.array(tokens, np.int32), np.array(doc_ids, np.int32)


@settings(max_examples=40, deadline=None)
@given(docs=documents, align=st.integers(1, 7))
def test_pack_documents_pads_each_document_to_align(docs, align):
    stream = pack_documents(docs, TOKENIZER, align=align)
    tokens, doc_ids = naive_pack(docs, align)
    np.testing.assert_array_equal(stream.tokens, tokens)
    np.testing.assert_array_equal(stream.doc_ids, doc_ids)
    assert stream.tokens.dtype == np.int32 and stream.doc_ids.dtype == np.int32
    # Documents start at multiples of align, with BOS; padding stays inside its document.
    starts = np.flatnonzero(np.diff(stream.doc_ids, prepend=-1))
    assert np.all(starts % align == 0)
    assert np.all(stream.tokens[starts] == TOKENIZER.bos_id)
    assert len(stream) % align == 0
    counts = np.bincount(stream.doc_ids) if len(stream) else np.zeros(0, int)
    kept = [d for d in docs if d]
    for doc, count in zip(kept, counts):
        real = 1 + len(doc.encode("utf-8"))
        assert count == -(-real // align) * align and count - real < align
    if align == 1:
        default = pack_documents(docs, TOKENIZER)
        np.testing.assert_array_equal(stream.tokens, default.tokens)
        assert not np.any(stream.tokens == TOKENIZER.pad_id)


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, None])
def test_pack_documents_rejects_bad_align(bad):
    with pytest.raises(ValueError, match="align must be a positive int"):
        pack_documents(["abc"], TOKENIZER, align=bad)


@settings(max_examples=40, deadline=None)
@given(blocks=st.integers(2, 60), align=st.integers(1, 6),
       fraction=st.floats(0.01, 0.99))
def test_split_stream_keeps_both_parts_aligned(blocks, align, fraction):
    n = blocks * align
    stream = TokenStream(np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32) // align)
    train, valid = split_stream(stream, fraction, align=align)
    expected_valid = int(round(fraction * n)) // align * align
    assert len(valid) == expected_valid
    assert len(train) + len(valid) == n
    assert len(train) % align == 0 and len(valid) % align == 0
    np.testing.assert_array_equal(np.concatenate([train.tokens, valid.tokens]), stream.tokens)
    # No more than align - 1 tokens short of the unaligned split.
    _, plain = split_stream(stream, fraction)
    assert 0 <= len(plain) - len(valid) < align


def test_packed_windows_pad_id_masks_pad_targets_only():
    docs = ["ab", "abcde", "x", "hello world", "é"]
    stream = pack_documents(docs, TOKENIZER, align=4)
    assert np.any(stream.tokens == TOKENIZER.pad_id)
    plain = PackedWindows(stream, 8)
    padded = PackedWindows(stream, 8, pad_id=TOKENIZER.pad_id)
    assert len(plain) == len(padded) > 1
    masked_any = False
    for i in range(len(plain)):
        a, b = plain[i], padded[i]
        for key in ("inputs", "targets", "segment_ids", "positions"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        expected = a["loss_mask"] * (a["targets"] != TOKENIZER.pad_id)
        np.testing.assert_array_equal(b["loss_mask"], expected)
        assert b["loss_mask"].dtype == np.float32
        masked_any |= bool(np.any(a["loss_mask"] != b["loss_mask"]))
    assert masked_any


@pytest.mark.parametrize("kwargs, match", [
    (dict(seq_len=30, align=4), r"seq_len=30 must be a multiple of align=4"),
    (dict(align=0), r"align must be a positive integer"),
    (dict(align=2.0), r"align must be a positive integer"),
    (dict(align=True), r"align must be a positive integer"),
])
def test_data_config_align_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kwargs)


def test_data_config_align_default_and_valid():
    assert DataConfig().align == 1
    assert DataConfig(seq_len=32, align=4).align == 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Documents of many lengths, so that unaligned packing misaligns windows."""
    root = tmp_path_factory.mktemp("align_corpus")
    rng = random.Random(1)
    for i in range(40):
        text = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(1, 60)))
        (root / f"doc{i:02d}.txt").write_text(text + str(i), encoding="utf-8")
    return f"text:{root}/*.txt"


@pytest.mark.parametrize("align", [2, 4, 8])
def test_make_splits_with_align_gives_aligned_windows(corpus, align):
    cfg = DataConfig(corpus=corpus, seq_len=16, batch_size=2, valid_fraction=0.2, align=align)
    train, valid = make_splits(cfg)
    for split in (train, valid):
        assert len(split) > 2
        for i in range(len(split)):
            window = split[i]
            check_segment_alignment(window["segment_ids"][None], align)
            # Every document (or the one cut by the window start) starts at position 0 on a
            # block boundary.
            starts = np.flatnonzero(np.diff(window["segment_ids"], prepend=0))
            assert np.all(starts % align == 0) and np.all(window["positions"][starts] == 0)
            assert np.all(window["positions"] % align == np.arange(16) % align)
            # PAD is never a target that counts.
            assert not np.any(window["loss_mask"][window["targets"] == TOKENIZER.pad_id])
    # The same corpus unaligned does misalign some window: the check above is not vacuous.
    plain, _ = make_splits(DataConfig(corpus=corpus, seq_len=16, batch_size=2,
                                      valid_fraction=0.2))
    with pytest.raises(ValueError, match="misaligned"):
        for i in range(len(plain)):
            check_segment_alignment(plain[i]["segment_ids"][None], align)


def test_builders_data_config_aligns_landmark_models():
    config = landmark_config.get_config("smoke")
    mem_freq = config.attention.mem_freq
    assert mem_freq == 4
    assert builders.data_config(config).align == mem_freq
    config = landmark_config.get_config("smoke,mem_freq=8")
    assert builders.data_config(config).align == 8
    assert builders.data_config(lm_tiny.get_config("smoke")).align == 1
