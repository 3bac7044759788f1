"""von Oswald et al. (ICML 2023): transformers learn in context by gradient descent.

Linear self-attention models train on in-context linear regression (configs/gd.yaml: d = N = 10,
r = 1, Adam 1e-3 with b2 0.98 after clipping the gradient's norm to 0.001, Haiku's
VarianceScaling(0.002 / layers) init, batch 2048, 5,000 steps, one layer's weights applied at every
layer: the authors' settings, see the config; beyond 2 layers the gradient clip is 10, beyond 3 the
learning rate 5e-4 and the residual stream clipped to +-10, as in their notebook) and are compared
on 10,000 fresh prompts with gradient descent from w = 0, its learning rate tuned on the same
prompts (1, 2 and 5 steps). Quick mode: 1- and 2-layer models, three seeds; full mode: 1, 2 and 5
layers, five seeds; means and spreads over seeds reported. The models meet the first seed's
prompts; the multi-step GD claim, which trains nothing, tunes GD on each seed's.
"""

import numpy as np
import torch

from icl_lab.analysis.gd import compare_with_gd, effective_lr, interpolated_loss, query_predictor, tune_gd
from icl_lab.analysis.summary import summarise
from icl_lab.experiment import ExperimentConfig, build_model, load_config
from icl_lab.models.linear_self_attention import gd_construction
from icl_lab.reproduce.base import REPRODUCTIONS, Claim, Reproduction, judged_by_seed, mean_spread, numbers
from icl_lab.seeding import generator
from icl_lab.store.run import Run
from icl_lab.tasks import Task

GD_STEPS = (1, 2, 5)
PAPER_GD_LOSS = {1: 0.204, 2: 0.157, 5: 0.108}  # multi-step GD, checked
EVAL_PROMPTS = 10_000


def _loss(run: Run, tokens: torch.Tensor, targets: torch.Tensor) -> float:
    """A run's final model's half squared error at the query."""
    with torch.no_grad():
        return (0.5 * (query_predictor(run.model())(tokens) - targets) ** 2).mean().item()


def _plateau(run: Run) -> tuple[int, int]:
    """(last step with the training loss within 2% of its first value, first step within 2% of its
    last value)."""
    steps, loss = run.curve("loss", "train")
    return int(steps[loss >= 0.98 * loss[0]].max()), int(steps[loss <= 1.02 * loss[-1]].min())


