"""Reddy's phase diagrams as sweeps: ICL vs IWL over burstiness x classes and Zipf exponent x noise,
and Chan et al.'s finding that in-context learning needs both burstiness and many classes.

Quick mode runs the bundled sweeps configs/sweeps/reddy_bk.yaml and reddy_alpha_eps.yaml (63 runs
of Reddy's network with Adam, three seeds) and reddy_eps_sgd.yaml (the noise effect at the paper's
optimiser, SGD 0.01 and batch 128, for 6,000 steps, three seeds), judging the noise effect at each
optimiser and at several budgets; full mode runs the first two at the paper's optimiser (SGD 0.01,
batch 128) for 60,000 of its 150,000 steps, six seeds: meant for a GPU or a Ray cluster.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa

from icl_lab.reproduce.base import REPRODUCTIONS, TOLERANCE, Claim, SweepReproduction, numbers
from icl_lab.store.run import Run
from icl_lab.sweeps.config import SweepConfig, load_sweep


def mean_grid(table: pa.Table, y: str, x: str, metric: str) -> tuple[list, list, np.ndarray]:
    """(y values, x values, mean over seeds of metric) from a sweep's results table."""
    rows = [r for r in table.to_pylist() if r["status"] == "complete"]
    ys, xs = sorted({r[y] for r in rows}), sorted({r[x] for r in rows})
    grid = np.full((len(ys), len(xs)), np.nan)
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            values = [r[metric] for r in rows if r[y] == yv and r[x] == xv]
            grid[i, j] = np.mean(values) if values else np.nan
    return ys, xs, grid


def share_monotone(grid: np.ndarray, rising: bool) -> float:
    """Share of neighbouring cells (along both axes) that move the stated way, ties within TOLERANCE."""
    sign = 1 if rising else -1
    steps = np.concatenate([np.diff(grid, axis=0).ravel(), np.diff(grid, axis=1).ravel()]) * sign
    steps = steps[~np.isnan(steps)]
    return float((steps > -TOLERANCE).mean())


def _table(ys: list, xs: list, grid: np.ndarray, y: str) -> str:
    return "; ".join(f"{y}={yv}: {numbers(row)}" for yv, row in zip(ys, grid, strict=True))


@REPRODUCTIONS.register("reddy-phase")
class ReddyPhase(SweepReproduction):
    """Phase diagrams of in-context vs in-weights learning, checked against Reddy and Chan."""

    title = "Reddy 2024 and Chan et al. 2022: phase diagrams of in-context vs in-weights learning"
    full_scale = (
        "the phase-diagram sweeps at the paper's optimiser for 60,000 of its 150,000 steps, six seeds"
    )
    quick_budget = "25-26 minutes on 2 CPU cores (three seeds, 72 runs, measured 2026-12-03 and 2026-12-05)"

    def sweeps(self, quick: bool) -> dict[str, SweepConfig]:
        paper = [
            "training.length={steps: 60000}",
            "eval.every={steps: 1000}",
            "eval.batch_size=5000",
            "checkpointing.every=null",
        ]
        full = [] if quick else ["base=reddy_paper", f"overrides={paper}", "seeds=[0, 1, 2, 3, 4, 5]"]
        sweeps = {name: load_sweep(name, full) for name in ("reddy_bk", "reddy_alpha_eps")}
        # at full scale reddy_alpha_eps itself runs the paper's optimiser
        return {"reddy_eps_sgd": load_sweep("reddy_eps_sgd"), **sweeps} if quick else sweeps

    def judge(self, results: dict[str, pa.Table], quick: bool) -> list[Claim]:
        bk = results["reddy_bk"]
        Bs, Ks, ic = mean_grid(bk, "task.burstiness", "task.n_classes", "ic/accuracy")
        _, _, iw = mean_grid(bk, "task.burstiness", "task.n_classes", "iw/accuracy")
        up, down = share_monotone(ic, rising=True), share_monotone(iw, rising=False)
        claims = [
            Claim(
                "in-context accuracy rises with burstiness B and classes K while in-weights accuracy falls",
                "qualitative (Reddy Fig. 2)",
                f"IC: {_table(Bs, Ks, ic, 'B')} (columns K = {Ks}); IW: {_table(Bs, Ks, iw, 'B')}; "
                f"neighbours in the stated direction: IC {up:.0%}, IW {down:.0%}",
                up >= 0.8 and down >= 0.8,
            )
        ]
        no_bursts = ic[Bs.index(0)] if 0 in Bs else np.array([np.nan])
        bursty = ic[[i for i, b in enumerate(Bs) if b > 0]]
        few, many = bursty[:, 0], bursty[:, -1]
        claims.append(
            Claim(
                "in-context learning needs both bursty contexts and many classes (Chan et al.)",
                "qualitative (Chan et al. Fig. 2)",
                f"IC without bursts (B = 0): {numbers(no_bursts)}; bursty with K = {Ks[0]}: {numbers(few)}; "
                f"bursty with K = {Ks[-1]}: {numbers(many)}",
                bool(np.nanmax(no_bursts) < 0.2 and many.max() > 0.5 and (many - few).min() > 0.1),
            )
        )
        ae = results["reddy_alpha_eps"]
        alphas, noises, ic2 = mean_grid(ae, "task.zipf_alpha", "task.noise", "ic/accuracy")
        _, _, iw2 = mean_grid(ae, "task.zipf_alpha", "task.noise", "iw/accuracy")
        rises = bool(
            np.all(ic2[:, -1] >= ic2[:, 0] - TOLERANCE) and np.all(iw2[:, -1] <= iw2[:, 0] + TOLERANCE)
        )
        claims.append(
            Claim(
                "more within-class noise epsilon raises in-context and lowers in-weights accuracy",
                "qualitative (Reddy Fig. 2)",
                f"IC: {_table(alphas, noises, ic2, 'alpha')} (columns epsilon = {noises}); "
                f"IW: {_table(alphas, noises, iw2, 'alpha')}",
                rises,
            )
        )
        if "reddy_eps_sgd" in results:
            claims.append(_noise_by_budget(results["reddy_eps_sgd"], alphas, noises, ic2, iw2))
        both = np.minimum(ic2, iw2).max(axis=1)  # best coexistence over epsilon, per alpha
        middle = int(np.argmin(np.abs(np.array(alphas) - 1.0)))
        claims.append(
            Claim(
                "a Zipf exponent near 1 lets in-context and in-weights learning coexist",
                "alpha ~ 1 (Reddy; Chan et al.)",
                "best min(IC, IW) over epsilon: "
                + ", ".join(f"alpha={a}: {v:.2f}" for a, v in zip(alphas, both, strict=True)),
                bool(both[middle] >= 0.3 and both[middle] == both.max()),
            )
        )
        return claims


