"""The reproductions' verdicts (Singh, Reddy, von Oswald) on planted figures, each rule on both sides
of its threshold: runs are stand-ins that return the curves and summaries a judge reads."""

import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from icl_lab.analysis.transitions import Transition
from icl_lab.reproduce import gd, reddy, singh
from icl_lab.reproduce.base import TOLERANCE

LN2 = math.log(2)
BELOW = 0.3 * LN2  # under Singh's 0.4 ln 2


class FakeRun:
    """What the judges read of a run: planted curves by (metric, split[, head]) over steps."""

    def __init__(self, seed: int = 0, batch: int = 32, curves: dict | None = None, **config: object) -> None:
        self.config = SimpleNamespace(seed=seed, **config)
        self.batch, self.curves = batch, curves or {}

    def curve(
        self, metric: str, split: str, head: str | None = None, member: int | None = None, x: str = "steps"
    ) -> tuple[np.ndarray, np.ndarray]:
        steps, values = self.curves[(metric, split) if head is None else (metric, split, head)]
        steps = np.asarray(steps)
        return (steps * self.batch if x == "sequences" else steps), np.asarray(values, dtype=float)

    def units_at(self, step: float) -> tuple[int, int]:
        return round(step * self.batch), 0

    def eval_data(self) -> tuple[None, dict]:
        return None, {"train": None}


def loss_run(seed: int = 0, reaches: int | None = None, steps: int = 100, batch: int = 32) -> FakeRun:
    """A run whose training loss sits at ln 2 and falls below 0.4 ln 2 at step `reaches` (None: never)."""
    grid = np.arange(0, steps + 1, 10)
    loss = np.where(grid >= (reaches if reaches is not None else steps + 1), BELOW, LN2)
    return FakeRun(seed, batch, {("loss", "train"): (grid, loss)})


# Singh et al. ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plateau_points", "final", "held"),
    [
        (5, 0.01, True),  # ln 2 over steps 0-4,000 = 0-64,000 sequences, then 0.01
        (4, 0.01, False),  # 48,000 sequences: under the 50,000 asked
        (5, 0.06, False),  # does not end below 0.05
    ],
)
def test_singh_plateau_needs_50000_sequences_near_ln2_and_a_low_end(
    plateau_points: int, final: float, held: bool
) -> None:
    steps = np.arange(0, 20_001, 1000)
    loss = np.where(np.arange(len(steps)) < plateau_points, LN2 + 0.05, final)
    run = FakeRun(3, 16, {("loss", "train"): (steps, loss)})
    seed, ok, text = singh._plateau(run)
    assert (seed, ok) == (3, held)
    assert text.startswith(
        f"seed 3: loss within 0.1 of ln 2 from 0-{(plateau_points - 1) * 16_000:,} sequences"
    )


@pytest.mark.parametrize(
    ("matched", "single", "held"),
    [(40, 90, True), (50, 90, False), (None, 90, False), (40, None, True)],
)
def test_singh_match_clamp_must_halve_the_time_to_low_loss(
    matched: int | None, single: int | None, held: bool
) -> None:
    assert singh._match_clamped(loss_run(reaches=single), loss_run(reaches=matched))[1] is held


@pytest.mark.parametrize(("main", "single", "held"), [(40, 50, True), (50, 50, False), (None, 50, False)])
def test_singh_several_heads_must_beat_one(main: int | None, single: int | None, held: bool) -> None:
    assert singh._several_heads(loss_run(reaches=single), loss_run(reaches=main))[1] is held


@pytest.mark.parametrize(
    ("clamped", "single", "held"),
    [
        ((10, 20, 30), 40, True),
        ((10, 20, 40), 40, False),
        ((10, None, 30), 40, False),
        ((10, 20, 30), None, False),
    ],
)
def test_singh_every_subcircuit_clamp_must_beat_the_unclamped_single_head(
    clamped: tuple, single: int | None, held: bool
) -> None:
    _, ok, text = singh._subcircuits(loss_run(reaches=single), *(loss_run(reaches=t) for t in clamped))
    assert ok is held
    assert text.startswith(
        "seed 0: Layer 1 + copy (B learned): " + ("never" if clamped[0] is None else f"{clamped[0] * 32:,}")
    )
    assert "; unclamped (one induction head) " in text


