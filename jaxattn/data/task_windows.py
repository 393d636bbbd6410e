"""Training windows drawn from a synthetic task (``jaxattn.data.tasks``): a grain data source.

``DataConfig(corpus="task:passkey")`` trains on these instead of packed text. Window ``i`` of
a split is the task's example with seed ``2 * i`` (train) or ``2 * i + 1`` (valid), offset by
the config seed, so the splits never share an example and every window is reproducible.
Retrieval tasks (passkey, NIAH, BABILong) fill the window exactly: prompt, answer, EOS, with
the loss on every token (the copy of the key inside the prompt is a training signal too);
sequence tasks (MQAR, selective copying) are windows of ``seq_len`` tokens already.
"""

import numpy as np

from jaxattn.data import tasks

# Windows per split; training cycles through its windows in shuffled epochs like any source.
NUM_WINDOWS = {"train": 1 << 20, "valid": 256}


def check_task(name: str) -> None:
    if name not in tasks.TASKS:
        raise ValueError(f"unknown task {name!r} in corpus spec 'task:{name}'; valid tasks: "
                         f"{', '.join(sorted(tasks.TASKS))}")


def _retrieval_window(task, seed, seq_len):
    """Prompt + answer + EOS filling exactly ``seq_len`` inputs. The answer's length depends
    on the example (a 4- or 5-digit key), so the prompt length is adjusted until they fit."""
    guess = 8
    for _ in range(16):
        example = tasks.make_example(task, seed, seq_len - guess)
        answer = example.answer_ids.shape[0]
        if example.length + answer == seq_len:
            return tasks.training_window(example, seq_len, loss_on_prompt=True)
        guess = answer
        seed += 1 << 30  # the same length again would draw the same answer
    raise ValueError(f"could not fit a {task!r} example into seq_len={seq_len}")


class TaskWindows:
    """Random-access windows of ``task``, each a dict of ``[seq_len]`` arrays in the batch
    format of ``PackedWindows`` (inputs, targets, segment_ids, positions, loss_mask)."""

    def __init__(self, task: str, seq_len: int, *, seed: int, split: str):
        check_task(task)
        if split not in NUM_WINDOWS:
            raise ValueError(f"split must be one of {sorted(NUM_WINDOWS)}, got {split!r}")
        minimum = tasks.min_length(task) + (8 if task in tasks.RETRIEVAL_TASKS else 0)
        if seq_len < minimum:
            raise ValueError(f"seq_len={seq_len} is too short for task {task!r}: it needs at "
                             f"least {minimum} tokens")
        self._task, self._seq_len, self._split = task, seq_len, split
        self._offset = seed * 2 * NUM_WINDOWS["train"] + (split == "valid")

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def __len__(self) -> int:
        return NUM_WINDOWS[self._split]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        seed = self._offset + 2 * index
        if self._task in tasks.RETRIEVAL_TASKS:
            return _retrieval_window(self._task, seed, self._seq_len)
        return tasks.make_example(self._task, seed, self._seq_len)

    def __repr__(self) -> str:
        return f"TaskWindows({self._task!r}, seq_len={self._seq_len}, split={self._split!r})"
