"""Bursty few-shot classification (Chan et al. 2022; Reddy 2024): in-context vs in-weights learning.

A sequence is x1 l1 x2 l2 ... xN lN xq; the model predicts the label of the query item xq.
K classes with means mu_k ~ N(0, I/D) and L label vectors ~ N(0, I/D); class k has label k mod L.
An item of class k is (mu_k + eps * eta) / sqrt(1 + eps^2), eta ~ N(0, I/D).

- bursty sequence (probability p_bursty): N/B class draws, each appearing B times, shuffled; the
  query class is one of them. The draws are with replacement, as in Reddy's code, so two draws may
  be the same class (then it appears 2B times); no_repeat_labels makes them distinct. Otherwise N
  items and the query are drawn i.i.d. from the Zipf law P(k) ~ (k + 1)^-alpha. Burstiness
  B = 0 means no bursty sequences.
- novel sequence (probability p_novel): built from a pool of fresh class means drawn for each batch
  (only in-context learning can solve it), always with the bursty structure (B, or N/2 when B = 0).
- no_repeat_labels: the classes of a bursty context have distinct labels (hence are distinct).
- Each token is a one-hot position (a block of 2N+1 among n_pos_slots slots, starting at a random
  offset) followed by the D content dims.

Evaluation splits: train (the training distribution), ic (novel classes, p_bursty = p_novel = 1),
ic2 (training classes, bursty, every label shifted to (l + 1) mod L in the context and in the
target, so in-weights knowledge is wrong), iw (i.i.d. items, the query class usually absent).
"""

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from icl_lab.config import TaskConfig
from icl_lab.models.base import ModelIO
from icl_lab.seeding import generator
from icl_lab.tasks import fewshot_layout
from icl_lab.tasks.base import TASKS, Batch, Sampler, Task


class BurstyConfig(TaskConfig):
    """Bursty few-shot classification; field names follow SPEC section 1 (K, L, D, N, B, ...)."""

    name: Literal["bursty_classification"] = "bursty_classification"
    n_classes: int = Field(512, ge=1, description="K, training classes")
    n_labels: int = Field(32, ge=2, description="L")
    dim: int = Field(63, ge=1, description="D, content dimensions")
    n_context: int = Field(8, ge=1, description="N, item-label pairs before the query")
    burstiness: int = Field(4, ge=0, description="B, copies of each class in a bursty context")
    p_bursty: float = Field(1.0, ge=0, le=1)
    p_novel: float = Field(0.0, ge=0, le=1, description="p_C, share of sequences of novel classes")
    zipf_alpha: float = Field(0.0, ge=0)
    noise: float = Field(0.1, ge=0, description="epsilon, within-class noise")
    n_novel_classes: int = Field(128, ge=1, description="size of each batch's pool of novel classes")
    n_pos_slots: int = Field(65, ge=0, description="one-hot position slots (0: no position block)")
    random_offset: bool = Field(True, description="position block starts at a random offset")
    no_repeat_labels: bool = False

    @model_validator(mode="after")
    def _possible(self) -> "BurstyConfig":
        K, L, N, B = self.n_classes, self.n_labels, self.n_context, self.burstiness
        if K % L:
            raise ValueError(f"n_labels L ({L}) must divide n_classes K ({K})")
        if self.n_novel_classes % L:
            raise ValueError(f"n_labels L ({L}) must divide n_novel_classes ({self.n_novel_classes})")
        if B and (N % B or B >= N):
            raise ValueError(f"burstiness B ({B}) must divide n_context N ({N}) and be smaller")
        if not B and N % 2:
            raise ValueError(f"with burstiness 0, novel sequences use B = N/2: N ({N}) must be even")
        if self.no_repeat_labels and N // self.bursts > L:
            raise ValueError(f"no_repeat_labels needs N/B ({N // self.bursts}) <= L ({L})")
        if self.n_pos_slots and self.n_pos_slots < 2 * N + 1:
            raise ValueError(f"n_pos_slots ({self.n_pos_slots}) must be 0 or at least 2N+1 ({2 * N + 1})")
        return self

    @property
    def bursts(self) -> int:
        """Copies per class in a bursty-structured context (N/2 stands in when B = 0)."""
        return self.burstiness or self.n_context // 2


