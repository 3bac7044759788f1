"""The run report: PNG figures and one self-contained HTML page (images inlined, no network)."""

import base64
import html
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from icl_lab.analysis.summary import RunSummary, summarise, units_text
from icl_lab.experiment import build_task
from icl_lab.report import figures
from icl_lab.store.files import atomic_write_text
from icl_lab.store.metrics_table import TRAIN_SPLIT
from icl_lab.store.run import Run


def _png(fig: Figure, path: Path) -> bytes:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.read_bytes()


def _nearest(steps: list[int], target: float) -> int:
    return min(steps, key=lambda s: abs(s - target))


def write_report(run: Run, out_dir: Path | None = None) -> Path:
    """Write report/{training,progress,attention}.png and report/report.html; return the page."""
    out = out_dir or run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(run)
    checkpoints = run.checkpoint_steps
    shown = sorted(
        {checkpoints[0], checkpoints[-1]}
        | ({_nearest(checkpoints, summary.main.midpoint)} if summary.main else set())
    )
    key_split = build_task(run.config).key_metric[0]
    images = {
        "Loss and accuracy": _png(figures.training_curves(run, summary.main), out / "training.png"),
        "Progress measures": _png(figures.progress_measures(run, summary.main), out / "progress.png"),
        "Attention patterns at init, transition and end": _png(
            figures.attention_patterns(run, shown, key_split), out / "attention.png"
        ),
    }
    page = out / "report.html"
    atomic_write_text(page, _html(run, summary, images))
    return page


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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
    head = "<tr><th>clamp</th><th>settings</th><th>active (training and evaluation)</th></tr>"
    return f"<h2>Clamps</h2><table>{head}{''.join(rows)}</table>"


def _html(run: Run, summary: RunSummary, images: dict[str, bytes]) -> str:
    cfg = run.config
    rows = [
        ("run", run.id),
        ("status", run.status),
        ("seed", str(cfg.seed)),
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
        rows.append(("transition", "none detected"))
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
    figures_html = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{_base64(data)}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for title, data in images.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>icl-lab report: {html.escape(run.id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #555; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head>
<body data-figures="pending">
<h1>{html.escape(cfg.name)}: {html.escape(run.id)}</h1>
{_table(rows)}
{finals}
{_clamps_html(run, summary.final_step)}
{figures_html}
<details><summary>config.yaml</summary><pre>{html.escape(cfg.to_yaml())}</pre></details>
<script>
window.addEventListener("load", () => {{
  const images = Array.from(document.images);
  const drawn = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.figures = drawn + "/" + images.length;
}});
</script>
</body></html>
"""
