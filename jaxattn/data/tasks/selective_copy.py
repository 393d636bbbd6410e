"""Selective copying (S4 `copying.py`, `torch_copying_data(L, M, A, variable)`; Mamba).

S4 symbols, alphabet size A (noise and marker included):
  0 noise/blank, 1 .. A - 2 data, A - 1 marker.
Layout of one example of T = `length` tokens with M = `num_data_tokens`:
  * a region of T - M = L + M positions, all noise except M data symbols, drawn
    uniformly from 1 .. A - 2, at M random sorted positions (selective copying,
    `variable=True`) or at the first M positions (plain copying, False);
  * then M markers.
The label at the j-th marker is the j-th data symbol (S4's targets, emitted at
the marker positions).

Token ids: symbol s -> token id 4 + s (the byte tokenizer's id of byte s), so
with the default A = 16 noise is 4, data 5 .. 18, marker 19.

Returned as next-token-style arrays: targets are the next input token (masked
out) except at the M marker positions, where they are the data tokens in order
and loss_mask is 1.
"""

import numpy as np

from jaxattn.data.tasks.common import check_int, check_seed_length, make_rng, sequence_dict
from jaxattn.data.tokenizer import NUM_SPECIAL


def selective_copy_min_length(*, num_data_tokens: int = 16) -> int:
    """Smallest `length`: 2 * M (a region of only data tokens, then the markers)."""
    return 2 * num_data_tokens


def make_selective_copy(
    seed: int,
    length: int,
    *,
    num_data_tokens: int = 16,
    vocab_size: int = 16,
    variable: bool = True,
) -> dict[str, np.ndarray]:
    """One (selective) copying sequence of exactly `length` tokens.

    Args:
      seed: non-negative int.
      length: T; at least 2 * num_data_tokens.
      num_data_tokens: M, the number of tokens to copy.
      vocab_size: A, S4's alphabet size with noise and marker (3 <= A <= 256).
      variable: True for selective copying (random sorted data positions), False
        for plain copying (data first).

    Returns:
      dict of [T] arrays: inputs, targets, segment_ids (1), positions (0..T-1)
      int32; loss_mask float32, 1 at the last M positions (the markers).
    """
    num_data_tokens = check_int("num_data_tokens", num_data_tokens, minimum=1)
    vocab_size = check_int("vocab_size", vocab_size, minimum=3, maximum=256)
    seed, length = check_seed_length(
        seed, length, selective_copy_min_length(num_data_tokens=num_data_tokens),
        f"selective copying of num_data_tokens={num_data_tokens} (2 * num_data_tokens)",
    )
    rng = make_rng("selective_copy", seed, length, num_data_tokens, vocab_size, bool(variable))
    region = length - num_data_tokens
    data = NUM_SPECIAL + rng.integers(1, vocab_size - 1, size=num_data_tokens)
    if variable:
        positions = np.sort(rng.choice(region, size=num_data_tokens, replace=False))
    else:
        positions = np.arange(num_data_tokens)
    inputs = np.full([length], NUM_SPECIAL + 0, np.int64)
    inputs[positions] = data
    inputs[region:] = NUM_SPECIAL + vocab_size - 1
    targets = np.concatenate([inputs[1:], inputs[-1:]])
    targets[region:] = data
    loss_mask = np.zeros([length], np.float32)
    loss_mask[region:] = 1.0
    return sequence_dict(inputs, targets, loss_mask)
