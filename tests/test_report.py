"""The run report: figures, a self-contained page, and the page rendered in headless Chromium."""

import html
import re

import numpy as np
import pytest

from conftest import CHROMIUM, TINY_BURSTY, TINY_READOUT_MODEL, render_in_chromium, tiny_config
from icl_lab.analysis.summary import summarise, summary_lines
from icl_lab.evaluation import key_metric
from icl_lab.experiment import load_config
from icl_lab.report.page import write_report
from icl_lab.store.run import Run
from icl_lab.training.trainer import train


@pytest.fixture(scope="module")
def bursty_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    config = tiny_config(
        task=TINY_BURSTY,
        model={**TINY_READOUT_MODEL, "positional": "learned", "readout": {"positions": [-1], "hidden": [16]}},
        training={"length": {"steps": 40}},
        eval={"every": {"steps": 5}, "batch_size": 64},
        checkpointing={"every": {"steps": 20}},
    )
    return train(config, str(tmp_path_factory.mktemp("runs")), progress=False)


def test_report_writes_figures_and_a_self_contained_page(bursty_run: Run) -> None:
    page = write_report(bursty_run)
    folder = page.parent
    for name in ("training.png", "progress.png", "attention.png"):
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == 3
    assert not re.search(r"(src|href)=\"(https?:)?//", text), "no network resources"
    assert "seed</th><td>3" in text and "sequences" in text
    for split in ("ic", "ic2", "iw"):
        assert f"<th>{split}</th>" in text


def test_a_reduced_model_run_gets_its_report(tmp_path) -> None:
    model = {"name": "induction_head_model", "layer1": "ideal"}  # its config names no layers or heads
    config = tiny_config(task=TINY_BURSTY, model=model, training={"length": {"steps": 10}})
    run = train(config, str(tmp_path), progress=False)
    assert run.layers_heads == (2, 1)
    text = write_report(run).read_text()
    assert text.count('src="data:image/png;base64,') == 3, "training, progress measures, attention"


def test_a_run_that_skips_its_tasks_key_split_follows_the_loss_of_its_first_split(tmp_path) -> None:
    short = {"length": {"steps": 4}}
    config = tiny_config(
        task=TINY_BURSTY, model=TINY_READOUT_MODEL, training=short, eval={"splits": ["iw", "train"]}
    )
    assert key_metric(config) == ("iw", "loss", "mean")
    assert key_metric(tiny_config(task=TINY_BURSTY, model=TINY_READOUT_MODEL)) == ("ic", "accuracy", "mean")
    no_train_split = load_config("function_classes", ["task.splits=[clean, skewed]"])
    assert key_metric(no_train_split) == ("clean", "loss", "mean")
    run = train(config, str(tmp_path), progress=False)
    assert summarise(run).key == "iw loss"
    assert "Attention patterns" in write_report(run).read_text()


