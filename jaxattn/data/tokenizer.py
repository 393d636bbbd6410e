"""Tokenizers: text <-> int32 token ids.

The default is `ByteTokenizer`, which needs no vocabulary files: every UTF-8
byte is one token, shifted past a few special ids.
"""

from collections.abc import Callable
from typing import Protocol

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
# Kept free for a future landmark token.
RESERVED_ID = 3
NUM_SPECIAL = 4


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> np.ndarray:
        """Text -> ids [N] int32, without BOS/EOS."""
        ...

    def decode(self, ids) -> str:
        """Ids [N] -> text, skipping special ids."""
        ...


class ByteTokenizer:
    """Byte-level tokenizer: byte b maps to id b + 4; ids 0..3 are specials.

    ids: PAD=0, BOS=1, EOS=2, RESERVED=3, bytes 4..259; `vocab_size` = 260.
    """

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    reserved_id = RESERVED_ID
    vocab_size = NUM_SPECIAL + 256

    def encode(self, text: str) -> np.ndarray:
        """UTF-8 bytes of `text` as ids: [len(text.encode())] int32, no BOS/EOS."""
        raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return raw.astype(np.int32) + NUM_SPECIAL

    def decode(self, ids) -> str:
        """Ids [N] (any int sequence) -> text; special and out-of-range ids are skipped.

        Invalid UTF-8 (e.g. a sequence cut mid-character) decodes to U+FFFD.
        """
        ids = np.asarray(ids).reshape(-1)
        byte_ids = ids[self.is_byte_token(ids)] - NUM_SPECIAL
        return bytes(byte_ids.astype(np.uint8)).decode("utf-8", errors="replace")

    def is_byte_token(self, ids):
        """Boolean mask, same shape as `ids`: True where the id stands for one byte.

        Works on numpy and jax arrays alike (also inside `jax.jit`), so losses can
        be converted to bits per byte.
        """
        if not hasattr(ids, "dtype"):
            ids = np.asarray(ids)
        return (ids >= NUM_SPECIAL) & (ids < NUM_SPECIAL + 256)


_TOKENIZERS: dict[str, Callable[[], Tokenizer]] = {
    "byte": ByteTokenizer,
}


def get_tokenizer(name: str) -> Tokenizer:
    """Returns a new tokenizer registered under `name` (valid: "byte")."""
    try:
        factory = _TOKENIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"Unknown tokenizer {name!r}; valid names: {sorted(_TOKENIZERS)}"
        ) from None
    return factory()
