"""Garg et al. (2022), function classes in context, and sliding-window sequential functions with
randomised labels (Campbell et al. 2023), at CPU scale.

Quick mode: a 3-layer transformer (configs/function_classes.yaml) learns linear functions with
d = 3 from 9 pairs, compared with the baselines on
1,000 fresh prompts; and the same model on the sliding-window class (window 2) trained with 0, 25
and 50% of labels randomised, scored on clean prompts. Full mode: d = 20, 41 pairs, Garg et al.'s
curriculum and 12-layer width-256 model, 50k steps.
"""

from collections.abc import Callable
from pathlib import Path

import torch

from icl_lab.analysis.function_classes import ErrorCurve, curves, plot_curves
from icl_lab.baselines.regression import averaging, least_squares, nearest_neighbours, ridge
from icl_lab.experiment import ExperimentConfig, build_task, load_config
from icl_lab.reproduce.base import REPRODUCTIONS, Claim, Reproduction, numbers
from icl_lab.store.run import Run
from icl_lab.tasks.base import Batch

RATES = (0.0, 0.25, 0.5)
LINEAR_BASELINES = {"least squares": least_squares, "averaging": averaging, "3-nn": nearest_neighbours}
EVAL_PROMPTS = 1000


def _windowed(window: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Least squares on the concatenated window of inputs (the sliding-window class's own solver)."""

    def baseline(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        padded = torch.cat([xs.new_zeros(xs.shape[0], window - 1, xs.shape[2]), xs], 1)
        return least_squares(padded.unfold(1, window, 1).flatten(2), ys)

    return baseline


def _eval_batch(run: Run, split: str) -> Batch:
    return build_task(run.config).eval_splits()[split](EVAL_PROMPTS, torch.Generator().manual_seed(777))


@REPRODUCTIONS.register("function-classes")
class FunctionClasses(Reproduction):
    """Does a trained transformer track least squares, and how does ICL of sequential functions
    survive randomised labels?"""

    title = "Garg et al. 2022 (function classes) and Campbell et al. 2023 (sliding windows)"
    quick_budget = "about 10 minutes on 2 CPU cores"

    def experiments(self, quick: bool) -> dict[str, ExperimentConfig]:
        scale = (
            []
            if quick
            else [
                "task.dim=20",
                "task.n_points=41",
                "task.dims_curriculum={start: 5, end: 20, increment: 1, every: 2000}",
                "task.points_curriculum={start: 11, end: 41, increment: 2, every: 2000}",
                "training.optimizer.lr=1e-4",
                "model.n_layers=12",
                "model.d_model=256",
                "model.n_heads=8",
                "training.length.steps=50000",
                "eval.every.steps=1000",
            ]
        )
        experiments = {"linear": load_config("function_classes", [*scale, "name=fc-linear"])}
        for rate in RATES:
            experiments[f"window p={rate}"] = load_config(
                "function_classes",
                [
                    *scale,
                    f"name=fc-window-{int(rate * 100)}",
                    "task.function=sliding_window",
                    "task.window=2",
                    f"task.label_randomisation={rate}",
                    "task.splits=[train, clean]",
                ],
            )
        return experiments

    def _linear_curves(self, run: Run) -> dict[str, ErrorCurve]:
        batch = _eval_batch(run, "clean")
        return curves(
            batch, run.config.task.dim, {"transformer": run.model()}, {**LINEAR_BASELINES, "ridge": ridge}
        )

    def claims(self, runs: dict[str, Run], quick: bool) -> list[Claim]:
        linear = self._linear_curves(runs["linear"])
        d = runs["linear"].config.task.dim
        ours, ls = linear["transformer"].mean, linear["least squares"].mean
        after = slice(d, None)
        claims = [
            Claim(
                f"a trained transformer tracks least squares: error about 0 from k = d (d = {d})",
                "error ~0 at k = d (Garg et al. Fig. 2; least squares 0.000 at k = d = 20)",
                f"transformer {numbers(ours[: d + 2])} vs least squares {numbers(ls[: d + 2])} "
                f"at k = 0..{d + 1}",
                bool(ours[after].max() < 0.1),
            ),
            Claim(
                "it beats averaging and 3-nearest-neighbours at every k >= 2",
                "transformer below both baselines (Garg et al. Fig. 2)",
                f"at k = 2..{len(ours) - 1}: transformer {numbers(ours[2:])}; averaging "
                f"{numbers(linear['averaging'].mean[2:])}; 3-nn {numbers(linear['3-nn'].mean[2:])}",
                bool(
                    (ours[2:] < linear["averaging"].mean[2:]).all()
                    and (ours[2:] < linear["3-nn"].mean[2:]).all()
                ),
            ),
        ]
        window = {rate: runs[f"window p={rate}"] for rate in RATES}
        last = {}
        for rate, run in window.items():
            found = curves(
                _eval_batch(run, "clean"),
                run.config.task.dim,
                {"transformer": run.model()},
                {"windowed least squares": _windowed(run.config.task.window)},
            )
            last[rate] = (
                found["transformer"].mean[-3:].mean().item(),
                found["windowed least squares"].mean[-3:].mean().item(),
            )
        claims.append(
            Claim(
                "in-context learning of sliding-window functions survives randomised training labels",
                "labels randomised at increasing rates degrade ICL less than expected (Campbell et al.)",
                "clean-prompt error over the last 3 positions, by training randomisation rate: "
                + ", ".join(f"p={rate}: {err:.2f}" for rate, (err, _) in last.items())
                + f" (windowed least squares {last[0.0][1]:.2f}; zero predictor 1.00)",
                bool(last[RATES[-1]][0] < 0.5),
            )
        )
        return claims

    def figures(self, runs: dict[str, Run], out: Path) -> list[Path]:
        run = runs["linear"]
        c = run.config
        steps = c.training.length.steps
        title = (
            f"linear functions, d = {c.task.dim}: squared error / d against in-context examples\n"
            f"{EVAL_PROMPTS:,} prompts, 95% bootstrap bands; transformer after {steps:,} steps = "
            f"{steps * c.training.batch_size:,} sequences (seed {c.seed})"
        )
        return [plot_curves(self._linear_curves(run), title, out / "function_classes_linear.png")]
