"""Corpora shipped inside the package (``jaxattn/data/corpora/*.xz``): no files, no network.

A leaf module: the corpus loaders (``corpora``) and the synthetic tasks' haystacks
(``tasks.haystack``) both read from it without importing each other.
"""

import functools
import importlib.resources
import lzma

# Builtin corpus name -> compressed file in jaxattn/data/corpora/, documents
# separated by one blank line.
_BUILTIN_FILES = {"kjv": "kjv.txt.xz"}


def check_builtin_name(name: str) -> None:
    """Raises ValueError listing the valid names unless ``name`` is a builtin corpus."""
    if name not in _BUILTIN_FILES:
        raise ValueError(
            f"Unknown builtin corpus {name!r}; valid names: {sorted(_BUILTIN_FILES)}"
        )


@functools.lru_cache(maxsize=None)
def _builtin_text(name: str) -> str:
    package = importlib.resources.files("jaxattn.data")
    resource = package.joinpath("corpora").joinpath(_BUILTIN_FILES[name])
    return lzma.decompress(resource.read_bytes()).decode("utf-8")


def builtin_corpus(name: str = "kjv") -> list[str]:
    """Documents of a corpus shipped inside the package (no files, no network).

    "kjv": the King James Bible, one document per book (66), verses one per line.
    """
    check_builtin_name(name)
    books = _builtin_text(name).split("\n\n")
    return [book.strip("\n") for book in books if book.strip()]
