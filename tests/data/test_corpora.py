"""Corpora: builtin KJV, local text files and globs, TFDS, spec strings."""

import importlib.util
import os
import re

import pytest

from jaxattn.data import builtin_corpus, check_corpus_spec, load_corpus, text_files, tfds_corpus

HAS_TFDS = importlib.util.find_spec("tensorflow_datasets") is not None


def test_builtin_kjv():
    books = builtin_corpus("kjv")
    assert len(books) == 66
    assert books[0].startswith("In the beginning God created the heaven and the earth.")
    assert books[-1].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    assert 4.0e6 < sum(map(len, books)) < 4.2e6
    assert all(book and not book.startswith("\n") and not book.endswith("\n") for book in books)
    assert all(book.isascii() for book in books)
    assert load_corpus() == books
    assert load_corpus("builtin:kjv") == books


def test_builtin_unknown_name():
    with pytest.raises(ValueError, match="kjv"):
        builtin_corpus("quran")
    with pytest.raises(ValueError, match="kjv"):
        load_corpus("builtin:nope")


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_text_files_and_globs(tmp_path):
    b = _write(tmp_path / "b.txt", "second")
    a = _write(tmp_path / "a.txt", "first ünïcode")
    _write(tmp_path / "sub" / "c.txt", "third")
    _write(tmp_path / "notes.md", "not text")

    assert text_files(str(b)) == ["second"]
    assert text_files(b) == ["second"]
    assert text_files(str(tmp_path / "*.txt")) == ["first ünïcode", "second"]
    assert text_files(str(tmp_path / "**" / "*.txt")) == ["first ünïcode", "second", "third"]
    # Explicit order is kept; a file named twice is read once.
    assert text_files([b, a, str(tmp_path / "*.txt")]) == ["second", "first ünïcode"]
    assert load_corpus(f"text:{tmp_path}/*.txt") == ["first ünïcode", "second"]


def test_text_files_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _write(tmp_path / "corpus" / "x.txt", "home doc")
    assert text_files("~/corpus/*.txt") == ["home doc"]
    assert text_files(os.path.join("~", "corpus", "x.txt")) == ["home doc"]


def test_text_files_missing(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        text_files(missing)
    with pytest.raises(FileNotFoundError, match=r"nothing-\*\.txt"):
        load_corpus(f"text:{tmp_path}/nothing-*.txt")
    with pytest.raises(IsADirectoryError, match=r"\*\.txt"):
        text_files(tmp_path)


@pytest.mark.parametrize(
    "spec", ["kjv", "", "builtin:", "text:", "tfds:pg19", "tfds:/train", "hf:wikitext/train", None]
)
def test_bad_spec(spec):
    with pytest.raises(ValueError, match="builtin:.*text:.*tfds:"):
        load_corpus(spec)
    with pytest.raises(ValueError):
        check_corpus_spec(spec)


@pytest.mark.skipif(HAS_TFDS, reason="tensorflow_datasets is installed")
def test_tfds_missing_names_the_extra():
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tfds\]"'):
        tfds_corpus("pg19", "train")
    with pytest.raises(ImportError, match=r"\[tfds\]"):
        load_corpus("tfds:pg19/train")


def test_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):
        documents = list(load_corpus("tfds:pg19/train"))
    assert len(documents) == 3
    assert all(isinstance(doc, str) for doc in documents)


def test_tfds_missing_data_dir(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    missing = tmp_path / "no-such-dir"
    with pytest.raises(FileNotFoundError, match="data_dir"):
        tfds_corpus("pg19", "train", data_dir=str(missing))
    # An existing directory without the prepared dataset: no download, clear error.
    with pytest.raises(FileNotFoundError, match=re.escape(f"data_dir={tmp_path}")):
        tfds_corpus("pg19", "train", data_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []
