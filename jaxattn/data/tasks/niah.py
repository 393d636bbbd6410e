"""RULER single needle-in-a-haystack (NVIDIA/RULER, scripts/data/synthetic), in tokens.

Prompt (RULER's single-needle template):

    A special magic {kind} is hidden within the following text. Make sure to
    memorize it. I will quiz you about the {kind} afterwards.
    {context}
    What is the special magic {kind} for {key} mentioned in the provided text?
    The special magic {kind} for {key} mentioned in the provided text is

(three lines joined by "\n"; {kind} is "number" or "uuid"), with the needle
"One of the special magic {kind}s for {key} is: {value}." inside the context.

Variants:
  niah_single_1: RULER's "noise" haystack, the filler sentence repeated and
    joined with "\n"; the needle is one more line at a uniformly random line
    boundary (or the one nearest `depth`); value a 7-digit number.
  niah_single_2: KJV sentences (regex split of the builtin corpus, from a random
    sentence on, wrapping around) joined with " " stand in for the Paul Graham
    essays; the needle goes at the sentence boundary nearest to depth, drawn
    from round(linspace(0, 100, 40)) / 100 unless given; 7-digit number.
  niah_single_3: as niah_single_2 with a uuid value
    (uuid.UUID(int=<128 random bits>, version=4)).

Keys: RULER draws "adjective-noun" keys from the sorted cross product of
wonderwords' adjective and noun lists, a package that is not installed here; we
use the ~50 x ~50 embedded lists `ADJECTIVES` and `NOUNS` below instead (2,500
keys).

Exact length: RULER sizes the haystack by binary search; here whole units
(lines or sentences) are taken while they fit, and the rest of the context is
padded at the end of the haystack with the separator and a character slice of
the repeated filler, so the prompt is exactly `length` tokens with BOS.
"""

import uuid

import numpy as np

from jaxattn.data.tasks.common import (
    RetrievalExample,
    build_retrieval_example,
    check_depth,
    check_seed_length,
    make_rng,
    realised_depth,
)
from jaxattn.data.tasks.haystack import (
    assemble_context,
    cycle_from,
    kjv_sentences,
    nearest_boundary,
    noise_units,
    take_units,
)

ADJECTIVES = tuple(sorted((
    "ancient", "bitter", "bold", "brave", "bright", "broad", "calm", "careful", "cheap",
    "clever", "cold", "curious", "damp", "dark", "deep", "distant", "dry", "eager",
    "early", "empty", "fancy", "fast", "fierce", "fresh", "gentle", "golden", "grand",
    "green", "happy", "heavy", "hollow", "huge", "humble", "icy", "jolly", "kind",
    "large", "lazy", "little", "loud", "lucky", "mighty", "narrow", "noisy", "odd",
    "old", "polite", "proud", "quiet", "rapid", "rough", "shiny", "silent", "tiny",
)))
NOUNS = tuple(sorted((
    "anchor", "apple", "arrow", "badge", "basket", "bell", "blanket", "bottle", "bridge",
    "bucket", "button", "candle", "carpet", "castle", "chair", "cloud", "compass",
    "cookie", "crystal", "desert", "dragon", "drum", "engine", "falcon", "feather",
    "forest", "garden", "glove", "hammer", "harbor", "helmet", "island", "jacket",
    "kettle", "ladder", "lantern", "lemon", "meadow", "mirror", "needle", "orchard",
    "pencil", "pillow", "planet", "river", "saddle", "signal", "teapot", "tunnel", "violin",
)))
KEYS = tuple(f"{adjective}-{noun}" for adjective in ADJECTIVES for noun in NOUNS)

# round(linspace(0, 100, 40)) of RULER, as fractions.
DEPTHS = tuple(float(d) / 100 for d in np.round(np.linspace(0, 100, 40)).astype(int))

_VARIANTS = {
    # name: (haystack, value kind)
    "niah_single_1": ("noise", "number"),
    "niah_single_2": ("kjv", "number"),
    "niah_single_3": ("kjv", "uuid"),
}
_VALUE_CHARS = {"number": 7, "uuid": 36}


def header(kind: str) -> str:
    return (
        f"A special magic {kind} is hidden within the following text. Make sure to "
        f"memorize it. I will quiz you about the {kind} afterwards."
    )


