"""Figures of a run, drawn from its run store: curves against steps (sequences on a second axis),
the detected transition shaded, attention patterns with token labels. Each names its units and seed."""

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from icl_lab.analysis.transitions import Transition
from icl_lab.metrics.base import LOSS_UNIT, value_unit
from icl_lab.store.metrics_table import TRAIN_SPLIT
from icl_lab.store.run import Run
from icl_lab.tasks import TASKS, Batch, Task

SPLIT_COLOURS = {"train": "C0", "ic": "C1", "ic2": "C2", "iw": "C3", "repeated": "C4", TRAIN_SPLIT: "C7"}


def split_colours(splits: list[str]) -> dict[str, str]:
    """A colour per split: the usual one for the splits of SPLIT_COLOURS, and for any other one
    that none of these splits has (so two splits never share a colour)."""
    taken = {SPLIT_COLOURS[s] for s in splits if s in SPLIT_COLOURS}
    free = [c for c in (f"C{i}" for i in range(10)) if c not in SPLIT_COLOURS.values()]
    others = itertools.cycle(free + [c for c in SPLIT_COLOURS.values() if c not in taken])
    return {s: SPLIT_COLOURS.get(s) or next(others) for s in splits}


def _time_axis(ax: Axes, run: Run, transition: Transition | None, top: bool) -> None:
    """Step axis, a sequences axis on top, and the transition shaded (onset to end, midpoint dashed)."""
    if transition is not None:
        ax.axvspan(
            transition.onset, transition.end, color="0.85", zorder=0, label="transition (onset to end)"
        )
        ax.axvline(transition.midpoint, color="0.4", ls="--", lw=1, zorder=0, label="transition midpoint")
    ax.grid(alpha=0.3)
    if top:
        per_step = run.units_at(1)[0]
        secondary = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda q: q / per_step))
        secondary.set_xlabel("sequences")


def _splits(run: Run) -> list[str]:
    return sorted(set(run.metrics["split"].to_pylist()) - {TRAIN_SPLIT})


def loss_unit(run: Run) -> str:
    """What a run's loss is measured in (its task's loss_unit: nats for cross-entropy)."""
    return TASKS.get(run.config.task.name).loss_unit


def measure_label(run: Run, value: str) -> str:
    """An axis label for a metric value: its name and the unit its metric declares."""
    unit = value_unit(value)
    unit = loss_unit(run) if unit == LOSS_UNIT else unit or "unit not declared"
    return f"{value.replace('_', ' ')} ({unit})"


def _lone(steps: np.ndarray) -> str | None:
    """A marker for a curve of one point, which a line alone would not show."""
    return "o" if steps.size == 1 else None


def training_curves(run: Run, transition: Transition | None) -> Figure:
    """Loss and accuracy of every split against steps: the curves the run logged (a single point
    marked), the accuracy panel only if it logged any accuracy."""
    colours = {TRAIN_SPLIT: SPLIT_COLOURS[TRAIN_SPLIT], **split_colours(_splits(run))}
    curves = {
        metric: [(split, c) for split in colours if (c := run.curve(metric, split))[0].size]
        for metric in ("loss", "accuracy")
    }
    panels = [m for m in ("loss", "accuracy") if curves[m] or m == "loss"]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8, 3 * len(panels)), sharex=True, constrained_layout=True, squeeze=False
    )
    for i, (ax, metric) in enumerate(zip(axes[:, 0], panels, strict=True)):
        for split, (steps, values) in curves[metric]:
            label = "training batches" if split == TRAIN_SPLIT else split
            width = 1 if split == TRAIN_SPLIT else 1.5
            ax.plot(steps, values, color=colours[split], lw=width, marker=_lone(steps), label=label)
        ax.set_ylabel(f"loss ({loss_unit(run)})" if metric == "loss" else "accuracy (fraction)")
        _time_axis(ax, run, transition, top=i == 0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    what = " and accuracy" if "accuracy" in panels else ""
    fig.suptitle(f"{run.id}: loss{what} per split ({run.whose()})", fontsize=10)
    return fig


def progress_measures(
    run: Run, transition: Transition | None, measures: tuple[tuple[str, str, int | None], ...]
) -> Figure:
    """Progress measures (the task's) on a shared time axis; per-head measures show every head."""
    fig, axes = plt.subplots(
        len(measures), 1, figsize=(8, 1.9 * len(measures) + 0.8), sharex=True, constrained_layout=True
    )
    for i, (ax, (split, metric, layer)) in enumerate(zip(np.atleast_1d(axes), measures, strict=True)):
        if layer is None:
            steps, values = run.curve(metric, split)
            ax.plot(steps, values, color="k", label=metric, marker=_lone(steps))
            ax.set_title(f"{metric} ({split})", fontsize=9, loc="left")
        else:
            layer = layer % run.layers_heads[0]
            steps, heads = run.head_curves(metric, split)
            for head, values in heads.items():
                if head.startswith(f"{layer}."):
                    ax.plot(steps, values, label=f"head {head}", marker=_lone(steps))
            ax.set_title(f"{metric}, layer {layer} heads ({split})", fontsize=9, loc="left")
        ax.set_ylabel(measure_label(run, metric), fontsize=8)
        _time_axis(ax, run, transition, top=i == 0)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=4, loc="best")
    np.atleast_1d(axes)[-1].set_xlabel("step")
    fig.suptitle(f"{run.id}: progress measures ({run.whose()})", fontsize=10)
    return fig


def attention_patterns(run: Run, steps: list[int], task: Task, split: str, batch: Batch) -> Figure:
    """Every head's attention pattern on one example sequence of a split's batch, at the given
    checkpoints."""
    example = 0
    labels = task.token_labels(batch, example)
    L, H = run.layers_heads
    T = len(labels)
    fig, axes = plt.subplots(
        len(steps),
        L * H,
        figsize=(max(2.3 * L * H + 1, 6), 2.4 * len(steps) + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    for row, step in enumerate(steps):
        model = run.model(step)
        _, cache = model.run_with_cache(
            batch.inputs[example : example + 1], names_filter=lambda n: n.endswith("hook_pattern")
        )
        for layer in range(L):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # (H, T, T)
            for head in range(H):
                ax = axes[row, layer * H + head]
                image = ax.imshow(pattern[head].numpy(), cmap="viridis", vmin=0, vmax=1)
                ax.set_title(f"head {layer}.{head}, step {step}", fontsize=8)
                ticks = range(T) if T <= 24 else sorted({*range(0, T, max(1, T // 12)), T - 1})
                ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=90, fontsize=6)
                ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=6)
                ax.set_xlabel("key token", fontsize=7)
                ax.set_ylabel("query token", fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention (query row sums to 1)")
    fig.suptitle(f"attention on {split} sequence 0 (rows: query, columns: key), {run.whose()}", fontsize=9)
    return fig
