"""Dissect a finished run: its LLC over checkpoints, the stages that curve shows, and the
transitions of every logged metric beside them. Results live in RUN/dissect/ and are resumable.

- dissect/config.json: the settings (DissectConfig) the results were made with (a new call clears
  the stages, causal verdicts, report and figures of the last before it writes its own settings, so
  an interrupted call never leaves results beside settings they were not made with);
- dissect/llc/step_<step>.json: one checkpoint's estimate (per-chain LLCs, the loss traces, the
  sanity checks, seconds); a checkpoint whose file holds the same member and LLC settings is not
  estimated again;
- dissect/stages.json: the smoothed LLC, its stages, and each metric's transitions with the stage
  they fall in;
- dissect/variants/<name>-<hash>/: the clamped training runs of the causal half (analysis/causal.py), and
  dissect/causal.json, what each did to its transition.
The report (report/dissect_page.py) draws the timeline and the causal table from these.
"""

import json
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from icl_lab.analysis.causal import CausalConfig, CausalResult, run_causal
from icl_lab.analysis.llc import LLCConfig, LLCEstimate, run_llc, vmap_chains
from icl_lab.analysis.stages import Stage, smooth, stages
from icl_lab.analysis.transitions import Transition, detect_transitions
from icl_lab.config import StrictModel, validated
from icl_lab.errors import RunStoreError
from icl_lab.experiment import apply_overrides
from icl_lab.files import atomic_write_text
from icl_lab.store.run import Run
from icl_lab.sweeps.execute import process_pool

MIN_ESTIMATES = 4  # sane LLC estimates after initialisation needed to read stages off the curve
Progress = Callable[[int, int], None]
"""(checkpoints done, checkpoints in all)"""


class StagesConfig(StrictModel):
    """How stage boundaries are read off the smoothed LLC curve (analysis/stages.py)."""

    flat: float = Field(0.5, gt=0, description="a plateau's |slope| as a share of the mean slope")
    min_change: float = Field(0.1, ge=0, lt=1, description="a stage's least change, share of the range")


class DissectConfig(StrictModel):
    """Settings of `icl-lab dissect`."""

    member: int = Field(0, ge=0, description="which ensemble member to dissect")
    max_checkpoints: int = Field(
        40, ge=3, description="checkpoints to estimate, spread in log and linear steps"
    )
    llc: LLCConfig = LLCConfig()
    stages: StagesConfig = StagesConfig()
    causal: CausalConfig = CausalConfig()


def dissect_config(overrides: list[str] = ()) -> DissectConfig:
    """The defaults with key.path=value overrides (e.g. llc.chains=8)."""
    return validated(DissectConfig, apply_overrides({}, list(overrides)), "the dissect settings")


