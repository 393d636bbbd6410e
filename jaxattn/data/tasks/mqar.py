"""Multi-query associative recall (Zoology / Based, `zoology/data/multiquery_ar.py`).

Zoology layout of one example of T = `length` tokens (z-ids, vocabulary V):
  * keys: D distinct draws from [0, V/2); values: D distinct draws from [V/2, V);
  * context: k1 v1 k2 v2 ... kD vD (2D tokens);
  * query region (T - 2D tokens, space = (T - 2D) // 2 even slots): key i is
    repeated once at region offset 2 * gap_i, the gaps drawn without replacement
    from range(space) with p(g) proportional to a * (g + 1) ** (a - 1), a = power_a;
  * the label at a repeated key is its value; every other position is unlabelled.

Token ids (so the task fits the byte tokenizer's 260-id model vocabulary):
  z-id z -> token id 4 + z, i.e. keys in [4, 4 + V/2), values in
  [4 + V/2, 4 + V) (V = 256 by default: keys 4..131, values 132..259);
  the blank (Zoology's 0) is PAD_ID = 0. Unlike Zoology, whose key range is
  [1, V/2) because z-id 0 is its blank, all V/2 key ids are usable.

Sequence form: the generator builds the token sequence s of T + 1 tokens and
returns inputs s[:-1] and next-token targets s[1:]. With
`query_values_in_inputs=True` (default) the value also follows its repeated key
in s, so targets are the true next tokens everywhere (teacher forcing: ... k_i
v_i ...); with False the slot after a repeated key stays blank (or random) as in
Zoology, and only the label there differs from the next input. loss_mask is 1
exactly at the D repeated-key positions.

`random_non_queries`: Zoology fills every blank of the inputs with random
tokens (its code default, True); the paper's figure uses blanks (False, our
default). Random fill draws uniformly from all key and value ids (as Zoology
draws from its whole vocabulary, so a noise token may equal a key).
"""

import numpy as np

from jaxattn.data.tasks.common import check_int, check_seed_length, make_rng, sequence_dict
from jaxattn.data.tokenizer import NUM_SPECIAL, PAD_ID

BLANK_ID = PAD_ID


def mqar_min_length(*, num_kv_pairs: int = 8) -> int:
    """Smallest `length` for D pairs: 4 * D (Zoology's assertion)."""
    return 4 * num_kv_pairs


def make_mqar(
    seed: int,
    length: int,
    *,
    num_kv_pairs: int = 8,
    vocab_size: int = 256,
    power_a: float = 0.01,
    random_non_queries: bool = False,
    query_values_in_inputs: bool = True,
) -> dict[str, np.ndarray]:
    """One MQAR sequence of exactly `length` tokens.

    Args:
      seed: non-negative int.
      length: T, the number of input tokens; at least 4 * num_kv_pairs.
      num_kv_pairs: D, the number of key-value pairs (each queried once);
        at most vocab_size // 2.
      vocab_size: V, the task vocabulary (keys and values); even, 4 <= V <= 256,
        mapped to token ids 4 .. 4 + V - 1.
      power_a: a of the gap distribution p(g) ~ a * (g + 1) ** (a - 1); small a
        puts the queries near the context.
      random_non_queries: fill blank inputs with random key/value ids.
      query_values_in_inputs: put each value after its repeated key (see module
        docstring).

    Returns:
      dict of [T] arrays: inputs, targets, segment_ids (1), positions (0..T-1)
      int32; loss_mask float32, 1 at the D repeated-key positions, where the
      target is the key's value.
    """
    vocab_size = check_int("vocab_size", vocab_size, minimum=4, maximum=256)
    if vocab_size % 2:
        raise ValueError(f"vocab_size must be even (half keys, half values), got {vocab_size}")
    num_kv_pairs = check_int("num_kv_pairs", num_kv_pairs, minimum=1, maximum=vocab_size // 2)
    if not 0.0 < float(power_a) <= 1.0:
        raise ValueError(f"power_a must be in (0, 1], got {power_a!r}")
    seed, length = check_seed_length(
        seed, length, mqar_min_length(num_kv_pairs=num_kv_pairs),
        f"MQAR with num_kv_pairs={num_kv_pairs} (4 * num_kv_pairs)",
    )
    rng = make_rng("mqar", seed, length, num_kv_pairs, vocab_size)
    half = vocab_size // 2
    keys = NUM_SPECIAL + rng.choice(half, size=num_kv_pairs, replace=False)
    values = NUM_SPECIAL + half + rng.choice(half, size=num_kv_pairs, replace=False)
    context = 2 * num_kv_pairs
    space = (length - context) // 2
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1.0)
    gaps = rng.choice(space, size=num_kv_pairs, replace=False, p=p / p.sum())

    sequence = np.full([length + 1], BLANK_ID, np.int64)
    sequence[0:context:2] = keys
    sequence[1:context:2] = values
    query_positions = context + 2 * gaps
    sequence[query_positions] = keys
    if query_values_in_inputs:
        sequence[query_positions + 1] = values
    if random_non_queries:
        blank = sequence == BLANK_ID
        noise = NUM_SPECIAL + rng.integers(0, vocab_size, size=length + 1)
        sequence[blank] = noise[blank]

    targets = sequence[1:].copy()
    targets[query_positions] = values
    loss_mask = np.zeros([length], np.float32)
    loss_mask[query_positions] = 1.0
    return sequence_dict(sequence[:-1], targets, loss_mask)
