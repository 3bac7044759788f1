"""Circuit analyses of Singh et al. (2024), run with clamps on trained checkpoints."""

import math

import numpy as np
import pyarrow.compute as pc
import torch
from torch import Tensor

from icl_lab.errors import ConfigError
from icl_lab.evaluation import evaluate
from icl_lab.interventions import CLAMPS, Clamp
from icl_lab.models import Model
from icl_lab.store.run import Run
from icl_lab.tasks import Batch, Task


def clamp(**fields: object) -> Clamp:
    """A clamp record from its fields (kind included)."""
    return CLAMPS.get(str(fields["kind"])).model_validate(fields)


def speed(run: Run, split: str = "train", threshold: float = 0.4 * math.log(2)) -> int | None:
    """Singh's speed: the first evaluated step whose loss on `split` is below threshold (0.4 ln 2),
    or None if none is; ConfigError if the run logged no loss on that split."""
    steps, loss = run.curve("loss", split)
    if not steps.size:
        logged = sorted(set(run.metrics.filter(pc.equal(run.metrics["metric"], "loss"))["split"].to_pylist()))
        where = f"it did on: {', '.join(logged)}" if logged else "nor on any other"
        raise ConfigError(f"run {run.id} logged no loss on split {split!r} ({where})")
    below = np.flatnonzero(loss < threshold)
    return int(steps[below[0]]) if below.size else None


def only_head_kept(model: Model, task: Task, batch: Batch, layer: int) -> Tensor:
    """(n_heads,) accuracy with every other head of `layer` zero-ablated."""
    heads = range(model.n_heads)
    accuracy = []
    for kept in heads:
        others = [f"{layer}.{h}" for h in heads if h != kept]
        ablation = [clamp(kind="ablate", heads=others)] if others else []
        accuracy.append(evaluate(model, task, batch, ["accuracy"], ablation)["accuracy"])
    return torch.stack(accuracy)


def wiring_table(
    model: Model, task: Task, batch: Batch, layer: int = 0, head_sets: list[list[str]] | None = None
) -> dict[str, list]:
    """How later layers use `layer`'s heads, per head set (default: each head, then the whole layer).

    For each set: loss and accuracy clean, with the set zero-ablated, and ablated while later layers
    keep their attention patterns (only the value path is cut: V-composition) or their values (only
    the pattern path is cut: K/Q-composition). Returns {"sets": labels, "<column>_<metric>": values}.
    """
    sets = head_sets or [*[[f"{layer}.{h}"] for h in range(model.n_heads)], [f"{layer}.*"]]
    variants = {
        "clean": lambda heads: [],
        "ablated": lambda heads: [clamp(kind="ablate", heads=heads)],
        "patterns_kept": lambda heads: [clamp(kind="ablate_preserving", heads=heads, preserve="pattern")],
        "values_kept": lambda heads: [clamp(kind="ablate_preserving", heads=heads, preserve="v")],
    }
    table: dict[str, list] = {"sets": [",".join(heads) for heads in sets]}
    for name, clamps in variants.items():
        for heads in sets:
            values = evaluate(model, task, batch, ["loss", "accuracy"], clamps(heads))
            for metric, value in values.items():
                table.setdefault(f"{name}_{metric}", []).append(float(value))
    return table


EVAL_CHUNK = 512
"""sequences per forward pass in clamp_progress: a 78,400-sequence batch in one pass is memory bound
(Singh's attention layer, forward, one thread: 2.6-3.5 s in one pass against 1.7-1.9 in passes of
512)"""


def mean_loss(model: Model, task: Task, batch: Batch, clamps: list[Clamp]) -> float:
    """The batch's mean loss over its target tokens with the clamps applied, EVAL_CHUNK sequences
    per forward pass (all in one when a clamp takes a statistic over the batch)."""
    n = len(batch.inputs)
    size = n if any(c.reads_batch for c in clamps) else EVAL_CHUNK
    total = tokens = 0.0
    for start in range(0, n, size):
        part = batch if size >= n else batch.select(torch.arange(start, min(start + size, n)))
        count = float(part.loss_mask.sum())
        total += float(evaluate(model, task, part, ["loss"], clamps)["loss"]) * count
        tokens += count
    return total / tokens


def clamp_progress(
    run: Run, subcircuits: dict[str, list[Clamp]], batch: Batch | None = None, last_step: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean loss of the run's checkpoints (up to last_step) on `batch` (default its train evaluation
    batch) with each subcircuit clamped: {name: (steps, losses)}, the unclamped loss under "none".
    The run's own training clamps active at a checkpoint stay on in every evaluation (with
    eval.with_clamps), so a run trained with heads ablated is scored with them ablated."""
    task, batches = run.eval_data()
    if batch is None and "train" not in batches:
        splits = ", ".join(batches) or "none"
        raise ConfigError(f"run {run.id} evaluates no train split (its splits: {splits}): pass a batch")
    batch = batches["train"] if batch is None else batch
    steps = [s for s in run.checkpoint_steps if last_step is None or s <= last_step]
    curves: dict[str, list[float]] = {"none": [], **{name: [] for name in subcircuits}}
    for step in steps:
        model = run.model(step)
        trained = run.clamps_at(step)
        for name, clamps in {"none": [], **subcircuits}.items():
            curves[name].append(mean_loss(model, task, batch, [*trained, *clamps]))
    return {name: (np.array(steps), np.array(values)) for name, values in curves.items()}
