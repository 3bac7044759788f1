"""Token streams of a corpus split, cached as memory-mapped uint16 arrays.

The training documents (and, with BPE, the tokeniser trained on them) and the held-out documents
are each encoded once into one stream, documents joined by the end-of-document id, and kept under
$ICL_LAB_CACHE/text/<key>/, keyed by the corpus files (names, sizes, modification times), the
split and the tokeniser settings; later runs map the arrays without reading the text again. The
cache records a digest of the tokeniser and both streams, checked whenever it is opened: a damaged
cache is refused (delete it to rebuild), and a run records the digest of the data it trained on.
"""

import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icl_lab.errors import ConfigError, StorageError
from icl_lab.files import cache_root, sha256_of, storage_error
from icl_lab.text.corpus import corpus_files, load_corpus
from icl_lab.text.tokenizers import BPETokenizer, ByteTokenizer, Tokenizer

FORMAT = "text-streams/2"  # bump when encoding changes, so that caches are not reused


@dataclass
class TokenStreams:
    """The tokeniser, the train and test token streams (memory-mapped), and how they were made."""

    tokenizer: Tokenizer
    train: np.ndarray
    test: np.ndarray
    info: dict


def cache_dir() -> Path:
    return cache_root() / "text"


def _key(
    source: str, max_documents: int | None, tokenizer: str, vocab_size: int, test_fraction: float, seed: int
) -> str:
    root, paths = corpus_files(source, max_documents)
    files = [
        (str(p.relative_to(root)) if p != root else p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in paths
    ]
    settings = [
        FORMAT,
        str(root),
        files,
        tokenizer,
        vocab_size if tokenizer == "bpe" else None,
        test_fraction,
        seed,
    ]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:20]


def token_streams(
    source: str,
    tokenizer: str,
    vocab_size: int,
    test_fraction: float,
    seed: int,
    max_documents: int | None = None,
) -> TokenStreams:
    """The cached streams of a corpus split (built, and cached, on first use)."""
    directory = cache_dir() / _key(source, max_documents, tokenizer, vocab_size, test_fraction, seed)
    if not (directory / "info.json").is_file():
        _build(directory, source, tokenizer, vocab_size, test_fraction, seed, max_documents)
    try:
        info = json.loads((directory / "info.json").read_text())
        if _digest(directory) != info["digest"]:
            raise ValueError("its files do not match the digest it recorded")
        loaded: Tokenizer = (
            ByteTokenizer() if tokenizer == "byte" else BPETokenizer.load(directory / "tokenizer.json")
        )
        train, test = (
            np.memmap(directory / f"{split}.u16", dtype=np.uint16, mode="r") for split in ("train", "test")
        )
    except Exception as e:  # the tokenizers library raises plain Exception
        raise StorageError(
            f"the token cache {directory} is damaged ({type(e).__name__}: {e}): delete it to rebuild it"
        ) from None
    return TokenStreams(loaded, train, test, info)


def _digest(directory: Path) -> str:
    """SHA-256 of a cache's tokeniser and token streams: the data a run of them trains on."""
    files = [sha256_of(directory / name) for name in ("tokenizer.json", "train.u16", "test.u16")]
    return hashlib.sha256("".join(files).encode()).hexdigest()


def _build(
    directory: Path,
    source: str,
    tokenizer: str,
    vocab_size: int,
    test_fraction: float,
    seed: int,
    max_documents: int | None,
) -> None:
    """Read, split, (train the BPE,) encode and write the streams into a temporary directory that is
    renamed into place: processes building the same streams at once never see half of one."""
    started = time.perf_counter()
    corpus = load_corpus(source, max_documents)
    train_docs, test_docs = corpus.split(test_fraction, seed)
    texts = [d.text for d in train_docs]
    built: Tokenizer = ByteTokenizer() if tokenizer == "byte" else BPETokenizer.train(texts, vocab_size)
    trained_s = time.perf_counter() - started
    tmp = directory.with_name(f".{directory.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.mkdir(parents=True)
        lengths = {}
        for split, docs in (("train", train_docs), ("test", test_docs)):
            encoded = built.encode_batch([d.text for d in docs])
            end = np.array([built.end_of_document], dtype=np.uint16)
            stream = np.concatenate([part for ids in encoded for part in (ids, end)])
            stream.tofile(tmp / f"{split}.u16")
            lengths[split] = len(stream)
        built.save(tmp / "tokenizer.json")
        info = {
            "source": source,
            "documents": {"train": len(train_docs), "test": len(test_docs)},
            "test_documents": [d.name for d in test_docs],
            "characters": {"train": sum(map(len, texts)), "test": sum(len(d.text) for d in test_docs)},
            "tokens": lengths,
            "vocab_size": built.vocab_size,
            "replaced_bytes": corpus.replaced_bytes,
            "tokenizer_train_s": trained_s,
            "encode_s": time.perf_counter() - started - trained_s,
            "digest": _digest(tmp),
        }
        (tmp / "info.json").write_text(json.dumps(info, indent=1))
        try:
            tmp.rename(directory)
        except OSError:  # another process built the same streams meanwhile
            if not (directory / "info.json").is_file():
                raise
    except OSError as e:
        raise storage_error("write token streams into", directory.parent, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if min(lengths.values()) < 2:
        raise ConfigError(f"task.corpus: {source} encodes to too few tokens")
