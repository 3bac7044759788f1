"""Error against the number of in-context examples, for trained models and the regression baselines
(Garg et al. 2022): squared error divided by d at each prefix length k, mean over prompts with a
bootstrap interval, and the figure that puts them side by side."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from icl_lab.baselines.regression import bootstrap_ci, normalised_error
from icl_lab.models.base import Model
from icl_lab.tasks.base import Batch


@dataclass(frozen=True)
class ErrorCurve:
    """Normalised squared error per prefix length k = 0 .. K-1, with a 95% bootstrap interval."""

    mean: Tensor
    low: Tensor
    high: Tensor


def error_curve(predictions: Tensor, ys: Tensor, dim: int) -> ErrorCurve:
    errors = normalised_error(predictions, ys, dim)
    low, high = bootstrap_ci(errors)
    return ErrorCurve(errors.mean(0), low, high)


@torch.no_grad()
def model_predictions(model: Model, batch: Batch) -> Tensor:
    """A trained model's prediction at every x position of a function-class batch: (B, K)."""
    logits = model(batch.inputs)
    return logits[:, 0::2, 0] if logits.shape[1] == batch.inputs.shape[1] else logits[..., 0]


def curves(
    batch: Batch, dim: int, models: dict[str, Model], baselines: dict[str, Callable[[Tensor, Tensor], Tensor]]
) -> dict[str, ErrorCurve]:
    """Error curves of each model and each baseline on the same prompts; baselines fit the labels the
    prompt shows and, like the models, are scored against the batch's targets."""
    xs, shown, ys = batch.meta["xs"], batch.meta["ys"], batch.targets
    found = {name: error_curve(model_predictions(m, batch), ys, dim) for name, m in models.items()}
    found |= {name: error_curve(fn(xs, shown), ys, dim) for name, fn in baselines.items()}
    return found


def plot_curves(panels: dict[str, dict[str, ErrorCurve]], title: str, path: Path) -> Path:
    """Error against in-context examples: one panel per entry (e.g. an evaluation split), one line
    per model or baseline in each, bands for the intervals."""
    fig, axes = plt.subplots(
        1, len(panels), figsize=(2 + 4 * len(panels), 4.6), constrained_layout=True, squeeze=False
    )
    for ax, (panel, found) in zip(axes[0], panels.items(), strict=True):
        for name, curve in found.items():
            k = torch.arange(len(curve.mean))
            ax.plot(k, curve.mean, label=name, lw=2.2 if name.startswith("transformer") else 1.3)
            ax.fill_between(k, curve.low, curve.high, alpha=0.2)
        ax.set_xlabel("in-context examples k")
        ax.set_ylabel("squared error / d")
        # k = 0 is the zero predictor's error (the label scale); above 1.5 times that, nothing to see
        ax.set_ylim(0, 1.5 * max(curve.mean[0].item() for curve in found.values()))
        ax.set_title(panel, fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
