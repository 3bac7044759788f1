"""The few-shot layout shared by classification tasks, and what metrics and clamps read from it.

A sequence is x1 y1 ... xN yN xq: items at even positions, labels at odd ones, the query last;
one target, the query's label (targets: (B, 1)). meta holds item_classes (B, N), query_class (B,),
context_labels (B, N) and query_label (B,). Tasks in this layout set Task.layout = "fewshot".
"""

import torch
from torch import Tensor

from icl_lab.tasks.base import Batch

META = ("item_classes", "query_class", "context_labels", "query_label")


def n_pairs(batch: Batch) -> int:
    return batch.meta["context_labels"].shape[1]


def label_positions(n: int, device: torch.device) -> Tensor:
    """Positions of the N label tokens: 1, 3, ..., 2N-1."""
    return torch.arange(1, 2 * n, 2, device=device)


def correct_labels(meta: dict[str, Tensor]) -> Tensor:
    """(B, N): which label tokens carry the query's label."""
    return meta["context_labels"] == meta["query_label"][:, None]


def matching_items(meta: dict[str, Tensor]) -> Tensor:
    """(B, N): which items are of the query's class."""
    return meta["item_classes"] == meta["query_class"][:, None]
