"""jaxattn: long-context attention variants in JAX/Flax NNX.

``import jaxattn`` is light: it loads nothing but the version. The main entry points are
attributes of the package, each imported from its module on first use:

- ``TransformerLM``, ``TransformerConfig`` (``jaxattn.nn.transformer``): the language model;
- ``get_variant``, ``list_variants``, ``make_options`` (``jaxattn.attention.registry``): the
  registered attention kinds and their options;
- ``train_and_evaluate`` (``jaxattn.training.trainer``): the training loop.
"""

import importlib

from jaxattn.version import __version__

_ENTRY_POINTS = {
    "TransformerConfig": "jaxattn.nn.transformer",
    "TransformerLM": "jaxattn.nn.transformer",
    "get_variant": "jaxattn.attention.registry",
    "list_variants": "jaxattn.attention.registry",
    "make_options": "jaxattn.attention.registry",
    "train_and_evaluate": "jaxattn.training.trainer",
}

__all__ = ["__version__", *sorted(_ENTRY_POINTS)]


def __getattr__(name):
    """Imports an entry point's module on first access (PEP 562)."""
    if name not in _ENTRY_POINTS:
        raise AttributeError(f"module 'jaxattn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_ENTRY_POINTS})
