"""Marks the longest notebook runs ``slow`` (deselected by default, see pytest.ini), by name.

quickstart.ipynb and lsg.ipynb stay in the default run: the quickstart is the entry point,
and lsg.ipynb is the only end-to-end training of an LSG model in the test suite.
"""

import pytest

SLOW_NOTEBOOKS = {
    # A passkey training of a landmark LM and retrieval past its length; landmark training and
    # the retrieval decoder are tested by default in tests/nn and tests/inference.
    "landmark.ipynb": "trains a landmark LM on passkey prompts",
    # A MAC training and streaming; tests/training/test_titans_train.py trains MAC by default.
    "titans.ipynb": "trains a Titans MAC LM",
    # A routing LM training; tests/training/test_train.py trains routing by default.
    "routing.ipynb": "trains a routing LM",
}


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection
def pytest_collection_modifyitems(config, items):
    del config
    for item in items:
        if item.path.name in SLOW_NOTEBOOKS and item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