@TASKS.register("bursty_classification")
class BurstyTask(Task):
    """Predict the query item's label from N item-label pairs; meta describes every sequence."""

    Config = BurstyConfig
    config: BurstyConfig
    default_metrics = (
        "loss",
        "accuracy",
        "context_label_accuracy",
        "in_context_accuracy",
        "fewshot_attention",
    )
    key_metric = ("ic", "accuracy", "mean")
    layout = "fewshot"
    meta_keys = (*fewshot_layout.META, "bursty", "novel")
    progress_measures = (
        ("ic", "context_label_accuracy", None),
        ("ic", "item_label_association", 0),
        ("ic", "target_label_attention", -1),
        ("ic", "induction_strength", -1),
    )

    def __init__(self, config: BurstyConfig, seed: int, device: torch.device | str = "cpu") -> None:
        super().__init__(config, seed, device)
        g = generator(seed, "world", device=self.device)
        D = config.dim
        self.class_means = torch.randn(config.n_classes, D, generator=g, device=self.device) / D**0.5
        self.label_vectors = torch.randn(config.n_labels, D, generator=g, device=self.device) / D**0.5
        ranks = torch.arange(1, config.n_classes + 1, device=self.device, dtype=torch.float64)
        self.class_probs = (ranks**-config.zipf_alpha / (ranks**-config.zipf_alpha).sum()).float()

    @classmethod
    def io(cls, config: BurstyConfig) -> ModelIO:
        return ModelIO(
            n_ctx=2 * config.n_context + 1,
            d_out=config.n_labels,
            d_input=config.n_pos_slots + config.dim,
            target_positions=(-1,),
        )

    @classmethod
    def split_names(cls, config: BurstyConfig) -> list[str]:
        return ["train", "ic", "ic2", "iw"]

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        c = self.config
        return self._sample(batch_size, generator, c.p_bursty if c.burstiness else 0.0, c.p_novel)

    def eval_splits(self) -> dict[str, Sampler]:
        return {
            "train": self.sample,
            "ic": lambda n, g: self._sample(n, g, 1.0, 1.0),
            "ic2": lambda n, g: self._sample(n, g, 1.0, 0.0, label_shift=1),
            "iw": lambda n, g: self._sample(n, g, 0.0, 0.0),
        }

    def model_constants(self) -> dict[str, Tensor]:
        return {"label_vectors": self.label_vectors}

    def token_labels(self, batch: Batch, index: int) -> list[str]:
        """Items as c<class> (novel classes numbered from K), labels as l<label>, the query q:c<class>."""
        classes = batch.meta["item_classes"][index].tolist()
        labels = batch.meta["context_labels"][index].tolist()
        tokens = [text for c, y in zip(classes, labels, strict=True) for text in (f"c{c}", f"l{y}")]
        return [*tokens, f"q:c{int(batch.meta['query_class'][index])}"]

    def _bursty_classes(self, n: int, n_classes: int, g: torch.Generator, probs: Tensor | None) -> Tensor:
        """(n, N) classes: N/B class draws (with replacement unless no_repeat_labels) each repeated B
        times, shuffled."""
        c, dev = self.config, g.device
        per_context, L = c.n_context // c.bursts, c.n_labels
        if c.no_repeat_labels:
            labels = torch.rand(n, L, generator=g, device=dev).argsort(1)[:, :per_context]
            block = torch.randint(n_classes // L, (n, per_context), generator=g, device=dev)
            distinct = block * L + labels
        elif probs is None:
            distinct = torch.randint(n_classes, (n, per_context), generator=g, device=dev)
        else:
            distinct = torch.multinomial(probs, n * per_context, replacement=True, generator=g)
            distinct = distinct.view(n, per_context)
        order = torch.rand(n, c.n_context, generator=g, device=dev).argsort(1)
        return distinct.repeat(1, c.bursts).gather(1, order)

    def _sample(
        self, n: int, g: torch.Generator, p_bursty: float, p_novel: float, label_shift: int = 0
    ) -> Batch:
        c, dev = self.config, g.device
        N, L, D, K = c.n_context, c.n_labels, c.dim, c.n_classes
        # every kind of context is drawn for every sequence, then chosen: a fixed number of draws
        bursty = self._bursty_classes(n, K, g, self.class_probs)
        pick = torch.randint(N, (n,), generator=g, device=dev)
        iid = torch.multinomial(self.class_probs, n * (N + 1), replacement=True, generator=g).view(n, N + 1)
        novel_classes = self._bursty_classes(n, c.n_novel_classes, g, None)
        novel_pick = torch.randint(N, (n,), generator=g, device=dev)
        novel_means = torch.randn(c.n_novel_classes, D, generator=g, device=dev) / D**0.5
        is_bursty = torch.rand(n, generator=g, device=dev) < p_bursty
        is_novel = torch.rand(n, generator=g, device=dev) < p_novel
        noise = torch.randn(n, N + 1, D, generator=g, device=dev) / D**0.5
        offset = torch.randint(
            c.n_pos_slots - 2 * N if c.random_offset and c.n_pos_slots else 1, (n,), generator=g, device=dev
        )

        seen = torch.where(is_bursty[:, None], bursty, iid[:, :N])
        seen_query = torch.where(is_bursty, bursty.gather(1, pick[:, None])[:, 0], iid[:, N])
        novel_query = novel_classes.gather(1, novel_pick[:, None])[:, 0]
        classes = torch.cat([seen, seen_query[:, None]], 1)  # (n, N+1): context items, then query
        novel_all = torch.cat([novel_classes, novel_query[:, None]], 1)
        means = torch.where(is_novel[:, None, None], novel_means[novel_all], self.class_means[classes])
        items = (means + c.noise * noise) / (1 + c.noise**2) ** 0.5  # (n, N+1, D)
        labels = (torch.where(is_novel[:, None], novel_all, classes) + label_shift) % L  # (n, N+1)

        content = torch.stack([items[:, :N], self.label_vectors[labels[:, :N]]], 2).view(n, 2 * N, D)
        content = torch.cat([content, items[:, N:]], 1)  # (n, 2N+1, D)
        if c.n_pos_slots:
            slots = offset[:, None] + torch.arange(2 * N + 1, device=dev)  # (n, 2N+1)
            position = torch.nn.functional.one_hot(slots, c.n_pos_slots).to(content.dtype)
            content = torch.cat([position, content], -1)
        class_ids = torch.where(is_novel[:, None], novel_all + K, classes)  # novel classes: K + index
        return Batch(
            inputs=content,
            targets=labels[:, N:],
            loss_mask=torch.ones(n, 1, dtype=torch.bool, device=dev),
            meta={
                "item_classes": class_ids[:, :N],
                "query_class": class_ids[:, N],
                "context_labels": labels[:, :N],
                "query_label": labels[:, N],
                "bursty": is_bursty | is_novel,
                "novel": is_novel,
            },
        )