@pytest.mark.parametrize(
    ("times", "held"),
    [
        ({"none": 50, "composite": 30, "copy": 50, "composite on head 0.2 (the authors' index)": None}, True),
        ({"none": 50, "composite": 30, "copy": 60, "composite on head 0.2 (the authors' index)": 10}, False),
        ({"none": 50, "composite": None, "copy": 40}, False),
        ({"none": None, "composite": 30, "copy": 40}, False),
    ],
)
def test_singh_clamp_progress_judges_the_run_s_own_heads_against_unclamped(
    monkeypatch: pytest.MonkeyPatch, times: dict, held: bool
) -> None:
    """Reached no later than unclamped, each judged measure; the authors' head index is shown only."""
    steps = np.arange(0, 101, 10)
    curves = {
        name: (steps, np.where(steps >= (t if t is not None else 1000), BELOW, LN2))
        for name, t in times.items()
    }
    monkeypatch.setattr(singh, "_progress_curves", lambda run: curves)
    assert singh._clamp_progress(FakeRun())[1] is held


def test_singh_timing_grids_judge_the_direction_of_the_seed_means() -> None:
    """Classes: each larger count later than 50 on average; labels: later at every step up. A seed
    that never reaches low loss counts as the grid run's whole length."""

    def grid(axis: str, reach: list[list[int | None]]) -> dict:
        return {
            singh._grid_name(classes, labels, seed): loss_run(seed, reaches=row[i], steps=70_000)
            for seed, row in enumerate(reach)
            for i, (classes, labels, _) in enumerate(singh.GRID[axis])
        }

    later_on_average = [[1000, 3000, 2000], [1000, 1500, 900]]  # means 1000, 2250, 1450 (steps)
    assert singh._timing_claim("classes", grid("classes", later_on_average)).reproduced
    assert not singh._timing_claim("labels", grid("labels", later_on_average)).reproduced
    assert singh._timing_claim("labels", grid("labels", [[1000, 2000, 3000], [1000, 2000, 3000]])).reproduced
    earlier = [[1000, 3000, 2000], [1000, 500, 900]]  # means 1000, 1750, 1450: still later
    assert singh._timing_claim("classes", grid("classes", earlier)).reproduced
    not_later = [[1000, 3000, 2000], [4000, 500, 900]]  # means 2500, 1750, 1450
    assert not singh._timing_claim("classes", grid("classes", not_later)).reproduced
    never = grid("labels", [[1000, 60_000, None], [1000, 2000, None]])  # None: 2,000,000 sequences
    claim = singh._timing_claim("labels", never)
    assert claim.reproduced and claim.seeds == (0, 1)
    assert "15 labels: never (2 of 2 seeds never by 2,000,000)" in claim.ours
    assert "10 labels: 992,000 ± 1,312,390 (2 seeds)" in claim.ours


@pytest.mark.parametrize(
    ("strength", "kept", "held"),
    [
        (singh.PAPER_STRENGTH, singh.PAPER_KEPT, True),  # the authors' heads: r = 0.96
        (singh.PAPER_STRENGTH, singh.PAPER_KEPT[::-1], False),  # r = -0.70
        ([0.5, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], [0.5, 0.6, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], False),
        (singh.PAPER_STRENGTH, [0.25] * 8, False),  # every head alone at chance: r undefined
    ],
)
def test_singh_diverse_heads_need_correlation_and_three_strong_heads(
    monkeypatch: pytest.MonkeyPatch, strength: list, kept: list, held: bool
) -> None:
    run = FakeRun()
    run.model = lambda: SimpleNamespace(n_heads=8)
    run.head_curves = lambda metric, split: ([0, 1], {f"1.{h}": [0.0, s] for h, s in enumerate(strength)})
    monkeypatch.setattr(singh, "only_head_kept", lambda model, task, batch, layer: torch.tensor(kept))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an undefined r is judged, not warned about
        _, ok, text = singh._diverse_heads(run)
    assert ok is held and ("r = nan" in text) == (len(set(kept)) == 1)


