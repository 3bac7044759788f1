"""Summaries of the induction-head experiment read from a run's metrics."""

import numpy as np

from icl_lab.store.run import Run


def best_head(run: Run, metric: str, split: str, layer: int) -> tuple[str, np.ndarray, np.ndarray]:
    """The head of `layer` with the highest final value of a per-head metric: (head, steps, values)."""
    curves = {
        f"{layer}.{h}": run.curve(metric, split, head=f"{layer}.{h}") for h in range(run.config.model.n_heads)
    }
    head = max(curves, key=lambda h: curves[h][1][-1])
    return head, *curves[head]


def first_crossing(steps: np.ndarray, values: np.ndarray, threshold: float) -> int | None:
    """The first step at which values reach the threshold, or None."""
    above = np.flatnonzero(values >= threshold)
    return int(steps[above[0]]) if above.size else None


def induction_summary(run: Run, threshold: float = 0.5) -> list[str]:
    """Three lines: the best induction head's prefix matching, when it crossed the threshold, and
    the ICL score before and after."""
    split = "repeated" if run.config.task.background_share > 0 else "train"
    layer = run.config.model.n_layers - 1
    head, steps, values = best_head(run, "prefix_matching", split, layer)
    crossing = first_crossing(steps, values, threshold)
    _, icl = run.curve("icl_score", split)
    seed = run.config.seed
    lines = [
        f"best layer-{layer} head {head}: prefix matching {values[0]:.2f} at step 0 -> "
        f"{values[-1]:.2f} at step {steps[-1]} (seed {seed})"
    ]
    if crossing is None:
        lines.append(f"no induction head: prefix matching never reached {threshold}")
    else:
        sequences, tokens = run.units_at(crossing)
        lines.append(
            f"phase change: prefix matching first >= {threshold} at step {crossing} "
            f"({sequences:,} sequences, {tokens:,} tokens)"
        )
    lines.append(f"ICL score (late- minus early-token loss, nats): {icl[0]:+.2f} -> {icl[-1]:+.2f}")
    return lines
