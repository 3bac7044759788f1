"""What a run showed: transitions of its task's key curve, final metrics, progress measures."""

import math
from dataclasses import dataclass

from icl_lab.analysis.transitions import Transition, detect_transitions, main_transition
from icl_lab.errors import RunStoreError
from icl_lab.evaluation import key_metric
from icl_lab.store.metrics_table import TRAIN_SPLIT
from icl_lab.store.run import Run
from icl_lab.tasks import TASKS


@dataclass
class RunSummary:
    """Transitions of the key curve, and the final value of every head-less metric."""

    key: str
    transitions: list[Transition]
    main: Transition | None
    final: dict[str, dict[str, float]]  # split -> metric -> value at the last evaluation
    final_step: int
    curve_logged: bool = True  # False: no curve (two or more points) to detect transitions on


def summarise(run: Run, member: int | None = None) -> RunSummary:
    """Detect transitions in the task's key curve and collect every metric's final value (of the
    given member, default the handle's)."""
    member = run.member if member is None else member
    split, metric, how = key_metric(run.member_config(member))
    steps, values = run.summary_curve(metric, split, how, member)
    if not values.size:  # a model without the key metric's hooks (a mixer has no attention heads)
        metric, how = "loss", "mean"
        steps, values = run.summary_curve(metric, split, how, member)
    if not values.size:  # eval.metrics leaves the loss out: the training batches' running loss
        split = TRAIN_SPLIT
        steps, values = run.summary_curve(metric, split, how, member)
    transitions = detect_transitions(steps, values)
    rows = [row for row in run.metrics.to_pylist() if row["member"] == member]
    if not rows:  # failed before its first evaluation, or its metrics.parquet is gone
        raise RunStoreError(f"run {run.path} has no evaluations of member {member} to summarise")
    last = max(row["step"] for row in rows)
    final: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["step"] == last and row["head"] is None:
            final.setdefault(row["split"], {})[row["metric"]] = row["value"]
    key = f"{split} {metric}" + (f" ({how} over heads)" if how != "mean" else "")
    if values.size < 2:  # e.g. killed before its second evaluation: nothing to follow
        key = "none: fewer than two evaluations"
    return RunSummary(key, transitions, main_transition(transitions), final, last, values.size >= 2)


def units_text(run: Run, step: float) -> str:
    """'step s = n sequences = t tokens'."""
    sequences, tokens = run.units_at(round(step))
    return f"step {step:,.0f} = {sequences:,} sequences = {tokens:,} tokens"


def summary_lines(run: Run) -> list[str]:
    """Three lines: the transition, the final accuracy (or loss) per split, the progress measures."""
    summary, task = summarise(run), TASKS.get(run.config.task.name)
    seed = run.config.seed
    tr = summary.main
    if not summary.curve_logged:
        first = f"no transition curve: {summary.key.removeprefix('none: ')} (seed {seed})"
    elif tr is None:
        first = f"no abrupt transition in {summary.key} (seed {seed})"
    else:
        first = (
            f"transition in {summary.key}: {tr.before:.2f} -> {tr.after:.2f} between steps "
            f"{tr.onset:,.0f} and {tr.end:,.0f}, midpoint {units_text(run, tr.midpoint)} (seed {seed})"
        )
    finals = [
        f"{split} {values['accuracy']:.2f}" if "accuracy" in values else f"{split} loss {values['loss']:.2f}"
        for split, values in summary.final.items()
        if {"loss", "accuracy"} & set(values) and split in task.all_split_names(run.config.task)
    ]
    measures = []
    for split, metric, layer in task.progress_measures:
        if layer is None:
            values = run.curve(metric, split)[1]
            value, where = (values[-1] if values.size else math.nan), ""
        else:
            layer %= run.config.model.n_layers
            _, heads = run.head_curves(metric, split)
            mine = {h: v[-1] for h, v in heads.items() if h.startswith(f"{layer}.")}
            where = max(mine, key=lambda h: -math.inf if math.isnan(mine[h]) else mine[h], default=None)
            value, where = (mine[where], f" (head {where})") if where else (math.nan, "")
        if not math.isnan(value):
            measures.append(f"{metric} {value:.2f}{where}")
    return [
        first,
        f"final accuracy at step {summary.final_step:,}: " + (", ".join(finals) or "neither logged"),
        "progress measures at the end: " + ", ".join(measures),
    ]
