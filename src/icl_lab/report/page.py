"""The run report: PNG figures and one self-contained HTML page (images inlined, no network)."""

import html
import math
from pathlib import Path

import numpy as np

from icl_lab.analysis.summary import RunSummary, summarise, units_text
from icl_lab.errors import RunStoreError
from icl_lab.evaluation import key_metric
from icl_lab.experiment import build_model
from icl_lab.files import atomic_write_text
from icl_lab.report import figures
from icl_lab.report.html import figures_html, page, save_png
from icl_lab.store.metrics_table import TRAIN_SPLIT
from icl_lab.store.run import Run
from icl_lab.tasks import Task


def _nearest(steps: list[int], target: float) -> int:
    return min(steps, key=lambda s: abs(s - target))


def write_report(run: Run, out_dir: Path | None = None) -> Path:
    """Write report/training.png, progress.png (if the task has progress measures), the task's own
    figures (Task.report_figures), attention.png (if the model has attention patterns) and
    report/report.html (report/member<M>/ for a handle on member M > 0); return the page."""
    run.check_whole()
    checkpoints = run.checkpoint_steps
    if not checkpoints:
        raise RunStoreError(f"run {run.id} has no checkpoints to report (it stopped before its first)")
    out = out_dir or run.path / "report" / (f"member{run.member}" if run.member else "")
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(run)
    shown = sorted(
        {checkpoints[0], checkpoints[-1]}
        | ({_nearest(checkpoints, summary.main.midpoint)} if summary.main else set())
    )
    task, batches = run.eval_data()
    images = {"Loss and accuracy": save_png(figures.training_curves(run, summary.main), out / "training.png")}
    measures = tuple(m for m in task.progress_measures if run.summary_curve(m[1], m[0])[1].size)
    if measures:  # those the run logged (a mixer model has no per-head measures)
        images["Progress measures"] = save_png(
            figures.progress_measures(run, summary.main, measures), out / "progress.png"
        )
    images |= task.report_figures(run, out)
    if any(name.endswith("attn.hook_pattern") for name in build_model(run.config, "meta").hook_dict):
        split = key_metric(run.config)[0]
        images["Attention patterns at init, transition and end"] = save_png(
            figures.attention_patterns(run, shown, task, split, batches[split]), out / "attention.png"
        )
    path = out / "report.html"
    atomic_write_text(path, _html(run, summary, images, task))
    return path


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _clamps_html(run: Run, last_step: int) -> str:
    """A table of the run's clamps: kind, settings and the steps (and sequences) they were active."""
    if not run.config.clamps:
        return "<p>No clamps: the model trained unperturbed.</p>"
    rows = []
    for clamp in run.config.clamps:
        start, until = clamp.steps.start, clamp.steps.until if clamp.steps.until is not None else last_step
        settings = clamp.model_dump(mode="json", exclude={"kind", "steps"})
        sequences = f"{run.units_at(start)[0]:,} to {run.units_at(until)[0]:,} sequences"
        window = f"steps {start:,} to {until:,} ({sequences})"
        cells = (clamp.kind, ", ".join(f"{k}={v}" for k, v in settings.items()), window)
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    unclamped = "training; evaluations ran unclamped"
    during = "training and evaluation" if run.config.eval.with_clamps else unclamped
    head = f"<tr><th>clamp</th><th>settings</th><th>active ({during})</th></tr>"
    return f"<h2>Clamps</h2><table>{head}{''.join(rows)}</table>"


def _texts_html(texts: dict[str, str]) -> str:
    return "".join(
        f"<h2>{html.escape(title)}</h2><pre>{html.escape(text)}</pre>" for title, text in texts.items()
    )


def _html(run: Run, summary: RunSummary, images: dict[str, bytes], task: Task) -> str:
    cfg = run.config
    rows = [
        ("run", run.id),
        ("status", run.status),
        *(
            [("error", str(run.manifest["error"]))]
            if run.status in ("failed", "diverged") and "error" in run.manifest
            else []
        ),
        ("seed", str(cfg.seed)),
        *([("member", f"{run.member} of {len(run.configs)}")] if len(run.configs) > 1 else []),
        ("trained", units_text(run, summary.final_step)),
        (
            "batch size",
            f"{cfg.training.batch_size} sequences of {run.units_at(1)[1] // cfg.training.batch_size} tokens",
        ),
        ("transition curve", summary.key),
    ]
    if summary.transitions:
        for i, tr in enumerate(summary.transitions, 1):
            rows.append(
                (
                    f"transition {i} (onset / midpoint / end)",
                    f"{tr.onset:,.0f} / {tr.midpoint:,.0f} / {tr.end:,.0f} steps; "
                    f"{tr.before:.3f} -> {tr.after:.3f}",
                )
            )
        rows.append(("main transition midpoint", units_text(run, summary.main.midpoint)))
    else:
        rows.append(("transition", "none detected" if summary.curve_logged else "no curve to detect on"))
    metric_names = sorted({m for values in summary.final.values() for m in values})
    splits = [s for s in summary.final if s != TRAIN_SPLIT] + (
        [TRAIN_SPLIT] if TRAIN_SPLIT in summary.final else []
    )
    head = "".join(f"<th>{html.escape(s)}</th>" for s in splits)
    body = ""
    for metric in metric_names:
        values = [summary.final[s].get(metric, math.nan) for s in splits]
        body += (
            f"<tr><th>{html.escape(metric)}</th>"
            + "".join(f"<td>{'' if np.isnan(v) else f'{v:.4f}'}</td>" for v in values)
            + "</tr>"
        )
    finals = f"<table><tr><th>metric at step {summary.final_step:,}</th>{head}</tr>{body}</table>"
    body = f"""<h1>{html.escape(cfg.name)}: {html.escape(run.id)}</h1>
{_table(rows)}
{finals}
{_clamps_html(run, summary.final_step)}
{figures_html(images)}
{_texts_html(task.report_texts(run))}
<details><summary>config.yaml</summary><pre>{html.escape(cfg.to_yaml())}</pre></details>"""
    member = f" member {run.member}" if len(run.configs) > 1 else ""
    return page(f"icl-lab report: {run.id}{member}", body)