@pytest.mark.parametrize(
    ("k_cut", "v_cut", "held"), [(0.2, 0.15, True), (0.2, 0.09, False), (0.05, 0.3, False)]
)
def test_singh_composition_needs_both_paths_to_cost_over_a_tenth_of_a_nat(
    monkeypatch: pytest.MonkeyPatch, k_cut: float, v_cut: float, held: bool
) -> None:
    run = FakeRun()
    run.model = lambda: None
    table = {  # two single heads, then the whole layer
        "clean_loss": [0.3, 0.3, 0.3],
        "values_kept_loss": [0.31, 0.32, 0.3 + k_cut],
        "patterns_kept_loss": [0.33, 0.34, 0.3 + v_cut],
    }
    monkeypatch.setattr(singh, "wiring_table", lambda model, task, batch, layer: table)
    ok, text = singh._composition(run)[1:]
    assert ok is held and f"K path cut): +{k_cut:.3f}" in text


# Reddy ------------------------------------------------------------------------------------------


def reddy_run(
    seed: int,
    ic: float,
    iw: float = 0.0,
    main: Transition | None = None,
    curves: dict | None = None,
    step: int = 1500,
) -> FakeRun:
    run = FakeRun(seed, curves=curves or {}, task=SimpleNamespace(n_labels=32, burstiness=4, n_context=8))
    run.summary = SimpleNamespace(
        final={"ic": {"accuracy": ic}, "iw": {"accuracy": iw}}, main=main, final_step=step
    )
    return run


ONSET_END = Transition(onset=400, midpoint=500, end=600, before=0.2, after=0.9)


def reddy_runs(**changes: object) -> dict[str, FakeRun]:
    """Every run Reddy's claims read, each figure on the reproduced side unless changed."""
    ic_rise, iw_fall = [0.1, 0.3, 0.5, 0.7], [0.9, 0.7, 0.5, 0.3]
    steps = np.arange(0, 1501, 100)
    measures = {
        ("context_label_accuracy", "ic"): (steps, np.full(len(steps), 0.9)),
        ("item_label_association", "ic", "0.0"): (steps, np.where(steps > 500, 0.7, 0.2)),
        ("target_label_attention", "ic", "1.0"): (steps, np.where(steps > 500, 0.8, 0.3)),
        ("loss", "train"): (steps, np.where(steps > 500, 0.1, 3.0)),
        ("accuracy", "ic"): (steps, np.where(steps > 500, 0.95, 0.1)),
    }
    figures = {
        "ic_rise": ic_rise,
        "iw_fall": iw_fall,
        "noise": (0.5, 0.2),  # (IC, IW) at epsilon 1.0, against B = 2's 0.5 and 0.5 (epsilon 0.1)
        "L=N": 0.3,
        "control": 0.8,
        "pC": (ONSET_END, 0.95),
        "measures": measures,
        "reduced": (ic_rise, iw_fall),
    } | changes
    runs = {}
    for s in reddy.SEEDS:
        for prefix, keys in (("B", reddy.BURSTINESS), ("K", reddy.CLASSES)):
            for k, ic, iw in zip(keys, figures["ic_rise"], figures["iw_fall"], strict=True):
                runs[f"{prefix}{k} s{s}"] = reddy_run(s, ic, iw, ONSET_END, figures["measures"])
        runs[f"noise s{s}"] = reddy_run(s, *figures["noise"])
        runs[f"L=N s{s}"] = reddy_run(s, figures["L=N"])
        runs[f"pC s{s}"] = reddy_run(s, figures["pC"][1], main=figures["pC"][0], curves=measures)
        for b, ic, iw in zip(reddy.BURSTINESS, *figures["reduced"], strict=True):
            runs[f"reduced B{b} s{s}"] = reddy_run(s, ic, iw)
    runs["L=32 control"] = reddy_run(0, figures["control"])
    return runs