@REPRODUCTIONS.register("gd")
class GradientDescent(Reproduction):
    """Trained linear self-attention against the gradient-descent construction."""

    title = "von Oswald et al. 2023: transformers learn in context by gradient descent"
    full_scale = "1, 2 and 5 layers, five seeds"
    quick_budget = "4-7 minutes on 2 CPU cores (measured 2026-12-03 and, on a slower day, 2026-12-05)"
    eval_prompts = EVAL_PROMPTS

    def experiments(self, quick: bool) -> dict[str, ExperimentConfig]:
        seeds, layers = ((0, 1, 2), (1, 2)) if quick else ((0, 1, 2, 3, 4), GD_STEPS)
        return {
            f"{n} layer s{seed}": load_config(
                "gd",
                [
                    f"model.n_layers={n}",
                    f"model.init_scale={0.002 / n}",  # the authors' config.init_scale = 0.002 / num_layers
                    f"training.grad_clip={0.001 if n <= 2 else 10}",  # their grad_clip_value
                    f"training.optimizer.lr={0.001 if n <= 3 else 0.0005}",  # their lr
                    f"model.clip={0 if n <= 3 else 10}",  # their clip (of activations)
                    f"seed={seed}",
                    f"name=gd-{n}layer-s{seed}",
                ],
            )
            for n in layers
            for seed in seeds
        }

    def claims(self, runs: dict[str, Run], quick: bool) -> list[Claim]:
        first = next(iter(runs.values()))
        task, _ = first.eval_data()
        seeds = sorted({run.config.seed for run in runs.values()})
        prompts = {seed: self._prompts(task, seed) for seed in seeds}
        tuned = {seed: self._tuned(*prompts[seed]) for seed in seeds}
        tokens, targets = prompts[first.config.seed]
        gd, plus = tuned[first.config.seed]
        layers = sorted({run.config.model.n_layers for run in runs.values()})

        def by_layers(n: int) -> list[Run]:
            return [run for run in runs.values() if run.config.model.n_layers == n]

        one = [self._one_layer(run, tokens, targets, gd[1][0]) for run in by_layers(1)]
        loss, cosine, diff, interp, lr = (float(np.mean([r[i] for r in one])) for i in range(5))
        spread = [mean_spread([r[i] for r in one], ".4f" if i in (0, 1, 3) else ".3f") for i in range(5)]
        one_seeds = tuple(run.config.seed for run in by_layers(1))
        lr_gd, _, loss_gd = gd[1]
        plateaus = [summarise(run).main for run in by_layers(1)]
        claims = [
            Claim(
                "a trained 1-layer linear self-attention model reaches the loss of the best single GD step",
                "0.2079 vs 0.2074",
                f"{spread[0]} vs {loss_gd:.4f} (zero predictor {(0.5 * targets**2).mean():.4f})",
                abs(loss - loss_gd) <= 0.02 * loss_gd,
                one_seeds,
            ),
            Claim(
                "its sensitivities d y_hat / d x_q and predictions match one GD step",
                "cosine 0.9993, mean abs(y_TF - y_GD) 0.023",
                f"cosine {spread[1]}, mean abs(y_TF - y_GD) {spread[2]}",
                cosine >= 0.99 and diff <= 0.05,
                one_seeds,
            ),
            Claim(
                "its learned step size equals the best GD step (lr / N)",
                "0.607 vs 0.590",
                f"{spread[4]} vs {lr_gd / 10:.3f}",
                abs(lr - lr_gd / 10) <= 0.05 * lr_gd / 10,
                one_seeds,
            ),
            Claim(
                "the model halfway between its weights and the construction's is as good",
                "interpolated loss stays at the GD level (paper Fig. 2)",
                f"{spread[3]} vs GD {loss_gd:.4f}",
                interp <= 1.05 * max(loss, loss_gd),
                one_seeds,
            ),
            Claim(
                "training shows a plateau, then an abrupt drop to the GD solution",
                "plateau to ~step 1,500 (SPEC, checked); the authors' saved notebook curve "
                "(constructed_token_setup.ipynb, first commit) falls from the zero predictor's loss "
                "to GD's by step ~400 with no plateau visible at its 100-step sampling",
                "; ".join(
                    (
                        f"transition {t.before:.3f} -> {t.after:.3f}, midpoint step {t.midpoint:,.0f}"
                        if t
                        else "no abrupt transition detected"
                    )
                    + f" (loss within 2% of the zero predictor's until step {plateau:,}, within 2% of its "
                    f"final value from step {reached:,}; seed {run.config.seed})"
                    for t, (plateau, reached), run in zip(
                        plateaus, map(_plateau, by_layers(1)), by_layers(1), strict=True
                    )
                ),
                all(t is not None for t in plateaus),
                one_seeds,
            ),
        ]
        losses = {n: [_loss(run, tokens, targets) for run in by_layers(n)] for n in layers}
        trained = {n: float(np.mean(v)) for n, v in losses.items()}
        claims.append(  # no training: each seed draws its own evaluation prompts and tunes GD on them
            judged_by_seed(
                "multi-step GD (tuned step size) loss for 1 / 2 / 5 steps",
                numbers(PAPER_GD_LOSS.values(), ".3f"),
                [
                    (
                        seed,
                        all(abs(g[k][2] - PAPER_GD_LOSS[k]) <= 0.01 for k in GD_STEPS),
                        f"seed {seed}: {numbers([loss for *_, loss in g.values()], '.3f')} "
                        f"(GD++ with tuned gamma: {numbers([loss for *_, loss in p.values()], '.3f')})",
                    )
                    for seed, (g, p) in tuned.items()
                ],
                "within 0.01 of the paper at every step count",
            )
        )
        claims.append(
            Claim(
                "trained K-layer models beat K steps of GD, approaching GD++ (curvature correction)",
                "trained multi-layer LSA outperforms plain GD, close to GD++ (paper Fig. 4)",
                ", ".join(
                    f"K={k}: trained {mean_spread(losses[k], '.3f')}, GD {gd[k][2]:.3f}, "
                    f"GD++ {plus[k][2]:.3f}"
                    for k in layers
                ),
                all(trained[k] < gd[k][2] and trained[k] <= plus[k][2] + 0.01 for k in layers[1:]),
            )
        )
        return claims

    def _prompts(self, task: Task, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, query targets) of the evaluation prompts drawn for a seed."""
        batch = task.sample(self.eval_prompts, generator(seed, "gd", "eval prompts"))
        return batch.inputs, batch.targets[:, 0]

    @staticmethod
    def _tuned(tokens: torch.Tensor, targets: torch.Tensor) -> tuple[dict[int, tuple], dict[int, tuple]]:
        """GD and GD++ tuned on these prompts, by step count: ({steps: (lr, gamma, loss)}, same for GD++)."""
        return (
            {steps: tune_gd(tokens, targets, steps) for steps in GD_STEPS},
            {steps: tune_gd(tokens, targets, steps, plus_plus=True) for steps in GD_STEPS},
        )

    @staticmethod
    def _one_layer(run: Run, tokens: torch.Tensor, targets: torch.Tensor, lr: float) -> tuple[float, ...]:
        """(loss, cosine, prediction difference, interpolated loss, effective lr / N) of a run."""
        model = run.model()
        result = compare_with_gd(query_predictor(model), tokens, targets, lr)
        construction = build_model(run.config)
        gd_construction(construction, lr, run.config.task.n_points)
        interp = interpolated_loss(model, construction, tokens, targets)
        return result.model_loss, result.cosine, result.prediction_diff, interp, effective_lr(model)
