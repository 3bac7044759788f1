"""Error against the number of in-context examples, for trained models and the regression baselines
(Garg et al. 2022): squared error divided by d at each prefix length k, mean over prompts with a
bootstrap interval, and the figure that puts them side by side (the run report's and the
reproduction's)."""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from icl_lab.analysis.summary import units_text
from icl_lab.baselines.regression import (
    averaging,
    bootstrap_ci,
    least_squares,
    nearest_neighbours,
    normalised_error,
    ridge,
    windowed_least_squares,
)
from icl_lab.models.base import Model
from icl_lab.report.html import save_png
from icl_lab.seeding import generator
from icl_lab.store.run import Run
from icl_lab.tasks.base import Batch
from icl_lab.tasks.function_classes import FunctionClassesConfig

Baseline = Callable[[Tensor, Tensor], Tensor]
EVAL_PROMPTS = 1000


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
    batch: Batch, dim: int, models: dict[str, Model], baselines: dict[str, Baseline]
) -> dict[str, ErrorCurve]:
    """Error curves of each model and each baseline on the same prompts; baselines fit the labels the
    prompt shows and, like the models, are scored against the batch's targets."""
    xs, shown, ys = batch.meta["xs"], batch.meta["ys"], batch.targets
    found = {name: error_curve(model_predictions(m, batch), ys, dim) for name, m in models.items()}
    found |= {name: error_curve(fn(xs, shown), ys, dim) for name, fn in baselines.items()}
    return found


def baselines_for(task: FunctionClassesConfig) -> dict[str, Baseline]:
    """The vectorised baselines (Garg et al.'s linear ones, and for sliding windows the windowed
    solver); Lasso, trees and the small network are loops, left to be asked for."""
    found: dict[str, Baseline] = {
        "least squares": least_squares,
        "ridge": ridge,
        "averaging": averaging,
        "3-nn": nearest_neighbours,
    }
    if task.function == "sliding_window":
        found["windowed least squares"] = windowed_least_squares(task.window)
    return found


def curve_prompts(run: Run, split: str) -> Batch:
    """EVAL_PROMPTS fresh prompts of one evaluation split, drawn from the run's seed (the same
    prompts each call)."""
    task, _ = run.eval_data()
    return task.eval_splits()[split](EVAL_PROMPTS, generator(run.config.seed, "error_curves", split))


def run_curves(run: Run, split: str, step: int | None = None) -> dict[str, ErrorCurve]:
    """A function-class run's model ("transformer", at a checkpoint, default the latest) against
    the baselines, on the curve prompts of one evaluation split."""
    config = run.config.task
    return curves(
        curve_prompts(run, split), config.dim, {"transformer": run.model(step)}, baselines_for(config)
    )


def plot_curves(panels: dict[str, dict[str, ErrorCurve]], title: str, path: Path) -> Path:
    """Error against in-context examples: one panel per entry (e.g. an evaluation split), one line
    per model or baseline in each, bands for the intervals."""
    columns = min(len(panels), 3)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(2 + 4 * columns, 0.6 + 4 * rows), constrained_layout=True, squeeze=False
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (panel, found) in zip(axes.flat, panels.items(), strict=False):
        for name, curve in found.items():
            k = torch.arange(len(curve.mean))
            ax.plot(k, curve.mean, label=name, lw=2.2 if name.startswith("transformer") else 1.3)
            ax.fill_between(k, curve.low, curve.high, alpha=0.2)
        ax.set_xlabel("in-context examples k")
        ax.set_ylabel("squared error / d")
        # up to 1.5 times the zero predictor's error (k = 0) or the models' worst; a baseline that
        # blows up (least squares at k = d on noisy labels) leaves the frame
        scale = [curve.mean[0] for curve in found.values()]
        scale += [curve.mean.max() for name, curve in found.items() if name.startswith("transformer")]
        ax.set_ylim(0, 1.5 * max(scale).item())
        ax.set_title(panel, fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    save_png(fig, path)
    return path


def trained_text(run: Run) -> str:
    """What a figure's model is: its final checkpoint in steps, sequences and tokens, and its seed."""
    return f"transformer after {units_text(run, run.checkpoint_steps[-1])} ({run.whose()})"


def error_curves_png(run: Run, path: Path) -> bytes:
    """The run report's figure: the final model against the baselines on every evaluation split."""
    c = run.config
    title = (
        f"{c.task.function} functions, d = {c.task.dim}: squared error / d against in-context examples; "
        f"{EVAL_PROMPTS:,} prompts per split, 95% bootstrap bands\n{trained_text(run)}"
    )
    return plot_curves({split: run_curves(run, split) for split in c.task.splits}, title, path).read_bytes()
