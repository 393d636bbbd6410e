"""The top-level package: its version, its entry points without a heavy import, and data
modules that import in any order (no import cycle)."""

import pathlib
import re
import subprocess
import sys

import pytest

import jaxattn

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _fresh_python(code):
    """Runs ``code`` in a new interpreter from the repository root; returns its stdout."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout


def test_version_is_the_one_setup_reads():
    text = (ROOT / "jaxattn" / "version.py").read_text(encoding="utf-8")
    assert re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE).group(1) == "0.1.0"
    assert jaxattn.__version__ == "0.1.0"


def test_import_jaxattn_loads_no_jax():
    out = _fresh_python("import sys, jaxattn; print(jaxattn.__version__, 'jax' in sys.modules)")
    assert out.split() == ["0.1.0", "False"]


def test_entry_points_are_the_modules_objects():
    from jaxattn.attention import registry
    from jaxattn.nn.transformer import TransformerConfig, TransformerLM
    from jaxattn.training.trainer import train_and_evaluate

    assert jaxattn.TransformerLM is TransformerLM
    assert jaxattn.TransformerConfig is TransformerConfig
    assert jaxattn.get_variant is registry.get_variant
    assert jaxattn.list_variants is registry.list_variants
    assert jaxattn.make_options is registry.make_options
    assert jaxattn.train_and_evaluate is train_and_evaluate
    assert set(jaxattn.__all__) <= set(dir(jaxattn))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jaxattn.nope  # pylint: disable=pointless-statement


@pytest.mark.parametrize("first", ["jaxattn.data.tasks", "jaxattn.data.task_windows",
                                   "jaxattn.data.corpora", "jaxattn.data.builtin_corpora"])
def test_data_modules_import_first_without_a_cycle(first):
    out = _fresh_python(f"import {first}; import jaxattn.data; print('ok')")
    assert out.strip() == "ok"