def chosen_checkpoints(steps: list[int], most: int) -> list[int]:
    """`most` of a run's checkpoint steps (all if it has no more): those nearest `most` // 2 points
    evenly spaced in ln(step + 1), the stages' time axis, then the rest evenly spread by index over
    the others (log and linear spacing, as Hoogland et al. placed theirs); first and last included."""
    if len(steps) <= most:
        return list(steps)
    x = np.log(np.asarray(steps, float) + 1)
    chosen = set(np.abs(x[None, :] - np.linspace(x[0], x[-1], most // 2)[:, None]).argmin(1).tolist())
    others = [i for i in range(len(steps)) if i not in chosen]
    fill = most - len(chosen)
    chosen |= {others[round(j)] for j in np.linspace(0, len(others) - 1, fill)} if fill > 0 else set()
    return [steps[i] for i in sorted(chosen)]


def _record(estimate: LLCEstimate, settings: dict) -> dict:
    return {
        "settings": settings,
        "llc": estimate.mean,
        "llc_std": estimate.std,
        "per_chain": estimate.per_chain.tolist(),
        "init_loss": estimate.init_loss,
        "nbeta": estimate.nbeta,
        "problems": estimate.problems(),
        "seconds": estimate.seconds,
        "draws_from": estimate.draws_from,
        "trace": np.where(np.isfinite(estimate.trace), estimate.trace, None).tolist(),
    }


def _estimate(run_path: str, step: int, settings: dict, out: str) -> None:
    """One checkpoint's LLC, written atomically to `out` (a worker process's job: one thread)."""
    torch.set_num_threads(1)
    estimate = run_llc(
        Run.open(run_path), step, LLCConfig.model_validate(settings["llc"]), settings["member"]
    )
    atomic_write_text(Path(out), json.dumps(_record(estimate, settings)))


def _in_pool(jobs: list[tuple], workers: int) -> Iterator[None]:
    """Run _estimate on each job in `workers` spawned processes, yielding as each finishes; on any
    error or interruption the workers are terminated (finished checkpoints stay written)."""
    if workers == 1:
        for job in jobs:
            _estimate(*job)
            yield None
        return
    with process_pool(workers) as pool:
        pending = {pool.submit(_estimate, *job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
                yield None


@dataclass(frozen=True)
class MetricTransition:
    """A transition of one logged curve: which metric, split and head, and the stage it falls in."""

    metric: str
    split: str
    head: str | None
    transition: Transition
    stage: int | None  # index into the stages, None if outside the estimated span


def metric_transitions(run: Run, member: int, found: list[Stage]) -> list[MetricTransition]:
    """Transitions of the member's logged curves: each head-less metric on each split (training
    batches' loss included), and each head of the task's per-head progress measures on their layers."""
    t = run.metrics
    rows = zip(*(t[c].to_pylist() for c in ("metric", "split", "head", "member")), strict=True)
    layers = run.member_config(member).model.n_layers
    measured = {
        (m, s, layer % layers)
        for s, m, layer in run.eval_data(member)[0].progress_measures
        if layer is not None
    }
    keys = sorted(
        {
            (m, s, h)
            for m, s, h, k in rows
            if k == member and (h is None or (m, s, int(h.split(".")[0])) in measured)
        },
        key=lambda k: (k[0], k[1], k[2] or ""),
    )
    out = []
    for metric, split, head in keys:
        steps, values = run.curve(metric, split, head, member)
        for tr in detect_transitions(steps, values):
            stage = next((i for i, s in enumerate(found) if s.start <= tr.midpoint <= s.end), None)
            out.append(MetricTransition(metric, split, head, tr, stage))
    return out


@dataclass(frozen=True)
class Dissection:
    """What dissect found: the LLC per checkpoint, the smoothed curve, stages and transitions."""

    steps: np.ndarray
    llc: np.ndarray
    llc_std: np.ndarray
    records: list[dict]
    smooth_steps: np.ndarray
    smooth_llc: np.ndarray
    stages: list[Stage]
    transitions: list[MetricTransition]


DERIVED = ("stages.json", "causal.json", "report.html")
"""dissect/ files a call derives from its settings; the LLC estimates and variant runs are kept
(each records its settings, and is redone where they differ)"""


def usable_estimates(steps: np.ndarray, llc: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Which LLC estimates the stages are read from: finite ones after initialisation (step 0)."""
    return (steps > 0) & np.isfinite(llc) & np.isfinite(std)


def _settings_of(estimate: Path) -> object:
    """The settings an earlier LLC estimate file records (None if it is missing or damaged: it is
    estimated again)."""
    try:
        record = json.loads(estimate.read_text())
        return record["settings"] if {"llc", "llc_std"} <= record.keys() else None
    except (OSError, ValueError, AttributeError, KeyError):
        return None


def dissect(
    run: Run, config: DissectConfig, workers: int = 2, progress: Progress = lambda done, total: None
) -> Dissection:
    """Estimate the LLC at the run's checkpoints (those not yet estimated with these settings),
    then find stages and put every metric's transitions beside them; everything is written to
    RUN/dissect/."""
    member_config = run.member_config(config.member)  # RunStoreError for a member the run lacks
    if not run.checkpoint_steps:
        raise RunStoreError(f"run {run.id} has no checkpoints to dissect (it stopped before its first)")
    vmap_chains(config.llc, member_config, "cpu")  # a model whose chains cannot vmap: refused here
    out = run.path / "dissect"
    (out / "llc").mkdir(parents=True, exist_ok=True)
    for derived in [*(out / name for name in DERIVED), *out.glob("*.png")]:  # an earlier call's
        derived.unlink(missing_ok=True)
    atomic_write_text(out / "config.json", json.dumps(config.model_dump(mode="json"), indent=1))
    settings = config.model_dump(mode="json", include={"member", "llc"})  # what an estimate depends on
    steps = chosen_checkpoints(run.checkpoint_steps, config.max_checkpoints)
    files = {step: out / "llc" / f"step_{step:09d}.json" for step in steps}
    done = {s for s, f in files.items() if _settings_of(f) == settings}
    todo = [(str(run.path), s, settings, str(files[s])) for s in steps if s not in done]
    progress(len(done), len(steps))
    for finished, _ in enumerate(_in_pool(todo, max(1, min(workers, len(todo) or 1))), start=len(done) + 1):
        progress(finished, len(steps))
    records = [json.loads(files[s].read_text()) for s in steps]
    llc = np.array([r["llc"] for r in records], dtype=float)
    std = np.array([r["llc_std"] for r in records], dtype=float)
    # the stages start at the first checkpoint after initialisation: between step 0 and it, ln(step + 1)
    # spans a stretch with no estimate (often most of the axis), where a GP would only invent a shape;
    # a diverged estimate (NaN, its problem stated on the page) is left out
    used = usable_estimates(np.array(steps), llc, std)
    found: list[Stage] = []
    smooth_steps, smooth_llc = np.zeros(0), np.zeros(0)
    if used.sum() >= MIN_ESTIMATES:
        chains = config.llc.chains
        curve = smooth(
            np.array(steps, float)[used], llc[used], std[used] / np.sqrt(chains) if chains > 1 else None
        )
        found = stages(curve, config.stages.flat, config.stages.min_change)
        smooth_steps, smooth_llc = curve.steps, curve.values
    transitions = metric_transitions(run, config.member, found)
    result = Dissection(np.array(steps), llc, std, records, smooth_steps, smooth_llc, found, transitions)
    atomic_write_text(out / "stages.json", json.dumps(_summary(result), indent=1))
    return result


def _summary(d: Dissection) -> dict:
    return {
        "llc": [
            {"step": int(s), "llc": float(v), "std": float(e)}
            for s, v, e in zip(d.steps, d.llc, d.llc_std, strict=True)
        ],
        "stages": [{**asdict(s), "kind": s.kind} for s in d.stages],
        "transitions": [
            {"metric": t.metric, "split": t.split, "head": t.head, **asdict(t.transition), "stage": t.stage}
            for t in d.transitions
        ],
    }


def dissect_causal(run: Run, config: DissectConfig, workers: int = 2, progress: bool = True) -> CausalResult:
    """Train and judge the clamped variants (analysis/causal.py); dissect/causal.json."""
    out = run.path / "dissect" / "variants"
    result = run_causal(run, config.member, config.causal, out, workers, progress)
    record = {
        "steps": result.steps,
        "seeds": config.causal.seeds,
        "runs": {name: str(path) for name, path in result.runs.items()},
        "transitions": [asdict(t) for t in result.transitions],
        "effects": [
            {
                "variant": e.variant.name,
                "transition": e.variant.transition,
                "heads": list(e.variant.heads),
                "group": e.variant.group,
                "clamp": e.variant.clamp,
                "halfway_steps": e.steps,
                "baseline_halfway_steps": e.baseline,
                "effect": e.effect,
                "verdict": e.verdict,
            }
            for e in result.effects
        ],
    }
    atomic_write_text(run.path / "dissect" / "causal.json", json.dumps(record, indent=1))
    return result
