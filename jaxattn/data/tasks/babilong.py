"""A BABILong qa1-style task (booydar/babilong): one supporting fact among KJV text.

bAbI and PG-19 are not available offline, so the bAbI qa1 sample is generated
and KJV sentences stand in for PG-19:
  * 2..10 facts "{actor} {verb} to the {room}." with actors Mary, John, Daniel,
    Sandra, verbs moved / went / travelled / journeyed / went back, and the rooms
    bathroom, bedroom, kitchen, garden, hallway, office;
  * the question "Where is {X}?" asks about the actor of a uniformly chosen fact;
    the answer is X's last location, and the supporting fact (the needle) is
    X's last fact;
  * the facts keep their order and go at sorted random sentence boundaries
    (drawn with replacement, as BABILong does) of a run of KJV sentences that
    starts at a random sentence. KJV sentences that themselves read as a fact are
    left out of the background.

Prompt (BABILong's template without few-shot examples and post-prompt):

    {INSTRUCTION}

    <context>
    {context}
    </context>

    Question: Where is {X}?
    Answer:

The answer continuation is " {room}". The context is padded at its end, like
the NIAH haystacks, with a space and a slice of the repeated filler so the prompt
is exactly `length` tokens with BOS.
"""

import functools
import re

from jaxattn.data.tasks.common import (
    RetrievalExample,
    build_retrieval_example,
    check_int,
    check_seed_length,
    is_int,
    make_rng,
    realised_depth,
)
from jaxattn.data.tasks.haystack import assemble_context, cycle_from, kjv_sentences, take_units

ACTORS = ("Mary", "John", "Daniel", "Sandra")
ROOMS = ("bathroom", "bedroom", "kitchen", "garden", "hallway", "office")
VERBS = ("moved", "went", "travelled", "journeyed", "went back")
DEFAULT_NUM_FACTS = (2, 10)

INSTRUCTION = (
    "I will give you context with the facts about positions of different persons hidden "
    "in some random text and a question. You need to answer the question based only on "
    "the information from the facts. If a person was in different locations, use the "
    "latest location to answer the question."
)

FACT_PATTERN = re.compile(
    r"\b(" + "|".join(ACTORS) + r") (?:went back|moved|went|travelled|journeyed) to the ("
    + "|".join(ROOMS) + r")\."
)


def fact(actor: str, verb: str, room: str) -> str:
    return f"{actor} {verb} to the {room}."


def _head(with_instruction: bool) -> str:
    return (INSTRUCTION + "\n\n" if with_instruction else "") + "<context>\n"


def _tail(actor: str) -> str:
    return f"\n</context>\n\nQuestion: Where is {actor}?\nAnswer:"


@functools.lru_cache(maxsize=None)
def background_sentences() -> tuple[str, ...]:
    """KJV sentences that do not contain a qa1 fact."""
    return tuple(s for s in kjv_sentences() if not FACT_PATTERN.search(s))


def _num_facts_range(num_facts) -> tuple[int, int]:
    if num_facts is None:
        return DEFAULT_NUM_FACTS
    if is_int(num_facts):
        n = check_int("num_facts", num_facts, minimum=1)
        return n, n
    if (
        isinstance(num_facts, (tuple, list)) and len(num_facts) == 2
        and all(is_int(n) for n in num_facts) and 1 <= num_facts[0] <= num_facts[1]
    ):
        return int(num_facts[0]), int(num_facts[1])
    raise ValueError(
        f"num_facts must be None (2..10), an int >= 1 or an inclusive pair (low, high) "
        f"with 1 <= low <= high, got {num_facts!r}"
    )


def babilong_min_length(*, num_facts=None, with_instruction: bool = True) -> int:
    """Smallest `length` (tokens, BOS included) for the most and longest facts."""
    _, most = _num_facts_range(num_facts)
    longest_fact = max(len(fact(a, v, r)) for a in ACTORS for v in VERBS for r in ROOMS)
    longest_tail = max(len(_tail(a)) for a in ACTORS)
    return 1 + len(_head(with_instruction)) + most * longest_fact + (most - 1) + longest_tail


def make_babilong_qa1(
    seed: int,
    length: int,
    *,
    num_facts: int | tuple[int, int] | None = None,
    with_instruction: bool = True,
) -> RetrievalExample:
    """A qa1 ("single supporting fact") prompt of exactly `length` tokens.

    Args:
      seed: non-negative int.
      length: prompt tokens, BOS included; at least `babilong_min_length(...)`
        (about 700 with the defaults; drop the instruction for shorter prompts).
      num_facts: None for 2..10 facts (uniform), an int, or an inclusive range.
      with_instruction: start with BABILong's qa1 instruction.

    Returns:
      A RetrievalExample with task "babilong_qa1", answer the room word,
      needle_span the supporting fact and depth its relative position.
    """
    low, high = _num_facts_range(num_facts)
    seed, length = check_seed_length(
        seed, length, babilong_min_length(num_facts=num_facts, with_instruction=with_instruction),
        f"babilong_qa1 with up to {high} facts",
    )
    rng = make_rng("babilong_qa1", seed, length)
    n = int(rng.integers(low, high, endpoint=True))
    actors = [ACTORS[i] for i in rng.integers(len(ACTORS), size=n)]
    verbs = [VERBS[i] for i in rng.integers(len(VERBS), size=n)]
    rooms = [ROOMS[i] for i in rng.integers(len(ROOMS), size=n)]
    facts = [fact(a, v, r) for a, v, r in zip(actors, verbs, rooms)]
    actor = actors[int(rng.integers(n))]
    support = max(i for i in range(n) if actors[i] == actor)

    head, tail = _head(with_instruction), _tail(actor)
    budget = length - 1 - len(head) - len(tail)
    sentences = background_sentences()
    start = int(rng.integers(len(sentences)))
    facts_chars = sum(len(f) for f in facts) + (n - 1)
    units = take_units(cycle_from(sentences, start), budget, facts_chars, " ")
    boundaries = sorted(int(b) for b in rng.integers(0, len(units), size=n, endpoint=True))
    pieces, indices = assemble_context(units, list(zip(boundaries, facts)), budget, " ")
    index = indices[support]
    before = sum(len(p) for p in pieces[:index])
    after = sum(len(p) for p in pieces[index + 1:])
    others = sum(len(pieces[i]) for i in indices if i != index)
    # Depth among the background: the other facts do not count as haystack.
    others_before = sum(len(pieces[i]) for i in indices if i < index)
    parts = [head + "".join(pieces[:index]), pieces[index], "".join(pieces[index + 1:]) + tail]
    depth = realised_depth(before - others_before, after - (others - others_before))
    return build_retrieval_example("babilong_qa1", parts, 1, rooms[support], depth, length)
