"""The sweep report: phase diagrams (a metric over two swept fields, mean over seeds with its
spread) and curves (e.g. transition step against a swept field), on one self-contained page."""

import collections
import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import yaml
from matplotlib.figure import Figure

from icl_lab.errors import RunStoreError
from icl_lab.files import atomic_write_text, read_text
from icl_lab.metrics.base import LOSS_UNIT, value_unit
from icl_lab.report.figures import loss_unit
from icl_lab.report.html import figures_html, page, save_png
from icl_lab.store.run import Run
from icl_lab.sweeps.config import CurveSpec, HeatmapSpec, SweepConfig
from icl_lab.sweeps.execute import MOVE_AWAY
from icl_lab.sweeps.run import read_results, sweep_status


def _groups(table: pa.Table, keys: list[str], metric: str) -> dict[tuple, np.ndarray]:
    """{values of keys: metric values over seeds} for complete points that have a value of every
    key (a point of a `points` axis may leave a plotted field out)."""
    groups: dict[tuple, list[float]] = {}
    for row in table.to_pylist():
        if _drawn(row, keys, metric):
            groups.setdefault(tuple(row[k] for k in keys), []).append(row[metric])
    return {k: np.array(v) for k, v in groups.items()}


def _seeds(table: pa.Table, keys: list[str] | None = None, metric: str | None = None) -> str:
    """The seeds of the table, or (given keys and a metric) of the rows a figure of it draws."""
    rows = table.to_pylist()
    if metric is not None:
        rows = [r for r in rows if _drawn(r, keys or [], metric)]
    return ", ".join(str(s) for s in sorted({r["seed"] for r in rows}))


def _drawn(row: dict, keys: list[str], metric: str) -> bool:
    """Whether a results row is one of the values a figure of metric over keys draws."""
    value = row.get(metric)
    complete = row["status"] == "complete" and value is not None and not math.isnan(value)
    return complete and all(row.get(k) is not None for k in keys)


def _when(table: pa.Table, batch_size: int, keys: list[str], metric: str) -> str:
    """'at step N (M sequences)': when the values a figure of metric over keys draws were
    evaluated (the end of each run), or 'at the end of training' where their runs' lengths differ."""
    steps = sorted({r["steps"] for r in table.to_pylist() if _drawn(r, keys, metric)})
    if len(steps) != 1:
        return "at the end of training"
    return f"at step {steps[0]:,} ({steps[0] * batch_size:,} sequences)"


def _no_values(table: pa.Table, metric: str) -> Figure:
    """A figure that says no complete point has a value of `metric` (e.g. no run made the transition)."""
    fig, ax = plt.subplots(figsize=(6.5, 1.5), constrained_layout=True)
    text = f"no complete point has a value of {metric} (seeds {_seeds(table)})"
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    return fig


def _label(metric: str, loss_unit: str) -> str:
    """A result column with its unit: transition steps, the task's loss unit for a loss, else the
    unit the value's metric declares ('split/value' columns)."""
    if metric.startswith("transition_"):
        return f"{metric} (steps)"
    unit = value_unit(metric.rsplit("/", 1)[-1])
    unit = loss_unit if unit == LOSS_UNIT else unit
    return f"{metric} ({unit})" if unit else metric


def heatmap(table: pa.Table, spec: HeatmapSpec, batch_size: int, loss_unit: str = "nats") -> Figure:
    """Mean over seeds of a metric on a grid of two swept fields; cells annotated mean +- std (no
    spread for one seed); a cell whose points have no value says why (diverged, failed, no value),
    so that a blank cell is one the sweep does not have."""
    groups = _groups(table, [spec.y, spec.x], spec.metric)
    if not groups:
        return _no_values(table, spec.metric)
    statuses: dict[tuple, set[str]] = {}
    for row in table.to_pylist():
        if row.get(spec.x) is not None and row.get(spec.y) is not None:
            statuses.setdefault((row[spec.y], row[spec.x]), set()).add(row["status"])
    xs = sorted({k[1] for k in statuses}, key=_order)
    ys = sorted({k[0] for k in statuses}, key=_order)
    mean = np.full((len(ys), len(xs)), np.nan)
    spread = np.full_like(mean, np.nan)
    for (y, x), values in groups.items():
        mean[ys.index(y), xs.index(x)] = values.mean()
        spread[ys.index(y), xs.index(x)] = values.std(ddof=1) if values.size > 1 else np.nan
    fig, ax = plt.subplots(figsize=(1.3 * len(xs) + 2.5, 1.0 * len(ys) + 1.8), constrained_layout=True)
    image = ax.imshow(mean, origin="lower", cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label=_label(spec.metric, loss_unit))
    for (y, x), status in statuses.items():
        i, j = ys.index(y), xs.index(x)
        if np.isnan(mean[i, j]):
            text, colour = "\n".join(sorted(status - {"complete"})) or "no value", "k"
        else:
            text = f"{mean[i, j]:.2f}" + ("" if np.isnan(spread[i, j]) else f"\n±{spread[i, j]:.2f}")
            colour = "w" if mean[i, j] < np.nanmean(mean) else "k"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    keys = [spec.y, spec.x]
    title = f"{spec.metric} {_when(table, batch_size, keys, spec.metric)}"
    title += f"\nmean ± std over seeds {_seeds(table, keys, spec.metric)}"
    ax.set(xlabel=spec.x, ylabel=spec.y, title=title)
    return fig