def test_a_run_that_logs_neither_its_key_metric_nor_the_loss_follows_its_training_loss(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(training={"length": {"steps": 8}}, eval={"metrics": ["accuracy"]})
    run = train(config, str(tmp_path), progress=False)
    summary = summarise(run)
    assert summary.key == "train_batches loss" and summary.curve_logged
    assert summary_lines(run)[1].startswith("final accuracy at step 8: train 0.")
    # evaluated at step 0 alone (killed before its next evaluation): no curve, and the page says so
    monkeypatch.setattr(Run, "summary_curve", lambda *args: (np.array([0]), np.array([2.5])))
    summary = summarise(run)
    assert summary.key == "none: fewer than two evaluations" and not summary.curve_logged
    assert summary_lines(run)[0] == "no transition curve: fewer than two evaluations (seed 3)"
    assert "no curve to detect on" in write_report(run).read_text()


def test_report_lists_clamps_and_when_they_were_active(tmp_path) -> None:
    config = tiny_config(
        clamps=[{"kind": "ablate", "heads": ["1.0"], "mode": "mean", "steps": {"from": 4, "until": 8}}],
        training={"length": {"steps": 12}},
    )
    text = write_report(train(config, str(tmp_path), progress=False)).read_text()
    assert "<h2>Clamps</h2>" in text
    assert "<td>ablate</td>" in text and "heads=[&#x27;1.0&#x27;]" in text and "mode=mean" in text
    assert "steps 4 to 8 (32 to 64 sequences)" in text
    assert "active (training and evaluation)" in text
    unclamped = tiny_config(**{**config.model_dump(by_alias=True), "eval": {"with_clamps": False}})
    text = write_report(train(unclamped, str(tmp_path / "u"), progress=False)).read_text()
    assert "active (training; evaluations ran unclamped)" in text


def test_report_command(cli, bursty_run: Run) -> None:
    code, out, _ = cli("report", bursty_run.path)
    assert code == 0 and "report.html" in out


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (CI installs Debian's chromium)")
def test_report_renders_in_headless_chromium_without_console_errors(bursty_run: Run) -> None:
    page = write_report(bursty_run)
    done = render_in_chromium(page.as_uri())
    assert 'data-figures="3/3"' in done.stdout, "every figure decoded and drawn"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console


def test_splits_never_share_a_colour() -> None:
    from icl_lab.report.figures import SPLIT_COLOURS, split_colours

    text = split_colours(["train", "heldout", "repeated", "bank"])  # text_lm's; heldout was train's C0
    assert text["train"] == SPLIT_COLOURS["train"] and len(set(text.values())) == 4
    many = split_colours([f"s{i}" for i in range(10)] + ["iw"])
    assert len(set(many.values())) == 10 and many["iw"] == SPLIT_COLOURS["iw"], "10 colours, then again"


def test_every_progress_measure_a_report_plots_names_its_unit(bursty_run: Run) -> None:
    from icl_lab.metrics.base import LOSS_UNIT, value_unit
    from icl_lab.report.figures import measure_label
    from icl_lab.tasks import TASKS

    plotted = {metric for _, task in TASKS.items() for _, metric, _ in task.progress_measures}
    assert {m: value_unit(m) for m in plotted if value_unit(m) is None} == {}
    assert value_unit("copy_loss_drop") == value_unit("icl_score") == value_unit("loss") == LOSS_UNIT
    assert measure_label(bursty_run, "icl_score") == "icl score (nats)"
    assert measure_label(bursty_run, "induction_strength") == "induction strength (attention share)"
    assert measure_label(bursty_run, "my_metric") == "my metric (unit not declared)"


def test_every_attention_panel_labels_its_axes_and_the_colour_bar_its_scale(bursty_run: Run) -> None:
    from icl_lab.report.figures import attention_patterns

    task, batches = bursty_run.eval_data()
    figure = attention_patterns(bursty_run, bursty_run.checkpoint_steps[:2], task, "ic", batches["ic"])
    *panels, bar = figure.axes
    layers, heads = bursty_run.layers_heads
    assert len(panels) == 2 * layers * heads  # two checkpoints x every head
    assert {(ax.get_xlabel(), ax.get_ylabel()) for ax in panels} == {("key token", "query token")}
    assert bar.get_ylabel() == "attention (query row sums to 1)"
    assert "seed 3" in figure._suptitle.get_text()


def test_report_member_writes_that_members_report_beside_member_0s(cli, tmp_path) -> None:
    members = [tiny_config(seed=seed, training={"length": {"steps": 4}}) for seed in (3, 7)]
    run = train(members, str(tmp_path), progress=False)
    code, out, _ = cli("report", run.path, "--member", "1")
    assert code == 0 and (run.path / "report" / "member1" / "report.html").is_file(), out
    page = (run.path / "report" / "member1" / "report.html").read_text()
    assert "<tr><th>seed</th><td>7</td></tr><tr><th>member</th><td>1 of 2</td></tr>" in page
    assert f"<title>icl-lab report: {run.id} member 1</title>" in page
    assert not (run.path / "report" / "report.html").exists(), "member 0's report is not written"
    code, _, err = cli("report", run.path, "--member", "2")
    assert code == 2 and err.strip().endswith(f"run {run.id} has no member 2 (it has members 0 to 1)")


def test_report_member_of_a_sweep_is_refused(cli, tmp_path) -> None:
    (tmp_path / "sweep.yaml").write_text("name: s\n")
    code, _, err = cli("report", tmp_path, "--member", "0")
    assert code == 2 and err.strip() == "error: --member reports one member of an ensemble run, not a sweep"


def test_a_value_declared_in_two_units_is_refused_when_registered() -> None:
    from icl_lab.metrics import METRICS, metric

    with pytest.raises(
        ValueError, match=r"^metric loss_in_bits: loss in 'bits', but metric loss gives it in 'loss'$"
    ):
        metric("loss_in_bits", units={"loss": "bits"})(lambda ctx: {})
    assert "loss_in_bits" not in METRICS


def test_the_training_figure_draws_only_what_the_run_logged(tmp_path) -> None:
    from icl_lab.report import figures

    def panels(metrics: list[str]) -> dict[str, list[str]]:
        config = tiny_config(training={"length": {"steps": 4}}, eval={"metrics": metrics})
        run = train(config, str(tmp_path / metrics[0]), progress=False)
        fig = figures.training_curves(run, None)
        return {ax.get_ylabel(): ax.get_legend_handles_labels()[1] for ax in fig.axes if ax.get_ylabel()}

    only_loss = panels(["loss"])
    assert list(only_loss) == ["loss (nats)"], "no empty accuracy panel"
    assert only_loss["loss (nats)"][0] == "training batches" and "train" in only_loss["loss (nats)"]
    only_accuracy = panels(["accuracy"])
    assert only_accuracy["loss (nats)"] == ["training batches"], "no legend entry for a split without a loss"
    assert "train" in only_accuracy["accuracy (fraction)"]


def test_the_report_of_a_diverged_run_shows_why_it_stopped(tmp_path) -> None:
    from icl_lab.errors import DivergenceError

    config = tiny_config(training={"length": {"steps": 8}, "optimizer": {"lr": 1e12}})
    with pytest.raises(DivergenceError):
        train(config, str(tmp_path), progress=False)
    (path,) = tmp_path.iterdir()
    run = Run.open(path)
    assert run.status == "diverged"
    page = write_report(run).read_text()
    assert f"<tr><th>error</th><td>{html.escape(run.manifest['error'])}</td></tr>" in page
