"""Reproductions: a paper's findings, the experiments that test them, and an honest verdict each."""

import contextlib
import json
import shlex
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
from rich.console import Console

from icl_lab.errors import IclLabError, Interrupted
from icl_lab.experiment import ExperimentConfig
from icl_lab.files import atomic_write_text
from icl_lab.registry import Registry
from icl_lab.report.claims_page import claims_table, publish, published_records, write_claims_page
from icl_lab.report.sweep import write_sweep_report
from icl_lab.sae.config import SAERunConfig
from icl_lab.store.run import Run
from icl_lab.sweeps.config import SweepConfig
from icl_lab.sweeps.execute import execute, run_configs
from icl_lab.sweeps.run import finish_sweep, prepare_sweep

TOLERANCE = 0.05  # accuracy differences smaller than this count as ties when judging a trend


def numbers(values: object, fmt: str = ".2f") -> str:
    """Values (two decimals unless fmt says), space-separated, for a claim's 'ours' column."""
    return " ".join(f"{v:{fmt}}" for v in values)


def mean_sd(values: list[float]) -> str:
    """'mean±sd' of one figure over seeds (sd with n - 1), for tables that name their seeds once;
    the value alone for one seed."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f}±{statistics.stdev(values):.2f}"


def mean_spread(values: list[float], fmt: str = ".2f") -> str:
    """'mean ± sd (n seeds)' of one figure measured on several seeds (sd over seeds, n - 1); the
    value alone for one seed."""
    if len(values) == 1:
        return format(values[0], fmt)
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    return f"{format(mean, fmt)} ± {format(sd, fmt)} ({len(values)} seeds)"


@dataclass(frozen=True)
class Claim:
    """One finding of a paper, the paper's figure, ours, whether ours reproduces it, and the seeds
    our figure rests on (left empty, reproduce() fills in every seed the reproduction trained)."""

    finding: str
    paper: str
    ours: str
    reproduced: bool
    seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "reproduced", bool(self.reproduced))  # numpy bools are not JSON
        object.__setattr__(self, "seeds", tuple(sorted({int(s) for s in self.seeds})))


def judged_by_seed(
    finding: str, paper: str, judged: list[tuple[int, bool, str]], what: str = "it shows"
) -> Claim:
    """A claim judged on each seed's run alone, each (seed, whether it holds, our figures with the
    seed named): reproduced when it holds for most seeds, a rule fixed before any result was seen."""
    shown = sum(ok for _, ok, _ in judged)
    ours = "; ".join(text for _, _, text in judged)
    if len(judged) > 1:
        ours += f"; {what} in {shown} of {len(judged)} seeds (judged: most)"
    return Claim(finding, paper, ours, shown > len(judged) / 2, tuple(seed for seed, _, _ in judged))


class Reproduction:
    """Subclasses name their experiments (quick: a CPU in minutes; full: nearer the paper's scale, for
    a GPU, as full_scale says) and judge each claim from the finished runs; or, as
    SweepReproduction, from sweeps."""

    title: ClassVar[str]
    quick_budget: ClassVar[str]
    full_scale: ClassVar[str]

    def experiments(self, quick: bool) -> dict[str, ExperimentConfig]:  # pragma: no cover
        raise NotImplementedError

    def claims(self, runs: dict[str, Run], quick: bool) -> list[Claim]:  # pragma: no cover
        raise NotImplementedError

    def figures(self, runs: dict[str, Run], out: Path) -> list[Path]:
        """PNG figures of the reproduction written into out (none by default)."""
        return []


class SweepReproduction(Reproduction):
    """A reproduction made of sweeps, trained in one pool of workers (the first sweep's first
    units first: put the longest there); it judges its claims from their results tables
    (each sweep's report, with its phase diagrams, is written beside)."""

    def sweeps(self, quick: bool) -> dict[str, SweepConfig]:  # pragma: no cover - interface
        raise NotImplementedError

    def judge(self, results: dict[str, pa.Table], quick: bool) -> list[Claim]:  # pragma: no cover
        raise NotImplementedError

    def sweep_figures(self, results: dict[str, pa.Table], out: Path) -> list[Path]:
        """PNG figures across the sweeps written into out, beside each sweep's report (none by default)."""
        return []


REPRODUCTIONS: Registry[type[Reproduction]] = Registry("reproduction")


def _figure_link(path: Path, out: Path) -> str:
    """A PNG shown inline; a page (a dashboard) as a link."""
    where = path.relative_to(out)
    return (
        f"![{path.stem}]({where})"
        if path.suffix == ".png"
        else f"[{where.parent.parent.name} {path.parent.name}]({where})"
    )


def _run_reports(runs: dict[str, Run]) -> dict[str, Path]:
    """Each model run's report page, written where it is missing (SAE runs have none; a member of
    an ensemble has its own, in report/member-<m>)."""
    from icl_lab.report.page import write_report

    pages = {}
    for name, run in runs.items():
        if isinstance(run, Run):
            out = run.path / "report" / (f"member-{run.member}" if len(run.configs) > 1 else "")
            page = out / "report.html"
            pages[name] = page if page.is_file() else write_report(run, out)
    return pages


def _on_device(config: ExperimentConfig | SAERunConfig, device: str) -> ExperimentConfig | SAERunConfig:
    """A model or SAE config set to train on `device`."""
    return config.model_copy(update={"training": config.training.model_copy(update={"device": device})})


def _train_and_judge(
    reproduction: Reproduction,
    quick: bool,
    out: Path,
    workers: int,
    progress: bool,
    reports: bool,
    device: str,
) -> tuple[list[Claim], list[Path], dict[str, Path], set[int]]:
    """Bring a reproduction's runs in out to completion on `device` and judge them: (claims,
    figures, report pages by sweep name and, with `reports`, by run name, the seeds trained). Configs
    that can share a vmapped ensemble train as one as `ensemble: auto` says (sweeps/packing.py; a
    sweep's own ensemble setting decides for its points)."""
    if isinstance(reproduction, SweepReproduction):
        sweeps = reproduction.sweeps(quick)
        if device != "cpu":  # a CPU sweep's sweep.yaml stays as it was, so its directory resumes
            sweeps = {
                name: sweep.model_copy(update={"overrides": [*sweep.overrides, f"training.device={device}"]})
                for name, sweep in sweeps.items()
            }
        prepared = {name: prepare_sweep(sweep, out / name, workers) for name, sweep in sweeps.items()}
        jobs = [job for _, sweep_jobs in prepared.values() for job in sweep_jobs]
        outcomes = iter(execute(jobs, "local", workers, progress))  # the sweeps share the workers
        results, figures, pages = {}, [], {}
        for name, (units, sweep_jobs) in prepared.items():
            results[name] = finish_sweep(out / name, units, [next(outcomes) for _ in sweep_jobs])
            pages[name] = write_sweep_report(out / name)
            figures += sorted((out / name / "report").glob("*.png"))
        seeds = {s for table in results.values() for s in table.column("seed").to_pylist()}
        return (
            reproduction.judge(results, quick),
            figures + reproduction.sweep_figures(results, out),
            pages,
            seeds,
        )
    named = {name: _on_device(config, device) for name, config in reproduction.experiments(quick).items()}
    trained = run_configs(list(named.values()), out, workers, progress, ensemble="auto")
    runs = dict(zip(named, trained, strict=True))
    seeds = {run.config.seed for run in runs.values()}
    pages = _run_reports(runs) if reports else {}
    return reproduction.claims(runs, quick), reproduction.figures(runs, out), pages, seeds


def _out_dir(runs_dir: str | Path, prefix: str, resume: Path | None, what: str) -> Path:
    """A new directory prefix-TIME in runs_dir, or `resume` once checked to be one of `what`."""
    if resume is None:
        out = Path(runs_dir) / (prefix + time.strftime("%Y%m%d-%H%M%S"))
        out.mkdir(parents=True)
        return out
    out = Path(resume)
    if not out.name.startswith(prefix) or not out.is_dir():
        raise IclLabError(f"--resume: {out} is not a directory of {what}")
    return out


def reproduce(
    name: str,
    quick: bool,
    runs_dir: str | Path,
    workers: int,
    progress: bool = True,
    resume: Path | None = None,
    device: str = "cpu",
    docs: Path | None = None,
) -> tuple[list[Claim], Path]:
    """Train a reproduction's experiments on `device`, judge its claims, write claims.json and
    claims.md; with `resume`, an earlier directory of the same reproduction and mode: its finished
    runs are kept, interrupted ones continue, and the claims are judged again (packed as they
    were first; a reproduction made of sweeps resumes on the device kind it started on). With `docs`, its
    section of the published page (docs/claims.md) is replaced, the others kept."""
    mode = "quick" if quick else "full"
    if docs is not None:
        published_records(docs, mode)  # a bad --docs is refused before the training, not after
    out = _out_dir(runs_dir, f"reproduce-{name}-{mode}-", resume, f"reproduction {name} ({mode} mode)")
    resumed = resume is not None
    with _resumable(name, quick, device, docs, out):
        claims = _reproduce_in(name, quick, out, workers, progress, resumed, reports=False, device=device)
    if docs is not None:
        publish(
            [(json.loads((out / "claims.json").read_text()), out, out.name)], mode, docs, keep_others=True
        )
    return claims, out


def _reproduce_in(
    name: str,
    quick: bool,
    out: Path,
    workers: int,
    progress: bool,
    resumed: bool,
    reports: bool,
    device: str,
) -> list[Claim]:
    """reproduce() in a given directory; with `reports`, each model run's report is written too."""
    reproduction = REPRODUCTIONS.get(name)()
    started = time.perf_counter()
    judged = _train_and_judge(reproduction, quick, out, workers, progress, reports, device)
    claims, figures, pages, seeds = judged
    claims = [c if c.seeds else replace(c, seeds=tuple(seeds)) for c in claims]
    wall = time.perf_counter() - started
    record = {
        "reproduction": name,
        "title": reproduction.title,
        "quick": quick,
        "wall_s": wall,
        "resumed": resumed,
        "claims": [asdict(c) for c in claims],
        "reports": {k: str(page.relative_to(out)) for k, page in pages.items()},
        "figures": [str(path.relative_to(out)) for path in figures],
    }
    atomic_write_text(out / "claims.json", json.dumps(record, indent=1))
    took = f"{wall / 60:.1f} min" + (" this time, resumed" if resumed else "")
    lines = [
        f"# {reproduction.title} ({'quick' if quick else 'full'}, {took})",
        "",
        *claims_table(record["claims"]),
    ]
    lines += ["", *[_figure_link(path, out) for path in figures]]
    atomic_write_text(out / "claims.md", "\n".join(lines) + "\n")
    return claims


@contextlib.contextmanager
def _resumable(name: str, quick: bool, device: str, docs: Path | None, out: Path) -> Iterator[None]:
    """An interrupt inside says how to continue reproduction `name` (or all) in `out`, with the
    options that change what it does (the command line prints it)."""
    try:
        yield
    except Interrupted as stop:
        options = [" --quick"] * quick + [f" --device {device}"] * (device != "cpu")
        options += [f" --docs {shlex.quote(str(docs))}"] * (docs is not None)
        stop.continue_with = f"icl-lab reproduce {name}{''.join(options)} --resume {shlex.quote(str(out))}"
        raise


def _judged(sub: Path, name: str) -> dict | None:
    """The claims record of a reproduction judged in `sub`, or None if it has none; one that is
    damaged (a kill while it was written, an edit) is set aside, and the reproduction is judged
    again from its runs."""
    path = sub / "claims.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record["reproduction"] != name or not isinstance(record["claims"], list):
            raise ValueError(f"it is not {name}'s")
        return record
    except (ValueError, KeyError, TypeError) as e:
        why = f"{path} is damaged ({type(e).__name__}: {e}): judging {name} again"
        Console(stderr=True).print(why, markup=False, highlight=False, soft_wrap=True)
        return None


def reproduce_all(
    quick: bool,
    runs_dir: str | Path,
    workers: int,
    progress: bool = True,
    resume: Path | None = None,
    names: list[str] | None = None,
    docs: Path | None = None,
    device: str = "cpu",
) -> tuple[dict[str, list[Claim]], Path]:
    """Every reproduction (or those named) on `device`, one after another, each in a subdirectory
    of one reproduce-all-MODE-* directory, then one page of all their claims (claims.md,
    claims.html; with `docs`, also published: docs/claims.md, its figures, and docs/claims.json,
    the records it is written from). With `resume`: reproductions already judged are kept as they
    are; an interrupted one keeps its finished runs and continues the others."""
    mode = "quick" if quick else "full"
    if docs is not None:
        published_records(docs, mode)
    out = _out_dir(runs_dir, f"reproduce-all-{mode}-", resume, f"reproduce all ({mode} mode)")
    records, names = [], names or REPRODUCTIONS.names()
    with _resumable("all", quick, device, docs, out):
        for i, name in enumerate(names):
            sub = out / name
            record = _judged(sub, name)
            if record is None:
                if progress:
                    Console(stderr=True).print(f"[bold]reproduction {i + 1} of {len(names)}: {name}[/]")
                started = sub.is_dir()
                sub.mkdir(exist_ok=True)
                _reproduce_in(name, quick, sub, workers, progress, started, reports=True, device=device)
                record = json.loads((sub / "claims.json").read_text())
            records.append(record)
    write_claims_page(records, out, mode)
    if docs is not None:
        judged = [(r, out / r["reproduction"], f"{out.name}/{r['reproduction']}") for r in records]
        publish(judged, mode, docs, keep_others=len(names) < len(REPRODUCTIONS.names()))
    return {r["reproduction"]: [Claim(**c) for c in r["claims"]] for r in records}, out
