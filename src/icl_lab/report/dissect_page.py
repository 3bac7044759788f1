"""The dissect page of a run: one timeline (loss, LLC, progress measures, stage bands on one step
axis), the SGLD loss traces behind the LLC, and tables of stages, transitions and estimates."""

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from icl_lab.analysis.causal import CausalResult
from icl_lab.analysis.dissect import MIN_ESTIMATES, DissectConfig, Dissection, usable_estimates
from icl_lab.analysis.summary import units_text
from icl_lab.evaluation import key_metric
from icl_lab.files import atomic_write_text
from icl_lab.report.figures import loss_unit, measure_label
from icl_lab.report.html import figures_html, page, save_png
from icl_lab.store.metrics_table import TRAIN_SPLIT
from icl_lab.store.run import Run

STAGE_COLOURS = ("#dbe9f6", "#fde7d3")


def timeline(run: Run, d: Dissection, member: int) -> Figure:
    """Loss, LLC (estimates with chain spread, and the smoothed curve), and the task's progress
    measures against steps (log scale), with the LLC stages as bands across every panel."""
    task_measures = list(run.eval_data(member)[0].progress_measures)
    measures = [m for m in task_measures if run.summary_curve(m[1], m[0], "max", member)[1].size]
    fig, axes = plt.subplots(
        2 + len(measures),
        1,
        figsize=(9, 2.2 * (2 + len(measures)) + 0.6),
        sharex=True,
        constrained_layout=True,
    )
    loss_ax, llc_ax, *measure_axes = axes
    steps, loss = run.curve("loss", TRAIN_SPLIT, member=member)
    keep = steps > 0
    loss_ax.plot(steps[keep], loss[keep], color="C7", lw=1, label="training batches")
    loss_ax.set_ylabel(f"loss ({loss_unit(run)})")
    llc_ax.errorbar(
        np.maximum(d.steps, 1),
        d.llc,
        yerr=d.llc_std,
        fmt="o",
        ms=3,
        color="C0",
        label="LLC (± sd over chains)",
    )
    llc_ax.plot(np.maximum(d.smooth_steps, 1), d.smooth_llc, color="C3", label="GP smoothed")
    llc_ax.set_ylabel("LLC (dimensionless)")
    for ax, (split, metric, layer) in zip(measure_axes, measures, strict=True):
        if layer is None:
            steps, values = run.curve(metric, split, member=member)
            ax.plot(np.maximum(steps, 1), values, color="k", label=metric)
        else:
            layer %= run.layers_heads[0]
            xs, heads = run.head_curves(metric, split, member)
            for head, values in heads.items():
                if head.startswith(f"{layer}."):
                    ax.plot(np.maximum(xs, 1), values, label=f"head {head}")
        ax.set_ylabel(measure_label(run, metric), fontsize=8)
        ax.set_title(
            f"{metric} ({split})" + ("" if layer is None else f", layer {layer}"), fontsize=9, loc="left"
        )
    for ax in axes:
        for i, stage in enumerate(d.stages):
            ax.axvspan(max(stage.start, 1), stage.end, color=STAGE_COLOURS[i % 2], zorder=0)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4, loc="best")
    for i, stage in enumerate(d.stages):
        llc_ax.text(
            np.sqrt(max(stage.start, 1) * stage.end), llc_ax.get_ylim()[1], f"S{i + 1}", ha="center", va="top"
        )
    axes[-1].set_xlabel("step (log scale, step 0 drawn at 1; bands: LLC stages)")
    fig.suptitle(f"{run.id}: developmental timeline ({run.whose(member)})", fontsize=10)
    return fig


