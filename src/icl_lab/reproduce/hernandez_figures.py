"""Figures of the Hernandez reproduction: held-out loss over training and against E, induction
measures against loss on the size ladder, and the Olsson timeline of the largest unique model."""

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from icl_lab.analysis.summary import summarise
from icl_lab.report.html import save_png

if TYPE_CHECKING:
    from icl_lab.reproduce.hernandez import Cell, Model


def _seeds(cells: list["Cell"]) -> str:
    return ", ".join(str(s) for s in sorted({m.seed for c in cells for m in c.models}))


def _save(fig: plt.Figure, path: Path) -> Path:
    save_png(fig, path)
    return path


def figures(cells: list["Cell"], olsson: "Model", out: Path) -> list[Path]:
    """Write the four figures into out and return their paths: cells of the repetition study and
    the unique-data model whose phase change the last one shows."""
    ladder = sorted((c for c in cells if c.epochs == 1), key=lambda c: c.parameters)
    widths = sorted({c.width for c in cells if c.epochs > 1})
    seeds = _seeds(cells)
    paths = []

    fig, axes = plt.subplots(1, len(widths), figsize=(6.5 * len(widths), 4.2), squeeze=False)
    for ax, width in zip(axes[0], widths, strict=True):
        row = sorted((c for c in cells if c.width == width), key=lambda c: c.epochs)
        seed = min(m.seed for c in row for m in c.models)  # every line this seed's run, or none
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(row)))
        for cell, colour in zip(row, colours, strict=True):
            for model in (m for m in cell.models if m.seed == seed):
                tokens, loss = model.curve("loss")
                ax.plot(tokens, loss, color=colour, label=f"E = {cell.epochs:g}")
        for rung in ladder:
            for model in (m for m in rung.models if m.seed == seed and rung.width != width):
                tokens, loss = model.curve("loss")
                ax.plot(tokens, loss, "k--", lw=0.8, alpha=0.6, label=f"unique, d {rung.width}")
        ax.set(xscale="log", xlabel="training tokens", ylabel="held-out loss (nats)")
        ax.set_ylim(top=min(ax.get_ylim()[1], 3.0))
        ax.set_title(f"d {width}: held-out loss over training by repeat count E (seed {seed})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(_save(fig, out / "heldout_over_training.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    for width in widths:
        row = sorted((c for c in cells if c.width == width), key=lambda c: c.epochs)
        ax.plot([c.epochs for c in row], [c.heldout for c in row], "o-", label=f"d {width}, ~10% repeated")
    for rung in ladder:
        ax.axhline(rung.heldout, color="grey", ls=":", lw=1)
        ax.annotate(f"unique d {rung.width}", (1, rung.heldout), fontsize=7, va="bottom")
    ax.set(xscale="log", xlabel="E: epochs of the repeated bank", ylabel="final held-out loss (nats)")
    ax.set_title(f"held-out loss against repeat count (mean over seeds {seeds})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "loss_against_repeats.png"))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, field, label in (
        (axes[0], "prefix_matching", "prefix matching, best head (attention share)"),
        (axes[1], "copy_drop", "copy-loss drop (nats)"),
    ):
        ladder_values = [getattr(c, field) for c in ladder]
        ax.plot([c.heldout for c in ladder], ladder_values, "ks-", label="unique ladder")
        for rung in ladder:
            ax.annotate(f"d {rung.width}", (rung.heldout, getattr(rung, field)), fontsize=7)
        repeated = [c for c in cells if c.epochs > 1]
        points = ax.scatter(
            [c.heldout for c in repeated],
            [getattr(c, field) for c in repeated],
            c=np.log10([c.epochs for c in repeated]),
            cmap="viridis",
        )
        fig.colorbar(points, ax=ax, label="log10 E")
        ax.set(xlabel="final held-out loss (nats)", ylabel=label)
        ax.set_title(f"{label} against loss (repeated points coloured by E; seeds {seeds})", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "induction_against_loss.png"))

    model = olsson
    transition = summarise(model.run, model.member).main
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True, constrained_layout=True)
    for ax, (metric, split, how, label) in zip(
        axes,
        (
            ("loss", "heldout", "mean", "held-out loss (nats)"),
            ("prefix_matching", "repeated", "max", "prefix matching, best head (attention share)"),
            ("icl_score", "heldout", "mean", "held-out ICL score (nats)"),
        ),
        strict=True,
    ):
        tokens, values = model.curve(metric, split, how)
        ax.plot(tokens, values, "o-", ms=2)
        if transition is not None:
            onset, end = (model.run.units_at(s)[1] for s in (transition.onset, transition.end))
            ax.axvspan(onset, end, color="orange", alpha=0.25, label="prefix-matching transition")
        ax.set(xscale="log", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(top=min(axes[0].get_ylim()[1], 3.0))
    axes[-1].set_xlabel("training tokens")
    axes[0].set_title(
        f"Olsson's phase change in the unique-data d {model.width} text model (seed {model.seed})", fontsize=9
    )
    if transition is not None:
        axes[0].legend(fontsize=7)
    paths.append(_save(fig, out / "olsson_timeline.png"))
    return paths
