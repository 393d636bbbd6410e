"""Document sources: each returns the documents of a corpus as strings.

Spec strings for `load_corpus`:
  "builtin:kjv"                  text shipped with the package (the default)
  "text:/path/*.txt"             local text files or a glob, one document per file
  "tfds:pg19/train"              a prepared TFDS dataset (needs the [tfds] extra)
  "task:passkey"                 windows of a synthetic task (``task_windows``), not documents

The builtin texts are read by ``builtin_corpora``, a leaf module that the synthetic tasks'
haystacks read too, so this module imports the tasks (to check "task:" specs) without a cycle.
"""

import glob
import os
from collections.abc import Iterable, Iterator, Sequence

from jaxattn.data.builtin_corpora import builtin_corpus, check_builtin_name
from jaxattn.data.task_windows import check_task

__all__ = ["DEFAULT_CORPUS", "builtin_corpus", "check_corpus_spec", "load_corpus", "text_files",
           "tfds_corpus"]

DEFAULT_CORPUS = "builtin:kjv"

# Text field of TFDS datasets whose field is not called "text".
_TFDS_TEXT_KEYS = {"pg19": "book_text"}

_SPEC_FORMS = (
    '"builtin:<name>" (e.g. "builtin:kjv"), '
    '"text:<path or glob>" (e.g. "text:/data/books/*.txt"), '
    '"tfds:<dataset>/<split>" (e.g. "tfds:pg19/train"), '
    '"task:<name>" (e.g. "task:passkey")'
)

_TFDS_INSTALL_HINT = (
    'TFDS corpora need tensorflow-datasets, which is optional: pip install -e ".[tfds]"'
)


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _expand(pattern: str | os.PathLike) -> list[str]:
    path = os.path.expanduser(os.fspath(pattern))
    if _is_glob(path):
        matches = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
        if not matches:
            raise FileNotFoundError(f"No files match the glob {path!r}")
        return matches
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"{path!r} is a directory; pass a glob such as {os.path.join(path, '*.txt')!r}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such text file: {path!r}")
    return [path]


def text_files(pattern_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Documents from local UTF-8 text files, one document per file.

    Accepts one path or glob, or a sequence of them; `~` is expanded and `**`
    recurses. Each glob's matches are sorted; the given order of several
    paths/globs is kept (the validation split is taken from the end), and a file
    named twice is read once. Undecodable bytes become U+FFFD.
    """
    if isinstance(pattern_or_paths, (str, os.PathLike)):
        pattern_or_paths = [pattern_or_paths]
    if not pattern_or_paths:
        raise ValueError("text_files needs at least one path or glob")
    paths = []
    for pattern in pattern_or_paths:
        paths.extend(_expand(pattern))
    documents = []
    for path in dict.fromkeys(paths):
        with open(path, encoding="utf-8", errors="replace") as f:
            documents.append(f.read())
    return documents


def _as_text(value) -> str:
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    raise TypeError(f"Expected a text feature (bytes or str), got {type(value).__name__}")


def _iter_tfds_text(source, text_key: str) -> Iterator[str]:
    for i in range(len(source)):
        record = source[i]
        if text_key not in record:
            raise KeyError(
                f"TFDS records have no field {text_key!r}; fields: {sorted(record)}. "
                "Pass text_key=..."
            )
        yield _as_text(record[text_key])


def tfds_corpus(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    text_key: str = "text",
    download: bool = False,
) -> Iterator[str]:
    """Documents (one per record) of a TFDS dataset, read via `tfds.data_source`.

    Needs the optional `[tfds]` extra. Nothing is downloaded unless
    `download=True`; otherwise the dataset must already be prepared in
    `data_dir` (or TFDS's default directory when None). Records are read lazily.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(_TFDS_INSTALL_HINT) from e

    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
        is_local = "://" not in data_dir
        if is_local and not download and not os.path.isdir(data_dir):
            raise FileNotFoundError(f"TFDS data_dir={data_dir!r} does not exist")
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except Exception as e:
        where = data_dir or "None (TFDS default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
        raise FileNotFoundError(
            f"Could not open TFDS dataset {name!r} split {split!r} with "
            f"data_dir={where} (download={download}). Prepare it there first "
            "(tfds.builder(name, data_dir=...).download_and_prepare()) or pass "
            f"download=True. Cause: {type(e).__name__}: {e}"
        ) from e
    return _iter_tfds_text(source, text_key)


def _parse_spec(spec: str) -> tuple[str, tuple[str, ...]]:
    """"kind:rest" -> (kind, args); raises ValueError naming the valid forms."""
    kind, sep, rest = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not rest or kind not in ("builtin", "text", "tfds", "task"):
        raise ValueError(f"Bad corpus spec {spec!r}; expected one of {_SPEC_FORMS}")
    if kind != "tfds":
        return kind, (rest,)
    name, _, split = rest.rpartition("/")
    if not name or not split:
        raise ValueError(
            f'Bad corpus spec {spec!r}: a tfds spec is "tfds:<dataset>/<split>"; '
            f"expected one of {_SPEC_FORMS}"
        )
    return kind, (name, split)


def check_corpus_spec(spec: str) -> None:
    """Raises ValueError if `spec` is malformed or names an unknown builtin (reads no data)."""
    kind, args = _parse_spec(spec)
    if kind == "builtin":
        check_builtin_name(args[0])
    if kind == "task":
        check_task(args[0])


def load_corpus(
    spec: str = DEFAULT_CORPUS,
    *,
    data_dir: str | None = None,
    text_key: str | None = None,
    download: bool = False,
) -> Iterable[str]:
    """Documents named by a spec string: "builtin:kjv", "text:<glob>", "tfds:<name>/<split>".

    `data_dir`, `text_key` and `download` apply to "tfds:" specs only; the
    default `text_key` is "book_text" for pg19 and "text" otherwise.
    """
    kind, args = _parse_spec(spec)
    if kind == "task":
        raise ValueError(f"corpus {spec!r} is a synthetic task, not documents: its windows come "
                         "from jaxattn.data.task_windows.TaskWindows (make_splits uses it)")
    if kind == "builtin":
        return builtin_corpus(*args)
    if kind == "text":
        return text_files(*args)
    name, split = args
    if text_key is None:
        base_name = name.split("/")[0].split(":")[0]
        text_key = _TFDS_TEXT_KEYS.get(base_name, "text")
    return tfds_corpus(name, split, data_dir=data_dir, text_key=text_key, download=download)
