"""ByteTokenizer: round trips, special ids, byte mask, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxattn.data import BOS_ID, EOS_ID, PAD_ID, RESERVED_ID, ByteTokenizer, get_tokenizer

TOK = ByteTokenizer()


@given(st.text())
def test_round_trip_unicode(text):
    ids = TOK.encode(text)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, np.frombuffer(text.encode("utf-8"), np.uint8) + 4)
    assert TOK.is_byte_token(ids).all()
    assert TOK.decode(ids) == text


@given(st.binary())
def test_decode_arbitrary_bytes(raw):
    ids = np.frombuffer(raw, np.uint8).astype(np.int32) + 4
    assert TOK.decode(ids) == raw.decode("utf-8", errors="replace")


def test_special_ids_and_vocab():
    assert (PAD_ID, BOS_ID, EOS_ID, RESERVED_ID) == (0, 1, 2, 3)
    assert (TOK.pad_id, TOK.bos_id, TOK.eos_id, TOK.reserved_id) == (0, 1, 2, 3)
    assert TOK.vocab_size == 260
    np.testing.assert_array_equal(TOK.encode("A\x00"), [ord("A") + 4, 4])


def test_decode_skips_specials_and_out_of_range():
    body = list(TOK.encode("héllo"))
    ids = [BOS_ID] + body[:2] + [PAD_ID, RESERVED_ID, 260, -1] + body[2:] + [EOS_ID, PAD_ID]
    assert TOK.decode(ids) == "héllo"
    assert TOK.decode(np.array(ids)[None, :]) == "héllo"
    assert TOK.decode([]) == ""


def test_decode_replaces_invalid_utf8():
    cut = TOK.encode("é")[:1]
    assert TOK.decode(cut) == "\ufffd"


def test_is_byte_token_mask():
    ids = np.array([[0, 1, 2, 3], [4, 100, 259, 260]], dtype=np.int32)
    expected = [[False] * 4, [True, True, True, False]]
    np.testing.assert_array_equal(TOK.is_byte_token(ids), expected)
    np.testing.assert_array_equal(TOK.is_byte_token([0, 4]), [False, True])
    on_device = jax.jit(TOK.is_byte_token)(jnp.asarray(ids))
    np.testing.assert_array_equal(on_device, expected)


def test_registry():
    assert isinstance(get_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(ValueError, match="byte"):
        get_tokenizer("gpt5")
