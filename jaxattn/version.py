"""The package version, kept in this one place: ``jaxattn.__version__`` and ``setup.py`` (which
reads this file as text, without importing the package) both take it from here."""

__version__ = "0.1.0"
