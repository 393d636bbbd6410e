"""Data: byte tokenizer, corpora (builtin, local text, TFDS), packing, grain pipelines."""

from jaxattn.data.corpora import (
    DEFAULT_CORPUS,
    builtin_corpus,
    check_corpus_spec,
    load_corpus,
    text_files,
    tfds_corpus,
)
from jaxattn.data.packing import PackedWindows, TokenStream, pack_documents, split_stream
from jaxattn.data.pipeline import (
    Batch,
    DataConfig,
    get_iterator_state,
    make_eval_batches,
    make_splits,
    make_train_iterator,
    set_iterator_state,
)
from jaxattn.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    NUM_SPECIAL,
    PAD_ID,
    RESERVED_ID,
    ByteTokenizer,
    Tokenizer,
    get_tokenizer,
)

__all__ = [
    "BOS_ID",
    "Batch",
    "ByteTokenizer",
    "DEFAULT_CORPUS",
    "DataConfig",
    "EOS_ID",
    "NUM_SPECIAL",
    "PAD_ID",
    "PackedWindows",
    "RESERVED_ID",
    "TokenStream",
    "Tokenizer",
    "builtin_corpus",
    "check_corpus_spec",
    "get_iterator_state",
    "get_tokenizer",
    "load_corpus",
    "make_eval_batches",
    "make_splits",
    "make_train_iterator",
    "pack_documents",
    "set_iterator_state",
    "split_stream",
    "text_files",
    "tfds_corpus",
]
