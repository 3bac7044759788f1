"""Figures of the Kissane reproduction: the L0-CE-recovered frontier, each head's features by
family, and induction attention against prefix length, clean and with the source's context broken."""

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from icl_lab.analysis.prefix_induction import PrefixProbe
from icl_lab.report.html import save_png
from icl_lab.sae.dashboard import draw_head_families

if TYPE_CHECKING:
    from icl_lab.reproduce.kissane import Decomposition

MARKERS = {"relu_l1": "o", "topk": "s", "batchtopk": "^"}


def frontier_figure(points: list[tuple[str, float, float]], path: Path, where: str, seed: int) -> Path:
    """CE loss recovered against L0 (log axis) for each architecture's SAEs."""
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    for architecture, marker in MARKERS.items():
        mine = sorted((l0, ce) for a, l0, ce in points if a == architecture)
        if mine:
            ax.plot(*zip(*mine, strict=True), marker=marker, label=architecture)
    ax.set(
        xscale="log",
        xlabel="L0 (features active per token, held-out tokens)",
        ylabel="CE loss recovered (fraction of the zero-ablation gap)",
        title=f"SAEs on {where}, seed {seed}",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, path)
    return path


def heads_figure(main: dict[str, "Decomposition"], path: Path, seed: int) -> Path:
    """One panel per main SAE: each head's dominated features, stacked by family, among the features
    whose decoder rows left their random initialisation (the others' head shares are chance)."""
    fig, axes = plt.subplots(
        1, len(main), figsize=(2.6 * len(main), 3.6), constrained_layout=True, squeeze=False
    )
    for ax, d in zip(axes[0], main.values(), strict=True):
        draw_head_families(ax, d.shares[d.moved], d.families[d.moved], d.layer)
        ax.set_title(d.label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(
        "features dominated by each head (decoder share >= 0.5), by family, among decoder rows that "
        f"left their initialisation; seed {seed}",
        fontsize=9,
    )
    save_png(fig, path)
    return path


def prefix_figure(
    probes: dict[str, PrefixProbe], types: dict[str, dict[str, str]], path: Path, seed: int
) -> Path:
    """Per model, each induction head's attention to the induction source against prefix length,
    clean (solid) and with the token two before the source replaced (dashed)."""
    fig, axes = plt.subplots(
        1, len(probes), figsize=(4.2 * len(probes), 3.6), constrained_layout=True, squeeze=False
    )
    for ax, (name, probe) in zip(axes[0], probes.items(), strict=True):
        for i, (head, kind) in enumerate(types[name].items()):
            layer, h = map(int, head.split("."))
            colour = f"C{i}"
            ax.plot(probe.lengths, probe.clean[:, layer, h], color=colour, label=f"{head} ({kind})")
            ax.plot(probe.lengths, probe.corrupted[:, layer, h], color=colour, ls="--")
        ax.set(
            xlabel="copied prefix length (tokens)",
            ylabel="attention to the induction source (attention share)",
            title=name,
            ylim=(0, 1),
        )
        ax.set_xlim(min(probe.lengths), max(probe.lengths))
        ax.grid(alpha=0.3)
        if types[name]:
            ax.legend(fontsize=7)
        else:
            note = "no induction head\n(no head attends >= 10 x uniform)"
            ax.text(0.5, 0.5, note, ha="center", transform=ax.transAxes)
    fig.suptitle(
        f"solid: clean; dashed: token two before the source replaced (400 sequences each, seed {seed})"
    )
    save_png(fig, path)
    return path