BUDGETS = (2000, 4000, 6000)  # steps at which the SGD sweep's noise effect is read


def _noise_by_budget(
    sgd: pa.Table, alphas: list, noises: list, ic_adam: np.ndarray, iw_adam: np.ndarray
) -> Claim:
    """The noise effect at the paper's optimiser, read at several budgets from the runs' curves
    (mean over seeds), beside Adam's at alpha = 0; judged at the longest budget."""
    rows = [r for r in sgd.to_pylist() if r["status"] == "complete"]
    eps = sorted({r["task.noise"] for r in rows})
    curves = {  # (row, split) -> (steps, accuracy), each run read once
        (i, split): Run.open(Path(r["run"])).curve("accuracy", split, member=r["member"])
        for i, r in enumerate(rows)
        for split in ("ic", "iw")
    }
    at = {  # (split, budget) -> accuracy per epsilon, mean over seeds
        (split, budget): [
            float(
                np.mean(
                    [np.interp(budget, *curves[i, split]) for i, r in enumerate(rows) if r["task.noise"] == e]
                )
            )
            for e in eps
        ]
        for split in ("ic", "iw")
        for budget in BUDGETS
    }
    seeds = sorted({r["seed"] for r in rows})
    zero = alphas.index(0.0) if 0.0 in alphas else 0
    ours = (
        f"Adam 1e-3, 1,500 steps (alpha = {alphas[zero]}): IC {numbers(ic_adam[zero])}, IW "
        f"{numbers(iw_adam[zero])} at epsilon = {noises}; SGD 0.01 (the paper's), epsilon = {eps}: "
        + "; ".join(f"{b:,} steps IC {numbers(at['ic', b])}, IW {numbers(at['iw', b])}" for b in BUDGETS)
        + f" (seeds {', '.join(map(str, seeds))})"
    )
    ic, iw = at["ic", BUDGETS[-1]], at["iw", BUDGETS[-1]]
    return Claim(
        "at the paper's optimiser, more within-class noise epsilon raises in-context and lowers "
        "in-weights accuracy (the sign read at each budget)",
        "qualitative (Reddy Fig. 2: SGD 0.01, batch 128, 150k steps)",
        ours,
        ic[-1] >= ic[0] + TOLERANCE and iw[-1] <= iw[0] - TOLERANCE,
        tuple(seeds),
    )