def curve(table: pa.Table, spec: CurveSpec, batch_size: int, loss_unit: str = "nats") -> Figure:
    """A result against a swept field (one line per value of `by`), mean and std over seeds; a
    step-valued column is shown in steps with sequences on a second axis."""
    keys = [spec.x] + ([spec.by] if spec.by else [])
    groups = _groups(table, keys, spec.metric)
    if not groups:
        return _no_values(table, spec.metric)
    seeds = _seeds(table, keys, spec.metric)
    most = max(v.size for v in groups.values())
    fewer = any(v.size < most for v in groups.values())
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for line in sorted({k[1:] for k in groups}, key=lambda k: tuple(map(_order, k))):
        xs = sorted((k[0] for k in groups if k[1:] == line), key=_order)
        values = [groups[(x, *line)] for x in xs]
        means = [v.mean() for v in values]
        ax.errorbar(
            [str(x) for x in xs],
            means,
            yerr=[v.std(ddof=1) if v.size > 1 else np.nan for v in values],  # one seed: no bar
            marker="o",
            capsize=3,
            label=f"{spec.by}={line[0]}" if spec.by else None,
        )
        for x, mean, v in zip(xs, means, values, strict=True):
            if v.size < most:  # a point resting on fewer seeds than the others says how many
                ax.annotate(
                    f"n={v.size}", (str(x), mean), xytext=(4, 4), textcoords="offset points", fontsize=7
                )
    title = spec.metric
    if not spec.metric.startswith("transition_"):  # a transition's step is read from the whole curve
        title += f" {_when(table, batch_size, keys, spec.metric)}"
    title += f"\nmean ± std over seeds {seeds}" + (" (n=: a point's seeds)" if fewer else "")
    ax.set(xlabel=spec.x, ylabel=_label(spec.metric, loss_unit), title=title)
    if spec.metric.startswith("transition_"):
        right = ax.secondary_yaxis("right", functions=(lambda s: s * batch_size, lambda q: q / batch_size))
        right.set_ylabel("sequences")
    if spec.by:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _order(value: object) -> tuple:
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


def _check_current(sweep_dir: Path, table: pa.Table) -> None:
    """RunStoreError if a unit the results table holds as complete is not, now, on disk (deleted or
    damaged since the sweep last ran): its page would show results its runs no longer hold."""
    complete = {row["unit"] for row in table.to_pylist() if row["status"] == "complete"}
    for unit, _, status in sweep_status(sweep_dir)[1]:
        if unit in complete and status != "complete":
            path = sweep_dir / "runs" / unit  # damaged, or without its manifest: a sweep deletes no run
            unusable = status.startswith("damaged") or (status == "pending" and path.exists())
            again = MOVE_AWAY.format(path) if unusable else "run the sweep again to train it"
            raise RunStoreError(
                f"{sweep_dir}: its results hold {unit} as complete, but that run is now {status}; "
                f"{again}, which refreshes the results"
            )


def write_sweep_report(sweep_dir: Path) -> Path:
    """report/ with a PNG per heatmap and curve of the sweep config, and report.html."""
    config_text = read_text(sweep_dir / "sweep.yaml")
    try:
        sweep = SweepConfig.model_validate(yaml.safe_load(config_text))
        layout = json.loads(read_text(sweep_dir / "plan.json"))
        n_points, n_units = len(layout["points"]), len(layout["units"])
    except (yaml.YAMLError, ValueError, KeyError, TypeError):  # a ValidationError is a ValueError
        raise RunStoreError(f"{sweep_dir} holds a damaged sweep.yaml or plan.json") from None
    table = read_results(sweep_dir)
    _check_current(sweep_dir, table)
    out = sweep_dir / "report"
    out.mkdir(exist_ok=True)
    runs = [row["run"] for row in table.to_pylist() if row["status"] == "complete"]
    first = Run.open(runs[0]) if runs else None
    batch_size = first.units_at(1)[0] if first else 1  # sequences per step
    unit = loss_unit(first) if first else "nats"
    images = {}
    for i, spec in enumerate(sweep.report.heatmaps):
        images[f"{spec.metric} over {spec.y} x {spec.x}"] = save_png(
            heatmap(table, spec, batch_size, unit), out / f"heatmap_{i}.png"
        )
    for i, spec in enumerate(sweep.report.curves):
        images[f"{spec.metric} against {spec.x}"] = save_png(
            curve(table, spec, batch_size, unit), out / f"curve_{i}.png"
        )
    statuses = table.column("status").to_pylist()
    columns = [c for c in table.column_names if c not in ("run", "error", "unit")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row[c]))}</td>" for c in columns) + "</tr>"
        for row in table.to_pylist()
    )
    counts = collections.Counter(statuses)
    tally = ", ".join(f"{counts.pop(s, 0)} {s}" for s in ("complete", "failed")) + "".join(
        f", {n} {s}" for s, n in sorted(counts.items())
    )
    summary = f"{n_points} points in {n_units} runs; {tally}"
    config_text = html.escape(config_text)
    body = f"""<h1>sweep {html.escape(sweep.name)}</h1><p>{html.escape(summary)}</p>{figures_html(images)}
<table><tr>{head}</tr>{body_rows}</table>
<details><summary>sweep.yaml</summary><pre>{config_text}</pre></details>"""
    path = out / "report.html"
    atomic_write_text(path, page(f"icl-lab sweep: {sweep.name}", body))
    return path


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)
