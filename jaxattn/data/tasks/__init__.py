"""Long-context evaluation tasks, generated deterministically from (seed, length).

Lengths are byte-tokenizer tokens and exact. Retrieval tasks (passkey, RULER
single NIAH 1/2/3, BABILong qa1) give a `RetrievalExample` (prompt with BOS,
answer, needle span and depth), turned into a fine-tuning window by
`training_window`; MQAR and selective copying give dicts of [length] arrays in
the `jaxattn.data` batch format. `scoring` holds the original metrics.
"""

from jaxattn.data.tasks.babilong import make_babilong_qa1
from jaxattn.data.tasks.common import FILLER, RetrievalExample, training_window
from jaxattn.data.tasks.mqar import make_mqar
from jaxattn.data.tasks.niah import make_niah_single_1, make_niah_single_2, make_niah_single_3
from jaxattn.data.tasks.passkey import make_passkey
from jaxattn.data.tasks.registry import (
    RETRIEVAL_TASKS,
    SEQUENCE_TASKS,
    TASKS,
    make_batch,
    make_example,
    min_length,
)
from jaxattn.data.tasks.scoring import (
    babilong_correct,
    masked_accuracy,
    passkey_correct,
    retrieval_correct,
    string_match_all,
)
from jaxattn.data.tasks.selective_copy import make_selective_copy

__all__ = [
    "FILLER",
    "RETRIEVAL_TASKS",
    "RetrievalExample",
    "SEQUENCE_TASKS",
    "TASKS",
    "babilong_correct",
    "make_babilong_qa1",
    "make_batch",
    "make_example",
    "make_mqar",
    "make_niah_single_1",
    "make_niah_single_2",
    "make_niah_single_3",
    "make_passkey",
    "make_selective_copy",
    "masked_accuracy",
    "min_length",
    "passkey_correct",
    "retrieval_correct",
    "string_match_all",
    "training_window",
]
