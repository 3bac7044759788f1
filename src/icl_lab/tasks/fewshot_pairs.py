"""Few-shot label pairs (Singh et al. 2024): x1 y1 x2 y2 xq, a task only in-context learning solves.

Exemplar features come from a file (classes x exemplars x dim; .npy, .npz, .safetensors, .h5 or
.hdf5, key "features" unless the file holds one array) or, by default, are Gaussian: class means
mu_c ~ N(0, I) and exemplars (mu_c + sigma * eta) / sqrt(1 + sigma^2), eta ~ N(0, I) (unit variance
per dimension, the scale of raw ResNet features).
The first n_train_classes classes train; the next n_heldout_classes are held out. Training uses
exemplar 0 of each class; exemplars 1.. are held out.

A sequence holds one item of the query's class and one of a distractor class, in random order,
labelled with an unordered pair of labels out of n_labels (assigned to the two classes at random);
the query is an exemplar of the query's class and the target its label. The pairs are split, by
the task's seed, into training pairs and n_heldout_pairs held-out ones, so the label of a class is
meaningless across sequences: "pick a random in-context label" scores a loss of ln 2.

Tokens are vectors of dim + n_labels: an item or the query is [features, 0], a label [0, one-hot].
Splits: train, heldout_pairs, heldout_exemplars, heldout_classes.
"""

import hashlib
import itertools
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from icl_lab.config import TaskConfig
from icl_lab.errors import ConfigError
from icl_lab.models.base import ModelIO
from icl_lab.seeding import generator
from icl_lab.tasks import fewshot_layout
from icl_lab.tasks.base import TASKS, Batch, MembersSampler, Sampler, Task

FEATURE_SUFFIXES = (".npy", ".npz", ".safetensors", ".h5", ".hdf5")


def read_features(path: Path) -> np.ndarray:
    """The (classes, exemplars, dim) float array of a feature file; ConfigError if it is not one."""
    try:
        if path.suffix == ".npy":
            array = np.load(path, mmap_mode="r")
        elif path.suffix == ".npz":
            with np.load(path) as archive:
                array = (
                    archive["features"]
                    if "features" in archive or len(archive.files) != 1
                    else archive[archive.files[0]]
                )
        elif path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            array = (
                tensors["features"]
                if "features" in tensors or len(tensors) != 1
                else next(iter(tensors.values()))
            )
        else:
            try:
                import h5py
            except ImportError:
                raise ConfigError(f"reading {path} needs h5py (pip install h5py)") from None
            with h5py.File(path, "r") as f:
                array = f["features"][()] if "features" in f or len(f) != 1 else f[next(iter(f))][()]
    except ConfigError:
        raise
    except KeyError:
        raise ConfigError(f"feature file {path} has no array named 'features'") from None
    except Exception as e:  # a truncated or foreign file: numpy, safetensors and h5py each raise their own
        raise ConfigError(f"cannot read feature file {path}: {e}") from None
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.floating):
        raise ConfigError(
            f"feature file {path} must hold a float array (classes, exemplars, dim), "
            f"got {array.dtype} {array.shape}"
        )
    return array


class FewShotPairsConfig(TaskConfig):
    """Singh et al.'s few-shot label-pair task."""

    name: Literal["fewshot_pairs"] = "fewshot_pairs"
    n_train_classes: int = Field(50, ge=2)
    n_heldout_classes: int = Field(100, ge=2)
    n_exemplars: int = Field(20, ge=2, description="exemplars per class (Gaussian features)")
    feature_dim: int = Field(512, ge=1)
    features: str = Field("gaussian", description="'gaussian' or a feature file path")
    exemplar_noise: float = Field(0.1, ge=0, description="sigma of Gaussian exemplars around their class")
    n_labels: int = Field(5, ge=2)
    n_heldout_pairs: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _possible(self) -> "FewShotPairsConfig":
        pairs = self.n_labels * (self.n_labels - 1) // 2
        if self.n_heldout_pairs >= pairs:
            raise ValueError(
                f"n_heldout_pairs ({self.n_heldout_pairs}) must leave some of the {pairs} label pairs "
                "to train on"
            )
        if self.features != "gaussian":
            path = Path(self.features)
            if path.suffix not in FEATURE_SUFFIXES:
                raise ValueError(
                    f"features must be 'gaussian' or a file ending in {', '.join(FEATURE_SUFFIXES)}"
                )
            if not path.is_file():
                raise ValueError(f"feature file not found: {path}")
        return self


