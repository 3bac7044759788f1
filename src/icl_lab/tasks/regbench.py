"""RegBench (Akyürek et al. 2024): in-context language learning of random regular languages.

Vocabulary: 18 letters (ids 0-17), the separator `|` (18) and padding (19). Each problem is a random
DFA: states ~ U{min_states..max_states}, an alphabet of ~ U{min_alphabet..max_alphabet} letters,
each state min_out..max_out outgoing edges with distinct symbols and distinct targets and no
self-loops, start state 0, every state accepting; then minimised and trimmed (automata-lib),
relabelled canonically (breadth first from the start, symbols in order) and deduplicated. The
train, val and test splits hold disjoint DFAs. A prompt joins U{min_strings..max_strings} strings
by `|`; a string is a uniform random walk of length U{min_length..max_length} from the start
state. Prompts are drawn once per DFA and kept ("fixed", as the reference code does) or drawn anew
each time ("resample"); they are cut or padded to seq_len. The loss and the metrics skip targets
that are `|` or padding. meta["valid"] marks, at every position, the letters the DFA allows next.

DFAs and fixed prompts are cached by config hash and seed under $ICL_LAB_CACHE (default
~/.cache/icl-lab).
"""

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from safetensors.torch import load_file
from torch import Tensor

from icl_lab.config import TaskConfig
from icl_lab.errors import ConfigError
from icl_lab.files import cache_root, save_tensors
from icl_lab.models.base import ModelIO
from icl_lab.seeding import derive_seed, generator
from icl_lab.tasks.base import TASKS, Batch, Sampler, Task

LETTERS, SEP, PAD = 18, 18, 19
VOCAB = 20
FORMAT = "regbench/1"  # bump when generation changes, so that caches are not reused
PATIENCE = 2000  # draws in a row without a new DFA before the generator gives up


