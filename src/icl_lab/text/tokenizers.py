"""Tokenisers: bytes (256 symbols, nothing to train) or byte-level BPE trained with Hugging Face
`tokenizers` on the training documents only. Both reserve one id for the end of a document, so a
token stream keeps documents apart, and both round-trip any text: decode(encode(text)) == text."""

from pathlib import Path
from typing import Protocol

import numpy as np

END_OF_DOCUMENT = "<|endofdoc|>"


class Tokenizer(Protocol):
    """Text to token ids and back; `vocab_size` counts the end-of-document id."""

    vocab_size: int
    end_of_document: int

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, path: Path) -> None: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; 256 ends a document."""

    vocab_size = 257
    end_of_document = 256

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16) for text in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        path.write_text('{"kind": "byte"}\n')


class BPETokenizer:
    """Byte-level BPE (GPT-2's pre-tokenisation, no added spaces) from Hugging Face tokenizers;
    id 0 ends a document."""

    end_of_document = 0

    def __init__(self, tokenizer: "object") -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: list[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tokenizer = HFTokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[END_OF_DOCUMENT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: Path) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.uint16) for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i != self.end_of_document], skip_special_tokens=False)

    def save(self, path: Path) -> None:
        self.tokenizer.save(str(path))
