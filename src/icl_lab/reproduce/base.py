"""Reproductions: a paper's findings, the experiments that test them, and an honest verdict each."""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import pyarrow as pa

from icl_lab.errors import IclLabError
from icl_lab.experiment import ExperimentConfig
from icl_lab.files import atomic_write_text
from icl_lab.registry import Registry
from icl_lab.report.sweep import write_sweep_report
from icl_lab.store.run import Run
from icl_lab.sweeps.config import SweepConfig
from icl_lab.sweeps.execute import execute, run_configs
from icl_lab.sweeps.run import finish_sweep, prepare_sweep

TOLERANCE = 0.05  # accuracy differences smaller than this count as ties when judging a trend


def numbers(values: object) -> str:
    """Values with two decimals, space-separated, for a claim's 'ours' column."""
    return " ".join(f"{v:.2f}" for v in values)


@dataclass(frozen=True)
class Claim:
    """One finding of a paper, the paper's figure, ours, and whether ours reproduces it."""

    finding: str
    paper: str
    ours: str
    reproduced: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "reproduced", bool(self.reproduced))  # numpy bools are not JSON


class Reproduction:
    """Subclasses name their experiments (quick: a CPU in minutes; full: the paper's scale) and
    judge each claim from the finished runs; or, as SweepReproduction, from sweeps."""

    title: ClassVar[str]
    quick_budget: ClassVar[str]

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


def reproduce(
    name: str,
    quick: bool,
    runs_dir: str | Path,
    workers: int,
    progress: bool = True,
    resume: Path | None = None,
) -> tuple[list[Claim], Path]:
    """Train a reproduction's experiments, judge its claims, write claims.json and claims.md; with
    `resume`, an earlier directory of the same reproduction and mode: its finished runs are kept,
    interrupted ones continue, and the claims are judged again."""
    reproduction = REPRODUCTIONS.get(name)()
    mode = "quick" if quick else "full"
    if resume is None:
        out = Path(runs_dir) / f"reproduce-{name}-{mode}-{time.strftime('%Y%m%d-%H%M%S')}"
        out.mkdir(parents=True)
    else:
        out = Path(resume)
        if not out.name.startswith(f"reproduce-{name}-{mode}-") or not out.is_dir():
            raise IclLabError(f"--resume: {out} is not a directory of reproduction {name} ({mode} mode)")
    started = time.perf_counter()
    if isinstance(reproduction, SweepReproduction):
        sweeps = reproduction.sweeps(quick)
        prepared = {name: prepare_sweep(sweep, out / name) for name, sweep in sweeps.items()}
        jobs = [job for _, sweep_jobs in prepared.values() for job in sweep_jobs]
        outcomes = iter(execute(jobs, "local", workers, progress))  # the sweeps share the workers
        results, figures = {}, []
        for name, (units, sweep_jobs) in prepared.items():
            results[name] = finish_sweep(out / name, units, [next(outcomes) for _ in sweep_jobs])
            write_sweep_report(out / name)
            figures += sorted((out / name / "report").glob("*.png"))
        claims = reproduction.judge(results, quick)
        figures += reproduction.sweep_figures(results, out)
    else:
        runs = run_configs(list(reproduction.experiments(quick).values()), out, workers, progress)
        by_name = dict(zip(reproduction.experiments(quick), runs, strict=True))
        claims = reproduction.claims(by_name, quick)
        figures = reproduction.figures(by_name, out)
    wall = time.perf_counter() - started
    record = {
        "reproduction": name,
        "quick": quick,
        "wall_s": wall,
        "resumed": resume is not None,
        "claims": [asdict(c) for c in claims],
    }
    atomic_write_text(out / "claims.json", json.dumps(record, indent=1))
    took = f"{wall / 60:.1f} min" + (" this time, resumed" if resume is not None else "")
    lines = [f"# {reproduction.title} ({mode}, {took})", ""]
    lines += ["| finding | paper | ours | verdict |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {c.finding} | {c.paper} | {c.ours} | {'reproduced' if c.reproduced else 'not reproduced'} |"
        for c in claims
    ]
    lines += ["", *[_figure_link(path, out) for path in figures]]
    atomic_write_text(out / "claims.md", "\n".join(lines) + "\n")
    return claims, out
