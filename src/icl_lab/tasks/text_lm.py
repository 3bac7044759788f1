"""Language modelling on real text (the language-model half of Olsson et al.; Hernandez et al.).

Training batches are random windows of seq_len + 1 tokens from the training documents' token
stream (text/streams.py), with next-token loss at every position. Evaluation splits:

- `heldout`: windows of the held-out documents' stream (documents chosen by `split_seed`, never
  trained on);
- `train`: windows of the training stream;
- `repeated`: Olsson's diagnostic, sequences of random tokens (the common ones that make up 95%
  of the training text, see `common_tokens`) whose first half repeats (meta period and
  repeat_end), so prefix matching, copying, induction and ICL scores apply as on the `induction`
  task. Text windows carry period 0: the repeat-based scores are undefined (NaN) on them.

The corpus split and the tokeniser depend on `split_seed`, not on the run's seed, so that every
seed of a sweep sees the same data set.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from icl_lab.config import TaskConfig
from icl_lab.errors import ConfigError
from icl_lab.files import atomic_write, atomic_write_text
from icl_lab.models.base import ModelIO
from icl_lab.seeding import generator
from icl_lab.tasks.base import TASKS, Batch, Sampler, Task
from icl_lab.tasks.induction import InductionTask, repeated_tokens
from icl_lab.text.corpus import corpus_files
from icl_lab.text.streams import token_streams

if TYPE_CHECKING:
    from icl_lab.store.run import Run


DIAGNOSTIC_COVERAGE = 0.95


def common_tokens(stream: np.ndarray, exclude: int, coverage: float = DIAGNOSTIC_COVERAGE) -> np.ndarray:
    """The most frequent tokens of a stream that together make up `coverage` of it (int64 ids,
    sorted), leaving out `exclude`. Olsson's diagnostics draw their random tokens from these: a
    small model has barely trained the embeddings of rare tokens (a byte model trained on Python
    sees 189 byte values, 45 of which make up 95% of the text), and sequences of them hide the
    induction heads that repeated common tokens and repeated text show."""
    counts = np.bincount(stream)  # one pass
    counts[exclude] = 0
    order = np.argsort(-counts, kind="stable")
    keep = int(np.searchsorted(np.cumsum(counts[order]), coverage * counts.sum())) + 1
    return np.sort(order[:keep]).astype(np.int64)


class TextLMConfig(TaskConfig):
    """Next-token prediction on a corpus of documents."""

    name: Literal["text_lm"] = "text_lm"
    corpus: str = Field("shakespeare", description="shakespeare, python_stdlib, or a local file or directory")
    max_documents: int | None = Field(None, ge=2, description="use only the first documents (name order)")
    tokenizer: Literal["byte", "bpe"] = "byte"
    vocab_size: int = Field(2048, ge=300, le=65535, description="BPE vocabulary (byte: always 257)")
    seq_len: int = Field(128, ge=4, description="tokens per training window")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="share of documents held out")
    split_seed: int = Field(0, ge=0, description="chooses the held-out documents (not the run seed)")

    @model_validator(mode="after")
    def _corpus_exists(self) -> "TextLMConfig":
        _, files = corpus_files(self.corpus, self.max_documents)  # cheap: lists, reads nothing
        if len(files) < 2:
            raise ValueError(f"corpus {self.corpus} has {len(files)} document(s): too few to hold any out")
        if self.tokenizer == "byte" and self.vocab_size != type(self).model_fields["vocab_size"].default:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) sizes a BPE vocabulary; the byte tokenizer's is always 257"
            )
        return self

    @property
    def vocabulary(self) -> int:
        return 257 if self.tokenizer == "byte" else self.vocab_size


@TASKS.register("text_lm")
class TextLMTask(Task):
    """Next-token prediction on windows of real text, with Olsson's repeated-token diagnostics."""

    Config = TextLMConfig
    config: TextLMConfig
    meta_keys = ("period", "repeat_end")
    default_metrics = InductionTask.default_metrics
    key_metric = ("repeated", "prefix_matching", "max")
    progress_measures = (
        ("repeated", "prefix_matching", -1),
        ("repeated", "previous_token_score", 0),
        ("heldout", "icl_score", None),
        ("repeated", "copy_loss_drop", None),
    )

    def __init__(self, config: TextLMConfig, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__(config, seed, device)
        c = config
        self.streams = token_streams(
            c.corpus, c.tokenizer, c.vocab_size, c.test_fraction, c.split_seed, c.max_documents
        )
        eod = self.streams.tokenizer.end_of_document
        shortest = min(len(self.streams.train), len(self.streams.test))
        if shortest <= c.seq_len + 1:
            raise ConfigError(
                f"task.seq_len: windows of {c.seq_len + 1} tokens do not fit a split of corpus "
                f"{c.corpus} ({shortest} tokens)"
            )
        self.diagnostic_tokens = torch.from_numpy(common_tokens(self.streams.train, eod)).to(self.device)

    @classmethod
    def io(cls, config: TextLMConfig) -> ModelIO:
        return ModelIO(n_ctx=config.seq_len, d_out=config.vocabulary, d_vocab=config.vocabulary)

    @classmethod
    def split_names(cls, config: TextLMConfig) -> list[str]:
        return ["heldout", "train", "repeated"]

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._windows(self.streams.train, batch_size, generator)

    def eval_splits(self) -> dict[str, Sampler]:
        return {
            "heldout": lambda n, g: self._windows(self.streams.test, n, g),
            "train": self.sample,
            "repeated": self._repeated,
        }

    def _repeated(self, n: int, g: torch.Generator) -> Batch:
        """Olsson's diagnostic: repeated random tokens, drawn from the training text's common tokens."""
        c = self.config
        batch = repeated_tokens(n, c.seq_len, (0, len(self.diagnostic_tokens)), 2, c.seq_len // 2, 2, 0.0, g)
        vocabulary = self.diagnostic_tokens.to(batch.inputs.device)
        return Batch(vocabulary[batch.inputs], vocabulary[batch.targets], batch.loss_mask, batch.meta)

    def _windows(self, stream: np.ndarray, n: int, g: torch.Generator) -> Batch:
        """n random windows of seq_len + 1 tokens: inputs and next-token targets."""
        T = self.config.seq_len
        starts = torch.randint(len(stream) - T, (n,), generator=g, device=g.device).cpu().numpy()
        return self._batch(stream, starts, g.device)

    def _batch(self, stream: np.ndarray, starts: np.ndarray, device: torch.device) -> Batch:
        T, n = self.config.seq_len, len(starts)
        window = torch.from_numpy(stream[starts[:, None] + np.arange(T + 1)].astype(np.int64))  # (n, T + 1)
        window = window.to(device)
        zeros = torch.zeros(n, dtype=torch.long, device=device)
        mask = torch.ones(n, T, dtype=torch.bool, device=device)
        return Batch(window[:, :-1], window[:, 1:], mask, {"period": zeros, "repeat_end": zeros})

    # repetition: the training stream cut into disjoint windows, the bank first, unique ones after

    def plan(self, steps: int, batch_size: int) -> None:
        """With `repeat`, the training stream is cut into disjoint windows of seq_len + 1 tokens in
        a seeded order: the bank takes the first K, unique draws the rest, each at most once;
        ConfigError if the run needs more unique windows than the corpus holds."""
        if self.config.repeat is None:
            return
        width = self.config.seq_len + 1
        windows = len(self.streams.train) // width
        self.window_order = torch.randperm(windows, generator=generator(self.seed, "repeat", "windows"))
        super().plan(steps, batch_size)
        plan = self.repetition
        bank = plan.bank_size
        needed = steps * (batch_size - plan.per_batch)
        if bank + needed > windows:
            where = ""
            if self.config.corpus == "python_stdlib":  # its size depends on the Python installed
                root, files = corpus_files("python_stdlib", self.config.max_documents)
                where = f" ({len(files):,} files under {root}; some Pythons come without their tests)"
            raise ConfigError(
                f"task.repeat: the run needs {needed:,} unique windows of {width} tokens and a bank of "
                f"{bank:,}, but the training split of {self.config.corpus} holds {windows:,}{where}"
            )

    def make_bank(self, size: int) -> Batch:
        return self._window_batch(self.window_order[:size])

    def unique_sample(self, batch_size: int, generator: torch.Generator, step: int) -> Batch:
        if self.repetition is None:
            return self.sample(batch_size, generator)
        plan = self.repetition
        first = plan.bank_size + step * batch_size
        return self._window_batch(self.window_order[first : first + batch_size])

    def _window_batch(self, indices: torch.Tensor) -> Batch:
        return self._batch(self.streams.train, indices.numpy() * (self.config.seq_len + 1), self.device)

    def token_labels(self, batch: Batch, index: int) -> list[str]:
        decode = self.streams.tokenizer.decode
        return [decode([t]).replace("\n", "\\n") or "?" for t in batch.inputs[index].tolist()]

    def report_figures(self, run: "Run", out: Path) -> dict[str, bytes]:
        """Loss by token position on held-out text at the first, middle and last checkpoints."""
        import matplotlib.pyplot as plt

        from icl_lab.analysis.summary import units_text
        from icl_lab.analysis.text import loss_by_position
        from icl_lab.report.html import save_png

        steps = run.checkpoint_steps
        fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
        for step in sorted({steps[0], steps[len(steps) // 2], steps[-1]}):
            ax.plot(loss_by_position(run, step), label=units_text(run, step))
        ax.set(xlabel="token position in the window", ylabel="held-out loss (nats)")
        ax.set_title(
            f"loss by position on held-out {self.config.corpus} (seed {run.config.seed})", fontsize=9
        )
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        return {"Held-out loss by token position": save_png(fig, out / "loss_by_position.png")}

    def report_texts(self, run: "Run") -> dict[str, str]:
        """The corpus as the run read it, and greedy continuations of held-out passages by the
        latest model."""
        from icl_lab.analysis.text import greedy_samples

        info, documents = self.streams.info, self.streams.info["documents"]
        corpus = (
            f"{self.config.corpus}: {documents['train']:,} training and {documents['test']:,} "
            f"held-out documents, {info['tokens']['train']:,} and {info['tokens']['test']:,} tokens "
            f"({self.config.tokenizer}, vocabulary {info['vocab_size']:,}); "
            f"{info['replaced_bytes']:,} bytes that were not UTF-8 read as U+FFFD"
        )
        samples = greedy_samples(run)
        text = "\n\n".join(f"{prompt}[[ {continuation} ]]" for prompt, continuation in samples)
        return {
            "Corpus": corpus,
            "Greedy samples (held-out prompt, then [[ the model's continuation ]])": text,
        }

    def data_digest(self) -> tuple[str, str]:
        return f"task.corpus {self.config.corpus}", self.streams.info["digest"]

    def save_artifacts(self, directory: Path) -> None:
        """The tokeniser, as tokenizer.json, and the corpus split's description, as corpus.json."""
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / "tokenizer.json", self.streams.tokenizer.save)
        atomic_write_text(directory / "corpus.json", json.dumps(self.streams.info, indent=1))