@TASKS.register("fewshot_pairs")
class FewShotPairsTask(Task):
    """Two item-label pairs and a query; the label pair is drawn per sequence (few-shot layout)."""

    Config = FewShotPairsConfig
    config: FewShotPairsConfig
    default_metrics = (
        "loss",
        "accuracy",
        "in_context_accuracy",
        "in_context_probability",
        "fewshot_attention",
    )
    key_metric = ("train", "loss", "mean")
    layout = "fewshot"
    meta_keys = fewshot_layout.META
    progress_measures = (
        ("train", "in_context_accuracy", None),
        ("train", "item_label_association", 0),
        ("train", "induction_strength", -1),
    )

    def __init__(self, config: FewShotPairsConfig, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__(config, seed, device)
        c = config
        g = generator(seed, "world", device=self.device)
        n_classes = c.n_train_classes + c.n_heldout_classes
        if c.features == "gaussian":
            means = torch.randn(n_classes, 1, c.feature_dim, generator=g, device=self.device)
            noise = torch.randn(n_classes, c.n_exemplars, c.feature_dim, generator=g, device=self.device)
            self.features = (means + c.exemplar_noise * noise) / (1 + c.exemplar_noise**2) ** 0.5
        else:
            array = read_features(Path(c.features))
            if array.shape[0] < n_classes or array.shape[1] < 2 or array.shape[2] != c.feature_dim:
                raise ConfigError(
                    f"feature file {c.features} has shape {array.shape}: needs at least {n_classes} classes, "
                    f"2 exemplars and feature_dim {c.feature_dim}"
                )
            if not np.isfinite(array).all():
                raise ConfigError(f"feature file {c.features} holds NaN or infinite values")
            self.features = torch.as_tensor(
                np.array(array[:n_classes]), dtype=torch.float32, device=self.device
            )
        # every token a sequence can hold, one row each: exemplar e of class k at row k * exemplars + e,
        # then the labels' one-hots; a batch is one gather from it
        self._hold(torch.block_diag(self.features.flatten(0, 1), torch.eye(c.n_labels, device=self.device)))
        # training sequences read exemplar 0 of a training class or a label: n_train_classes +
        # n_labels distinct vectors, the table of training batches (Batch.table), class k its row k
        classes, exemplars = self.features.shape[:2]
        labels = classes * exemplars + torch.arange(c.n_labels, device=self.device)
        self.train_table = self.tokens[
            torch.cat([torch.arange(c.n_train_classes, device=self.device) * exemplars, labels])
        ]
        pairs = torch.tensor(list(itertools.combinations(range(c.n_labels), 2)), device=self.device)
        order = torch.randperm(len(pairs), generator=g, device=self.device)
        self.train_pairs = pairs[order[c.n_heldout_pairs :]]
        self.heldout_pairs = pairs[order[: c.n_heldout_pairs]]

    def _hold(self, tokens: Tensor) -> None:
        """Keep `tokens` as the token table and the features as a view of its rows (not kept twice)."""
        shape = self.features.shape
        self.tokens, self.features = tokens, tokens[: shape[0] * shape[1], : shape[2]].view(shape)

    def data_digest(self) -> tuple[str, str] | None:
        if self.config.features == "gaussian":
            return None
        used = self.features.cpu().contiguous().numpy()  # the classes the task reads, as float32
        return f"task.features {self.config.features}", hashlib.sha256(used.tobytes()).hexdigest()

    @classmethod
    def io(cls, config: FewShotPairsConfig) -> ModelIO:
        return ModelIO(
            n_ctx=5,
            d_out=config.n_labels,
            d_input=config.feature_dim + config.n_labels,
            target_positions=(-1,),
        )

    @classmethod
    def split_names(cls, config: FewShotPairsConfig) -> list[str]:
        held = ["heldout_pairs"] if config.n_heldout_pairs else []
        return ["train", *held, "heldout_exemplars", "heldout_classes"]

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._sample(batch_size, generator)

    def eval_splits(self) -> dict[str, Sampler]:
        splits: dict[str, Sampler] = {
            "train": self.sample,
            "heldout_exemplars": lambda n, g: self._sample(n, g, exemplars="heldout"),
            "heldout_classes": lambda n, g: self._sample(n, g, classes="heldout"),
        }
        if self.config.n_heldout_pairs:
            splits["heldout_pairs"] = lambda n, g: self._sample(n, g, pairs="heldout")
        return splits

    def token_labels(self, batch: Batch, index: int) -> list[str]:
        classes = batch.meta["item_classes"][index].tolist()
        labels = batch.meta["context_labels"][index].tolist()
        return [
            f"c{classes[0]}",
            f"l{labels[0]}",
            f"c{classes[1]}",
            f"l{labels[1]}",
            f"q:c{int(batch.meta['query_class'][index])}",
        ]

    @classmethod
    def members_sampler(cls, tasks: list[Task]) -> MembersSampler | None:
        """Each member's random draws as sample() makes them, then the sequences built once for all."""
        shapes = {
            (t.features.shape, t.tokens.shape, t.config.n_train_classes, len(t.train_pairs)) for t in tasks
        }
        if cls is not FewShotPairsTask or len(shapes) != 1 or any(t.config.repeat for t in tasks):
            return None  # a subclass may sample otherwise; repetition mixes in banked sequences
        tokens = torch.stack([t.tokens for t in tasks])  # (M, rows, dim); each task keeps a view
        for task, own in zip(tasks, tokens, strict=True):
            task._hold(own)
        pools = torch.stack([t.train_pairs for t in tasks])  # (M, pairs, 2)
        tables = torch.stack([t.train_table for t in tasks])  # (M, train rows, dim)

        def sample(n: int, generators: list[torch.Generator], step: int) -> Batch:
            each = zip(tasks, generators, strict=True)
            draws = [t._draw(n, g, "train", pools.shape[1], "train") for t, g in each]
            stacked = [torch.stack(d) for d in zip(*draws, strict=True)]  # each (M, n, ...)
            return tasks[0]._build(stacked, "train", pools, tokens, tables)

        return sample

    def _sample(
        self,
        n: int,
        g: torch.Generator,
        classes: Literal["train", "heldout"] = "train",
        pairs: Literal["train", "heldout"] = "train",
        exemplars: Literal["train", "heldout"] = "train",
    ) -> Batch:
        pool = self.train_pairs if pairs == "train" else self.heldout_pairs
        table = self.train_table if classes == exemplars == "train" else None
        return self._build(self._draw(n, g, classes, len(pool), exemplars), classes, pool, self.tokens, table)

    def _classes(self, classes: Literal["train", "heldout"]) -> tuple[int, int]:
        """(first class, number of classes) of a split's classes."""
        c = self.config
        return (0, c.n_train_classes) if classes == "train" else (c.n_train_classes, c.n_heldout_classes)

    def _draw(
        self,
        n: int,
        g: torch.Generator,
        classes: Literal["train", "heldout"],
        n_pairs: int,
        exemplars: Literal["train", "heldout"],
    ) -> list[Tensor]:
        """The random numbers behind n sequences, in the order the task has always drawn them: the
        query's class, the distractor's offset from it, the label pair (of n_pairs), which label
        the query's class gets, which item comes first, and the exemplar picks."""
        dev, count = g.device, self._classes(classes)[1]
        return [
            torch.randint(count, (n,), generator=g, device=dev),
            torch.randint(1, count, (n,), generator=g, device=dev),
            torch.randint(n_pairs, (n,), generator=g, device=dev),
            torch.rand(n, generator=g, device=dev),
            torch.rand(n, generator=g, device=dev),
            torch.randint(1, self.features.shape[1], (n, 3), generator=g, device=dev)
            if exemplars == "heldout"
            else torch.zeros(n, 3, dtype=torch.long, device=dev),
        ]

    def _build(
        self,
        draws: list[Tensor],
        classes: Literal["train", "heldout"],
        pool: Tensor,
        tokens: Tensor,
        table: Tensor | None = None,
    ) -> Batch:
        """Sequences from _draw's numbers, of shape (n,) or, stacked over members, (M, n), with
        label pairs from pool ((pairs, 2) or (M, pairs, 2)), tokens from tokens ((rows, dim)
        or (M, rows, dim)) and, for training sequences, their rows of train_table (or the members'
        stacked)."""
        query, offset, pair_index, swap, query_first, picks = draws
        first, count = self._classes(classes)
        distractor = (query + offset) % count
        pair = pool.gather(-2, pair_index[..., None].expand(*pair_index.shape, 2))  # (..., n, 2)
        swap = swap < 0.5  # which label the query's class gets
        query_label = torch.where(swap, pair[..., 1], pair[..., 0])
        other_label = torch.where(swap, pair[..., 0], pair[..., 1])
        return self._assemble(
            first + query,
            first + distractor,
            query_label,
            other_label,
            query_first < 0.5,
            picks,
            tokens,
            table,
        )

    def enumerated_train(self) -> Batch:
        """Every distinct training sequence once (Singh et al.'s full training set, 78,400 at the
        defaults): query class x distractor class x training label pair x which label the query's
        class gets x which item comes first, all with exemplar 0."""
        c, dev = self.config, self.device
        query, distractor, pair, swap, query_first = (
            axis.reshape(-1)
            for axis in torch.meshgrid(
                torch.arange(c.n_train_classes, device=dev),
                torch.arange(c.n_train_classes - 1, device=dev),
                torch.arange(len(self.train_pairs), device=dev),
                torch.arange(2, device=dev),
                torch.arange(2, device=dev),
                indexing="ij",
            )
        )
        swap, query_first = swap.bool(), query_first.bool()
        distractor = distractor + (distractor >= query)  # every class but the query's
        labels = self.train_pairs[pair]  # (n, 2)
        query_label = torch.where(swap, labels[:, 1], labels[:, 0])
        other_label = torch.where(swap, labels[:, 0], labels[:, 1])
        picks = torch.zeros(len(query), 3, dtype=torch.long, device=dev)
        return self._assemble(query, distractor, query_label, other_label, query_first, picks, self.tokens)

    def _assemble(
        self,
        query: Tensor,
        distractor: Tensor,
        query_label: Tensor,
        other_label: Tensor,
        query_first: Tensor,
        picks: Tensor,
        tokens: Tensor,
        table: Tensor | None = None,
    ) -> Batch:
        """Sequences from their classes, labels and order, each (n,) or (M, n), and (..., 3) exemplar
        picks (the two items', the query's), read from tokens ((rows, dim), or one table per member,
        (M, rows, dim)); with a training table, their rows of it too."""
        first = query_first[..., None]
        item_classes = torch.where(
            first, torch.stack([query, distractor], -1), torch.stack([distractor, query], -1)
        )
        context_labels = torch.where(
            first, torch.stack([query_label, other_label], -1), torch.stack([other_label, query_label], -1)
        )
        classes, exemplars = self.features.shape[:2]
        item_rows = item_classes * exemplars + picks[..., :2]  # (..., 2)
        label_rows = classes * exemplars + context_labels  # (..., 2)
        query_row = query[..., None] * exemplars + picks[..., 2:]  # (..., 1)
        rows = torch.cat([torch.stack([item_rows, label_rows], -1).flatten(-2), query_row], -1)  # (..., 5)
        if tokens.dim() == 3:  # the members' tables end to end: offset each member's rows
            rows = rows + (torch.arange(len(tokens), device=rows.device) * tokens.shape[1])[:, None, None]
            tokens = tokens.flatten(0, 1)
        inputs = F.embedding(rows, tokens)  # (..., 5, dim + n_labels): a gather, faster than indexing
        if table is not None:
            labels = self.config.n_train_classes + context_labels  # (..., 2)
            rows = torch.cat([torch.stack([item_classes, labels], -1).flatten(-2), query[..., None]], -1)
        return Batch(
            inputs=inputs,
            targets=query_label[..., None],
            loss_mask=torch.ones(*query.shape, 1, dtype=torch.bool, device=query.device),
            meta={
                "item_classes": item_classes,
                "query_class": query,
                "context_labels": context_labels,
                "query_label": query_label,
            },
            table=table,
            rows=None if table is None else rows,
        )
