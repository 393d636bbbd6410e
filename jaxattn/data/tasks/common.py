"""Shared pieces of the task generators: the example type, seeding, checks, windows.

Every generator is a pure function of (seed, length, options): it draws from its
own `np.random.default_rng` seeded with (task salt, seed, length), never from
global random state, and reads nothing but the package's builtin corpus.
Lengths are in tokens of the byte tokenizer (one token per UTF-8 byte; every
text used here is ASCII, so one token per character).
"""

import dataclasses
import numbers
import zlib

import numpy as np

from jaxattn.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer

TOKENIZER = ByteTokenizer()

# The landmark paper's filler; RULER's "noise" haystack sentence is the same text.
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

# Keys of every sequence dict the generators return (the `jaxattn.data` batch format).
WINDOW_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


@dataclasses.dataclass(frozen=True, eq=False)
class RetrievalExample:
    """One prompt of a retrieval-style task (passkey, NIAH, BABILong).

    Attributes:
      task: registry name of the task, e.g. "passkey".
      prompt: the prompt text (ASCII), without BOS.
      prompt_ids: [length] int32, BOS followed by the prompt's byte tokens; exactly
        the requested length.
      answer: the gold string used for scoring (passkey digits, the 7-digit number,
        the uuid, the room word).
      answer_ids: [A] int32, the continuation to generate after the prompt: a space
        followed by `answer` (every prompt ends with a word such as "is" or
        "Answer:"); no EOS.
      depth: relative position of the needle in the haystack, in [0, 1]: haystack
        characters before the needle / all haystack characters (0.0 when the
        haystack is empty).
      needle_span: (start, stop) token indices of the needle in `prompt_ids`
        (the passkey info line, the NIAH needle sentence, the supporting fact).
    """

    task: str
    prompt: str
    prompt_ids: np.ndarray
    answer: str
    answer_ids: np.ndarray
    depth: float
    needle_span: tuple[int, int]

    @property
    def length(self) -> int:
        """Number of prompt tokens (BOS included)."""
        return int(self.prompt_ids.shape[0])

    @property
    def needle_text(self) -> str:
        """The needle, decoded from `prompt_ids[needle_span[0]:needle_span[1]]`."""
        start, stop = self.needle_span
        return TOKENIZER.decode(self.prompt_ids[start:stop])


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """Returns `value` as int; ValueError naming `name` unless an int in [minimum, maximum]."""
    if not is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_seed_length(seed, length, min_length: int, what: str) -> tuple[int, int]:
    """Validates (seed, length); ValueError naming the minimum length for `what`."""
    seed = check_int("seed", seed, minimum=0)
    length = check_int("length", length)
    if length < min_length:
        raise ValueError(
            f"length={length} tokens is too short for {what}; it needs at least "
            f"{min_length} tokens"
        )
    return seed, length


def check_depth(depth) -> float | None:
    """None, or `depth` as a float in [0, 1]; ValueError otherwise."""
    if depth is None:
        return None
    if isinstance(depth, bool) or not isinstance(depth, numbers.Real) or not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be a number in [0, 1] or None, got {depth!r}")
    return float(depth)


def make_rng(task: str, seed: int, length: int, *extra: int) -> np.random.Generator:
    """The generator of one example: seeded with (crc32(task), seed, length, *extra).

    crc32 (not `hash`) keeps the salt identical across processes; the salt makes
    the tasks draw independent numbers for the same (seed, length).
    """
    entropy = [zlib.crc32(task.encode("utf-8")), int(seed), int(length), *map(int, extra)]
    return np.random.default_rng(entropy)


def repeated_filler(num_chars: int) -> str:
    """The first `num_chars` characters of " ".join([FILLER] * many)."""
    if num_chars <= 0:
        return ""
    reps = num_chars // (len(FILLER) + 1) + 1
    return " ".join([FILLER] * reps)[:num_chars]


def realised_depth(before: int, after: int) -> float:
    """before / (before + after), 0.0 for an empty haystack."""
    total = before + after
    return before / total if total else 0.0


