"""Hernandez et al. (2022), "Scaling laws and interpretability of learning from repeated data", and
the language-model half of Olsson et al. (2022), on real text at CPU scale.

No public code exists; the setting follows the paper's small-scale description (SPEC §7): 2-layer
attention-only transformers (and one with MLPs) trained on text, about 10% of the training tokens
drawn from a bank of sequences repeated E times and the rest unique, E spanning 1 to thousands,
and a ladder of unique-data models of several widths to measure damage in model size. Here the
text is Python's standard library as bytes (the bundled sweeps hernandez.yaml and
hernandez_mlp.yaml: 256-byte windows, batch 32, Adam 1e-3 with a cosine schedule; code repeats
identifiers, so induction heads pay early). E = 1 is unique data: a bank read once is as unique as
the rest. Quick mode (about 52 minutes on 2 cores), three seeds of each: Olsson's unique-data
model 128 wide for 4,000 steps (32.8 M tokens), and 9 models of 1,000 steps (8.2 M tokens each): a
ladder of unique models 16, 32 and 64 wide, E from 1 to 3,000 at width 32, and a 32-wide model with
MLPs at E = 1 and 100. Full mode (a GPU): 3,000 steps, E over every width from 16 to 256 and for two
models with MLPs, Olsson's model 128 and 256 wide, three seeds. Claims about repetition compare
means over seeds; Olsson's is judged on each seed and holds when it holds for most.
The stdlib holds about 28 M training bytes, so no mode can train on more unique text than that.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from icl_lab.analysis.repetition import DoubleDescent, double_descent, effective_size
from icl_lab.analysis.summary import summarise, units_text
from icl_lab.analysis.transitions import Transition, noise_level
from icl_lab.reproduce.base import REPRODUCTIONS, Claim, SweepReproduction, judged_by_seed
from icl_lab.reproduce.hernandez_figures import figures
from icl_lab.store.run import Run
from icl_lab.sweeps.config import SweepConfig, axis_values, load_sweep

EMBEDDINGS = ("embed.", "pos_embed.", "unembed.")
NO_HEADS = "; no ladder model formed an induction head (prefix matching > 0.3)"
FULL_EPOCHS = (1, 10, 100, 1000, 3000)
ICL_JUMP = 0.1  # nats: 7x the held-out ICL score's evaluation noise on Olsson's run (0.014)
SHORTFALL = 0.1  # "damaged beyond what the loss predicts": 10% below the ladder at the same loss
PAPER_K = "2 (an 800M model repeating 0.1% of its data 100 times does as well as a 400M one)"


@dataclass(frozen=True)
class Model:
    """One finished point of the sweeps: its width, E, seed, and what it measured at the end."""

    run: Run
    member: int
    width: int
    epochs: float | None  # as configured (the plan rounds the bank to whole sequences); None: no bank
    seed: int
    parameters: int  # non-embedding, as in scaling laws
    heldout: float
    prefix_matching: float  # best head, on repeated common tokens
    copy_drop: float

    def curve(self, metric: str, split: str = "heldout", how: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        """(tokens, values) of a metric over training."""
        return self.run.summary_curve(metric, split, how, self.member, x="tokens")


@dataclass(frozen=True)
class Cell:
    """The seeds of one width and E, with their means."""

    models: list[Model]

    def mean(self, field: str) -> float:
        return float(np.mean([getattr(m, field) for m in self.models]))

    @property
    def heldout(self) -> float:
        return self.mean("heldout")

    @property
    def prefix_matching(self) -> float:
        return self.mean("prefix_matching")

    @property
    def copy_drop(self) -> float:
        return self.mean("copy_drop")

    @property
    def width(self) -> int:
        return self.models[0].width

    @property
    def epochs(self) -> float:
        return self.models[0].epochs

    @property
    def parameters(self) -> int:
        return self.models[0].parameters


def _models(table: pa.Table) -> list[Model]:
    """The complete points of a sweep (E is None for a point without repetition)."""
    models = []
    for row in table.to_pylist():
        if row["status"] != "complete":
            continue
        run, member = Run.open(row["run"]), row["member"]
        config = run.member_config(member)
        weights = run.model(member=member).named_parameters()
        _, prefix = run.summary_curve("prefix_matching", "repeated", "max", member)
        models.append(
            Model(
                run,
                member,
                config.model.d_model,
                row.get("task.repeat.epochs"),
                config.seed,
                sum(p.numel() for name, p in weights if not name.startswith(EMBEDDINGS)),
                row["heldout/loss"],
                float(prefix[-1]),
                row["repeated/copy_loss_drop"],
            )
        )
    return models


def _cells(models: list[Model]) -> list[Cell]:
    """Models with repetition grouped by width and E, in that order."""
    groups: dict[tuple[int, float], list[Model]] = {}
    for model in models:
        if model.epochs is not None:
            groups.setdefault((model.width, model.epochs), []).append(model)
    return [Cell(group) for _, group in sorted(groups.items())]


def _margin(model: Model) -> float:
    """A loss difference that is not evaluation wiggle: three times the noise level of a held-out
    loss curve (robust second differences), at least 0.01 nats."""
    return max(0.01, 3 * noise_level(model.curve("loss")[1]))


def _on_ladder(ladder: list[Cell], size: float, field: str) -> float:
    """A measure of the unique-data ladder interpolated linearly in log(parameters)."""
    sizes = np.log([m.parameters for m in ladder])
    return float(np.interp(np.log(size), sizes, [getattr(m, field) for m in ladder]))


def _loss_bump(steps: np.ndarray, tokens: np.ndarray, loss: np.ndarray, tr: Transition) -> tuple[bool, str]:
    """Olsson's loss bump, measured: the held-out loss falls fastest per e-fold of tokens (3-point
    mean) inside the transition (onset to end, widened by half its width each side), faster than
    at both flanks (one width further out)."""
    steps, tokens, loss = steps[1:], tokens[1:], loss[1:]  # from the first step on: log(0) tokens
    rate = np.convolve(-np.diff(loss) / np.diff(np.log(tokens)), np.ones(3) / 3, mode="valid")
    mids = ((steps[1:] + steps[:-1]) / 2)[1:-1]  # the centres of the 3-point means
    width = tr.end - tr.onset
    inside = (mids >= tr.onset - width / 2) & (mids <= tr.end + width / 2)
    before, after = mids < tr.onset - width, mids > tr.end + width
    if not (inside.any() and before.any() and after.any()):
        return False, "the transition is too close to an end of training to see its flanks"
    peak, left, right = rate[inside].max(), rate[before][-1], rate[after][0]
    text = (
        f"held-out loss falls {peak:.3f} nats per e-fold of tokens inside it vs {left:.3f} before "
        f"and {right:.3f} after"
    )
    return bool(peak > max(left, right)), text


def _icl_jump(steps: np.ndarray, icl: np.ndarray, tr: Transition) -> tuple[float, float]:
    """(change of the ICL score across the transition, its change over the equally long stretch
    just before), each between the means over one transition width (several evaluations, as the
    score is noisy): after the end vs before the onset, and before the onset vs the width before."""
    width = tr.end - tr.onset

    def mean(lo: float, hi: float) -> float:
        return float(icl[(steps >= lo) & (steps <= hi)].mean())

    before = mean(tr.onset - width, tr.onset)
    return mean(tr.end, tr.end + width) - before, before - mean(tr.onset - 2 * width, tr.onset - width)


def _full_mode(sweep: SweepConfig, widths: list[int]) -> SweepConfig:
    """A quick sweep at full scale: 3,000 steps, every width at every E, its points without
    repetition (Olsson's) at widths 128 and 256, three seeds."""
    points: list[dict] = [{"model.d_model": w, "task.repeat.epochs": e} for w in widths for e in FULL_EPOCHS]
    unrepeated = [p for axis in sweep.axes for p in axis_values(axis) if "task.repeat" in p]
    points += [{**p, "model.d_model": w} for p in unrepeated for w in (128, 256)]
    full = load_sweep(sweep.name, [f"axes=[{{points: {json.dumps(points)}}}]", "seeds=[0, 1, 2]"])
    return full.model_copy(update={"overrides": [*sweep.overrides, "training.length={steps: 3000}"]})


@REPRODUCTIONS.register("hernandez")
class Hernandez(SweepReproduction):
    """Repeated data against a ladder of unique-data models; induction heads on real text."""

    title = "Hernandez et al. 2022 (repeated data) and Olsson et al. 2022 (induction heads in text models)"
    full_scale = "3,000 steps, E over every width from 16 to 256, three seeds"
    quick_budget = "52-67 minutes on 2 CPU cores (measured 2026-12-03 and, on a slower day, 2026-12-05)"

    def sweeps(self, quick: bool) -> dict[str, SweepConfig]:
        sweeps = {name: load_sweep(name) for name in ("hernandez", "hernandez_mlp")}
        if quick:
            return sweeps
        widths = {"hernandez": [16, 32, 64, 128, 256], "hernandez_mlp": [32, 128]}
        return {name: _full_mode(sweep, widths[name]) for name, sweep in sweeps.items()}

    def judge(self, results: dict[str, pa.Table], quick: bool) -> list[Claim]:
        models = _models(results["hernandez"])
        cells = _cells(models)
        ladder = sorted((c for c in cells if c.epochs == 1), key=lambda c: c.parameters)
        claims = []
        for width in sorted({c.width for c in cells if c.epochs > 1}):
            claims += self._repetition_claims([c for c in cells if c.width == width], ladder)
        mlp = _cells(_models(results["hernandez_mlp"]))
        claims += [self._mlp_claim([c for c in mlp if c.width == w]) for w in sorted({c.width for c in mlp})]
        unrepeated = [m for m in models if m.epochs is None]
        for width in sorted({m.width for m in unrepeated}):
            claims.append(self._olsson_claim([m for m in unrepeated if m.width == width]))
        return claims

    def _repetition_claims(self, row: list[Cell], ladder: list[Cell]) -> list[Claim]:
        """Interior peak over E, double descent, damage to induction beyond loss, effective size:
        for the models of one width (means over seeds)."""
        row = sorted(row, key=lambda c: c.epochs)
        unique = row[0]
        margin = _margin(unique.models[0])
        losses = np.array([c.heldout for c in row])
        worst = row[int(np.argmax(losses))]
        width = f"d {unique.width}"
        seeds = f"seeds {', '.join(str(m.seed) for m in unique.models)}"
        by_e = ", ".join(f"E={c.epochs:g}: {c.heldout:.3f}" for c in row)
        claims = [
            Claim(
                f"{width}: a middle range of repeat counts E is the most harmful (held-out loss peaks)",
                "a 'poor performance region' of middle E, moving with model size (Hernandez et al.)",
                f"final held-out loss (nats, {seeds}) {by_e}; margin {margin:.3f}",
                worst not in (row[0], row[-1]) and worst.heldout - max(losses[0], losses[-1]) > margin,
            )
        ]
        descents = {
            (c.epochs, m.seed): double_descent(*m.curve("loss"), margin) for c in row[1:] for m in c.models
        }
        claims.append(
            Claim(
                f"{width}: test loss shows double descent over training in the harmful range",
                "qualitative (Hernandez et al.)",
                "; ".join(f"E={e:g} seed {seed}: {_descent_text(d)}" for (e, seed), d in descents.items())
                + f" (rise of at least {margin:.3f} nats)",
                any(d is not None for (e, _), d in descents.items() if e == worst.epochs),
            )
        )
        size = effective_size({c.parameters: c.heldout for c in ladder}, worst.parameters, worst.heldout)
        expected_pm = _on_ladder(ladder, size.parameters, "prefix_matching")
        expected_copy = _on_ladder(ladder, size.parameters, "copy_drop")
        heads_formed = max(c.prefix_matching for c in ladder) > 0.3
        claims.append(
            Claim(
                f"{width}: repetition damages prefix matching and copying more than its loss predicts",
                "disproportionate damage to copying and induction heads (Hernandez et al.)",
                f"E={worst.epochs:g}: prefix matching {worst.prefix_matching:.3f} vs {expected_pm:.3f} and "
                f"copy-loss drop {worst.copy_drop:.2f} vs {expected_copy:.2f} nats for a unique-data "
                f"model of the same held-out loss (ladder, log-size interpolation); unique {width}: "
                f"{unique.prefix_matching:.3f}, {unique.copy_drop:.2f}" + ("" if heads_formed else NO_HEADS),
                heads_formed
                and worst.prefix_matching < (1 - SHORTFALL) * expected_pm
                and worst.copy_drop < (1 - SHORTFALL) * expected_copy,
            )
        )
        ladder_text = ", ".join(f"d {c.width} ({c.parameters:,}): {c.heldout:.3f}" for c in ladder)
        claims.append(
            Claim(
                f"{width}: the damaged model equals a k-times smaller unique-data model",
                f"k = {PAPER_K}",
                f"E={worst.epochs:g}: held-out {worst.heldout:.3f} nats = a unique-data model of "
                f"{size.parameters:,.0f} non-embedding params, k = {size.times_smaller:.2f}"
                + ("" if size.within_ladder else " (extrapolated beyond the ladder)")
                + f"; ladder (params: loss) {ladder_text}",
                size.times_smaller > 1 and worst.heldout - unique.heldout > margin,
            )
        )
        return claims

    def _mlp_claim(self, cells: list[Cell]) -> Claim:
        """The most harmful E against unique data, for a model with MLPs of one width."""
        unique, repeated = cells[0], max(cells[1:], key=lambda c: c.heldout)
        margin = _margin(unique.models[0])
        return Claim(
            "a model with MLPs is damaged by repetition too",
            "800M model -> 400M-equivalent (Hernandez et al., with MLPs)",
            f"d {unique.width} with MLPs: held-out {unique.heldout:.3f} (E=1) vs {repeated.heldout:.3f} "
            f"(E={repeated.epochs:g}) nats; prefix matching {unique.prefix_matching:.3f} vs "
            f"{repeated.prefix_matching:.3f}; margin {margin:.3f}",
            repeated.heldout - unique.heldout > margin,
        )

    def _olsson_claim(self, models: list[Model]) -> Claim:
        """Olsson's phase change in the unique-data models of one width: judged on each seed,
        reproduced when it shows in most of them."""
        finding = (
            "induction heads form in the 2-layer attention-only text model, with a loss bump and a "
            "jump in ICL score at the same step (Olsson)"
        )
        paper = "qualitative: prefix matching, a loss bump and the ICL score change together, early (Olsson)"
        judged = [(model.seed, *_olsson_seed(model)) for model in models]
        return judged_by_seed(finding, paper, judged, "the three signs together")

    def sweep_figures(self, results: dict[str, pa.Table], out: Path) -> list[Path]:
        models = _models(results["hernandez"])
        unrepeated = [m for m in models if m.epochs is None]
        return figures(_cells(models), max(unrepeated, key=lambda m: (m.width, -m.seed)), out)


def _olsson_seed(model: Model) -> tuple[bool, str]:
    """Whether one model's prefix matching rises abruptly with a loss bump and a drop in its
    held-out ICL score, and the figures that say so."""
    tr = summarise(model.run, model.member).main
    if tr is None:
        return False, f"d {model.width} (seed {model.seed}): no abrupt rise in prefix matching"
    steps, loss = model.run.curve("loss", "heldout", member=model.member)
    tokens, _ = model.curve("loss")
    bump, bump_text = _loss_bump(steps, tokens, loss, tr)
    icl_steps, icl = model.run.curve("icl_score", "heldout", member=model.member)
    jump, drift = _icl_jump(icl_steps, icl, tr)
    text = (
        f"d {model.width} ({model.parameters:,} params, seed {model.seed}): prefix matching "
        f"{tr.before:.2f} -> {tr.after:.2f} from {units_text(model.run, tr.onset)} "
        f"to step {tr.end:,.0f}; {bump_text}; held-out ICL score changes {jump:+.2f} nats across it "
        f"(means over {tr.end - tr.onset:,.0f} steps either side) vs {drift:+.2f} over as long before"
    )
    return bump and jump <= -ICL_JUMP and jump < 2 * min(drift, 0.0), text  # a jump, not the trend


def _descent_text(d: DoubleDescent | None) -> str:
    if d is None:
        return "none"
    return (
        f"minimum {d.minimum:.3f} at {d.minimum_step / 1e6:.1f} M tokens, peak {d.peak:.3f} at "
        f"{d.peak_step / 1e6:.1f} M, down again by {d.fall_step / 1e6:.1f} M"
    )
