"""What needs to go right for each transition of a run: Singh et al.'s clamped training runs, chosen
and judged automatically.

For each transition of the run's key curve (or, where it has none, of a head-less progress measure
such as in-context accuracy), the heads whose per-head progress measures (the task's,
each on its layer) move with it (a transition of their own overlapping it, at least half the
largest head's change) are grouped by type (HEAD_TYPES). For each group, variants of
the run are trained from the start with one clamp added, on `seeds`, and an unclamped baseline on
the same seeds: the group value-ablated (as Singh et al. ablate heads), and, for heads of a known
type, their ideal pattern clamped (previous-token; induction: the induction_match clamp on a
few-shot task, the generic induction_pattern on token sequences; the copy readout on a few-shot
task). Each variant is one run of its seeds (an ensemble), trained through the ordinary executor,
so finished variants are kept on a rerun.

The judged curve is the loss on the key metric's split: the step at which it first gets halfway
from its level before the transition to its level after (in the original run). Against the
baseline's seeds: never reached -> removed; later by more than twice the spread and 20% -> delayed;
sooner by as much -> earlier; before half the baseline's step -> much earlier (no plateau left).
An ablation that removes or delays the transition marks its heads necessary; an ideal clamp that
brings it much earlier removes the plateau (sufficient).
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field

from icl_lab.analysis.summary import summarise
from icl_lab.analysis.transitions import Transition, detect_transitions
from icl_lab.config import DeviceName, StrictModel, check_device
from icl_lab.errors import ConfigError, IclLabError
from icl_lab.evaluation import key_metric
from icl_lab.experiment import ExperimentConfig, ensemble_hash, ensemble_refusal, total_steps, validate_config
from icl_lab.store.run import Run
from icl_lab.sweeps.execute import Job, execute

HEAD_TYPES = {
    "previous_token_score": "previous-token",
    "item_label_association": "previous-token",
    "prefix_matching": "induction",
    "induction_strength": "induction",
    "target_label_attention": "induction",
}
"""per-head progress measure -> the kind of head it detects (others: the measure's name)"""

MOVES = 0.5  # a head moves with a transition when its change is at least half the largest head's
DELAY = 0.2  # a delay counts when it exceeds 20% of the baseline's step (and twice the spread)
EARLIER = 0.5  # "much earlier" (no plateau left): before half the baseline's step


class CausalConfig(StrictModel):
    """Settings of the clamped variants."""

    enabled: bool = True
    seeds: list[int] = Field([0, 1], min_length=1, description="seeds of every variant and the baseline")
    steps: int | None = Field(
        None, ge=1, description="training steps of each variant; None: 1.5 x the last transition's end"
    )
    max_transitions: int = Field(
        2, ge=1, description="transitions dissected: the key curve's, largest first, then progress measures'"
    )
    device: DeviceName | None = Field(
        None, description="where the variants train (cpu, cuda, cuda:N); None: the run's own device"
    )


def variants_device(run: Run, member: int, config: CausalConfig) -> str:
    """Where the variants train: causal.device, else the run's own device; ConfigError (one line)
    if this machine lacks it (a run trained on a GPU, dissected on a laptop)."""
    device = config.device or run.member_config(member).training.device
    try:
        check_device(device)
    except ValueError as e:
        raise ConfigError(
            f"causal.device: the variants train on the run's device unless it is set, but {e}; "
            "set causal.device=cpu (or --no-causal)"
        ) from None
    return device


@dataclass(frozen=True)
class Variant:
    """One clamped training run of the run's config: which transition and heads it tests."""

    name: str
    transition: int
    group: str  # head type
    heads: tuple[str, ...]
    clamp: dict  # empty for the baseline
    role: str  # "ablation", "ideal" or "baseline"


@dataclass(frozen=True)
class Effect:
    """A variant's effect on its transition: the halfway steps of its seeds and the baseline's."""

    variant: Variant
    steps: list[float | None]  # per seed, None: never reached within the budget
    baseline: list[float | None]
    effect: str  # removed / delayed / earlier / none
    verdict: str


def _involved(run: Run, member: int, tr: Transition) -> dict[str, list[str]]:
    """Head type -> heads whose per-head progress measure (the task's, on its layer) has a
    transition overlapping `tr`'s window, of at least MOVES of the largest such change."""
    margin = tr.end - tr.onset
    groups: dict[str, set[str]] = {}
    for split, metric, layer in run.eval_data(member)[0].progress_measures:
        if layer is None:
            continue
        steps, heads = run.head_curves(metric, split, member)
        layer %= run.member_config(member).model.n_layers
        changes = {}
        for head, values in heads.items():
            if head.startswith(f"{layer}."):
                moves = [t.amplitude for t in detect_transitions(steps, values) if _overlap(t, tr, margin)]
                changes[head] = max(moves, key=abs, default=0.0)
        largest = max((abs(c) for c in changes.values()), default=0.0)
        moved = {h for h, c in changes.items() if largest > 0 and abs(c) >= MOVES * largest}
        if moved:
            groups.setdefault(HEAD_TYPES.get(metric, metric), set()).update(moved)
    return {kind: sorted(heads) for kind, heads in sorted(groups.items())}


def _overlap(a: Transition, b: Transition, margin: float) -> bool:
    return a.onset <= b.end + margin and b.onset - margin <= a.end


def _ideal_clamps(kind: str, heads: list[str], layout: str | None, token_inputs: bool) -> list[dict]:
    """The ideal-pattern clamps for heads of a known kind (none for other kinds)."""
    if kind == "previous-token":
        return [{"kind": "previous_token", "heads": heads}]
    if kind == "induction" and layout == "fewshot":
        return [{"kind": "induction_match", "heads": heads}, {"kind": "copy", "head": heads[0]}]
    if kind == "induction" and token_inputs:
        return [{"kind": "induction_pattern", "heads": heads}]
    return []


def _transitions(run: Run, member: int) -> list[Transition]:
    """The transitions to dissect, most important first: the key curve's (largest change first),
    then those of the task's head-less progress measures that overlap none before them (a key
    curve that declines before its drop has no flat stretch for the detector, while a progress
    measure such as in-context accuracy may)."""
    found = sorted(summarise(run, member).transitions, key=lambda t: -abs(t.amplitude))
    for split, metric, layer in run.eval_data(member)[0].progress_measures:
        if layer is None:
            steps, values = run.curve(metric, split, member=member)
            for tr in sorted(detect_transitions(steps, values), key=lambda t: -abs(t.amplitude)):
                if not any(_overlap(tr, other, 0.0) for other in found):
                    found.append(tr)
    return found


def plan(run: Run, member: int, config: CausalConfig) -> tuple[list[Transition], list[Variant], int]:
    """The transitions to dissect, the variants that test them (the baseline first), and the
    training steps of each variant."""
    chosen = sorted(_transitions(run, member)[: config.max_transitions], key=lambda t: t.midpoint)
    task, _ = run.eval_data(member)
    token_inputs = task.io(task.config).d_vocab is not None
    variants = [Variant("baseline", -1, "", (), {}, "baseline")]
    for i, tr in enumerate(chosen):
        for kind, heads in _involved(run, member, tr).items():
            ablate = {"kind": "ablate", "heads": heads, "activation": "v"}
            tests = [(ablate, "ablation")]
            tests += [(c, "ideal") for c in _ideal_clamps(kind, heads, task.layout, token_inputs)]
            for clamp, role in tests:
                name = f"t{i + 1}-{kind}-{clamp['kind']}"
                variants.append(Variant(name, i, kind, tuple(heads), clamp, role))
    total = total_steps(run.member_config(member))
    steps = config.steps or (min(total, math.ceil(1.5 * chosen[-1].end)) if chosen else total)
    return chosen, variants, steps


def variant_config(
    run: Run, member: int, variant: Variant, seed: int, steps: int, device: str
) -> ExperimentConfig:
    """The member's config with the variant's clamp added, on `seed`, for `steps` steps, on `device`."""
    data = run.member_config(member).model_dump(mode="json", by_alias=True)
    data["name"] = f"{variant.name}-s{seed}"
    data["seed"] = seed
    data["training"]["length"] = {"steps": steps}
    data["training"]["device"] = device
    data["checkpointing"]["every"] = None
    data["clamps"] = [*data.get("clamps", []), *([variant.clamp] if variant.clamp else [])]
    return validate_config(data)


def halfway_step(steps: np.ndarray, values: np.ndarray, before: float, after: float) -> float | None:
    """The first step at which a curve is at least halfway from `before` to `after`."""
    level = (before + after) / 2
    reached = values <= level if after < before else values >= level
    return float(steps[np.argmax(reached)]) if reached.any() else None


def judge(variant: Variant, steps: list[float | None], baseline: list[float | None]) -> Effect:
    """Removed, delayed, earlier, much earlier (before half the baseline's step: no plateau left) or
    no effect, and what that says of the variant's heads."""
    reached = [s for s in steps if s is not None]
    base = [s for s in baseline if s is not None]
    if not base:
        return Effect(variant, steps, baseline, "none", "the baseline never reached it: cannot judge")
    base_mean, mean = float(np.mean(base)), float(np.mean(reached)) if reached else math.inf
    shift = max(2 * float(np.std(base)), DELAY * base_mean)
    if not reached:
        effect = "removed"
    elif mean > base_mean + shift or len(reached) < len(steps):
        effect = "delayed"
    elif mean < EARLIER * base_mean:
        effect = "much earlier"
    elif mean < base_mean - shift:
        effect = "earlier"
    else:
        effect = "none"
    verdicts = {
        ("ablation", "removed"): "necessary",
        ("ablation", "delayed"): "necessary",
        ("ideal", "much earlier"): "sufficient to remove the plateau",
        ("ideal", "earlier"): "the clamp speeds it up",
        ("ideal", "removed"): "the clamp blocks it",
        ("ideal", "delayed"): "the clamp slows it",
        ("ablation", "earlier"): "ablating them speeds it up",
        ("ablation", "much earlier"): "ablating them speeds it up",
    }
    return Effect(variant, steps, baseline, effect, verdicts.get((variant.role, effect), "no effect"))


@dataclass(frozen=True)
class CausalResult:
    """The transitions dissected, each clamped variant's effect, the variants' training steps, and
    the run directory of each variant (and of the baseline) by name."""

    transitions: list[Transition]
    effects: list[Effect]
    steps: int
    runs: dict[str, Path]


def run_causal(
    run: Run, member: int, config: CausalConfig, out: Path, workers: int, progress: bool
) -> CausalResult:
    """Train the variants (finished ones are kept) and judge each against the baseline."""
    device = variants_device(run, member, config)
    chosen, variants, steps = plan(run, member, config)
    if len(variants) == 1:  # no transition, or no head moved with one: nothing to clamp
        return CausalResult(chosen, [], steps, {})
    members = [[variant_config(run, member, v, s, steps, device) for s in config.seeds] for v in variants]
    # a variant's seeds train as one ensemble, or one run each where the model cannot (LSTM, dropout);
    # the directory names the configs' hash: other steps or seeds never reuse a finished variant
    alone = ensemble_refusal(members[0][0]) is not None
    jobs: dict[str, Job] = {}
    owner: dict[str, Variant] = {}
    for v, m in zip(variants, members, strict=True):
        seeds = zip(config.seeds, m, strict=True)
        for name, group in ({f"{v.name} s{s}": [c] for s, c in seeds} if alone else {v.name: m}).items():
            jobs[name], owner[name] = Job(out / f"{v.name}-{ensemble_hash(group)[:8]}", tuple(group)), v
    results = execute(list(jobs.values()), "local", workers, progress)
    failed = [
        f"{j.path.name}: {e}"
        for j, (status, e) in zip(jobs.values(), results, strict=True)
        if status != "complete"
    ]
    if failed:
        raise IclLabError("clamped variants failed: " + "; ".join(failed))
    split = key_metric(run.member_config(member))[0]
    levels = [_levels(run, member, split, tr) for tr in chosen]
    reached = {}
    for v in variants:
        trained = [Run.open(job.path) for name, job in jobs.items() if owner[name] is v]
        curves = [r.curve("loss", split, member=m) for r in trained for m in range(len(r.configs))]
        reached[v.name] = [[halfway_step(s, y, *lv) for s, y in curves] for lv in levels]
    effects = [
        judge(v, reached[v.name][v.transition], reached["baseline"][v.transition]) for v in variants[1:]
    ]
    return CausalResult(chosen, effects, steps, {name: job.path for name, job in jobs.items()})


def _levels(run: Run, member: int, split: str, tr: Transition) -> tuple[float, float]:
    """The judged curve's (loss on the key split) levels before and after a transition of the run:
    means over as long as the transition lasts, either side."""
    steps, loss = run.curve("loss", split, member=member)
    width = max(tr.end - tr.onset, float(np.median(np.diff(steps))))
    before = loss[(steps >= tr.onset - width) & (steps <= tr.onset)]
    after = loss[(steps >= tr.end) & (steps <= tr.end + width)]
    return float(before.mean() if before.size else loss[0]), float(after.mean() if after.size else loss[-1])