def build_retrieval_example(
    task: str,
    parts: list[str],
    needle_index: int,
    answer: str,
    depth: float,
    length: int,
) -> RetrievalExample:
    """Joins `parts` into the prompt and tokenises it.

    Args:
      task: task name stored in the example.
      parts: prompt pieces, concatenated as they are (separators included).
      needle_index: which piece is the needle.
      answer: the gold answer string.
      depth: realised depth of the needle.
      length: the requested number of tokens; checked against the result.
    """
    prompt = "".join(parts)
    start_char = sum(len(part) for part in parts[:needle_index])
    start = 1 + len(prompt[:start_char].encode("utf-8"))
    stop = start + len(parts[needle_index].encode("utf-8"))
    prompt_ids = np.concatenate(
        [np.array([BOS_ID], np.int32), TOKENIZER.encode(prompt)]
    ).astype(np.int32)
    if prompt_ids.shape[0] != length:  # An internal invariant, not a user error.
        raise RuntimeError(
            f"{task}: built {prompt_ids.shape[0]} tokens instead of {length}"
        )
    answer_ids = TOKENIZER.encode(" " + answer).astype(np.int32)
    prompt_ids.setflags(write=False)
    answer_ids.setflags(write=False)
    return RetrievalExample(
        task=task,
        prompt=prompt,
        prompt_ids=prompt_ids,
        answer=answer,
        answer_ids=answer_ids,
        depth=float(depth),
        needle_span=(int(start), int(stop)),
    )


def sequence_dict(inputs: np.ndarray, targets: np.ndarray, loss_mask: np.ndarray) -> dict:
    """The batch-format dict of one unpadded sequence: segment_ids 1, positions 0..T-1."""
    length = inputs.shape[0]
    return {
        "inputs": inputs.astype(np.int32),
        "targets": targets.astype(np.int32),
        "loss_mask": loss_mask.astype(np.float32),
        "segment_ids": np.ones([length], np.int32),
        "positions": np.arange(length, dtype=np.int32),
    }


def training_window(
    example: RetrievalExample,
    seq_len: int | None = None,
    *,
    loss_on_prompt: bool = False,
) -> dict[str, np.ndarray]:
    """A fine-tuning window: the prompt, then the answer, then EOS.

    The sequence is s = prompt_ids + answer_ids + [EOS] (N tokens); the window
    holds inputs s[:-1] and next-token targets s[1:] (N - 1 positions), padded at
    the end up to `seq_len`.

    Args:
      example: a retrieval example.
      seq_len: window length T; None means exactly N - 1. Must be >= N - 1.
      loss_on_prompt: when True the loss covers every real target (prompt too);
        by default only the answer tokens and the EOS (len(answer_ids) + 1
        positions, starting at index len(prompt_ids) - 1).

    Returns:
      dict of [T] arrays: inputs, targets, segment_ids, positions (int32) and
      loss_mask (float32). Padding positions have inputs/targets PAD, loss_mask 0,
      segment_ids 0 and positions 0 (as the eval pipeline's padding rows).
    """
    sequence = np.concatenate(
        [example.prompt_ids, example.answer_ids, np.array([EOS_ID], np.int32)]
    ).astype(np.int32)
    natural = sequence.shape[0] - 1
    if seq_len is None:
        seq_len = natural
    seq_len = check_int("seq_len", seq_len, minimum=1)
    if seq_len < natural:
        raise ValueError(
            f"seq_len={seq_len} is shorter than the prompt + answer + EOS window of "
            f"{natural} tokens ({example.length} prompt tokens, "
            f"{example.answer_ids.shape[0]} answer tokens); pass seq_len >= {natural} or None"
        )
    inputs = np.full([seq_len], PAD_ID, np.int32)
    targets = np.full([seq_len], PAD_ID, np.int32)
    loss_mask = np.zeros([seq_len], np.float32)
    segment_ids = np.zeros([seq_len], np.int32)
    positions = np.zeros([seq_len], np.int32)
    inputs[:natural] = sequence[:-1]
    targets[:natural] = sequence[1:]
    segment_ids[:natural] = 1
    positions[:natural] = np.arange(natural, dtype=np.int32)
    first_answer = 0 if loss_on_prompt else example.length - 1
    loss_mask[first_answer:natural] = 1.0
    return {
        "inputs": inputs,
        "targets": targets,
        "loss_mask": loss_mask,
        "segment_ids": segment_ids,
        "positions": positions,
    }