def traces(run: Run, d: Dissection, member: int) -> Figure:
    """The SGLD minibatch loss minus the loss at the checkpoint, per chain, at the first, middle
    and last estimated checkpoints: a sane chain rises and levels off; burn-in is shaded."""
    picks = sorted({0, len(d.records) // 2, len(d.records) - 1})
    fig, axes = plt.subplots(
        1, len(picks), figsize=(4 * len(picks), 3), sharey=False, constrained_layout=True
    )
    for ax, i in zip(np.atleast_1d(axes), picks, strict=True):
        record = d.records[i]
        trace = np.array(record["trace"], dtype=float)  # (chains, SGLD steps)
        for c, row in enumerate(trace):
            ax.plot(row - record["init_loss"], lw=0.7, label=f"chain {c}")
        ax.axvspan(0, record["draws_from"], color="0.9", zorder=0, label="burn-in")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"checkpoint at step {int(d.steps[i]):,}: LLC {record['llc']:.3g}", fontsize=9)
        ax.set_xlabel("SGLD step")
        ax.set_ylabel(f"loss - loss at checkpoint ({loss_unit(run)})")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(f"{run.id}: SGLD loss traces ({run.whose(member)})", fontsize=10)
    return fig


def variant_curves(run: Run, result: CausalResult, split: str) -> Figure:
    """Per dissected transition: the judged loss (mean over seeds) of the baseline and of every
    clamped variant, against steps."""
    n = len(result.transitions)
    fig, axes = plt.subplots(1, n, figsize=(7 * n, 4), squeeze=False, constrained_layout=True)
    for i, (ax, tr) in enumerate(zip(axes[0], result.transitions, strict=True)):
        names = ["baseline"] + [e.variant.name for e in result.effects if e.variant.transition == i]
        for name in names:
            trained = Run.open(result.runs[name])
            curves = [trained.curve("loss", split, member=m) for m in range(len(trained.configs))]
            steps = curves[0][0]
            ax.plot(
                steps, np.mean([c[1] for c in curves], axis=0), label=name, lw=2 if name == "baseline" else 1
            )
        ax.axvspan(tr.onset, tr.end, color="0.9", zorder=0, label="transition in the run")
        ax.set_xlabel("step")
        ax.set_ylabel(f"loss on {split} ({loss_unit(run)})")
        ax.set_title(f"transition {i + 1}: clamped variants", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    seeds = ", ".join(str(c.seed) for c in Run.open(result.runs["baseline"]).configs)
    fig.suptitle(f"{run.id}: variants trained from the start (mean over seeds {seeds})", fontsize=10)
    return fig


def _rows(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _steps_text(steps: list[float | None]) -> str:
    reached = [s for s in steps if s is not None]
    mean = (
        f"{np.mean(reached):,.0f}" + (f" ± {np.std(reached):,.0f}" if len(reached) > 1 else "")
        if reached
        else "-"
    )
    missing = len(steps) - len(reached)
    return mean + (f" ({missing} of {len(steps)} seeds never)" if missing else "")


def _causal_html(run: Run, result: CausalResult, images: dict[str, bytes], split: str) -> str:
    """The "what needs to go right" table, and the variants' curves into `images`."""
    if not result.effects:
        why = "no head's progress measure moved with it" if result.transitions else "the key curve has none"
        return f"<h2>What needs to go right</h2><p>No clamped variants: {why}.</p>"
    images["Clamped variants: judged loss against steps"] = save_png(
        variant_curves(run, result, split), run.path / "dissect" / "variants.png"
    )
    rows = [
        [
            f"{i + 1}: steps {tr.onset:,.0f}-{tr.end:,.0f}",
            f"{e.variant.group}: {', '.join(e.variant.heads)}",
            e.variant.clamp["kind"],
            _steps_text(e.steps),
            _steps_text(e.baseline),
            e.effect,
            e.verdict,
        ]
        for i, tr in enumerate(result.transitions)
        for e in result.effects
        if e.variant.transition == i
    ]
    return (
        f"<h2>What needs to go right</h2><p>Variants of the run trained from the start for "
        f"{result.steps:,} steps with one clamp each (value ablation; ideal patterns for heads of a "
        f"known type), judged by the step at which the loss on {html.escape(split)} gets halfway "
        "through each transition (mean ± sd over seeds).</p>"
        + _rows(["transition", "heads", "clamp", "halfway step", "unclamped", "effect", "verdict"], rows)
    )


def _unfinished(run: Run) -> str:
    """A note that the run is not complete: the dissection covers its checkpoints so far."""
    if run.status == "complete":
        return ""
    last, total = max(run.checkpoint_steps, default=0), run.manifest.get("total_steps")
    of = f" of {total:,}" if isinstance(total, int) else ""
    status = html.escape(run.status)
    return f"<p><b>The run is {status}</b> at step {last:,}{of}: this covers its checkpoints so far.</p>"


def _too_few(d: Dissection) -> str:
    """Why no stages: how many usable LLC estimates the curve had, against how many it needs."""
    usable = int(usable_estimates(d.steps, d.llc, d.llc_std).sum())
    return (
        f"reading stages needs {MIN_ESTIMATES} finite LLC estimates after initialisation (step 0), "
        f"and this dissection has {usable} (see the sanity checks below)."
    )


def write_dissect_report(
    run: Run, d: Dissection, config: DissectConfig, causal: CausalResult | None = None
) -> Path:
    """RUN/dissect/report.html with its figures beside it."""
    out = run.path / "dissect"
    member = config.member
    images = {
        "Timeline: loss, LLC and progress measures against steps, LLC stages as bands": save_png(
            timeline(run, d, member), out / "timeline.png"
        ),
        "SGLD loss traces (sanity check of the chains)": save_png(traces(run, d, member), out / "traces.png"),
    }
    stage_rows = [
        [
            f"S{i + 1}",
            units_text(run, s.start),
            units_text(run, s.end),
            s.kind,
            f"{s.llc_start:.3g} -> {s.llc_end:.3g}",
        ]
        for i, s in enumerate(d.stages)
    ]
    transition_rows = [
        [
            t.metric + (f" head {t.head}" if t.head else ""),
            t.split,
            f"{t.transition.onset:,.0f} / {t.transition.midpoint:,.0f} / {t.transition.end:,.0f}",
            f"{t.transition.before:.3g} -> {t.transition.after:.3g}",
            "-" if t.stage is None else f"S{t.stage + 1}",
        ]
        for t in sorted(d.transitions, key=lambda t: t.transition.midpoint)
    ]
    estimate_rows = [
        [
            f"{int(s):,}",
            f"{r['llc']:.4g}",
            f"{r['llc_std']:.3g}" if config.llc.chains > 1 else "- (one chain)",
            f"{r['seconds']:.1f}",
            "; ".join(r["problems"]) or "ok",
        ]
        for s, r in zip(d.steps, d.records, strict=True)
    ]
    llc = config.llc
    batch = llc.batch_size or run.member_config(member).training.batch_size
    settings = (
        f"SGLD: step size {llc.step_size:g}, localisation {llc.localization:g}, nbeta "
        f"{d.records[0]['nbeta']:.4g}, {llc.chains} chains, {llc.draws} draws every {llc.every} step(s) "
        f"after {llc.burn_in} burn-in steps, batch {batch}"
    )
    seconds = sum(r["seconds"] for r in d.records)
    causal_html = (
        "" if causal is None else _causal_html(run, causal, images, key_metric(run.member_config(member))[0])
    )
    body = (
        f"<h1>Dissection of {html.escape(run.id)}</h1><p>{html.escape(run.whose(member))}. "
        f"{html.escape(settings)}. {len(d.records)} checkpoints, {seconds / 60:.1f} CPU-minutes of SGLD "
        f"({seconds / len(d.records):.1f} s per checkpoint).</p>"
        + _unfinished(run)
        + figures_html(images)
        + "<h2>Stages (from the LLC curve)</h2>"
        + ("" if d.stages else f"<p>None: {_too_few(d)}</p>")
        + _rows(["stage", "from", "to", "kind", "smoothed LLC"], stage_rows)
        + causal_html
        + "<h2>Transitions of logged metrics (steps: onset / midpoint / end)</h2>"
        + _rows(["curve", "split", "steps", "change", "in stage"], transition_rows)
        + "<h2>LLC estimates</h2>"
        + _rows(["step", "LLC", "sd over chains", "seconds", "sanity checks"], estimate_rows)
    )
    path = out / "report.html"
    atomic_write_text(path, page(f"dissect: {run.id}", body))
    return path