def question(kind: str, key: str) -> str:
    return (
        f"What is the special magic {kind} for {key} mentioned in the provided text? "
        f"The special magic {kind} for {key} mentioned in the provided text is"
    )


def needle(kind: str, key: str, value: str) -> str:
    return f"One of the special magic {kind}s for {key} is: {value}."


def _fixed_chars(kind: str, key: str, value_chars: int) -> int:
    """Prompt characters outside the haystack: header, needle, question, 2 newlines."""
    return (
        len(header(kind)) + len(question(kind, key)) + len(needle(kind, key, "0" * value_chars)) + 2
    )


def niah_min_length(variant: str) -> int:
    """Smallest `length` (tokens, BOS included) of a variant, for the longest key."""
    _, kind = _VARIANTS[variant]
    longest_key = max(KEYS, key=len)
    return 1 + _fixed_chars(kind, longest_key, _VALUE_CHARS[kind])


def _make(variant: str, seed, length, depth) -> RetrievalExample:
    haystack, kind = _VARIANTS[variant]
    seed, length = check_seed_length(
        seed, length, niah_min_length(variant), f"{variant} (header + needle + question)"
    )
    depth = check_depth(depth)
    rng = make_rng(variant, seed, length)
    key = KEYS[int(rng.integers(len(KEYS)))]
    if kind == "number":
        value = str(int(rng.integers(10**6, 10**7)))
    else:
        value = str(uuid.UUID(int=int.from_bytes(rng.bytes(16), "big"), version=4))
    the_needle = needle(kind, key, value)
    # The context: haystack and needle.
    budget = length - 1 - _fixed_chars(kind, key, len(value)) + len(the_needle)
    if haystack == "noise":
        sep = "\n"
        units = take_units(noise_units(), budget, len(the_needle), sep)
    else:
        sep = " "
        sentences = kjv_sentences()
        start = int(rng.integers(len(sentences)))
        units = take_units(cycle_from(sentences, start), budget, len(the_needle), sep)
    haystack_chars = budget - len(the_needle)
    if depth is None and haystack == "noise":
        boundary = int(rng.integers(0, len(units), endpoint=True))
    else:
        if depth is None:
            depth = DEPTHS[int(rng.integers(len(DEPTHS)))]
        boundary = nearest_boundary(units, depth, haystack_chars, sep)
    pieces, (index,) = assemble_context(units, [(boundary, the_needle)], budget, sep)
    before = sum(len(p) for p in pieces[:index])
    parts = [header(kind) + "\n" + "".join(pieces[:index]), the_needle,
             "".join(pieces[index + 1:]) + "\n" + question(kind, key)]
    # The separators next to the needle count as haystack, so before + after = budget - needle.
    return build_retrieval_example(
        variant, parts, 1, value, realised_depth(before, haystack_chars - before), length
    )


def make_niah_single_1(seed: int, length: int, *, depth: float | None = None) -> RetrievalExample:
    """niah_single_1: noise-line haystack, 7-digit number.

    Args:
      seed: non-negative int; with `length` it fixes key, value and, when `depth`
        is None, the needle line (the position is drawn last, so a depth grid at
        one seed keeps key and value).
      length: prompt tokens, BOS included; at least `niah_min_length("niah_single_1")`.
      depth: None for a uniformly random line boundary, else in [0, 1]: the line
        boundary nearest to that fraction of the haystack.

    Returns:
      A RetrievalExample; answer is the 7-digit number, needle_span the needle.
    """
    return _make("niah_single_1", seed, length, depth)


def make_niah_single_2(seed: int, length: int, *, depth: float | None = None) -> RetrievalExample:
    """niah_single_2: KJV-sentence haystack, 7-digit number.

    Args:
      seed: non-negative int; fixes key, value, the first KJV sentence and, when
        `depth` is None, the depth (drawn last from RULER's 40 depths).
      length: prompt tokens, BOS included; at least `niah_min_length("niah_single_2")`.
      depth: None for RULER's random grid depth, else in [0, 1]; the needle goes
        at the sentence boundary nearest to that fraction of the haystack.
    """
    return _make("niah_single_2", seed, length, depth)


def make_niah_single_3(seed: int, length: int, *, depth: float | None = None) -> RetrievalExample:
    """niah_single_3: KJV-sentence haystack, uuid value (else as `make_niah_single_2`)."""
    return _make("niah_single_3", seed, length, depth)

