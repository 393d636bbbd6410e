"""grain input pipelines: shuffled infinite training batches and ordered eval batches.

A batch is a dict of numpy arrays, each [batch, T] (T = seq_len):
  inputs int32, targets int32, segment_ids int32, positions int32, loss_mask float32
(see `PackedWindows`).

Multi-host: every process builds the same global order of windows and takes its
own contiguous block of rows of each global batch, so the global batch is the
concatenation of the per-process batches in process order.
"""

import dataclasses
import functools
import json
import numbers
from collections.abc import Iterator

import grain
import numpy as np

from jaxattn.data.corpora import check_corpus_spec, load_corpus
from jaxattn.data.packing import PackedWindows, pack_documents, split_stream
from jaxattn.data.task_windows import TaskWindows
from jaxattn.data.tokenizer import get_tokenizer

Batch = dict[str, np.ndarray]

# Windows are cut from in-memory arrays, so a couple of threads and a short
# buffer keep the accelerator fed without holding many batches in memory.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to read and how to batch it.

    corpus: spec for `load_corpus` ("builtin:kjv", "text:<glob>", "tfds:<name>/<split>").
    batch_size: global batch size (summed over processes).
    valid_fraction: share of the token stream, taken from its end, held out for eval.
    seed: shuffling seed, in [0, 2**32).
    tfds_data_dir: directory of prepared TFDS datasets ("tfds:" corpora only).
    align: documents are padded to multiples of this many tokens (landmark blocks); the
      padding is in its document and never a target. ``seq_len`` must be a multiple of it.
    """

    corpus: str = "builtin:kjv"
    tokenizer: str = "byte"
    seq_len: int = 256
    batch_size: int = 8
    valid_fraction: float = 0.02
    seed: int = 0
    tfds_data_dir: str | None = None
    align: int = 1

    def __post_init__(self):
        if not isinstance(self.corpus, str):
            raise ValueError(f"corpus must be a spec string, got {self.corpus!r}")
        check_corpus_spec(self.corpus)
        get_tokenizer(self.tokenizer)
        if not _is_int(self.seq_len) or self.seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {self.seq_len!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(
                f"batch_size must be a positive integer, got {self.batch_size!r}"
            )
        if not isinstance(self.valid_fraction, numbers.Real) or not (
            0.0 < self.valid_fraction < 1.0
        ):
            raise ValueError(
                f"valid_fraction must be in (0, 1), got {self.valid_fraction!r}"
            )
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if not _is_int(self.align) or self.align < 1:
            raise ValueError(f"align must be a positive integer, got {self.align!r}")
        if self.seq_len % self.align:
            raise ValueError(f"seq_len={self.seq_len} must be a multiple of align={self.align} "
                             "(documents start at multiples of align)")
        if self.tfds_data_dir is not None and not isinstance(self.tfds_data_dir, str):
            raise ValueError(
                f"tfds_data_dir must be a string or None, got {self.tfds_data_dir!r}"
            )


def _local_batch_size(cfg: DataConfig, process_index: int, process_count: int) -> int:
    if not _is_int(process_count) or process_count < 1:
        raise ValueError(f"process_count must be a positive integer, got {process_count!r}")
    if not _is_int(process_index) or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index must be in [0, {process_count}), got {process_index!r}"
        )
    if cfg.batch_size % process_count:
        raise ValueError(
            f"batch_size={cfg.batch_size} is not divisible by "
            f"process_count={process_count}"
        )
    return cfg.batch_size // process_count


@functools.lru_cache(maxsize=4)
def make_splits(cfg: DataConfig) -> tuple[PackedWindows, PackedWindows]:
    """(train, valid) windows of the configured corpus; both must hold one window. A
    ``task:<name>`` corpus gives ``TaskWindows`` of that synthetic task.

    Cached per config: the trainer asks for the validation split at every evaluation, and
    tokenising and packing the corpus again each time would repeat the same work.
    """
    if cfg.corpus.startswith("task:"):
        task = cfg.corpus.partition(":")[2]
        return (TaskWindows(task, cfg.seq_len, seed=cfg.seed, split="train"),
                TaskWindows(task, cfg.seq_len, seed=cfg.seed, split="valid"))
    tokenizer = get_tokenizer(cfg.tokenizer)
    documents = load_corpus(cfg.corpus, data_dir=cfg.tfds_data_dir)
    stream = pack_documents(documents, tokenizer, align=cfg.align)
    train, valid = split_stream(stream, cfg.valid_fraction, align=cfg.align)
    pad_id = tokenizer.pad_id if cfg.align > 1 else None
    return (
        PackedWindows(train, cfg.seq_len, split="train", pad_id=pad_id),
        PackedWindows(valid, cfg.seq_len, split="valid", pad_id=pad_id),
    )


def make_train_iterator(
    cfg: DataConfig, *, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
    """Infinite iterator of this process's training batches, each [batch_size // process_count, T].

    Windows are shuffled with `cfg.seed` and reshuffled every epoch; batches run
    on across epoch boundaries. The iterator's state (`get_iterator_state`)
    resumes it exactly.
    """
    local_batch = _local_batch_size(cfg, process_index, process_count)
    train, _ = make_splits(cfg)
    dataset = (
        grain.MapDataset.source(train)
        .seed(cfg.seed)
        .shuffle()
        .repeat()
        .batch(local_batch, drop_remainder=True)
    )
    # Local batch k belongs to global batch k // process_count; keep ours.
    dataset = dataset[process_index::process_count]
    return iter(dataset.to_iter_dataset(_READ_OPTIONS))


def _padding_row(example: Batch) -> Batch:
    return {key: np.zeros_like(value) for key, value in example.items()}


def make_eval_batches(
    cfg: DataConfig,
    *,
    max_batches: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Validation batches in stream order, each [batch_size // process_count, T].

    Global batch g holds windows g * batch_size ... (g + 1) * batch_size - 1 of
    the validation split; the last one is filled up with all-zero rows
    (loss_mask 0, segment_ids 0), so every window is seen exactly once and all
    batches have one shape. `max_batches` caps the number of global batches.
    """
    local_batch = _local_batch_size(cfg, process_index, process_count)
    if max_batches is not None and (not _is_int(max_batches) or max_batches < 0):
        raise ValueError(f"max_batches must be a non-negative integer or None, got {max_batches!r}")
    _, valid = make_splits(cfg)
    num_batches = -(-len(valid) // cfg.batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    padding = _padding_row(valid[0])

    def batches():
        for g in range(num_batches):
            first = g * cfg.batch_size + process_index * local_batch
            rows = [
                valid[i] if i < len(valid) else padding
                for i in range(first, first + local_batch)
            ]
            yield {key: np.stack([row[key] for row in rows]) for key in padding}

    return batches()


def get_iterator_state(iterator: grain.DatasetIterator) -> dict:
    """JSON-serialisable position of a training iterator (a fresh copy).

    Restoring it into an iterator built from the same DataConfig, corpus and
    process layout replays exactly the batches that would have followed.
    """
    return json.loads(json.dumps(iterator.get_state()))


def set_iterator_state(iterator: grain.DatasetIterator, state: dict) -> None:
    """Moves `iterator` (built from the same DataConfig) to a saved position."""
    iterator.set_state(json.loads(json.dumps(state)))
