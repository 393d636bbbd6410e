"""Packing documents into one token stream and cutting it into training windows.

Each document becomes [BOS, tokens...]; documents are concatenated into one
stream with a parallel stream of document ids. The last `valid_fraction` of the
stream is the validation split (contiguous, never shuffled into training).
`PackedWindows` cuts a split into windows of seq_len + 1 tokens at stride
seq_len, so consecutive windows share one token and every token of the split
(except a tail shorter than a window) is a target exactly once.
"""

import dataclasses
from collections.abc import Iterable

import numpy as np

from jaxattn.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class TokenStream:
    """Concatenated documents.

    tokens:  [N] int32 token ids; every document starts with BOS.
    doc_ids: [N] int32 index of the document each token belongs to
             (non-decreasing; a split may start in the middle of a document).
    """

    tokens: np.ndarray
    doc_ids: np.ndarray

    def __post_init__(self):
        if self.tokens.shape != self.doc_ids.shape or self.tokens.ndim != 1:
            raise ValueError(
                f"tokens and doc_ids must be equal-length vectors, got shapes "
                f"{self.tokens.shape} and {self.doc_ids.shape}"
            )

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def slice(self, start: int, stop: int) -> "TokenStream":
        """Tokens [start, stop) of the stream (views, no copy)."""
        return TokenStream(self.tokens[start:stop], self.doc_ids[start:stop])


def pack_documents(documents: Iterable[str], tokenizer: Tokenizer, *,
                   align: int = 1) -> TokenStream:
    """Tokenises documents, each prefixed by BOS, into one stream.

    Empty documents are dropped; document ids count only the kept ones. With ``align > 1``
    every document is padded (PAD tokens, in the document) to a multiple of ``align`` tokens,
    so documents start at multiples of ``align`` (landmark attention's blocks); windows built
    with ``pad_id`` give the padding no loss.
    """
    if not isinstance(align, int) or isinstance(align, bool) or align < 1:
        raise ValueError(f"align must be a positive int, got {align!r}")
    pieces, lengths = [], []
    bos = np.array([tokenizer.bos_id], dtype=np.int32)
    for document in documents:
        if not document:
            continue
        ids = np.asarray(tokenizer.encode(document), dtype=np.int32)
        pad = -(1 + ids.shape[0]) % align
        pieces.extend((bos, ids, np.full([pad], tokenizer.pad_id, np.int32)))
        lengths.append(1 + ids.shape[0] + pad)
    if not pieces:
        return TokenStream(np.zeros([0], np.int32), np.zeros([0], np.int32))
    tokens = np.concatenate(pieces)
    doc_ids = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    return TokenStream(tokens, doc_ids)


def split_stream(stream: TokenStream, valid_fraction: float, *,
                 align: int = 1) -> tuple[TokenStream, TokenStream]:
    """(train, valid): the last round(valid_fraction * N) tokens are validation, rounded
    down to a multiple of ``align`` (so aligned documents stay aligned in both parts).

    Both parts are contiguous and disjoint; a document may straddle the cut.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    n = len(stream)
    n_valid = int(round(valid_fraction * n)) // align * align
    return stream.slice(0, n - n_valid), stream.slice(n - n_valid, n)


class PackedWindows:
    """Random-access windows over a token stream (a grain-compatible data source).

    Item i is cut from stream[i * T : i * T + T + 1] (T = seq_len) and is a dict:
      inputs      [T] int32    tokens 0..T-1 of the window
      targets     [T] int32    tokens 1..T (next-token targets)
      segment_ids [T] int32    1, 2, ... per document, renumbered inside the window
      positions   [T] int32    offset of the input token from the start of its
                               document, or from the window start for the document
                               cut by the window start (so every window starts at 0)
      loss_mask   [T] float32  1 where the target is in the input's document (and is not
                               ``pad_id``, when given), else 0
    """

    def __init__(self, stream: TokenStream, seq_len: int, *, split: str = "train",
                 pad_id: int | None = None):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        needed = seq_len + 1
        if len(stream) < needed:
            raise ValueError(
                f"The {split} split has {len(stream)} tokens, but one window of "
                f"seq_len={seq_len} needs {needed}; use a larger corpus, a smaller "
                "seq_len, or a different valid_fraction"
            )
        self._stream = stream
        self._seq_len = seq_len
        self._pad_id = pad_id
        self._len = (len(stream) - 1) // seq_len

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        start = index * self._seq_len
        stop = start + self._seq_len + 1
        tokens = self._stream.tokens[start:stop]
        docs = self._stream.doc_ids[start:stop]

        same_doc = docs[1:] == docs[:-1]
        # new_doc[t]: input t starts a document within the window (t = 0 always does).
        new_doc = np.concatenate([[True], ~same_doc[:-1]])
        segment_ids = np.cumsum(new_doc, dtype=np.int32)
        steps = np.arange(self._seq_len, dtype=np.int32)
        segment_start = np.maximum.accumulate(np.where(new_doc, steps, 0))
        loss_mask = same_doc
        if self._pad_id is not None:
            loss_mask = loss_mask & (tokens[1:] != self._pad_id)
        return {
            "inputs": tokens[:-1].astype(np.int32),
            "targets": tokens[1:].astype(np.int32),
            "segment_ids": segment_ids,
            "positions": steps - segment_start,
            "loss_mask": loss_mask.astype(np.float32),
        }

    def __repr__(self) -> str:
        return f"PackedWindows(num_windows={self._len}, seq_len={self._seq_len})"