@pytest.fixture
def reddy_fit(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """summarise reads each stand-in's planted summary; the nested-logits fit is the planted one."""
    monkeypatch.setattr(reddy, "summarise", lambda run, member=None: run.summary)
    steps = np.arange(0, 1501, 100)
    fit = SimpleNamespace(z1=1.0, z23=2.0, rmse=0.1, fitted=np.where(steps > 500, 0.1, 3.0))
    monkeypatch.setattr(reddy, "fit_nested_logits", lambda *args: fit)
    return fit


CLAIMS = ["B", "K", "noise", "L=N", "pC", "measures", "fit", "reduced"]


@pytest.mark.parametrize(
    ("changes", "failed"),
    [
        ({}, None),
        ({"ic_rise": [0.1, 0.3, 0.2, 0.7]}, {"B", "K"}),  # falls by 0.1, over TOLERANCE, at one step
        ({"ic_rise": [0.1, 0.15, 0.2, 0.29]}, {"B", "K"}),  # monotone, but rises 0.19 < 0.2
        ({"iw_fall": [0.9, 0.9, 0.9, 0.9]}, {"B", "K"}),
        ({"noise": (0.5 - 2 * TOLERANCE, 0.2)}, {"noise"}),  # IC lower with more noise
        ({"noise": (0.5, 0.5)}, {"noise"}),  # IW not lower
        ({"L=N": 0.6}, {"L=N"}),
        ({"control": 0.4}, {"L=N"}),
        ({"pC": (None, 0.95)}, {"pC"}),
        ({"pC": (Transition(800, 1100, 1300, 0.2, 0.9), 0.95)}, {"pC"}),  # midpoint after step 1,000
        ({"pC": (ONSET_END, 0.85)}, {"pC"}),
        ({"reduced": ([0.7, 0.5, 0.3, 0.1], [0.9, 0.7, 0.5, 0.3])}, {"reduced"}),
    ],
)
def test_reddy_claims_on_planted_figures(
    reddy_fit: SimpleNamespace, changes: dict, failed: set | None
) -> None:
    claims = reddy.Reddy().claims(reddy_runs(**changes), quick=True)
    assert [c.reproduced for c in claims] == [name not in (failed or set()) for name in CLAIMS]


@pytest.mark.parametrize(
    ("cla", "ila", "tla", "held"),
    [(0.9, 0.7, 0.8, True), (0.7, 0.7, 0.8, False), (0.9, 0.35, 0.8, False), (0.9, 0.7, 0.35, False)],
)
def test_reddy_progress_measures_judged_at_the_transition_s_onset_and_end(
    reddy_fit: SimpleNamespace, cla: float, ila: float, tla: float, held: bool
) -> None:
    """CLA above 0.8 at the onset (step 400); ILA and TLA up by over 0.2 from onset to end (600)."""
    steps = np.arange(0, 1501, 100)
    curves = {
        ("context_label_accuracy", "ic"): (steps, np.full(len(steps), cla)),
        ("item_label_association", "ic", "0.0"): (steps, np.where(steps > 500, ila, 0.2)),
        ("target_label_attention", "ic", "1.0"): (steps, np.where(steps > 500, tla, 0.2)),
    }
    _, ok, text = reddy._progress_measures(reddy_run(0, 0.9, main=ONSET_END, curves=curves))
    assert ok is held
    assert text == (
        f"seed 0: at onset (step 400) CLA {cla:.2f}; across the transition ILA1 0.20 -> {ila:.2f}, "
        f"TLA2 0.20 -> {tla:.2f}"
    )
    no_transition = reddy._progress_measures(reddy_run(1, 0.9, main=None, curves=curves))
    assert no_transition == (1, False, "seed 1: no transition in IC accuracy")


@pytest.mark.parametrize(("rmse", "shift", "held"), [(0.1, 0, True), (0.3, 0, False), (0.1, 200, False)])
def test_reddy_nested_logits_fit_must_be_close_and_halve_with_the_loss(
    reddy_fit: SimpleNamespace, rmse: float, shift: int, held: bool
) -> None:
    """The fitted loss halves within a tenth of the run (150 steps) of the network's."""
    steps = np.arange(0, 1501, 100)
    reddy_fit.rmse, reddy_fit.fitted = rmse, np.where(steps > 500 + shift, 0.1, 3.0)
    run = reddy_runs()["K4096 s0"]
    assert reddy._phenomenology(run)[1] is held


# von Oswald et al. -----------------------------------------------------------------------------


def gd_runs(layers: tuple[int, ...] = (1, 2)) -> dict[str, FakeRun]:
    loss = (np.arange(0, 501, 50), np.r_[np.full(4, 0.41), np.full(7, 0.2)])
    return {
        f"{n} layer s{s}": FakeRun(s, curves={("loss", "train"): loss}, model=SimpleNamespace(n_layers=n))
        for n in layers
        for s in (0, 1, 2)
    }


@pytest.fixture
def gd_planted(monkeypatch: pytest.MonkeyPatch) -> dict:
    """The figures GD's claims read, on the reproduced side; tests change them in place."""
    figures = {
        # (loss, cosine, prediction difference, interpolated loss, learned lr / N) of each 1-layer run
        "one_layer": (0.205, 0.999, 0.02, 0.206, 0.0604),
        # GD and GD++ tuned: {steps: (lr, gamma, loss)}
        "gd": {1: (0.6, 0.0, 0.204), 2: (0.7, 0.0, 0.157), 5: (0.8, 0.0, 0.108)},
        "plus": {1: (0.6, 1.0, 0.204), 2: (0.7, 1.0, 0.12), 5: (0.8, 1.0, 0.09)},
        "trained": {1: 0.205, 2: 0.11},
        "main": ONSET_END,
    }
    monkeypatch.setattr(
        gd.GradientDescent, "_prompts", lambda self, task, seed: (torch.zeros(2), torch.ones(2))
    )
    monkeypatch.setattr(
        gd.GradientDescent, "_tuned", staticmethod(lambda t, y: (figures["gd"], figures["plus"]))
    )
    monkeypatch.setattr(
        gd.GradientDescent, "_one_layer", staticmethod(lambda run, t, y, lr: figures["one_layer"])
    )
    monkeypatch.setattr(gd, "_loss", lambda run, t, y: figures["trained"][run.config.model.n_layers])
    monkeypatch.setattr(gd, "summarise", lambda run: SimpleNamespace(main=figures["main"]))
    return figures


def gd_verdicts() -> list[bool]:
    return [c.reproduced for c in gd.GradientDescent().claims(gd_runs(), quick=True)]


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ({}, None),
        ({"one_layer": (0.2092, 0.999, 0.02, 0.206, 0.0604)}, {0}),  # 2.5% above GD's 0.204
        ({"one_layer": (0.205, 0.985, 0.02, 0.206, 0.0604)}, {1}),
        ({"one_layer": (0.205, 0.999, 0.06, 0.206, 0.0604)}, {1}),
        ({"one_layer": (0.205, 0.999, 0.02, 0.206, 0.0632)}, {2}),  # 5.3% off lr / N = 0.06
        ({"one_layer": (0.205, 0.999, 0.02, 0.2155, 0.0604)}, {3}),  # over 1.05 x 0.205
        ({"main": None}, {4}),
        ({"gd": {1: (0.6, 0.0, 0.204), 2: (0.7, 0.0, 0.168), 5: (0.8, 0.0, 0.108)}}, {5}),  # 0.011 off
        ({"trained": {1: 0.205, 2: 0.16}}, {6}),  # above 2-step GD's 0.157
        ({"trained": {1: 0.205, 2: 0.135}}, {6}),  # beats GD, but over GD++'s 0.12 + 0.01
    ],
)
def test_gd_claims_on_planted_figures(gd_planted: dict, change: dict, failed: set | None) -> None:
    gd_planted.update(change)
    assert gd_verdicts() == [i not in (failed or set()) for i in range(7)]


def test_gd_multi_step_figures_show_the_digits_they_are_judged_at(gd_planted: dict) -> None:
    multi = gd.GradientDescent().claims(gd_runs(), quick=True)[5]
    assert multi.paper == "0.204 0.157 0.108"
    assert multi.ours.startswith("seed 0: 0.204 0.157 0.108 (GD++ with tuned gamma: 0.204 0.120 0.090)")