class RegBenchConfig(TaskConfig):
    """Random-DFA languages learned in context."""

    name: Literal["regbench"] = "regbench"
    n_train_dfas: int = Field(5000, ge=1)
    n_val_dfas: int = Field(500, ge=1)
    n_test_dfas: int = Field(500, ge=1)
    min_states: int = Field(4, ge=2)
    max_states: int = Field(12, ge=2)
    min_alphabet: int = Field(4, ge=1)
    max_alphabet: int = Field(LETTERS, ge=1, le=LETTERS)
    min_out: int = Field(1, ge=1)
    max_out: int = Field(3, ge=1)
    min_strings: int = Field(10, ge=1)
    max_strings: int = Field(19, ge=1)
    min_length: int = Field(1, ge=1)
    max_length: int = Field(49, ge=1)
    seq_len: int = Field(1024, ge=2, description="prompts are cut or padded to this many tokens")
    prompts: Literal["fixed", "resample"] = "fixed"

    @model_validator(mode="after")
    def _ranges(self) -> "RegBenchConfig":
        for low, high in (
            ("min_states", "max_states"),
            ("min_alphabet", "max_alphabet"),
            ("min_out", "max_out"),
            ("min_strings", "max_strings"),
            ("min_length", "max_length"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) exceeds {high} ({getattr(self, high)})")
        return self


def _random_dfa(rng: np.random.Generator, c: RegBenchConfig) -> tuple[tuple[int, ...], ...] | None:
    """One random DFA, minimised, trimmed and relabelled: a tuple per state of 18 targets (-1: none)."""
    from automata.fa.dfa import DFA

    n = int(rng.integers(c.min_states, c.max_states + 1))
    alphabet = rng.choice(LETTERS, size=int(rng.integers(c.min_alphabet, c.max_alphabet + 1)), replace=False)
    transitions: dict[int, dict[int, int]] = {}
    for state in range(n):
        k = int(rng.integers(c.min_out, c.max_out + 1))
        k = min(k, len(alphabet), n - 1)
        symbols = rng.choice(alphabet, size=k, replace=False)
        targets = rng.choice([t for t in range(n) if t != state], size=k, replace=False)
        transitions[state] = {int(s): int(t) for s, t in zip(symbols, targets, strict=True)}
    dfa = DFA(
        states=set(range(n)),
        input_symbols={int(a) for a in alphabet},
        transitions=transitions,
        initial_state=0,
        final_states=set(range(n)),
        allow_partial=True,
    ).minify()
    order, queue = {dfa.initial_state: 0}, [dfa.initial_state]
    while queue:  # breadth first from the start, symbols in order: a canonical numbering
        state = queue.pop(0)
        for symbol in sorted(dfa.transitions[state]):
            target = dfa.transitions[state][symbol]
            if target not in order:
                order[target] = len(order)
                queue.append(target)
    table = [[-1] * LETTERS for _ in order]
    for state, index in order.items():
        for symbol, target in dfa.transitions[state].items():
            table[index][symbol] = order[target]
    return tuple(tuple(row) for row in table)


def generate_dfas(c: RegBenchConfig, seed: int) -> list[tuple[tuple[int, ...], ...]]:
    """Distinct DFAs for all splits, in random order (train first, then val, test)."""
    rng = np.random.default_rng(derive_seed(seed, "regbench", "dfas"))
    wanted = c.n_train_dfas + c.n_val_dfas + c.n_test_dfas
    found: dict[tuple, None] = {}
    misses = 0
    while misses < PATIENCE:
        before = len(found)
        found.setdefault(_random_dfa(rng, c), None)
        if len(found) == wanted:
            return list(found)
        misses = 0 if len(found) > before else misses + 1
    raise ConfigError(
        f"regbench: only {len(found)} distinct DFAs exist for these settings, {wanted} asked for"
    )


def sample_prompts(table: Tensor, c: RegBenchConfig, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Prompts for DFAs given as transition tables (b, states, 18): tokens (b, seq_len) and the
    state after each token (the state the next letter leaves from; 0 after a separator)."""
    b, dev = table.shape[0], table.device
    strings = torch.randint(c.min_strings, c.max_strings + 1, (b,), generator=g, device=dev)
    lengths = torch.randint(c.min_length, c.max_length + 1, (b, c.max_strings), generator=g, device=dev)
    lengths = lengths * (torch.arange(c.max_strings, device=dev) < strings[:, None])
    state = torch.zeros(b, c.max_strings, dtype=torch.long, device=dev)
    rows = torch.arange(b, device=dev)[:, None].expand(b, c.max_strings)
    walk_tokens, walk_states = [], []
    for _ in range(c.max_length):  # all strings of all prompts step together
        allowed = table[rows, state] >= 0  # (b, strings, 18)
        symbol = torch.multinomial(allowed.view(-1, LETTERS).float(), 1, generator=g).view(b, c.max_strings)
        state = table[rows, state, symbol].long()
        walk_tokens.append(symbol)
        walk_states.append(state)
    tokens_w, states_w = (
        torch.stack(walk_tokens, -1),
        torch.stack(walk_states, -1),
    )  # (b, strings, max_length)
    starts = torch.cumsum(lengths + 1, 1) - (lengths + 1)  # each string's first position
    width = int((lengths + 1).sum(1).max()) + 1
    tokens = torch.full((b, width), PAD, dtype=torch.long, device=dev)
    states = torch.zeros(b, width, dtype=torch.long, device=dev)
    step = torch.arange(c.max_length, device=dev)
    inside = step < lengths[..., None]  # (b, strings, max_length)
    where = (starts[..., None] + step)[inside]
    batch_index = torch.arange(b, device=dev)[:, None, None].expand_as(inside)[inside]
    tokens[batch_index, where] = tokens_w[inside]
    states[batch_index, where] = states_w[inside]
    between = (torch.arange(c.max_strings, device=dev) < strings[:, None] - 1) & (lengths > 0)
    tokens[torch.arange(b, device=dev)[:, None].expand_as(between)[between], (starts + lengths)[between]] = (
        SEP
    )
    tokens, states = tokens[:, : c.seq_len], states[:, : c.seq_len]
    if tokens.shape[1] < c.seq_len:
        fill = c.seq_len - tokens.shape[1]
        tokens = torch.cat([tokens, torch.full((b, fill), PAD, dtype=torch.long, device=dev)], 1)
        states = torch.cat([states, torch.zeros(b, fill, dtype=torch.long, device=dev)], 1)
    return tokens, states


def cache_dir() -> Path:
    return cache_root() / "regbench"


@TASKS.register("regbench")
class RegBenchTask(Task):
    """Next-token prediction on prompts of strings from a random regular language per sequence."""

    Config = RegBenchConfig
    config: RegBenchConfig
    default_metrics = ("loss", "validity_accuracy", "tvd")
    meta_keys = ("states", "valid")
    key_metric = ("val", "validity_accuracy", "mean")
    progress_measures = (("val", "validity_accuracy", None), ("val", "tvd", None))

    def __init__(self, config: RegBenchConfig, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__(config, seed, device)
        data = self._world()
        self.tables = {
            split: data[f"{split}/table"].long().to(self.device) for split in ("train", "val", "test")
        }
        self.fixed = {
            split: (
                data[f"{split}/tokens"].long().to(self.device),
                data[f"{split}/states"].long().to(self.device),
            )
            for split in ("train", "val", "test")
        }

    def _world(self) -> dict[str, Tensor]:
        """DFA tables and fixed prompts per split, from the cache or generated (and cached)."""
        key = json.dumps(
            {"format": FORMAT, "seed": self.seed, **self.config.model_dump(mode="json")}, sort_keys=True
        )
        path = cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors"
        if path.is_file():
            return load_file(str(path))
        c = self.config
        dfas = generate_dfas(c, self.seed)
        sizes = {"train": c.n_train_dfas, "val": c.n_val_dfas, "test": c.n_test_dfas}
        data, start = {}, 0
        for split, size in sizes.items():
            table = torch.full((size, c.max_states, LETTERS), -1, dtype=torch.int16)
            for i, dfa in enumerate(dfas[start : start + size]):
                table[i, : len(dfa)] = torch.tensor(dfa, dtype=torch.int16)
            tokens, states = sample_prompts(
                table.long(), c, generator(self.seed, "regbench", "prompts", split)
            )
            data |= {
                f"{split}/table": table,
                f"{split}/tokens": tokens.to(torch.int8),
                f"{split}/states": states.to(torch.int8),
            }
            start += size
        save_tensors(path, data, {"key": key})
        return data

    @classmethod
    def io(cls, config: RegBenchConfig) -> ModelIO:
        return ModelIO(n_ctx=config.seq_len, d_out=VOCAB, d_vocab=VOCAB)

    @classmethod
    def split_names(cls, config: RegBenchConfig) -> list[str]:
        return ["train", "val", "test"]

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._sample("train", batch_size, generator)

    def eval_splits(self) -> dict[str, Sampler]:
        """Evaluation batches draw DFAs without replacement (each once before any twice)."""
        return {
            split: (lambda n, g, split=split: self._sample(split, n, g, distinct=True))
            for split in ("train", "val", "test")
        }

    def _sample(self, split: str, n: int, g: torch.Generator, distinct: bool = False) -> Batch:
        table = self.tables[split]
        if distinct:
            rounds = -(-n // len(table))
            which = torch.cat(
                [torch.randperm(len(table), generator=g, device=g.device) for _ in range(rounds)]
            )
            which = which[:n]
        else:
            which = torch.randint(len(table), (n,), generator=g, device=g.device)
        if self.config.prompts == "fixed":
            tokens, states = self.fixed[split][0][which], self.fixed[split][1][which]
        else:
            tokens, states = sample_prompts(table[which], self.config, g)
        return self.batch(tokens, states, table[which])

    @staticmethod
    def batch(tokens: Tensor, states: Tensor, table: Tensor) -> Batch:
        """Targets, loss mask and meta of prompts given their tokens, states and DFA tables."""
        targets = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], PAD)], 1)
        rows = torch.arange(len(tokens), device=tokens.device)[:, None]
        valid = torch.zeros(*tokens.shape, VOCAB, dtype=torch.bool, device=tokens.device)
        valid[..., :LETTERS] = table[rows, states] >= 0  # letters the DFA allows next
        return Batch(tokens, targets, targets < LETTERS, {"valid": valid, "states": states})
